"""Run folders: resume equals an uninterrupted run, skip, divergence, atomic files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lowprec import recipes
from lowprec.study import runs as experiment
from lowprec.study.data import Dataset
from lowprec.study.rundir import read_checkpoint
from lowprec.study.runs import (
    CHECKPOINT,
    METRICS,
    STATUS,
    RunError,
    RunSpec,
    atomic_write,
    first_bad,
    load_data,
    train_run,
    write_text,
)
from lowprec.train.recipe import Recipe


def tiny_digits(n_train: int = 64, n_test: int = 64) -> Dataset:
    """The first images of digits: two batches of 32 per epoch keep the tests fast."""
    full = load_data("digits", "small_cnn")
    return Dataset("digits", full.train_images[:n_train], full.train_y[:n_train],
                   full.test_images[:n_test], full.test_y[:n_test], num_classes=10,
                   provenance=f"{full.provenance}; first {n_train}/{n_test} images",
                   normalize=full.normalize)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return tiny_digits()


def spec(recipe: str | Recipe = "fxp12_sr_ls", **kw: object) -> RunSpec:
    """A tiny run: small_cnn, 2 epochs of 2 steps of 32 images."""
    r = recipes.get(recipe) if isinstance(recipe, str) else recipe
    args = {"epochs": 2, "batch_size": 32, "telemetry_every": 1, **kw}
    return RunSpec("digits", "small_cnn", r, **args)  # type: ignore[arg-type]


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp"))


def interrupt_evaluation(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th evaluation raise KeyboardInterrupt: a run killed mid-epoch, after
    its steps and before its checkpoint."""
    calls = {"n": 0}
    evaluate = experiment._Session.evaluate

    def flaky(self: experiment._Session) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return evaluate(self)

    monkeypatch.setattr(experiment._Session, "evaluate", flaky)


def comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def final_state(folder: Path) -> dict:
    return read_checkpoint(folder)


def assert_same_state(a: dict, b: dict) -> None:
    for part in ("params", "model"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert torch.equal(a["rng"]["sr"], b["rng"]["sr"])
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])


@pytest.mark.parametrize("recipe", [
    "fxp12_sr_ls",  # stochastic rounding and scaling: every RNG state matters
    "fp8_hybrid",  # fp32 master weights: masters and rounded working copies both restored
])
def test_resume_after_interruption_equals_uninterrupted(
    digits: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str
) -> None:
    s = spec(recipe)
    whole = train_run(s, tmp_path / "a", digits, quiet=True)
    assert whole.status == "done" and len(whole.metrics) == 2

    # interrupt during epoch 2's evaluation: epoch 1's checkpoint must survive intact
    interrupt_evaluation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_run(s, tmp_path / "b", digits, quiet=True)
    monkeypatch.undo()
    folder = tmp_path / "b" / s.name
    assert not (folder / STATUS).exists()
    assert len((folder / METRICS).read_text().splitlines()) == 1
    assert final_state(folder)["epoch"] == 1
    assert no_temp_files(tmp_path)

    resumed = train_run(s, tmp_path / "b", digits, quiet=True)
    assert resumed.status == "done" and not resumed.skipped
    assert comparable(resumed.metrics) == comparable(whole.metrics)
    assert_same_state(final_state(whole.folder), final_state(folder))


def test_finished_run_is_skipped_and_config_must_match(
    digits: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = spec("fp32", epochs=1)
    first = train_run(s, tmp_path, digits, quiet=True)
    stamp = (first.folder / CHECKPOINT).stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run must not be rebuilt")

    monkeypatch.setattr(experiment._Session, "start", boom)
    again = train_run(s, tmp_path, digits, quiet=True)
    assert again.skipped and again.status == "done"
    assert again.metrics == first.metrics
    assert (first.folder / CHECKPOINT).stat().st_mtime_ns == stamp
    with pytest.raises(RunError, match="differs in: epochs"):
        train_run(spec("fp32", epochs=3), tmp_path, digits, quiet=True)


def test_divergence_is_recorded_with_the_first_bad_tensor(digits: Dataset, tmp_path: Path) -> None:
    fp16 = Recipe(weight="fp16", activation="fp16", error="fp16", name="fp16_all")
    result = train_run(spec(fp16, lr=1e3), tmp_path, digits, quiet=True)
    assert result.status == "diverged"
    status = json.loads((result.folder / STATUS).read_text())
    assert status["status"] == "diverged" and status["reason"] == result.reason
    assert "loss became nan" in result.reason
    assert "first bad telemetry: fc.activation (non-finite" in result.reason
    # fp32 has no telemetry: the message says what it found instead
    plain = train_run(spec("fp32", lr=1e8), tmp_path, digits, quiet=True)
    assert plain.status == "diverged" and "learning rate is likely too high" in plain.reason
    # a diverged run counts as finished: it is skipped, not retried
    assert train_run(spec("fp32", lr=1e8), tmp_path, digits, quiet=True).skipped


def test_first_bad_prefers_non_finite_then_overflow_in_execution_order() -> None:
    clean = {"underflow": 0.0, "overflow": 0.0, "nonfinite": 0.0, "sqnr_db": 40.0, "amax": 1.0}
    tel = {
        "conv1.activation": clean,
        "fc.activation": {**clean, "overflow": 0.25},
        "fc.error": {**clean, "nonfinite": 0.5, "sqnr_db": -math.inf},
        "conv1.error": {**clean, "sqnr_db": math.nan},
    }
    assert first_bad(tel).startswith("fc.error (non-finite: 50.0%")
    del tel["fc.error"]
    assert first_bad(tel).startswith("conv1.error")
    del tel["conv1.error"]
    assert first_bad(tel).startswith("fc.activation (overflow: 25.0%")
    assert first_bad({"conv1.activation": clean}) is None
    order = {"": 0, "conv1": 1, "fc": 2}
    keys = ["conv1.update.momentum_buffer", "fc.error", "conv1.error", "fc.activation",
            "conv1.weight", "conv1.activation", "fc.weight_grad"]
    assert sorted(keys, key=lambda k: experiment._execution_key(order, k)) == [
        "conv1.weight", "conv1.activation", "fc.activation", "fc.error", "conv1.error",
        "conv1.update.momentum_buffer", "fc.weight_grad"]


def test_atomic_write_leaves_old_file_and_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_text(target, "old")

    def half(fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_failed_checkpoint_keeps_the_previous_one(
    digits: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = spec("fp32")
    assert train_run(s, tmp_path, digits, quiet=True, max_epochs=1).status == "paused"
    folder = tmp_path / s.name
    before = (folder / CHECKPOINT).read_bytes()
    save = torch.save

    def torn(obj: object, fh: object) -> None:
        save(obj, fh)
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="killed mid-write"):
        train_run(s, tmp_path, digits, quiet=True)
    assert (folder / CHECKPOINT).read_bytes() == before
    assert len((folder / METRICS).read_text().splitlines()) == 1
    assert no_temp_files(tmp_path) and not (folder / STATUS).exists()
