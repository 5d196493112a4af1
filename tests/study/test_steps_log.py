"""Per-step records (steps.jsonl, TensorBoard events) and plain output off a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_runs import interrupt_evaluation, spec, tiny_digits

from lowprec import cli
from lowprec.study import progress
from lowprec.study import runs as experiment
from lowprec.study.runs import read_metrics, train_run
from lowprec.study.steplog import STEPS, TENSORBOARD, read_steps

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def untimed(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_steps(folder)]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard events, as (step, value)."""
    acc = event_accumulator.EventAccumulator(str(folder / TENSORBOARD))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_interrupted_and_resumed_run_logs_the_same_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits = tiny_digits()
    s = spec(telemetry_every=3)  # 2 epochs x 2 steps; passes 0 and 3 recorded: steps 1 and 4
    whole = train_run(s, tmp_path / "a", digits, quiet=True, tensorboard=True)
    steps = read_steps(whole.folder)
    assert [(r["step"], r["epoch"]) for r in steps] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert ["telemetry" in r for r in steps] == [True, False, False, True]
    lr = experiment.solver_for(s).lr
    assert all(r["lr"] == lr and r["loss"] > 0 and r["seconds"] > 0 for r in steps)
    # one recorded step per epoch: the epoch's pooled telemetry is that step's, for every
    # tensor, updates (the weight's and the bias's, pooled) included
    for record, step in zip(read_metrics(whole.folder), (steps[0], steps[3]), strict=True):
        assert step["telemetry"].keys() == record["telemetry"].keys()
        assert sum(k.endswith(".update") for k in step["telemetry"]) == 3
        for key, stats in step["telemetry"].items():
            assert stats == pytest.approx(
                {k: record["telemetry"][key][k] for k in stats}, nan_ok=True), key

    # interrupted in epoch 2's evaluation (its steps logged, not checkpointed), and a line cut
    interrupt_evaluation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_run(s, tmp_path / "b", digits, quiet=True, tensorboard=True)
    monkeypatch.undo()
    folder = tmp_path / "b" / s.name
    assert len(read_steps(folder)) == 4
    with open(folder / STEPS, "a") as fh:
        fh.write('{"step": 5, "epo')
    train_run(s, tmp_path / "b", digits, quiet=True, tensorboard=True)
    assert untimed(folder) == untimed(whole.folder)

    logged, expected = scalars(folder), scalars(whole.folder)
    assert logged == expected  # the interrupted epoch's events are purged, not shown twice
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3, 4]
    assert logged["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in steps]
    assert logged["train/lr"][0] == (1, pytest.approx(lr))
    for tag, key in (("test/accuracy", "test_acc"), ("test/loss", "test_loss")):
        assert logged[tag] == [(2 * r["epoch"], pytest.approx(r[key]))
                               for r in read_metrics(whole.folder)]
    for key, stats in steps[3]["telemetry"].items():
        assert logged[f"telemetry/{key}/underflow"][-1] == (4, pytest.approx(stats["underflow"]))
        assert logged[f"telemetry/{key}/overflow"][-1] == (4, pytest.approx(stats["overflow"]))
    pooled = read_metrics(whole.folder)[-1]["telemetry"]["fc.update"]["underflow"]
    assert logged["epoch_telemetry/fc.update/underflow"][-1] == (4, pytest.approx(pooled))


def test_missing_tensorboard_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    data = tiny_digits()
    monkeypatch.setattr(cli, "load_data", lambda *args: data)
    code = cli.main(["train", "--recipe", "fp32", "--dataset", "digits", "--epochs", "1",
                     "--out", str(tmp_path), "--tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'lowprec[tensorboard]'" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115
    assert not progress.interactive() and progress.bar([1], quiet=False).disable
    monkeypatch.setattr(sys.stderr, "isatty", Terminal().isatty)
    assert progress.interactive() and not progress.bar([1], quiet=False).disable
    assert progress.bar([1], quiet=True).disable


def test_piped_train_output_is_plain_lines(tmp_path: Path) -> None:
    """``lowprec train ... > log 2>&1``: one line per epoch and per run, no escape codes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "lowprec", "train", "--recipe", "fp32", "--dataset", "digits",
         "--epochs", "1", "--batch-size", "512", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=300, check=True)
    out = done.stdout.decode()
    assert "\x1b" not in out and "\r" not in out
    name = "digits-small_cnn-fp32-s0"
    lines = [line for line in out.splitlines() if line.startswith(name)]
    assert [line.split(":")[0] for line in lines] == [f"{name} epoch 1/1", name]
    assert [r["step"] for r in read_steps(tmp_path / name)] == [1, 2]  # 1438 // 512 batches
