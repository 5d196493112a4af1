"""A sample of the exact-reference tests, again on the compiled kernel.

The suite runs on the C++ kernels and the eager kernel (conftest.py); test_backends.py
ties compiled to eager bit for bit. Here the compiled kernel (``LOWPREC_BACKEND=compiled``:
every call compiled) meets the independent references directly, on a sample chosen to
cover the compiled variants that matter (each costs a compilation the first time,
seconds; torch's on-disk cache keeps them for later runs): every gap of a float format
(float32 container, every deterministic mode, both overflow rules) and of two's-complement
fixed point (float64 container), stochastic admissibility at every gap, the probability
of rounding up, the stream, and the rounding pass's telemetry against its float64
reference. The test bodies are those of the eager modules.
"""

from __future__ import annotations

import pytest
import test_exhaustive
import test_stochastic
import test_telemetry
import torch


@pytest.fixture(autouse=True)
def _compiled(monkeypatch: pytest.MonkeyPatch, torch_kernels: None) -> None:
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")  # and the C++ kernels declined


@pytest.mark.parametrize("overflow", [None, "saturate"])
def test_every_gap_float32_e5m2(overflow: str | None) -> None:
    test_exhaustive.test_every_gap_float32("fp8_e5m2", overflow)


def test_every_gap_float64_int8() -> None:
    test_exhaustive.test_every_gap_float64("int8", None)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fxp12"])
def test_every_gap_stochastic_admissible(name: str) -> None:
    test_exhaustive.test_every_gap_stochastic_admissible(name, None)


@pytest.mark.parametrize("f", [0.25, 2.0**-10])
def test_up_probability(f: float) -> None:
    test_stochastic.test_up_probability(f)


test_stream_semantics = test_stochastic.test_stream_semantics
test_stochastic_signed_zero_and_specials = test_stochastic.test_stochastic_signed_zero_and_specials


@pytest.mark.parametrize(("name", "mode", "kind"), [("fp8_e5m2", "nearest", "specials"),
                                                    ("fp12", "stochastic", "tiny")])
def test_kernel_telemetry_equals_reference(name: str, mode: str, kind: str) -> None:
    test_telemetry.test_kernel_telemetry_equals_reference(name, mode, kind, torch.float32)
