from regionstream.cli import main

raise SystemExit(main())
