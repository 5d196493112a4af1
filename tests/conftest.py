"""Test configuration shared by the numerics tests.

``LOWPREC_BACKEND`` defaults to ``eager`` here so that the suite does not spend its time
compiling kernels on small CI machines; export ``LOWPREC_BACKEND=compiled`` to run the same
bit-exactness tests against the compiled kernel.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("LOWPREC_BACKEND", "eager")

# make ``import reference`` and the floors' shared test helpers (``from test_runs import
# tiny_digits``) importable however pytest was invoked
_here = Path(__file__).resolve().parent
for _dir in (_here, *(_here / f for f in ("numerics", "train", "cost", "study"))):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
