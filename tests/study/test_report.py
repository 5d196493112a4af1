"""The report, rebuilt from saved run folders: table, seeds, divergence, claims, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lowprec import recipes
from lowprec.study import report
from lowprec.study.data import Dataset
from lowprec.study.runs import (
    CONFIG,
    METRICS,
    STATUS,
    RunSpec,
    resolve_config,
    write_json,
    write_text,
)

LAYERS = ("conv1", "conv2", "fc")


def fake_dataset() -> Dataset:
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(4) % 2
    return Dataset("digits", images, labels, images, labels, num_classes=10,
                   provenance="fake digits for the report tests")


def save_run(out: Path, recipe: str, seed: int, accs: list[float], status: str | None,
             underflow: float = 0.0) -> None:
    """A run folder as train_run leaves it, with the given test accuracy per epoch."""
    spec = RunSpec("digits", "small_cnn", recipes.get(recipe), seed, epochs=len(accs))
    folder = out / spec.name
    folder.mkdir(parents=True)
    write_json(folder / CONFIG, resolve_config(spec, fake_dataset()))
    tel = {f"{layer}.error": {"underflow": underflow, "overflow": 0.01, "nonfinite": 0.0,
                              "sqnr_db": 20.0, "amax": 1.0} for layer in LAYERS}
    lines = [json.dumps({"epoch": i + 1, "loss": 2.0 / (i + 1), "train_acc": a, "test_acc": a,
                         "lr": 0.05, "seconds": 1.0, "telemetry": tel})
             for i, a in enumerate(accs)]
    write_text(folder / METRICS, "".join(line + "\n" for line in lines))
    if status == "done":
        write_json(folder / STATUS, {"status": "done", "reason": None})
    elif status == "diverged":
        write_json(folder / STATUS, {"status": "diverged",
                                     "reason": "loss became nan at epoch 3, step 1; first bad "
                                               "telemetry: fc.activation"})


def table_rows(text: str) -> dict[str, str]:
    """The accuracy table's rows by recipe (the first rows so named: the cost table that
    follows names recipes too)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    return rows


@pytest.fixture
def study(tmp_path: Path) -> Path:
    for seed, acc in enumerate([0.75, 0.76, 0.77]):
        save_run(tmp_path, "fp32", seed, [0.5, acc], "done")
    save_run(tmp_path, "fxp12_sr", 0, [0.62, 0.60], "done", underflow=0.8)
    save_run(tmp_path, "fxp12_sr", 1, [0.3, 0.2], "diverged", underflow=0.9)
    save_run(tmp_path, "fp12_sr", 0, [0.6, 0.70], "done", underflow=0.05)
    save_run(tmp_path, "fxp12_sr_ls", 0, [0.6, 0.748], "done", underflow=0.01)
    save_run(tmp_path, "fp12_sr_ls", 0, [0.6, 0.755], "done", underflow=0.0)
    save_run(tmp_path, "pot7", 0, [0.6, 0.72], "done", underflow=0.02)
    save_run(tmp_path, "pot7", 1, [0.6], None)  # interrupted, never resumed
    return tmp_path


def test_report_from_saved_runs(study: Path) -> None:
    text = report.write_report(study).read_text()
    for stem in ("accuracy", "loss", "telemetry"):
        for ext in ("png", "svg"):
            assert (study / f"{stem}.{ext}").stat().st_size > 1000
        assert f"]({stem}.png)" in text
    row = table_rows(text)
    assert "| 0,1,2 | 76.00 ± 1.00% | 76.00 ± 1.00% | +0.00 |" in row["fp32"]
    assert "| 60.00% | 62.00% | -16.00 | 1/2 done, 1/2 diverged<br>loss became nan" in row[
        "fxp12_sr"]
    assert "1/2 done, 1/2 incomplete" in row["pot7"]
    assert "**1. 12-bit fixed point with stochastic rounding is not adequate for training**: " \
           "shown — fxp12_sr 60.00% vs fp32 76.00% (gap 16.00 points ≥ 5)" in text
    assert "**2. 12-bit floating point does better under the same conditions**: shown" in text
    assert "**3. Both improve with local scaling and get close to the fp32 baseline**: " \
           "shown — yes: fxp12_sr_ls better" in text
    assert "**4. The power-of-two network (7 bits) loses very little accuracy**: not shown — " \
           "pot7 72.00% vs fp32 76.00%, limit 2 points" in text
    assert "fxp12_sr flushes 85.0% of error values to zero" in text  # mean of 0.8 and 0.9
    assert "fake digits for the report tests" in text and "Machine: " in text
    assert "modelled" in text and "| pot7 |" in text.split("### Modelled memory / energy")[1]
    assert text.index("| conv1 |") < text.index("| conv2 |") < text.index("| fc |")


