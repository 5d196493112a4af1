"""A sample of the exact-reference tests, again on the compiled kernel.

The suite runs on the eager kernel (conftest.py); test_backends.py ties compiled to eager
bit for bit. Here the compiled kernel (``LOWPREC_BACKEND=compiled``: every call compiled)
meets the independent references directly: torch/numpy/ml_dtypes casts for every
rounding mode, every gap of the small formats (exhaustive, float32 and float64
containers, stochastic admissibility), the stochastic probabilities and stream, and the
telemetry measured in the rounding pass against its float64 reference. The test functions
are those of the eager modules, collected again here under the compiled backend.
"""

from __future__ import annotations

import pytest
import test_casts
import test_exhaustive
import test_stochastic
import test_telemetry


@pytest.fixture(autouse=True)
def _compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")


test_all_modes_16bit_match_reference = test_casts.test_all_modes_16bit_match_reference
test_nearest_matches_ml_dtypes = test_casts.test_nearest_matches_ml_dtypes
test_fp32_float64_matches_torch_cast = test_casts.test_fp32_float64_matches_torch_cast
test_every_gap_float32 = test_exhaustive.test_every_gap_float32
test_every_gap_float64 = test_exhaustive.test_every_gap_float64
test_every_gap_stochastic_admissible = test_exhaustive.test_every_gap_stochastic_admissible
test_up_probability = test_stochastic.test_up_probability
test_rand_bits = test_stochastic.test_rand_bits
test_stream_semantics = test_stochastic.test_stream_semantics
test_stochastic_signed_zero_and_specials = test_stochastic.test_stochastic_signed_zero_and_specials
test_out_argument = test_stochastic.test_out_argument
test_kernel_telemetry_equals_reference = test_telemetry.test_kernel_telemetry_equals_reference
