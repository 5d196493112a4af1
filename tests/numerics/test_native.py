"""Building and loading the C++ kernels (:mod:`lowprec.numerics.native`)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from lowprec.numerics import native

build = native.library.__wrapped__  # uncached: each test builds or declines afresh


def test_builds_once_into_the_cache_folder(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path))
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    lib = build("mac_kernel")
    assert isinstance(lib, ctypes.CDLL) and hasattr(lib, "lowprec_mac")
    (so,) = (tmp_path / "native").glob("mac_kernel-*.so")
    stamp = so.stat().st_mtime_ns
    assert build("mac_kernel") is not None and so.stat().st_mtime_ns == stamp  # loaded again
    assert not list((tmp_path / "native").glob(".*.tmp"))  # written atomically


@pytest.mark.parametrize("cxx", ["false", "/nonexistent/c++"])
def test_a_failed_build_warns_and_declines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           cxx: str) -> None:
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", cxx)
    with pytest.warns(RuntimeWarning, match="could not build the native kernel mac_kernel"):
        assert build("mac_kernel") is None


def test_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWPREC_NATIVE", "off")
    assert build("mac_kernel") is None