def test_claims_say_what_is_missing_or_not_shown(tmp_path: Path) -> None:
    save_run(tmp_path, "fp32", 0, [0.70], "done")
    save_run(tmp_path, "fxp12_sr", 0, [0.68], "done")
    save_run(tmp_path, "fp12_sr", 0, [0.66], "done")
    groups = report._group(report.load_runs(tmp_path))
    verdicts = dict(report.claims(groups[("digits", "small_cnn")]))
    assert verdicts[report.claims(groups[("digits", "small_cnn")])[0][0]] == (
        "not shown", "fxp12_sr 68.00% vs fp32 70.00% (gap 2.00 points < 5)")
    texts = list(verdicts)
    assert verdicts[texts[1]] == ("not shown", "fp12_sr 66.00% vs fxp12_sr 68.00%")
    assert verdicts[texts[2]] == ("not tested", "missing runs: fxp12_sr_ls, fp12_sr_ls")
    assert verdicts[texts[3]] == ("not tested", "missing runs: pot7")


def test_cost_section_models_the_trained_network(study: Path) -> None:
    text = report.write_report(study).read_text()
    section = text.split("### Modelled memory / energy")[1]
    assert "one training step of batch 64" in section
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["fp32", "fxp12_sr", "fp12_sr", "fxp12_sr_ls", "fp12_sr_ls", "pot7"]


def test_no_runs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run folders"):
        report.write_report(tmp_path)


def test_runs_of_different_lengths_are_not_pooled(tmp_path: Path) -> None:
    """A sweep over ``epochs`` (run folders ``epochs<N>/...``): one section per length."""
    for seed, (short, long) in enumerate([(0.70, 0.80), (0.72, 0.82)]):
        save_run(tmp_path / "epochs2", "fp32", seed, [0.5, short], "done")
        save_run(tmp_path / "epochs3", "fp32", seed, [0.5, 0.6, long], "done")
    save_run(tmp_path / "epochs2", "fxp12_sr", 0, [0.5, 0.40], "done")
    save_run(tmp_path / "epochs3", "fxp12_sr", 0, [0.5, 0.5, 0.60], "done")
    groups = report._group(report.load_runs(tmp_path))
    assert list(groups) == [("digits", "small_cnn", 2), ("digits", "small_cnn", 3)]
    for (_, _, epochs), s in groups.items():
        assert [len(r.metrics) for sm in s.values() for r in sm.runs] == [epochs] * 3
    text = report.write_report(tmp_path).read_text()
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["digits / small_cnn / 2 epochs",
                                                     "digits / small_cnn / 3 epochs"]
    rows = [table_rows(s) for s in sections]
    assert "| 0,1 | 71.00 ± 1.41% |" in rows[0]["fp32"] and "-31.00" in rows[0]["fxp12_sr"]
    assert "| 0,1 | 81.00 ± 1.41% |" in rows[1]["fp32"] and "-21.00" in rows[1]["fxp12_sr"]
    assert sections[0].startswith("digits / small_cnn / 2 epochs\n\n3 runs of 2 epochs")
    for epochs in (2, 3):
        assert f"](accuracy-digits-small_cnn-epochs{epochs}.png)" in text
        assert (tmp_path / f"accuracy-digits-small_cnn-epochs{epochs}.png").exists()
    # still split while the longer runs are unfinished (a sweep in progress)
    for status in (tmp_path / "epochs3").glob(f"*/{STATUS}"):
        status.unlink()
    assert list(report._group(report.load_runs(tmp_path))) == [("digits", "small_cnn", 2),
                                                               ("digits", "small_cnn", 3)]


def test_report_names_data_by_provenance_not_path(tmp_path: Path) -> None:
    """Runs saved by older versions recorded the folder they read; the report drops it."""
    save_run(tmp_path, "fp32", 0, [0.7], "done")
    cfg_path = next(tmp_path.rglob(CONFIG))
    cfg = json.loads(cfg_path.read_text())
    cfg["data"]["provenance"] = ("CIFAR-10 python version read from /home/someone/data/"
                                 "cifar-10-batches-py (dev copy); a note")
    write_json(cfg_path, cfg)
    text = report.write_report(tmp_path).read_text()
    assert "CIFAR-10 python version (dev copy); a note" in text
    assert "/home/someone" not in text


def test_cifar10_provenance_names_content_not_folder(tmp_path: Path) -> None:
    from lowprec.study.data import load_dataset

    data_dir = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    if not (data_dir / "cifar-10-batches-py").is_dir():
        pytest.skip("the development copy of CIFAR-10 is not beside the project")
    ds = load_dataset("cifar10", data_dir, download=False, normalize="none")
    assert str(data_dir) not in ds.provenance and "content sha256" in ds.provenance


def test_a_solver_field_added_later_takes_its_default(tmp_path: Path) -> None:
    """A run saved before a solver field existed (its config lacks ``optimizer``) pools
    with runs that state the default; a run with another value, or another lr, does not."""
    for seed in (0, 1):
        save_run(tmp_path, "fp32", seed, [0.5, 0.7 + seed / 100], "done")
    old = tmp_path / "digits-small_cnn-fp32-s0" / CONFIG
    config = json.loads(old.read_text())
    assert config["solver"].pop("optimizer") == "sgd"
    config["solver"]["note"] = "reworded prose"
    write_json(old, config)
    runs = report.load_runs(tmp_path)
    assert len({report._solver_label(r) for r in runs}) == 1
    assert list(report._group(runs)) == [("digits", "small_cnn")]
    config["solver"]["optimizer"] = "adamw"
    write_json(old, config)
    assert len({report._solver_label(r) for r in report.load_runs(tmp_path)}) == 2
