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

# make ``import reference`` work however pytest was invoked
_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
