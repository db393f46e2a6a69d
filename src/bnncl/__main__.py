from bnncl.cli import main

raise SystemExit(main())
