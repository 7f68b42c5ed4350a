from gpuattr.cli import main

raise SystemExit(main())
