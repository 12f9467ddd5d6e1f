"""`python -m proxy` runs the `tokenbooth` command."""

from proxy.cli import main

raise SystemExit(main())
