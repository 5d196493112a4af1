"""Run folders that cannot be fooled (issue 15): every damaged, foreign or hostile input is
a clear ``lowprec: error:`` (or a correct result), and nothing is written that blocks the
corrected command. Tiny runs: small_cnn on the first 64 digits."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import shutil
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runs import spec, tiny_digits

from lowprec import cli, recipes
from lowprec.numerics import scaling
from lowprec.study import report, rundir, runs
from lowprec.study.data import DataError, read_cifar10_batch, read_idx
from lowprec.study.rundir import CHECKPOINT, CONFIG, METRICS, STATUS, RunError
from lowprec.study.runs import RunSpec, train_run
from lowprec.study.sweep import Sweep
from lowprec.study.sweep_runner import _worker_init, run_sweep
from lowprec.train import distributed

TRAIN = ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "32",
         "--telemetry-every", "1", "--quiet"]
FP32 = "digits-small_cnn-fp32-s0"


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_digits()
    monkeypatch.setattr(cli, "load_data", lambda *args: data)


@pytest.fixture(scope="module")
def digits() -> object:
    return tiny_digits()


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    """Exit status and stderr; a traceback fails the test."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def paused(capsys: pytest.CaptureFixture[str], out: Path, *extra: object) -> Path:
    """A run stopped after its first epoch (a checkpoint, no status)."""
    code, _ = run(capsys, *TRAIN, "--recipe", "fp32", "--out", out,
                  "--max-epochs-this-call", 1, *extra)
    assert code == 0
    return out / FP32


# -- 1. checkpoints carry a digest ----------------------------------------------------------


