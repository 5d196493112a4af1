"""Character-level text for the language models: Debian's fortunes or the user's own text.

Public API::

    from lowprec.study.text import load_text, TextDataset

    ds = load_text()                      # --data-dir / $LOWPREC_TEXT, else Debian's fortunes
    ds.num_classes, ds.class_names        # the vocabulary: every character of the corpus, sorted
    for x, y in ds.loader("train", 64, generator=g):   # x, y: int64 [B, T], y[:, i] = x[:, i+1]
        ...

The corpus is, first found: ``data_dir`` (the ``--data-dir`` option), then ``$LOWPREC_TEXT``,
then ``/usr/share/games/fortunes`` (Debian's ``fortunes`` package; ``fortunes-min`` alone
gives only a small part of it).  A file is read as UTF-8 text; a folder gives its regular
files (not symbolic links, not ``*.dat`` indexes, not hidden) in name order, concatenated.

* Vocabulary: the sorted distinct characters of the whole text; token ``i`` is
  ``class_names[i]``.  It is derived from the corpus alone, and the provenance names the
  corpus with its length and SHA-256, so a run's vocabulary can be rebuilt exactly.
* Split: the last ``test_fraction`` (10%) of the characters is the test split, the rest
  the training split; no window crosses the boundary.
* Windows of ``T = context`` (64) characters: input ``x = s[o : o+T]``, target
  ``y = s[o+1 : o+T+1]`` (the next character at every position).  The training loader draws
  every offset ``o`` uniformly from ``0 .. n_train - T - 1`` with the generator it is given
  (an epoch: :func:`len` ``= (n_train - 1) // T`` windows, about one pass over the
  characters); without shuffling, and always for the test split, the windows tile the split
  without overlap (``o = 0, T, 2T, ...``), so :attr:`TextDataset.test_x` / ``test_y`` are
  fixed.  Metrics are per character: next-character accuracy and cross-entropy (nats;
  perplexity ``exp``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .data import DataError

__all__ = ["CONTEXT", "FORTUNES_DIR", "TEST_FRACTION", "TEXT_ENV", "TextDataset", "load_text"]

#: where Debian's ``fortunes`` / ``fortunes-min`` packages put their text files
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: environment variable naming the user's own text file (or folder of text files)
TEXT_ENV = "LOWPREC_TEXT"
CONTEXT = 64
TEST_FRACTION = 0.1
_DPKG_STATUS = Path("/var/lib/dpkg/status")


class TextDataset:
    """A character-level corpus split into train and test token streams (module docstring).

    Attributes, as a :class:`~lowprec.study.data.Dataset` has them: ``name`` (``"text"``),
    ``provenance``, ``num_classes`` (the vocabulary size), ``class_names`` (the characters),
    ``input_shape`` (``(T,)``), ``normalize`` (``"none"``), ``augmentation`` (``None``),
    ``test_x`` / ``test_y`` (the fixed test windows, int64 [N, T]); and ``train_tokens`` /
    ``test_tokens`` (int64 [n]).
    """

    def __init__(self, text: str, provenance: str, *, context: int = CONTEXT,
                 test_fraction: float = TEST_FRACTION) -> None:
        """Build the vocabulary, encode ``text`` and split it (the last ``test_fraction``)."""
        if context < 1 or not 0 < test_fraction < 1:
            raise ValueError(f"need context >= 1 and 0 < test_fraction < 1, got {context}, "
                             f"{test_fraction}")
        n_test = round(len(text) * test_fraction)
        if min(n_test, len(text) - n_test) < context + 1:
            raise DataError(f"the text ({provenance}) is too short: each split (test: the last "
                            f"{test_fraction:.0%}) needs at least {context + 1} characters for "
                            f"{context}-character windows")
        self.name, self.provenance = "text", provenance
        self.normalize, self.augmentation = "none", None
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab, ids = np.unique(points, return_inverse=True)  # sorted code points = sorted chars
        self.class_names: tuple[str, ...] = tuple(map(chr, vocab.tolist()))
        self.num_classes = len(self.class_names)
        self.input_shape: tuple[int] = (context,)
        tokens = torch.from_numpy(ids.astype(np.int64).reshape(-1))
        self.train_tokens, self.test_tokens = tokens[: len(text) - n_test], tokens[-n_test:]
        self.test_x, self.test_y = self._tiles(self.test_tokens)

    def _tiles(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The non-overlapping windows ``o = 0, T, 2T, ...`` of a stream: (x, y) [N, T]."""
        t = self.input_shape[0]
        n = (tokens.shape[0] - 1) // t
        return tokens[: n * t].view(n, t), tokens[1 : n * t + 1].view(n, t)

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of a 1-D tensor of token ids."""
        return "".join(self.class_names[i] for i in tokens.tolist())

    def __len__(self) -> int:
        """Training windows per epoch: ``(n_train - 1) // T``."""
        return (self.train_tokens.shape[0] - 1) // self.input_shape[0]

    def __repr__(self) -> str:
        """Short summary."""
        return (f"TextDataset(train={self.train_tokens.shape[0]} chars, "
                f"test={self.test_tokens.shape[0]} chars, vocab={self.num_classes}, "
                f"context={self.input_shape[0]})")

    def loader(self, split: str = "train", batch_size: int = 64, shuffle: bool | None = None,
               augment: bool = False, generator: torch.Generator | None = None, *,
               drop_last: bool | None = None, device: torch.device | str | None = None
               ) -> WindowLoader:
        """Batches ``(x, y)`` of windows of ``split``: random windows (train: the default),
        else the fixed tiling; ``augment`` is accepted and does nothing. Like
        :meth:`lowprec.study.data.Dataset.loader`, train drops its last partial batch."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shuffle = (split == "train") if shuffle is None else shuffle
        drop_last = (split == "train") if drop_last is None else drop_last
        tokens = self.train_tokens if split == "train" else self.test_tokens
        return WindowLoader(tokens, self.input_shape[0], batch_size, shuffle and split == "train",
                            generator, drop_last, device)


class WindowLoader:
    """Re-iterable batches of windows over a token stream (:meth:`TextDataset.loader`)."""

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, random: bool,
                 generator: torch.Generator | None, drop_last: bool,
                 device: torch.device | str | None) -> None:
        """Store the settings: ``random`` windows or the fixed tiling."""
        self.windows = tokens.unfold(0, context + 1, 1)  # [n - T, T + 1], a view
        self.n = (tokens.shape[0] - 1) // context
        self.context, self.batch_size, self.random = context, batch_size, random
        self.generator, self.drop_last, self.device = generator, drop_last, device

    def __len__(self) -> int:
        """Number of batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` int64 [B, T] batches for one epoch."""
        for b in range(len(self)):
            size = min(self.batch_size, self.n - b * self.batch_size)
            if self.random:
                offsets = torch.randint(0, self.windows.shape[0], (size,),
                                        generator=self.generator)
            else:
                offsets = torch.arange(b * self.batch_size, b * self.batch_size + size)
                offsets *= self.context
            w = self.windows[offsets]
            if self.device is not None:
                w = w.to(self.device, non_blocking=True)
            yield w[:, :-1], w[:, 1:]


def _installed(packages: tuple[str, ...]) -> list[str]:
    """``"<package> <version>"`` for each of ``packages`` dpkg records as installed."""
    try:
        status = _DPKG_STATUS.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, flags=re.MULTILINE))
        if fields.get("Package") in packages and "installed" in fields.get("Status", ""):
            found[fields["Package"]] = f"{fields['Package']} {fields.get('Version', '?')}"
    return [found[p] for p in packages if p in found]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink()
                  and p.suffix != ".dat" and not p.name.startswith("."))


def _not_found(why: str) -> str:
    return (f"{why}. The 'text' data set needs a text corpus: install Debian's fortunes "
            f"package (apt-get install fortunes; it puts text under {FORTUNES_DIR}), or give "
            f"your own UTF-8 text file with --data-dir FILE or {TEXT_ENV}=FILE")


def load_text(data_dir: str | os.PathLike[str] | None = None, *, context: int = CONTEXT,
              test_fraction: float = TEST_FRACTION) -> TextDataset:
    """Read the corpus (``data_dir``, ``$LOWPREC_TEXT``, Debian's fortunes: first found).

    Raises:
        DataError: no corpus (the message names the Debian package and the options), an
            unreadable or non-UTF-8 file, or a text too short for the windows.
    """
    given = data_dir if data_dir is not None else os.environ.get(TEXT_ENV) or None
    origin = "--data-dir" if data_dir is not None else TEXT_ENV
    path = Path(given) if given is not None else FORTUNES_DIR
    if not path.exists():
        why = f"{origin} names {path}, which does not exist" if given else f"no {path}"
        raise DataError(_not_found(why))
    files = _files(path)
    if not files:
        raise DataError(_not_found(f"{path} holds no text files"))
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {f} as UTF-8 text: {exc}") from exc
    text = "".join(parts)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    if given is None:
        packages = _installed(("fortunes", "fortunes-min")) or ["no dpkg record"]
        source = f"Debian fortunes ({', '.join(packages)}): {len(files)} files"
    else:
        what = f"text file {path.name!r}" if path.is_file() else f"{len(files)} text files"
        source = f"user's {what} ({origin})"
    return TextDataset(text, f"{source}, {len(text):,} characters, sha256 {digest}",
                       context=context, test_fraction=test_fraction)
