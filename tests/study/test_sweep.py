"""Sweeps: sweep files expand to runs; the local and Ray backends train exactly what
sequential runs train; interrupted sweeps resume; a crash stops nothing; the report."""

from __future__ import annotations

import functools
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runs import comparable

from lowprec import cli
from lowprec.numerics.formats import FixedPoint, FloatingPoint
from lowprec.study import sweep_runner
from lowprec.study.data import Dataset
from lowprec.study.report import write_report
from lowprec.study.rundir import LOCK, read_checkpoint
from lowprec.study.runs import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    STATUS,
    load_data,
    read_json,
    read_metrics,
    resolve_config,
    train_run,
    write_json,
    write_text,
)
from lowprec.study.steplog import STEPS, read_steps
from lowprec.study.sweep import Sweep, SweepError
from lowprec.study.sweep_runner import SUMMARY, RayOptions

#: three runs of two short epochs: fp32 and fp12_sr with 4 or 6 exponent bits
TINY = """
name = "tiny"
datasets = "digits"
models = "small_cnn"
epochs = 2
batch_size = 256
telemetry_every = 2
recipes = ["fp32"]

[[float_split]]
template = "fp12_sr"
exp = [4, 6]
man = 3
"""
FOLDERS = ["digits-small_cnn-fp32-s0", "digits-small_cnn-fp12_sr-e4m3-s0",
           "digits-small_cnn-fp12_sr-e6m3-s0"]
FILES = {CONFIG, METRICS, STEPS, CHECKPOINT, STATUS}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def parse(text: str) -> Sweep:
    return Sweep.from_toml(text, "test.toml")


# -- expansion ------------------------------------------------------------------------------


def test_expansion_is_the_cartesian_product_of_the_axes() -> None:
    s = parse("""
        datasets = "digits"
        models = ["small_cnn"]
        seeds = [0, 1]
        epochs = [1, 2]
        lr = 0.01
        device = "cpu"
        recipes = ["fp32", {name = "w16", weight = "fp16"}]
        [[recipe]]
        name = "a16"
        activation = "fp16"
        [[float_split]]
        template = "fp12_sr"
        exp = [3, 4, 5]
        man = [2, 3, 4]
        bits = 8
        [[fixed_split]]
        template = "fxp12_sr_ls"
        name = "fx"
        wl = 8
        fl = [4, 6]
    """)
    assert s.name == "sweep" and len(s.runs) == 2 * 2 * (3 + 3 + 2)
    names = list(dict.fromkeys(r.spec.recipe.name for r in s.runs))
    assert names == ["fp32", "w16", "a16", "fp12_sr-e3m4", "fp12_sr-e4m3", "fp12_sr-e5m2",
                     "fx-w8f4", "fx-w8f6"]
    first = s.runs[0]
    assert first.folder == "epochs1/digits-small_cnn-fp32-s0" and first.spec.lr == 0.01
    assert [r.folder for r in s.runs[:2]] == ["epochs1/digits-small_cnn-fp32-s0",
                                              "epochs1/digits-small_cnn-fp32-s1"]
    assert s.runs[-1].folder == "epochs2/digits-small_cnn-fx-w8f6-s1"
    assert len({r.folder for r in s.runs}) == len(s.runs)

    e4m3 = next(r for r in s.runs if r.spec.recipe.name == "fp12_sr-e4m3")
    recipe = e4m3.spec.recipe
    for cls in ("weight", "activation", "error", "update"):  # fp12_sr's classes
        spec = getattr(recipe, cls)
        assert spec.format == FloatingPoint(4, 3, specials="none")  # specials kept
        assert spec.rounding == "stochastic"
    assert recipe.weight_grad is None
    assert e4m3.record()["params"] == {"exp": 4, "man": 3} and e4m3.variant.bits == 8
    fx = next(r for r in s.runs if r.spec.recipe.name == "fx-w8f4").spec.recipe
    assert fx.error.format == FixedPoint(8, 4) and fx.error.scaling.granularity == "tensor"
    w16 = next(r for r in s.runs if r.spec.recipe.name == "w16").variant
    assert (w16.bits, w16.formats, w16.source) == (16, "fp16", "recipes[1]")


