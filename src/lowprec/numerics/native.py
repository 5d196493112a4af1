"""C++ kernels of this package, compiled on first use and kept on disk.

A kernel whose loop structure inductor cannot express (:mod:`.mac`'s fused blocked
product, :mod:`.block_native`'s and :mod:`.fmtscale_native`'s per-block scaling) ships as
C++ source beside this module, with the headers it includes (``round8.h``: the rounding
kernel on float64 lanes). :func:`library` compiles it once per source (and headers),
compiler and CPU kind (its instruction-set flags), with ``$CXX``, else
``g++``/``c++``, and ``-O3 -march=native -fopenmp -ffp-contract=fast`` (FMAs: the same
values here, the MAC kernel's products being exact in float64 and the scaling kernels
adding no product), into
``$LOWPREC_CACHE_DIR/native/<key>.so`` (beside :func:`.graphs.cache_dir`'s folder; a
private temporary folder when that is ``off``), written atomically, and loads it with
:mod:`ctypes` (foreign calls release the GIL). The library is linked against
``libgomp.so.1``, the OpenMP runtime torch itself loads, so the process keeps one thread
pool. Without a compiler, or with ``LOWPREC_NATIVE=off``, :func:`library` returns ``None``
(with one warning for a failed build) and callers take their torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import kernel
from .formats import Format
from .graphs import cache_dir

__all__ = ["MODES", "NEAREST_ADD", "NEAREST_FLOAT", "NONE", "code64", "function", "library",
           "rule64"]

#: the rounding modes in the order of the kernels' ``enum Mode`` (round8.h), their codes
MODES = ("nearest", "nearest_away", "toward_zero", "down", "up", "odd", "stochastic")
#: the kernels' own codes: no rounding, nearest-even by a float64 addition, by float32
#: operations (round8.h)
NONE, NEAREST_ADD, NEAREST_FLOAT = 7, 8, 9

_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu++17",
          "-ffp-contract=fast")


def _compiler() -> str | None:
    given = os.environ.get("CXX")
    if given:
        return given
    return shutil.which("g++") or shutil.which("c++")


def _cpu_flags() -> str:
    """The host's instruction-set extensions (``-march=native`` compiles for exactly these,
    so a cache folder shared by different machines keeps one library per CPU kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _folder() -> Path:
    base = cache_dir()
    if base is None:
        return Path(tempfile.mkdtemp(prefix="lowprec-native-"))
    return base.parent / "native"


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The compiled ``<name>.cpp`` of this folder, or ``None`` (module docstring)."""
    if os.environ.get("LOWPREC_NATIVE", "on").strip().lower() in ("off", "0", "no"):
        return None
    cxx = _compiler()
    if cxx is None:
        return None
    source = Path(__file__).with_name(f"{name}.cpp")
    key = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # what the sources may include
        key.update(header.read_bytes())
    key.update(" ".join((cxx, *_FLAGS, platform.machine(), _cpu_flags(),
                         torch.backends.cpu.get_cpu_capability())).encode())
    folder = _folder()
    target = folder / f"{name}-{key.hexdigest()[:24]}.so"
    try:
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = folder / f".{uuid.uuid4().hex}.so.tmp"
            subprocess.run([cxx, *_FLAGS, str(source), "-o", str(tmp)], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(tmp, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        warnings.warn(f"lowprec: could not build the native kernel {name} with {cxx} "
                      f"({str(detail).strip()[:500]}); using the torch path (same values, "
                      "slower). Set LOWPREC_NATIVE=off to silence this.",
                      RuntimeWarning, stacklevel=2)
        return None


def function(name: str, symbol: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """The C function ``symbol`` (returning int) of :func:`library` ``name``, with its
    argument types; ``None`` without the library."""
    lib = library(name)
    if lib is None:
        return None
    fn = getattr(lib, symbol)
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


@functools.lru_cache(maxsize=256)
def rule64(fmt: Format, rand_bits: int, overflow: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """round8.h's ``Rule`` for rounding onto ``fmt`` in the float64 container, as tensors
    (cached: never written): :func:`.kernel.grid_constants` and ``rand_mask`` (int64), and
    the flags saturate, parity_from_exponent, flush, symmetric, negative_zero (int32), of
    :class:`.kernel.Shape`; ``None`` for the formats round8 has no variant for (subnormal
    float64 inputs on the format's grid, unsigned formats)."""
    _, grid, shape, _ = kernel.constants(fmt, torch.float64, rand_bits, torch.device("cpu"))
    if shape.subnormal_inputs or not shape.signed:
        return None
    flags = torch.tensor([overflow == "saturate", shape.parity_from_exponent, shape.flush,
                          shape.symmetric, shape.negative_zero], dtype=torch.int32)
    return grid, flags


@functools.lru_cache(maxsize=256)
def code64(fmt: Format, mode: str, rand_bits: int, overflow: str) -> int:
    """The kernels' code for rounding onto ``fmt`` in ``mode`` on float64 lanes (a format
    :func:`rule64` serves): ``NEAREST_ADD`` for nearest-even where round8_add gives round8's
    bits (at least 3 dropped bits, no flush, no exponent parity, symmetric, largest value
    below ``2**900``: round8.h), else the mode's own."""
    rule = rule64(fmt, rand_bits, overflow)
    assert rule is not None, fmt
    parity, flush, symmetric = rule[1][1:4].tolist()
    if (mode == "nearest" and fmt.grid_man <= 49 and fmt.max < 2.0**900
            and not (parity or flush) and symmetric):
        return NEAREST_ADD
    return MODES.index(mode)
