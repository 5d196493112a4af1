"""Tests for lowprec.data: loaders, file validation, safe unpickling, downloads, augmentation.

Everything runs on small fake files written into ``tmp_path``; tests that need the real
CIFAR-10 dev copy or Debian's Fashion-MNIST package are skipped (with the reason) when absent.
No test touches the network: ``urllib.request.urlopen`` is monkeypatched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lowprec.study.data as data_mod
from lowprec.study.data import (
    CIFAR10_URL,
    DATASETS,
    DataError,
    Dataset,
    cifar10,
    fashion_mnist,
    load_dataset,
    locate,
    pad_crop,
    random_crop_flip,
    read_cifar10_batch,
    read_cifar10_folder,
    read_idx,
    restricted_pickle_load,
)
from lowprec.study.data.dataset import content_digest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_CIFAR = (REPO_ROOT / ".." / "shared" / "datasets" / "cifar-10-batches-py").resolve()
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
N_PER_BATCH = 20


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env overrides, a private cache dir, no dev copy, no Debian dir, no network."""
    for var in ("LOWPREC_DATA_DIR", "CIFAR10_DIR", "FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(cache))
    monkeypatch.setattr(locate, "dev_copy_dirs", lambda: [])
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", ())

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return cache


def _cifar_batch(rng: np.random.Generator, n: int, key: type = bytes) -> dict[Any, Any]:
    k = (lambda s: s.encode()) if key is bytes else (lambda s: s)
    return {
        k("batch_label"): k("fake batch"),
        k("labels"): [int(i % 10) for i in range(n)],
        k("data"): rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
    }


def write_fake_cifar(
    folder: Path, n: int = N_PER_BATCH, seed: int = 0, key: type = bytes, protocol: int = 2
) -> Path:
    """Write a fake ``cifar-10-batches-py`` folder with ``n`` images per batch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump(_cifar_batch(rng, n, key), fh, protocol=protocol)
    names = [s.encode() for s in data_mod.CIFAR10_CLASSES]
    meta = {b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=protocol)
    return folder


def make_tarball(folder: Path, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz holding ``folder`` as ``cifar-10-batches-py/`` plus optional extra members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
        for info in extra or []:
            payload = b"x" * info.size if info.isfile() else None
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def serve(monkeypatch: pytest.MonkeyPatch, content: dict[str, bytes]) -> list[str]:
    """Monkeypatch urlopen to serve ``content[url]`` (URLError for other URLs)."""
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float | None = None) -> io.BytesIO:
        calls.append(url)
        if url not in content:
            raise urllib.error.URLError(f"unreachable: {url}")
        return io.BytesIO(content[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write ``arr`` (uint8) as an IDX file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_fake_fmnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> Path:
    """Write the four Fashion-MNIST IDX files with a few random 28x28 images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", imgs, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labs, gz)
    return folder


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_datasets_registry_and_unknown_name() -> None:
    assert set(DATASETS) == {"cifar10", "fashion-mnist", "digits", "text"}
    assert all(isinstance(v, str) and v for v in DATASETS.values())
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="normalize"):
        load_dataset("digits", normalize="zca")