def test_split_classes_and_options() -> None:
    s = parse("""
        datasets = "digits"
        models = "small_cnn"
        [[float_split]]
        template = "fp8_hybrid"
        exp = 3
        man = 4
        classes = ["weight", "error"]
        [[float_split]]
        name = "plain"
        template = {weight = "fp16"}
        exp = 5
        man = 2
        subnormals = false
    """)
    hybrid, plain = (r.spec.recipe for r in s.runs)
    assert hybrid.name == "fp8_hybrid-e3m4"
    assert hybrid.weight.format == FloatingPoint(3, 4, specials="fn")  # from fp8_e4m3
    assert hybrid.error.format == FloatingPoint(3, 4)  # from fp8_e5m2: IEEE specials
    assert hybrid.input.format.name == "FloatingPoint(exp=4, man=3, specials='fn')"
    assert hybrid.weight.scaling is not None and hybrid.master_weights
    assert plain.name == "plain-e5m2"
    assert plain.weight.format == FloatingPoint(5, 2, subnormals=False)


BASE = 'datasets = "digits"\nmodels = "small_cnn"\n'


@pytest.mark.parametrize(("text", "message"), [
    (BASE + 'recipes = ["fp32"]\nseed = 0', "unknown key 'seed' (did you mean 'seeds'?)"),
    ('models = "small_cnn"\nrecipes = ["fp32"]', "datasets: missing"),
    (BASE.replace('"small_cnn"', '"resnet99"') + 'recipes = ["fp32"]',
     "models[0]: unknown 'resnet99'; known: cifar10_quick"),
    (BASE + 'recipes = ["fp32"]\nseeds = [0, 0]', "seeds: 0 is listed twice"),
    (BASE + 'recipes = ["fp32"]\nepochs = 0', "epochs[0]: must be at least 1"),
    (BASE + 'recipes = ["fp32"]\nbatch_size = "64"', "batch_size: expected int, got '64'"),
    (BASE + 'recipes = ["fp32"]\nlr = -1', "lr: must be a finite number > 0"),
    (BASE + 'recipes = ["fp32"]\nlr = nan', "lr: must be a finite number > 0, got nan"),
    (BASE + 'recipes = ["fp32"]\nlr = inf', "lr: must be a finite number > 0, got inf"),
    (BASE + 'recipes = ["fp32"]\nseeds = [0, 4294967296]', r"seeds[1]: 4294967296 is too large"),
    (BASE + 'recipes = ["fp32"]\nseeds = -1', "seeds[0]: must be at least 0"),
    (BASE + 'recipes = ["fp32"]\nname = ".."', "name: '..' cannot name a folder"),
    (BASE + 'recipes = ["fp32"]\nname = "../x"', "name: '../x' cannot name a folder"),
    (BASE + '[[recipe]]\nname = "../../escape"\nweight = "fp16"',
     "recipe name '../../escape' cannot name a folder"),
    (BASE + 'recipes = ["fp32"]\ndevice = "meta"', "runs train on 'cpu' or 'cuda' devices"),
    (BASE + 'recipes = ["fp32"]\nx = ' + "[" * 2000 + "]" * 2000, "nested too deeply"),
    (BASE, "no recipes: give recipes = [...]"),
    (BASE + 'recipes = ["nope"]', "recipes[0]: unknown recipe 'nope'"),
    (BASE + 'recipes = ["fp32"]\n[[recipe]]\nname = "fp32"\nweight = "fp16"',
     "recipe name 'fp32' comes from both recipes[0] and recipe[0]"),
    (BASE + '[[recipe]]\nweight = "fp16"', "recipe[0]: an inline recipe needs a name"),
    (BASE + '[[recipe]]\nname = "a b"\nweight = "fp16"', "recipe name 'a b' cannot name a folder"),
    (BASE + '[[recipe]]\nname = "x"\nwieght = "fp16"', "recipe[0]: unknown key(s) ['wieght']"),
    (BASE + '[[float_split]]\ntemplate = "fp12_sr"\nexp = 5',
     "float_split[0]: missing key(s) ['man']"),
    (BASE + '[[float_split]]\ntemplate = "fp12_sr"\nexp = 0\nman = 2',
     "float_split[0]: exp=0, man=2: exp=0 is out of range"),
    (BASE + '[[float_split]]\ntemplate = "fp12_sr"\nexp = 5\nman = 2\nbits = 12',
     "float_split[0]: no (exp, man) pair has 1 + exp + man in bits = [12]"),
    (BASE + '[[float_split]]\ntemplate = "fp32"\nexp = 5\nman = 2',
     "float_split[0].template: rounds no tensor class"),
    (BASE + '[[float_split]]\ntemplate = "fp12_sr"\nexp = 5\nman = 2\nclasses = ["weight_grad"]',
     "float_split[0].classes: 'weight_grad' is not a class the template rounds"),
    (BASE + '[[fixed_split]]\ntemplate = "fxp12_sr"\nwl = 8\nfl = 4\nexp = 3',
     "fixed_split[0]: unknown key 'exp'"),
    ("datasets = [", "not valid TOML"),
])
def test_bad_sweep_files_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(SweepError) as info:
        parse(text)
    assert str(info.value).startswith("test.toml: ") and message in str(info.value)


