from grapevine.cli import main

raise SystemExit(main())
