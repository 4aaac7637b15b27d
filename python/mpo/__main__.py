"""``python -m mpo``: the same command as the ``mpo`` console script (see mpo.cli)."""

from .cli import main

raise SystemExit(main())