def test_cli_errors_exit_2_and_dry_run_lists(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + "seeds = [1, 1]\n")
    code, _, err = run(capsys, "sweep", bad)
    assert code == 2 and err.startswith("lowprec: error: sweep file ") and "listed twice" in err
    good = tmp_path / "good.toml"
    good.write_text(TINY)
    code, _, err = run(capsys, "sweep", good, "--address", "auto")
    assert code == 2 and "--address: only with --backend ray" in err
    code, out, _ = run(capsys, "sweep", good, "--dry-run", "--out", tmp_path / "o")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[:-1]] == FOLDERS
    assert "fp12_sr-e6m3-s0  FloatingPoint(exp=6, man=3, specials='none') (10 bits)" in out
    assert not (tmp_path / "o").exists()


def test_example_sweep_file_expands() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "sweep_fp_split.toml"
    s = Sweep.from_file(example)
    assert s.name == "fp_split" and s.file == str(example) and len(s.runs) > 10


# -- backends -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def reference(sweep_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep's runs, one after the other in this process, one torch thread each (as
    the backends give them here: a torch thread count changes fp32's last bits)."""
    out = tmp_path_factory.mktemp("sequential")
    data: Dataset = load_data("digits", "small_cnn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in Sweep.from_file(sweep_file).runs:
            assert train_run(r.spec, out, data, quiet=True).status == "done"
    finally:
        torch.set_num_threads(threads)
    return out


def one_thread_each() -> str:
    """``--workers`` = cores: every worker gets one torch thread."""
    return str(sweep_runner._cores())


def snapshot(folder: Path) -> tuple[dict, list[dict], dict, dict]:
    """What a run decided: config (less the machine), metrics (less timing), status, and
    the final parameters and optimizer state."""
    config = read_json(folder / CONFIG)
    config.pop("environment")
    state = read_checkpoint(folder)
    steps = comparable(read_steps(folder))
    return config, comparable(read_metrics(folder)), read_json(folder / STATUS), steps, state


def assert_same_runs(out: Path, reference: Path, folders: list[str] = FOLDERS) -> None:
    for name in folders:
        assert {p.name for p in (out / name).iterdir() if p.name != LOCK} == FILES, name
        got, want = snapshot(out / name), snapshot(reference / name)
        assert got[:4] == want[:4], name
        for part in ("params", "model"):
            for key, value in want[4][part].items():
                assert torch.equal(got[4][part][key], value), (name, part, key)


def statuses(out: Path) -> dict[str, str]:
    return {r["folder"]: r["status"] for r in read_json(out / SUMMARY)["runs"]}


def test_local_sweep_equals_sequential_runs_and_a_crash_stops_nothing(
    sweep_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid"
    clash = out / FOLDERS[1]  # a folder holding another run: train_run raises RunError
    clash.mkdir(parents=True)
    config = read_json(reference / FOLDERS[1] / CONFIG)
    write_json(clash / CONFIG, {**config, "epochs": 5})
    first = read_metrics(reference / FOLDERS[1])[0]
    (clash / METRICS).write_text(json.dumps(first) + "\n")  # that run has started
    args = ["sweep", sweep_file, "--out", out, "--workers", one_thread_each(), "--quiet"]

    code, text, _ = run(capsys, *args)
    assert code == 1
    assert f"{FOLDERS[1]}: failed: RunError: " in text and "differs in: epochs" in text
    assert text.count("done in") == 2
    assert "sweep tiny: 2 done, 1 failed" in text
    summary = read_json(out / SUMMARY)
    assert summary["name"] == "tiny" and summary["sweep_toml"] == TINY
    assert summary["counts"] == {"done": 2, "failed": 1}
    failed = next(r for r in summary["runs"] if r["status"] == "failed")
    assert "RunError" in failed["traceback"] and failed["bits"] == 8
    assert_same_runs(out, reference, [f for f in FOLDERS if f != FOLDERS[1]])

    for p in clash.iterdir():
        p.unlink()
    stamps = {f: (out / f / METRICS).stat().st_mtime_ns for f in FOLDERS if f != FOLDERS[1]}
    code, text, _ = run(capsys, *args)
    assert code == 0 and text.count("already finished") == 2 and text.count("done in") == 1
    assert stamps == {f: (out / f / METRICS).stat().st_mtime_ns for f in stamps}
    assert set(statuses(out).values()) == {"done"}
    assert_same_runs(out, reference)

    code, text, _ = run(capsys, "report", out)
    report = (out / "report.md").read_text()
    assert code == 0 and "## Sweep `tiny`" in report and "![fp12_sr accuracy" in report
    assert (out / "sweep-fp12_sr.png").stat().st_size > 1000 and (out / "sweep-bits.svg").exists()
    assert "| exp \\ man | 3 |" in report and "| 10 | fp12_sr-e6m3 | FloatingPoint" in report


def test_interrupted_sweep_resumes_where_it_stopped(
    sweep_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []

    def interrupt_after_one(line: str) -> None:  # Ctrl-C once a run has finished
        said.append(line)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_sweep",
                        functools.partial(sweep_runner.run_sweep, say=interrupt_after_one))
    out = tmp_path / "grid"
    args = ["sweep", sweep_file, "--out", out, "--workers", one_thread_each(), "--quiet"]
    code, _, err = run(capsys, *args)
    assert code == 130 and "rerun the same command to resume" in err
    deadline = time.monotonic() + 30  # the workers were stopped
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
    assert not list(out.rglob("*.tmp"))  # stopped workers removed their temporary files
    assert list(statuses(out).values()).count("done") == 1
    monkeypatch.undo()

    code, text, _ = run(capsys, *args)
    finished = text.count("already finished")  # one, or more if others ended meanwhile
    assert code == 0 and finished >= 1 and finished + text.count("done in") == 3
    assert_same_runs(out, reference)


# -- Ray ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance() -> object:
    """One local Ray instance for the Ray tests (its start-up takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_equals_sequential_runs(ray_instance: object, sweep_file: Path,
                                          reference: Path, tmp_path: Path) -> None:
    s = Sweep.from_file(sweep_file)
    outcomes = sweep_runner.run_sweep(s, tmp_path, backend="ray", quiet=True,
                               ray_options=RayOptions(cpus_per_run=1), say=lambda line: None)
    assert [(o.folder, o.status) for o in outcomes] == [(f, "done") for f in FOLDERS]
    assert read_json(tmp_path / SUMMARY)["backend"] == "ray"
    assert_same_runs(tmp_path, reference)


def test_ray_without_a_shared_disk_sends_files_both_ways(
    ray_instance: object, sweep_file: Path, reference: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", sweep_file, "--out", tmp_path, "--backend", "ray", "--no-shared-disk",
            "--quiet"]
    code, text, _ = run(capsys, *args, "--max-epochs-this-call", "1")
    assert code == 0 and text.count("paused after epoch 1") == 3
    for name in FOLDERS:  # the driver wrote what the workers trained
        assert {p.name for p in (tmp_path / name).iterdir()} == FILES - {STATUS}
        assert len(read_metrics(tmp_path / name)) == 1
    code, text, _ = run(capsys, *args)  # the workers resume from the files sent to them
    assert code == 0 and text.count("done in") == 3
    assert_same_runs(tmp_path, reference)
    code, text, _ = run(capsys, *args)
    assert code == 0 and text.count("already finished") == 3


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    path = tmp_path / "s.toml"
    path.write_text(TINY)
    code, _, err = run(capsys, "sweep", path, "--out", tmp_path, "--backend", "ray")
    assert code == 2 and "pip install 'lowprec[ray]'" in err


# -- the report -----------------------------------------------------------------------------


def fake_sweep(out: Path, accs: dict[str, list[float | None]]) -> Sweep:
    """Run folders as the sweep leaves them, with the given final accuracy per recipe and
    seed (``None``: diverged), and ``sweep.json``; one run failed before it started."""
    s = parse("""
        name = "fake"
        datasets = "digits"
        models = "small_cnn"
        seeds = [0, 1]
        epochs = 1
        recipes = ["fp32"]
        [[float_split]]
        template = "fp12_sr"
        exp = [4, 5]
        man = [2, 3]
        [[fixed_split]]
        template = "fxp12_sr"
        wl = 8
        fl = [2, 4, 6]
    """)
    images, labels = np.zeros((4, 1, 8, 8), dtype=np.uint8), np.arange(4) % 2
    data = Dataset("digits", images, labels, images, labels, num_classes=10, provenance="fake")
    records = []
    for r in s.runs:
        record = r.record()
        acc = accs.get(r.spec.recipe.name, [0.5, 0.5])[r.spec.seed]
        if r.spec.recipe.name == "fxp12_sr-w8f2" and r.spec.seed == 1:
            record.update(status="failed", reason="RuntimeError: out of memory")
        else:
            folder = out / r.folder
            folder.mkdir(parents=True)
            write_json(folder / CONFIG, resolve_config(r.spec, data))
            line = {"epoch": 1, "loss": 1.0, "train_acc": acc, "test_acc": acc or 0.0, "lr": 0.1,
                    "seconds": 1.0, "telemetry": {}}
            write_text(folder / METRICS, json.dumps(line) + "\n")
            status = {"status": "done", "reason": None} if acc is not None else {
                "status": "diverged", "reason": "loss became nan at epoch 1, step 3"}
            write_json(folder / STATUS, status)
            record.update(status)
        records.append(record)
    write_json(out / SUMMARY, {"name": "fake", "file": "", "runs": records})
    return s


def test_sweep_report_heat_map_lines_budget_and_failures(tmp_path: Path) -> None:
    fake_sweep(tmp_path, {"fp32": [0.9, 0.92], "fp12_sr-e4m2": [0.6, 0.7],
                          "fp12_sr-e5m3": [0.95, 0.93], "fp12_sr-e4m3": [None, None],
                          "fxp12_sr-w8f6": [0.8, None]})
    text = write_report(tmp_path).read_text()
    for stem in ("sweep-fp12_sr", "sweep-fxp12_sr", "sweep-bits"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"{stem}.{ext}").stat().st_size > 1000
    assert "16 runs: 12 done, 3 diverged, 1 failed" in text
    assert "#### fp12_sr: float split" in text and "![fp12_sr accuracy" in text
    assert "| exp \\ man | 2 | 3 |" in text
    assert "| 4 | 65.00 ± 7.07% | diverged |" in text
    assert "| 5 | 50.00 ± 0.00% | 94.00 ± 1.41% |" in text
    assert "| wl \\ fl | 2 | 4 | 6 |" in text and "| 8 | 50.00% | 50.00 ± 0.00% | 80.00% |" in text
    best = text[text.index("#### Best per budget"):]
    assert "| 7 | fp12_sr-e4m2 | FloatingPoint(exp=4, man=2, specials='none') | 65.00 ± 7.07% | " \
           "2/2 |" in best
    assert "| 8 | fxp12_sr-w8f6 | FixedPoint(wl=8, fl=6) | 80.00% | 1/2 |" in best
    assert "| 9 | fp12_sr-e5m3 | " in best and "| 32 | fp32 | fp32 | 91.00 ± 1.41% | 2/2 |" in best
    assert "- `digits-small_cnn-fxp12_sr-w8f2-s1`: failed — RuntimeError: out of memory" in text
    assert "- `digits-small_cnn-fp12_sr-e4m3-s0`: diverged — loss became nan" in text
    # the study report is still there, after the sweep
    assert text.index("## Sweep `fake`") < text.index("## digits / small_cnn")


def test_report_without_a_sweep_has_no_sweep_section(tmp_path: Path) -> None:
    fake_sweep(tmp_path, {})
    (tmp_path / SUMMARY).unlink()
    assert "## Sweep" not in write_report(tmp_path).read_text()


def test_sweep_report_names_the_sweep_file_not_its_path(tmp_path: Path) -> None:
    """sweep.json records where the sweep file was read; the report names only the file."""
    fake_sweep(tmp_path, {})
    summary = json.loads((tmp_path / SUMMARY).read_text())
    write_json(tmp_path / SUMMARY, {**summary, "file": "/home/someone/work/splits.toml"})
    text = write_report(tmp_path).read_text()
    assert "sweep file `splits.toml`" in text and "/home/someone" not in text
