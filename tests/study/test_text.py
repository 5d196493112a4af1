"""The text corpus (lowprec.study.text) and language-model runs: vocabulary, split, windows,
finding the corpus, clear errors, and a gpt_tiny run folder that resumes bit for bit."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from test_runs import assert_same_state, comparable, final_state

from lowprec import recipes
from lowprec.study import models
from lowprec.study import runs as experiment
from lowprec.study import text as text_mod
from lowprec.study.data import DataError, Dataset
from lowprec.study.gpt import gpt_tiny
from lowprec.study.runs import CONFIG, RunSpec, load_data, train_run
from lowprec.study.text import FORTUNES_DIR, TEXT_ENV, TextDataset, load_text

CORPUS = "".join(f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs.\n"
                 for i in range(24))


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "my corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_vocabulary_split_and_windows(corpus_file: Path) -> None:
    ds = load_text(corpus_file, context=16)
    assert ds.class_names == tuple(sorted(set(CORPUS))) and ds.num_classes == len(set(CORPUS))
    n_test = round(len(CORPUS) * 0.1)
    train, test = CORPUS[:-n_test], CORPUS[-n_test:]
    assert ds.decode(ds.train_tokens) == train and ds.decode(ds.test_tokens) == test
    assert ds.input_shape == (16,) and len(ds) == (len(train) - 1) // 16
    # the test windows tile the test split: window k is test[16k : 16k+16], shifted by one
    assert ds.test_x.shape == ds.test_y.shape == ((len(test) - 1) // 16, 16)
    for k in range(ds.test_x.shape[0]):
        assert ds.decode(ds.test_x[k]) == test[16 * k : 16 * k + 16]
        assert ds.decode(ds.test_y[k]) == test[16 * k + 1 : 16 * k + 17]
    batches = list(ds.loader("test", 5))
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.test_x)  # keeps the partial batch
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_y)


def test_random_training_windows_are_seeded_substrings(corpus_file: Path) -> None:
    ds = load_text(corpus_file, context=16)
    train = ds.decode(ds.train_tokens)
    loader = ds.loader("train", 8, generator=torch.Generator().manual_seed(3))
    assert len(loader) == len(ds) // 8
    epoch = list(loader)
    again = list(ds.loader("train", 8, generator=torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, again, strict=True))
    starts = set()
    for x, y in epoch:
        assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
        for row_x, row_y in zip(x, y, strict=True):
            s = ds.decode(row_x) + ds.decode(row_y)[-1]
            assert s in train  # a window of the training split, next characters as targets
            starts.add(train.index(s))
    assert len(starts) > len(epoch)  # random offsets, not a fixed tiling
    fixed = list(ds.loader("train", 8, shuffle=False))
    assert ds.decode(fixed[1][0][0]) == train[8 * 16 : 9 * 16]


def test_corpus_found_from_option_then_environment(corpus_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEXT_ENV, str(corpus_file))
    from_env = load_text(context=16)
    assert from_env.provenance.startswith("user's text file 'my corpus.txt' (LOWPREC_TEXT)")
    assert f"{len(CORPUS):,} characters" in from_env.provenance
    assert str(tmp_path) not in from_env.provenance  # never a machine path
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.txt").write_text(CORPUS[100:], encoding="utf-8")
    (folder / "a.txt").write_text(CORPUS[:100], encoding="utf-8")
    (folder / "a.dat").write_bytes(b"\xff\x00 strfile index")
    ds = load_text(folder, context=16)
    assert ds.provenance.startswith("user's 2 text files (--data-dir)")
    assert ds.decode(torch.cat([ds.train_tokens, ds.test_tokens])) == CORPUS
    assert ds.provenance.split("sha256 ")[1] == from_env.provenance.split("sha256 ")[1]


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEXT_ENV, raising=False)
    monkeypatch.setattr(text_mod, "FORTUNES_DIR", tmp_path / "no-fortunes")
    for call in (load_text, functools.partial(load_text, tmp_path / "missing.txt")):
        with pytest.raises(DataError, match=r"apt-get install fortunes.*--data-dir FILE"):
            call()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(DataError, match="as UTF-8"):
        load_text(bad)
    short = tmp_path / "short.txt"
    short.write_text("x" * 200, encoding="utf-8")
    with pytest.raises(DataError, match="too short"):
        load_text(short)
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    digits = Dataset("digits", images, [0, 1], images, [0, 1], num_classes=10,
                     provenance="zeros", normalize="none")
    with pytest.raises(ValueError, match="takes token windows"):
        train_run(RunSpec("digits", "gpt_tiny", recipes.get("fp32")), tmp_path, digits)
    with pytest.raises(ValueError, match="takes images"):
        short.write_text(CORPUS, encoding="utf-8")
        train_run(RunSpec("text", "small_cnn", recipes.get("fp32")), tmp_path,
                  load_data("text", "gpt_tiny", short))


@pytest.mark.skipif(not FORTUNES_DIR.is_dir(),
                    reason=f"Debian's fortunes corpus is absent ({FORTUNES_DIR}): "
                           "apt-get install fortunes")
def test_debian_fortunes() -> None:
    ds = load_text()
    assert ds.provenance.startswith("Debian fortunes (fortunes")
    assert "/" not in ds.provenance.split(":")[0] and str(FORTUNES_DIR) not in ds.provenance
    assert ds.num_classes > 90 and len(ds) * 64 > 100_000
    assert ds.decode(ds.test_tokens[:1]) in ds.class_names


@pytest.fixture
def small_gpt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs build a 32-wide, 1-block gpt_tiny (the run tooling does not care)."""
    tiny = functools.partial(gpt_tiny, d_model=32, n_layers=1, n_heads=4)
    monkeypatch.setitem(models._BUILDERS, "gpt_tiny", tiny)


@pytest.mark.usefixtures("small_gpt")
def test_gpt_run_resumes_bit_for_bit(corpus_file: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_text(corpus_file, context=16)
    s = RunSpec("text", "gpt_tiny", recipes.get("fp8_hybrid"), epochs=2, batch_size=16,
                telemetry_every=2)
    whole = train_run(s, tmp_path / "a", ds, quiet=True)
    assert whole.status == "done"
    config = json.loads((whole.folder / CONFIG).read_text())
    assert config["data"]["provenance"] == ds.provenance
    assert config["data"]["input_shape"] == [16] and config["solver"]["optimizer"] == "adamw"
    last = whole.metrics[-1]
    assert 0 < last["test_acc"] < 1 and math.log(1.5) < last["test_loss"] < math.log(ds.num_classes)
    assert any(k.startswith("blocks.0.attn.qkv.") for k in last["telemetry"])

    train_run(s, tmp_path / "b", ds, quiet=True, max_epochs=1)  # stop after epoch 1, resume
    resumed = train_run(s, tmp_path / "b", ds, quiet=True)
    assert comparable(resumed.metrics) == comparable(whole.metrics)
    assert_same_state(final_state(whole.folder), final_state(resumed.folder))


def test_per_token_loss_is_the_plain_loss_for_classes() -> None:
    out, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    f = torch.nn.functional.cross_entropy
    assert torch.equal(experiment._loss(out, y), f(out, y))
    seq, ys = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(experiment._loss(seq, ys, "sum"),
                               sum(f(seq[i, t], ys[i, t], reduction="sum")
                                   for i in range(2) for t in range(3)))


def test_text_dataset_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="context"):
        TextDataset(CORPUS, "test", context=0)