# ---------------------------------------------------------------------------------------------
# CIFAR-10: fake folders through the real loader
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_fake_cifar_loads_through_real_code_path(
    isolated: Path, tmp_path: Path, protocol: int
) -> None:
    folder = write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path / "data", download=False)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.train_x.shape == (5 * N_PER_BATCH, 3, 32, 32) and ds.train_x.dtype == torch.float32
    assert ds.test_x.shape == (N_PER_BATCH, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64 and ds.train_y.shape == (5 * N_PER_BATCH,)
    assert "data_dir argument" in ds.provenance and "JPEG" not in ds.provenance
    assert str(tmp_path) not in ds.provenance  # data named by content, not by folder
    assert ds.class_names[0] == "airplane"
    # Pixels survive exactly: channel-major rows -> NCHW.
    with open(folder / "data_batch_2", "rb") as fh:
        batch2 = pickle.load(fh, encoding="bytes")
    expect = torch.from_numpy(batch2[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(ds.train_images[N_PER_BATCH : 2 * N_PER_BATCH], expect)
    # Standard normalisation: per-channel mean 0 / std 1 over the training set.
    per_channel = ds.train_x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4)


def test_cifar_data_dir_can_be_the_folder_itself_and_str_keys(
    isolated: Path, tmp_path: Path
) -> None:
    folder = write_fake_cifar(tmp_path / "somewhere", key=str, protocol=4)
    ds = load_dataset("cifar10", data_dir=str(folder), download=False)
    assert ds.train_x.shape[0] == 5 * N_PER_BATCH


def test_cifar_official_python2_pickle_layout(tmp_path: Path) -> None:
    """A hand-assembled protocol-2 pickle as Python 2's cPickle wrote the official files."""

    def s(b: bytes) -> bytes:  # Python 2 str opcodes (bytes under encoding="bytes")
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    pixels = (np.arange(2 * 3072) % 251).astype(np.uint8)
    raw = (
        b"\x80\x02}(" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\n"
        b"cnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R(K\x01K\x02M\x00\x0c\x86"
        b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNN"
        b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + s(pixels.tobytes())
        + b"tb"
        + s(b"labels")
        + b"](K\x07K\x03eu."
    )
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    images, labels = read_cifar10_batch(path)
    assert images.shape == (2, 3, 32, 32)
    assert np.array_equal(images.reshape(-1), pixels)
    assert labels.tolist() == [7, 3]


def test_cifar_search_order_env_vars(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_fake_cifar(tmp_path / "a" / "cifar-10-batches-py", seed=1)
    b = write_fake_cifar(tmp_path / "b" / "cifar-10-batches-py", seed=2)
    c = write_fake_cifar(isolated / "cifar-10-batches-py", seed=3)
    monkeypatch.setenv("CIFAR10_DIR", str(b))
    digest = {k: content_digest(*read_cifar10_folder(f)[:4])
              for k, f in {"a": a, "b": b, "c": c}.items()}
    found = load_dataset("cifar10", download=False).provenance
    assert "$CIFAR10_DIR" in found and digest["b"] in found
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(tmp_path / "a"))
    found = load_dataset("cifar10", download=False).provenance
    assert "$LOWPREC_DATA_DIR" in found and digest["a"] in found
    # data_dir beats both env vars
    found = load_dataset("cifar10", data_dir=c, download=False).provenance
    assert "data_dir argument" in found and digest["c"] in found
    monkeypatch.delenv("LOWPREC_DATA_DIR")
    monkeypatch.delenv("CIFAR10_DIR")
    found = load_dataset("cifar10", download=False).provenance
    assert "(cache;" in found and digest["c"] in found


def test_cifar_truncated_file_names_the_file(isolated: Path, tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"data_batch_3.*truncated"):
        load_dataset("cifar10", data_dir=folder, download=False)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop(b"data"), "missing key 'data'"),
        (lambda d: d.pop(b"labels"), "missing key 'labels'"),
        (lambda d: d.__setitem__(b"data", d[b"data"][:, :3000]), r"shape \(20, 3000\)"),
        (lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]), "19 labels for 20 images"),
        (lambda d: d.__setitem__(b"labels", [11] * 20), "outside 0..9"),
        (lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32)), "uint8"),
    ],
)
def test_cifar_malformed_batch_raises_data_error(tmp_path: Path, mutate: Any, message: str) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    path = folder / "test_batch"
    with open(path, "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    mutate(d)
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar10", data_dir=folder, download=False)
    assert "test_batch" in str(info.value)


def test_cifar_missing_batch_and_non_dict(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    with open(folder / "data_batch_5", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(DataError, match="data_batch_5.*expected a pickled dict"):
        load_dataset("cifar10", data_dir=folder, download=False)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        load_dataset("cifar10", data_dir=folder, download=False)


class _Evil:
    """Pickles to a call of ``os.system`` that would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_class_is_refused_without_executing(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle \w+\.system"):
        load_dataset("cifar10", data_dir=folder, download=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"\x80\x02c__builtin__\nopen\nq\x00.",
        b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.",
        b"\x80\x04\x8c\x05numpy\x8c\x04load\x93.",
        b"\x80\x02cnumpy\nndarray\nJ\x00\xe1\xf5\x05\x85R.",  # ndarray(100000000): refused
    ],
)
def test_restricted_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(DataError, match="somefile"):
        restricted_pickle_load(io.BytesIO(payload), "somefile")


def test_caffe_and_none_normalisation(isolated: Path, tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    caffe = load_dataset("cifar10", data_dir=folder, download=False, normalize="caffe")
    raw = caffe.train_images.double()
    mean_image = raw.mean(0)
    assert caffe.mean.shape == (3, 32, 32)
    assert torch.allclose(caffe.mean.double(), mean_image, atol=1e-4)
    # 0-255 scale kept: x = pixel - mean_image(pixel position)
    assert torch.allclose(caffe.train_x.double(), raw - mean_image, atol=1e-4)
    assert torch.allclose(caffe.train_x.mean(0), torch.zeros(3, 32, 32), atol=1e-3)
    none = load_dataset("cifar10", data_dir=folder, download=False, normalize="none")
    assert torch.equal(none.test_x, none.test_images.float())


# ---------------------------------------------------------------------------------------------
# CIFAR-10: not found, downloads, checksums, archive safety
# ---------------------------------------------------------------------------------------------


def test_cifar_download_failure_says_where_to_put_files(isolated: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", download=True)
    msg = str(info.value)
    for needle in (
        "CIFAR-10 not found",
        "network disabled in tests",
        CIFAR10_URL,
        str(isolated / "cifar-10-batches-py" / "data_batch_1"),
        "LOWPREC_DATA_DIR",
        "CIFAR10_DIR",
        "data_dir=",
    ):
        assert needle in msg, needle
    # nothing half-written left in the cache
    assert not isolated.exists() or not any(isolated.iterdir())


def test_cifar_download_false_does_not_touch_network(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = serve(monkeypatch, {})
    with pytest.raises(DataError, match="download=False"):
        load_dataset("cifar10", download=False)
    assert calls == []


def test_cifar_download_checksum_mismatch_is_rejected(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tarball(write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py"))
    calls = serve(monkeypatch, {CIFAR10_URL: tarball})
    with pytest.raises(DataError, match="checksum"):
        load_dataset("cifar10", download=True)
    assert calls == [CIFAR10_URL]
    assert not any(isolated.iterdir())  # temp file removed, nothing extracted


def test_cifar_download_and_extract_with_matching_checksum(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tarball(write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py"))
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(tarball).hexdigest())
    serve(monkeypatch, {CIFAR10_URL: tarball})
    ds = load_dataset("cifar10", download=True)
    assert ds.train_x.shape[0] == 5 * N_PER_BATCH
    assert "downloaded" in ds.provenance
    assert sorted(p.name for p in isolated.iterdir()) == ["cifar-10-batches-py"]
    # second load finds the cache, no network
    calls = serve(monkeypatch, {})
    assert "(cache;" in load_dataset("cifar10").provenance and calls == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 3) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("cifar-10-batches-py/../../evil"), "unsafe member"),
        (_member("/tmp/evil_abs"), "unsafe member"),
        (_member("cifar-10-batches-py/link", tarfile.SYMTYPE), "only files and folders"),
        (_member("elsewhere.txt"), "outside cifar-10-batches-py"),
    ],
)
def test_cifar_unsafe_archive_is_rejected(
    isolated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    member: tarfile.TarInfo,
    message: str,
) -> None:
    tarball = make_tarball(write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py"), [member])
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(tarball).hexdigest())
    serve(monkeypatch, {CIFAR10_URL: tarball})
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10")
    assert not (tmp_path / "evil").exists()
    assert not (isolated / "cifar-10-batches-py").exists()


def test_cifar_tarball_placed_in_cache_is_used_offline(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tarball(write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py"))
    isolated.mkdir(parents=True)
    (isolated / "cifar-10-python.tar.gz").write_bytes(tarball)
    with pytest.raises(DataError, match="does not match the official"):
        load_dataset("cifar10", download=False)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(tarball).hexdigest())
    ds = load_dataset("cifar10", download=False)
    assert ds.test_x.shape[0] == N_PER_BATCH


# ---------------------------------------------------------------------------------------------
# CIFAR-10: the real dev copy
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (DEV_CIFAR / "data_batch_1").is_file(),
    reason=f"real CIFAR-10 dev copy not present at {DEV_CIFAR}",
)
def test_real_cifar_dev_copy_via_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOWPREC_DATA_DIR", "CIFAR10_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)  # so only the repo-root-relative lookup can find it
    ds = load_dataset("cifar10", download=False)
    # raw uint8 for the big split (train_x would convert 600 MB just to read its shape)
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.test_x.shape == (10000, 3, 32, 32) and ds.test_x.dtype == torch.float32
    assert ds.train_y.min() == 0 and ds.train_y.max() == 9
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert "dev copy" in ds.provenance and "JPEG" in ds.provenance
    assert ds.class_names == data_mod.CIFAR10_CLASSES


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fake_fashion_mnist_loads(isolated: Path, tmp_path: Path, gz: bool) -> None:
    folder = write_fake_fmnist(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=folder, download=False)
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_y.tolist() == [i % 10 for i in range(30)]
    assert abs(ds.train_x.mean().item()) < 1e-4 and abs(ds.train_x.std(unbiased=False) - 1) < 1e-4
    raw = read_idx(folder / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert torch.equal(ds.train_images[:, 0], torch.from_numpy(raw))


def test_fashion_mnist_env_and_parent_dir(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_fmnist(tmp_path / "parent" / "fashion-mnist")
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(tmp_path / "parent"))
    assert "LOWPREC_DATA_DIR" in load_dataset("fmnist", download=False).provenance
    other = write_fake_fmnist(tmp_path / "other")
    monkeypatch.delenv("LOWPREC_DATA_DIR")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(other))
    assert "$FASHION_MNIST_DIR" in load_dataset("fashion_mnist", download=False).provenance
    assert load_dataset("fashion-mnist", data_dir=tmp_path / "parent").train_x.shape[0] == 30


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-7], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b"\x00\x01" + b[2:], "bad IDX magic"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_idx_validation(tmp_path: Path, damage: Any, message: str) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((3, 4, 5), np.uint8), gz=False)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert "x-idx3-ubyte" in str(info.value)


def test_fashion_truncated_gzip_and_label_mismatch(isolated: Path, tmp_path: Path) -> None:
    folder = write_fake_fmnist(tmp_path / "fm")
    good = (folder / "t10k-labels-idx1-ubyte.gz").read_bytes()
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="9 labels for 10 images"):
        load_dataset("fashion-mnist", data_dir=folder, download=False)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        load_dataset("fashion-mnist", data_dir=folder, download=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros((10, 2), np.uint8))
    with pytest.raises(DataError, match="2 dimensions, expected 1"):
        load_dataset("fashion-mnist", data_dir=folder, download=False)


def test_fashion_not_found_message(isolated: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    for needle in (
        "Fashion-MNIST not found",
        "train-images-idx3-ubyte.gz",
        str(isolated / "fashion-mnist"),
        "dataset-fashion-mnist",
        "FASHION_MNIST_DIR",
        "LOWPREC_DATA_DIR",
        "network disabled in tests",
    ):
        assert needle in msg, needle


def test_fashion_download_with_mirror_fallback_and_checksums(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_fake_fmnist(tmp_path / "src")
    files = {}
    content = {}
    for role, (base, _) in data_mod.FASHION_MNIST_FILES.items():
        blob = (src / (base + ".gz")).read_bytes()
        files[role] = (base, hashlib.md5(blob).hexdigest())
        content[data_mod.FASHION_MNIST_MIRRORS[1] + base + ".gz"] = blob  # only the 2nd mirror
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_FILES", files)
    calls = serve(monkeypatch, content)
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (30, 1, 28, 28) and "downloaded" in ds.provenance
    assert len(calls) == 8  # each file: first mirror fails, second serves
    # corrupted content on every mirror -> checksum error, file not kept
    for f in (isolated / "fashion-mnist").iterdir():
        f.unlink()
    bad = {url: blob[:-1] + bytes([blob[-1] ^ 0xFF]) for url, blob in content.items()}
    serve(monkeypatch, bad)
    with pytest.raises(DataError, match="checksum"):
        load_dataset("fashion-mnist")
    assert list((isolated / "fashion-mnist").iterdir()) == []


@pytest.mark.skipif(
    not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOWPREC_DATA_DIR", "FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    ds = load_dataset("fashion-mnist", data_dir=DEBIAN_FMNIST, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [6000] * 10
    assert ds.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_split_and_normalisation() -> None:
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.train_x.shape == (1438, 1, 8, 8) and ds.test_x.shape == (359, 1, 8, 8)
    assert abs(ds.train_x.mean().item()) < 1e-5
    assert abs(ds.train_x.std(unbiased=False).item() - 1) < 1e-5
    assert set(ds.test_y.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(ds.train_y, again.train_y) and torch.equal(ds.test_x, again.test_x)
    assert "scikit-learn" in ds.provenance
    assert ds.augmentation is None


# ---------------------------------------------------------------------------------------------
# Loader and augmentation
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cifar(isolated: Path, tmp_path: Path) -> Dataset:
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    return load_dataset("cifar10", data_dir=folder, download=False)


def test_loader_batches_and_partial_batch_policy(fake_cifar: Dataset) -> None:
    ds = fake_cifar
    train = ds.loader("train", batch_size=30, generator=torch.Generator().manual_seed(0))
    sizes = [x.shape[0] for x, _ in train]
    assert sizes == [30, 30, 30] and len(train) == 3  # 100 images: last 10 dropped
    test = ds.loader("test", batch_size=8)
    batches = list(test)
    assert [x.shape[0] for x, _ in batches] == [8, 8, 4] and len(test) == 3
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.test_x)  # in order, all kept
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_y)
    full = ds.loader("train", batch_size=30, drop_last=False, shuffle=False)
    assert sum(x.shape[0] for x, _ in full) == 100
    with pytest.raises(ValueError):
        ds.loader("valid")


def test_loader_shuffle_matches_indexing(fake_cifar: Dataset) -> None:
    ds = fake_cifar
    g = torch.Generator().manual_seed(5)
    xs, ys = zip(*ds.loader("train", batch_size=25, generator=g), strict=True)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat(xs), ds.train_x[perm])
    assert torch.equal(torch.cat(ys), ds.train_y[perm])


def test_augmentation_reproducible_and_seed_dependent(fake_cifar: Dataset) -> None:
    def epoch(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        loader = fake_cifar.loader("train", batch_size=50, augment=True, generator=g)
        return torch.cat([x for x, _ in loader])

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    plain = torch.cat(
        [x for x, _ in fake_cifar.loader("train", 50, generator=torch.Generator().manual_seed(0))]
    )
    assert not torch.equal(a, plain)  # augmentation did something
    # the test split is never augmented
    t1 = torch.cat([x for x, _ in fake_cifar.loader("test", 50, augment=True)])
    assert torch.equal(t1, fake_cifar.test_x)


def test_pad_crop_known_offsets_exact() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) + 1
    out = pad_crop(x, torch.tensor([4, 0]), torch.tensor([4, 0]), padding=4)
    assert torch.equal(out[0], x[0])  # centre offset: unchanged
    # offset (0, 0): image shifted down-right by 4, zeros in the top rows / left columns
    assert torch.equal(out[1, :, 4:, 4:], x[1, :, :28, :28])
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, :4] == 0).all()
    out = pad_crop(x, torch.tensor([8, 1]), torch.tensor([8, 6]), padding=4)
    assert torch.equal(out[0, :, :28, :28], x[0, :, 4:, 4:])
    assert (out[0, :, 28:, :] == 0).all() and (out[0, :, :, 28:] == 0).all()
    assert torch.equal(out[1, :, 3:, :30], x[1, :, :29, 2:])
    # flip folded into the crop: crop first, then mirror
    flip = torch.tensor([True, True])
    out = pad_crop(x, torch.tensor([4, 0]), torch.tensor([4, 0]), padding=4, flip=flip)
    assert torch.equal(out[0], x[0].flip(2))
    assert torch.equal(out[1, :, 4:, :28], x[1, :, :28, :28].flip(2))
    assert (out[1, :, :, 28:] == 0).all()


def test_random_crop_flip_preserves_pixels() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 32, 32, generator=g) + 1  # strictly positive: padding zeros stand out
    # flip only: pixel multiset of every image unchanged, each image is x or its mirror
    flipped = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for a, b in zip(flipped, x, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    assert any(torch.equal(a, b.flip(2)) for a, b in zip(flipped, x, strict=True))
    # crop + flip: each output is one of the 81 crops, possibly mirrored
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=4)
    for i in range(x.shape[0]):
        candidates = [
            pad_crop(x[i : i + 1], torch.tensor([dy]), torch.tensor([dx]), 4)[0]
            for dy in range(9)
            for dx in range(9)
        ]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in candidates)
        kept = out[i][out[i] != 0].sort().values  # the non-padding pixels come from the image
        assert torch.isin(kept, x[i].flatten()).all()


def test_augment_is_noop_without_augmentation(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    a = [x for x, _ in ds.loader("train", 64, augment=True, generator=torch.Generator())]
    b = [x for x, _ in ds.loader("train", 64, augment=False, generator=torch.Generator())]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
