"""``python -m router``: the ``turnout`` command."""

from router.cli import main

raise SystemExit(main())
