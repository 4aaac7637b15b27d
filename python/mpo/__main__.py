"""``python -m mpo``: the same command as the ``mpo`` console script (see mpo._cli)."""

from ._cli import main

raise SystemExit(main())
