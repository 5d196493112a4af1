"""``python -m lowprec``: the command line of :mod:`lowprec.cli`."""

from .cli import main

raise SystemExit(main())
