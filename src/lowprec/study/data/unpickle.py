"""Restricted unpickling: CIFAR-10's python-version pickles without executing anything.

Only the handful of numpy callables that rebuild plain arrays are admitted; every other
global, persistent ids and malformed streams raise :class:`DataError` naming the source.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO

import numpy as np

from .locate import DataError

__all__ = ["restricted_pickle_load"]


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as numpy's protocol-2 pickles use it (latin-1 only)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} not allowed")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode argument must be str")
    return obj.encode("latin1", errors)


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside restricted pickles (see :func:`_allowed_globals`)."""

    def __init__(self) -> None:
        """Refuse direct construction."""
        raise pickle.UnpicklingError("numpy.ndarray(...) calls are not allowed")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle may reference: what rebuilds plain numpy arrays."""
    np_reconstruct = np.ndarray.__reduce__(np.zeros(1, dtype=np.uint8))[0]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # numpy pickles always call _reconstruct(ndarray, (0,), b"b") and then set the real
        # shape and data via __setstate__; insist on that so no large array is preallocated.
        if subtype is not _NdarrayToken:
            raise pickle.UnpicklingError("only plain numpy.ndarray can be unpickled")
        return np_reconstruct(np.ndarray, (0,), b"b")

    allowed: dict[tuple[str, str], Any] = {
        # A token, not the class itself: the pickle can name ndarray as _reconstruct's
        # argument but cannot call the constructor with an arbitrary shape.
        ("numpy", "ndarray"): _NdarrayToken,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    frombuffer = np.frombuffer

    def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        # Same as numpy's own ``_frombuffer`` used by protocol-5 pickles.
        if order not in ("C", "F"):
            raise pickle.UnpicklingError(f"bad array order {order!r}")
        return frombuffer(buf, dtype=dtype).reshape(shape, order=order)

    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = _numpy_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    return allowed


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Rebuild a numpy scalar (``numpy.core.multiarray.scalar``) for non-object dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy scalar with object dtype not allowed")
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("numpy scalar data must be bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except the few needed to rebuild numpy arrays."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is on the allow-list; raise :class:`DataError`."""
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise DataError(f"refused to unpickle {module}.{name} (not allowed)") from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (they could reference arbitrary external objects)."""
        raise DataError("refused to unpickle a persistent id (not allowed)")


def restricted_pickle_load(fh: BinaryIO, source: str = "<stream>") -> Any:
    """Unpickle ``fh`` with ``encoding="bytes"`` allowing only numpy-array globals.

    Any failure (forbidden class, truncated or malformed stream) raises :class:`DataError`
    whose message names ``source``.
    """
    try:
        return _RestrictedUnpickler(fh, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    except MemoryError as exc:
        raise DataError(f"{source}: pickle too large or malformed ({exc})") from exc
    except Exception as exc:  # pickle/numpy raise many types on malformed input
        kind = "truncated" if isinstance(exc, EOFError) else "corrupt"
        raise DataError(f"{source}: {kind} pickle ({type(exc).__name__}: {exc})") from exc
