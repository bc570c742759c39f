from pyvirt.cli.main import main

raise SystemExit(main())
