import sys

from regionstream.cli import main

raise SystemExit(main(["consume", *sys.argv[1:]]))