def test_garbled_truncated_or_empty_checkpoints_are_refused_and_restart_recovers(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = paused(capsys, tmp_path)
    good = (folder / CHECKPOINT).read_bytes()
    config = rundir.read_config(folder)
    digest = rundir.identity_digest(rundir.identity(config))
    rng = random.Random(0)
    for _ in range(40):  # 64 garbled bytes anywhere: always refused, never loaded
        bad = bytearray(good)
        for i in rng.sample(range(len(bad)), 64):
            bad[i] ^= rng.randrange(1, 256)
        (folder / CHECKPOINT).write_bytes(bytes(bad))
        with pytest.raises(RunError, match="checkpoint.pt: .*--restart"):
            rundir.load_checkpoint(folder / CHECKPOINT, digest, 2)
    for damaged in (good[: len(good) // 2], b"", good + b"\0"):
        (folder / CHECKPOINT).write_bytes(damaged)
        code, err = run(capsys, *TRAIN, "--recipe", "fp32", "--out", tmp_path)
        assert code == 2 and f"{folder / CHECKPOINT}: " in err and "--restart" in err
    code, _ = run(capsys, *TRAIN, "--recipe", "fp32", "--out", tmp_path, "--restart")
    assert code == 0 and rundir.read_status(folder)["status"] == "done"
    assert len(rundir.read_metrics(folder)) == 2


def test_a_checkpoint_that_does_not_fit_the_model_is_a_clear_error(
        digits: object, tmp_path: Path) -> None:
    s = spec("fp32")
    train_run(s, tmp_path, digits, quiet=True, max_epochs=1)
    folder = tmp_path / s.name
    state = rundir.read_checkpoint(folder)
    state["model"] = {k: v[..., :1] for k, v in state["model"].items()}  # wrong shapes
    digest = rundir.identity_digest(rundir.identity(rundir.read_config(folder)))
    rundir.save_checkpoint(folder / CHECKPOINT, state, digest)
    with pytest.raises(RunError, match="does not fit this run's model"):
        train_run(s, tmp_path, digits, quiet=True)


# -- 2. names cannot escape ------------------------------------------------------------------


def test_run_names_cannot_escape_the_output_folder(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "evil.toml"
    recipe.write_text('name = "../../../../escape_dir"\nweight = "fp16"\n')
    out = tmp_path / "a" / "b" / "c" / "d"
    code, err = run(capsys, *TRAIN, "--recipe-file", recipe, "--out", out)
    assert code == 2 and "cannot name a folder" in err
    assert not list(tmp_path.rglob("*escape_dir*")) and not out.exists()
    with pytest.raises(RunError):
        rundir.inside(tmp_path, "../x")
    with pytest.raises(RunError):
        rundir.inside(tmp_path, ".")
    assert rundir.inside(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


# -- 3. a checkpoint belongs to its configuration --------------------------------------------


def test_a_checkpoint_of_another_configuration_is_refused(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = paused(capsys, tmp_path)
    run(capsys, *TRAIN, "--recipe", "fp12_sr", "--out", tmp_path, "--max-epochs-this-call", 1)
    other = tmp_path / "digits-small_cnn-fp12_sr-s0"
    (other / CHECKPOINT).write_bytes((folder / CHECKPOINT).read_bytes())  # fp32 into fp12_sr
    code, err = run(capsys, *TRAIN, "--recipe", "fp12_sr", "--out", tmp_path)
    assert code == 2 and "another configuration" in err and "--restart" in err
    # config.json deleted, rerun with another learning rate: the checkpoint is not mixed in
    (folder / CONFIG).unlink()
    code, err = run(capsys, *TRAIN, "--recipe", "fp32", "--out", tmp_path, "--lr", 0.2)
    assert code == 2 and "another configuration" in err
    assert {json.loads(x)["lr"] for x in (folder / METRICS).read_text().splitlines()} == {0.05}


def test_checkpoint_metrics_must_match_the_epochs(digits: object, tmp_path: Path) -> None:
    s = spec("fp32")
    train_run(s, tmp_path, digits, quiet=True, max_epochs=1)
    folder = tmp_path / s.name
    state = rundir.read_checkpoint(folder)
    state["metrics"] = state["metrics"] * 6
    state["epoch"] = 6
    digest = rundir.identity_digest(rundir.identity(rundir.read_config(folder)))
    rundir.save_checkpoint(folder / CHECKPOINT, state, digest)
    with pytest.raises(RunError, match="epoch 6 is not in 1..2"):
        train_run(s, tmp_path, digits, quiet=True)
    state["epoch"] = 1
    rundir.save_checkpoint(folder / CHECKPOINT, state, digest)
    with pytest.raises(RunError, match="record 2 is for epoch 1"):
        train_run(s, tmp_path, digits, quiet=True)


# -- 4. reports do not compare different solvers ---------------------------------------------


def test_report_groups_runs_by_solver(tmp_path: Path) -> None:
    data = tiny_digits()
    for lr in (0.05, 0.2):
        s = RunSpec("digits", "small_cnn", recipes.get("fp32"), 0, epochs=1, lr=lr)
        folder = tmp_path / f"lr{lr}" / s.name
        folder.mkdir(parents=True)
        rundir.write_json(folder / CONFIG, runs.resolve_config(s, data))
        rundir.write_text(folder / METRICS, json.dumps(
            {"epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.5, "telemetry": {}}) + "\n")
        rundir.write_json(folder / STATUS, {"status": "done", "reason": None})
    groups = report._group(report.load_runs(tmp_path))
    assert [k[2].split(",")[0] for k in groups] == ["lr 0.05", "lr 0.2"]
    assert all(len(s["fp32"].runs) == 1 for s in groups.values())


# -- 5. one writer per folder; workers die with the driver -----------------------------------


def test_a_locked_run_folder_or_sweep_is_refused(digits: object, tmp_path: Path) -> None:
    s = spec("fp32", epochs=1)
    folder = tmp_path / s.name
    folder.mkdir()
    with rundir.locked(folder), pytest.raises(RunError, match="another process"):
        train_run(s, tmp_path, digits, quiet=True)
    assert not (folder / CONFIG).exists()
    sweep = Sweep.from_toml('datasets = "digits"\nmodels = "small_cnn"\nrecipes = ["fp32"]\n')
    with rundir.locked(tmp_path), pytest.raises(RunError, match="another process"):
        run_sweep(sweep, tmp_path, quiet=True, say=lambda _: None)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_sweep_workers_die_with_their_driver() -> None:
    read, write = os.pipe()
    driver = os.fork()
    if driver == 0:  # the driver: starts a worker, then waits to be killed
        worker = os.fork()
        if worker == 0:
            _worker_init(os.getppid())
            time.sleep(60)
            os._exit(0)
        os.write(write, struct.pack("i", worker))
        time.sleep(60)
        os._exit(0)
    worker = struct.unpack("i", os.read(read, 4))[0]
    time.sleep(0.5)  # the worker has armed its death signal
    assert _alive(worker)
    os.kill(driver, signal.SIGKILL)
    os.waitpid(driver, 0)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


# -- 6, 10. damaged files are named, never a traceback ---------------------------------------


@pytest.fixture(scope="module")
def finished(digits: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder, as ``TRAIN --recipe fp32`` leaves it (copy it to change it)."""
    out = tmp_path_factory.mktemp("finished")
    train_run(spec("fp32"), out, digits, quiet=True)
    return out / FP32


@pytest.mark.parametrize(("name", "content", "message"), [
    (CONFIG, "[1, 2]", "config.json: expected a JSON dict, got list"),
    (CONFIG, "{", "config.json: not readable JSON"),
    (STATUS, "{}", "status.json: expected"),
    (STATUS, "[]", "status.json: expected a JSON dict"),
    (STATUS, '{"status": "banana", "reason": null}', "status.json: expected"),
    (METRICS, "", "says done but"),
    (METRICS, '{"epoch": 1, "loss": 1.0, "train_acc": 0.5}\n', "lacks the numbers ['test_acc']"),
])
def test_damaged_run_files_are_clear_errors(
        tiny: None, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, content: str, message: str) -> None:
    shutil.copytree(finished, tmp_path / FP32)
    (tmp_path / FP32 / name).write_text(content)
    for command in (["report", tmp_path], [*TRAIN, "--recipe", "fp32", "--out", tmp_path]):
        code, err = run(capsys, *command)
        assert code == 2 and err.startswith("lowprec: error: ") and message in err, err
        assert str(tmp_path / FP32 / name) in err or name == METRICS


def test_malformed_sweep_json_is_named(finished: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(finished, tmp_path / FP32)
    (tmp_path / "sweep.json").write_text('{"name": "x", "runs": [1]}')
    code, err = run(capsys, "report", tmp_path)
    assert code == 2 and "sweep.json: not a lowprec sweep summary" in err


def test_hostile_recipes_and_options_are_clear_errors(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 2000 + "]" * 2000 + "\n")
    code, err = run(capsys, *TRAIN, "--recipe-file", deep, "--out", tmp_path)
    assert code == 2 and "nested too deeply" in err
    code, err = run(capsys, *TRAIN, "--recipe", "fp32", "--out", tmp_path,
                    "--batch-size", 100000000000)
    assert code == 2 and "batch size 100000000000 must be between" in err
    assert not list(tmp_path.rglob(CONFIG))
    with pytest.raises(SystemExit):
        cli.main([*TRAIN, "--recipe", "fp32", "--device", "meta"])
    assert "runs train on cpu or cuda devices" in capsys.readouterr().err
    huge = tmp_path / "block.toml"
    huge.write_text('name = "huge_block"\n[weight]\nformat = "fp8_e4m3"\n'
                    '[weight.scaling]\ngranularity = "block"\nblock = 9223372036854775807\n')
    code, _ = run(capsys, *TRAIN, "--recipe-file", huge, "--out", tmp_path, "--epochs", 1)
    assert code == 0


# -- 7, 8. seeds and learning rates are checked before anything is written -------------------


@pytest.mark.parametrize("option", [["--seed", "4294967296"], ["--seed", "-1"],
                                    ["--seed", str(2**63 - 1)], ["--lr", "inf"],
                                    ["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"]])
def test_bad_seeds_and_learning_rates_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([*TRAIN, "--recipe", "fp32", "--out", str(tmp_path), *option])
    assert "Traceback" not in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_run_spec_checks_its_fields() -> None:
    fp32 = recipes.get("fp32")
    for kw in ({"seed": 2**32}, {"seed": -1}, {"lr": float("inf")}, {"lr": float("nan")},
               {"epochs": 0}, {"batch_size": 0}, {"device": "meta"}, {"seed": True}):
        with pytest.raises(ValueError):
            RunSpec("digits", "small_cnn", fp32, **kw)  # type: ignore[arg-type]


def test_a_config_without_training_does_not_block_the_corrected_command(
        digits: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("failed before the first epoch")

    monkeypatch.setattr(runs._Session, "start", boom)
    with pytest.raises(RuntimeError):
        train_run(spec("fp32", lr=0.5), tmp_path, digits, quiet=True)
    monkeypatch.undo()
    result = train_run(spec("fp32", lr=0.05), tmp_path, digits, quiet=True)
    assert result.status == "done" and rundir.read_config(result.folder)["solver"]["lr"] == 0.05


# -- 9. small inputs cannot allocate gigabytes -----------------------------------------------


def test_small_hostile_data_files_are_refused_before_allocating(tmp_path: Path) -> None:
    nested: list = [0]
    for _ in range(40):  # shared references: 2**40 elements once expanded
        nested = [nested, nested]
    path = tmp_path / "data_batch_1"
    data = np.zeros((2, 3072), np.uint8)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [nested, nested]}, protocol=2))
    assert path.stat().st_size < 50_000
    with pytest.raises(DataError, match="2 labels for 2 images|flat list of integers"):
        read_cifar10_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((10_001, 3072), np.uint8)[:, :3072],
                                   b"labels": [0] * 10_001}, protocol=2))
    with pytest.raises(DataError, match="N <= 10000"):
        read_cifar10_batch(path)
    idx = tmp_path / "train-images-idx3-ubyte.gz"
    header = b"\0\0\x08\x03" + struct.pack(">III", 60_000_000, 28, 28)
    idx.write_bytes(gzip.compress(header + bytes(1 << 20)))
    with pytest.raises(DataError, match="more than the .* bytes allowed"):
        read_idx(idx, ndim=3)


def test_scaling_blocks_are_padded_only_to_the_tensor() -> None:
    x = torch.tensor([1.0, -3.0, 0.25])
    view, dims, back, _ = scaling._view(x, scaling.Scaling("block", block=2**27))
    assert view.shape == (1, 3) and torch.equal(back(view), x)


# -- 12. collapse, stale temporary files, DDP timeout ----------------------------------------


def test_a_run_at_chance_level_is_reported_as_collapsed(
        digits: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs._Session, "evaluate", lambda self: {"test_loss": 2.3, "test_acc": 0.1})
    result = train_run(spec("fp32"), tmp_path, digits, quiet=True)
    status = rundir.read_status(result.folder)
    assert result.status == "done" and status["collapsed"] and "chance level" in result.reason
    assert "1/1 collapsed to chance" in report._group(report.load_runs(tmp_path))[
        ("digits", "small_cnn")]["fp32"].status()


def test_stale_temporary_files_are_removed_on_resume(digits: object, tmp_path: Path) -> None:
    s = spec("fp32")
    train_run(s, tmp_path, digits, quiet=True, max_epochs=1)
    stale = tmp_path / s.name / ".checkpoint.pt.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert train_run(s, tmp_path, digits, quiet=True).status == "done"
    assert not stale.exists()


def test_ddp_collectives_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWPREC_DDP_TIMEOUT_S", "42")
    assert distributed.collective_timeout().total_seconds() == 42
    monkeypatch.setenv("LOWPREC_DDP_TIMEOUT_S", "nan")
    with pytest.raises(ValueError, match="LOWPREC_DDP_TIMEOUT_S"):
        distributed.collective_timeout()
    seen = {}
    monkeypatch.setenv("LOWPREC_DDP_TIMEOUT_S", "7")
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.setenv(key, "0")
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: seen.update(kw))
    distributed.init("cpu")
    assert seen["timeout"].total_seconds() == 7
