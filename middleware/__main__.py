from middleware.cli import main

raise SystemExit(main())
