"""``python -m midiffusion.cli``: the ``midiffusion`` command."""

from midiffusion.cli.main import main

raise SystemExit(main())
