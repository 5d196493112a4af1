"""The ``lowprec`` command line, end to end on digits (tiny epochs)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_runs import tiny_digits

from lowprec import cli, formats, recipes
from lowprec.study.runs import CONFIG, METRICS, STATUS


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI train on the first 64 digits (the real loader is tested separately)."""
    data = tiny_digits()
    monkeypatch.setattr(cli, "load_data", lambda *args: data)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(folder: Path) -> list[dict]:
    lines = (folder / METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def test_formats_and_recipes_list_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "formats")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert code == 0 and set(rows) == set(formats.names())
    assert rows["fxp12"][1:5] == ["12", "7.996", "0.003906", "0.003906"]
    assert rows["fp16"][1:5] == ["16", "6.55e+04", "6.104e-05", "5.96e-08"]
    assert "IEEE binary16" in out
    code, out, _ = run(capsys, "recipes")
    lines = out.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == recipes.names()
    assert all(line.split()[1] == "study" for line in lines[:6])


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "lowprec", "recipes"], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.split()[0] == "fp32"


def test_reproduce_resumes_skips_and_reports(
    tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["reproduce", "--dataset", "digits", "--recipes", "fp32,fxp12_sr", "--epochs", "2",
            "--batch-size", "32", "--telemetry-every", "1", "--quiet"]
    assert run(capsys, *args, "--out", tmp_path / "whole")[0] == 0

    code, out, _ = run(capsys, *args, "--out", tmp_path / "cut", "--max-epochs-this-call", "1")
    assert code == 0 and out.count("paused") == 2
    names = ["digits-small_cnn-fp32-s0", "digits-small_cnn-fxp12_sr-s0"]
    for name in names:
        assert len(metrics(tmp_path / "cut" / name)) == 1
        assert not (tmp_path / "cut" / name / STATUS).exists()
    assert "1/1 incomplete" in (tmp_path / "cut" / "report.md").read_text()

    code, out, _ = run(capsys, *args, "--out", tmp_path / "cut")  # resume
    assert code == 0 and out.count(": done, test accuracy") == 2
    for name in names:
        assert metrics(tmp_path / "cut" / name) == metrics(tmp_path / "whole" / name)
    stamps = [(tmp_path / "cut" / n / METRICS).stat().st_mtime_ns for n in names]
    code, out, _ = run(capsys, *args, "--out", tmp_path / "cut")  # nothing left to do
    assert code == 0 and out.count("already finished") == 2
    assert stamps == [(tmp_path / "cut" / n / METRICS).stat().st_mtime_ns for n in names]

    (tmp_path / "cut" / "report.md").unlink()
    code, out, _ = run(capsys, "report", tmp_path / "cut")
    report = (tmp_path / "cut" / "report.md").read_text()
    assert code == 0 and "| fxp12_sr | 0 |" in report and "2/2 done" not in report
    assert report.count("1/1 done") == 2


def test_train_on_real_digits_with_a_recipe_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('weight = "bf16"\n')  # no name: the file's stem names the run
    code, out, _ = run(capsys, "train", "--recipe-file", recipe, "--dataset", "digits",
                       "--epochs", "1", "--batch-size", "256", "--out", tmp_path / "runs")
    folder = tmp_path / "runs" / "digits-small_cnn-mine-s0"
    assert code == 0 and "digits-small_cnn-mine-s0 epoch 1/1: loss " in out
    config = json.loads((folder / CONFIG).read_text())
    assert config["recipe"]["weight"]["format"] == "bf16"
    assert 'format = "bf16"' in config["recipe_toml"]
    assert config["data"]["train_size"] == 1438 and "load_digits" in config["data"]["provenance"]
    assert {"lowprec", "torch", "python", "cpu", "hostname", "device"} <= set(config["environment"])
    [record] = metrics(folder)
    assert {"loss", "train_acc", "test_acc", "lr", "telemetry"} <= set(record)
    assert record["telemetry"]["conv1.weight"]["underflow"] >= 0
    assert json.loads((folder / STATUS).read_text())["status"] == "done"


def test_diverged_train_exits_1(tiny: None, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--recipe", "fp32", "--dataset", "digits", "--lr", "1e8",
                       "--epochs", "2", "--batch-size", "32", "--quiet", "--out", tmp_path)
    assert code == 1 and "diverged: loss became nan" in err


def write_truncated_cifar(folder: Path) -> Path:
    """A ``cifar-10-batches-py`` folder of 10 images per batch, ``data_batch_1`` cut short."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": list(range(10)),
                 b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}))
    first = folder / "data_batch_1"
    first.write_bytes(first.read_bytes()[:1000])
    return folder


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_corrupt_cifar_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    folder = write_truncated_cifar(tmp_path / "cifar-10-batches-py")
    extra = ["--recipe", "fp32"] if command == "train" else []
    code, _, err = run(capsys, command, *extra, "--dataset", "cifar10", "--data-dir", folder,
                       "--out", tmp_path / "runs")
    assert code == 2
    assert err.startswith("lowprec: error: ") and "data_batch_1" in err.splitlines()[0]
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("weight = [\n")
    code, _, err = run(capsys, "train", "--recipe-file", bad, "--dataset", "digits")
    assert code == 2 and "not valid TOML" in err and "Traceback" not in err
    code, _, err = run(capsys, "reproduce", "--quick", "--recipes", "fp32,nope")
    assert code == 2 and "unknown recipe(s) ['nope']" in err
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 2 and "no run folders" in err
    with pytest.raises(SystemExit):  # argparse: usage and exit 2
        cli.main(["train", "--recipe", "fp32", "--epochs", "0"])
    assert "must be at least 1" in capsys.readouterr().err
