import sys

from regionstream.cli import main

raise SystemExit(main(["produce", *sys.argv[1:]]))
