"""``python -m weightdecay``: the same as the ``weightdecay`` command."""

from weightdecay.cli import main

raise SystemExit(main())
