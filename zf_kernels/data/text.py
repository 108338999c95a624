"""Word sequences from plain text (the paper's IMDB experiment is word-level language modelling).

``path`` is a UTF-8 text file or a folder holding ``train.txt``, ``valid.txt`` (or ``dev.txt``,
``validation.txt``) and ``test.txt`` (any case). A missing valid or test split (or a single file)
is taken from the end of the training lines: the last 5% go to test, the 5% before them to valid
(at least one line each), in file order, so the split is deterministic.

Tokens are the whitespace-separated words of each line, as they are (lowercase or strip
punctuation beforehand if you want that). The vocabulary comes from the training split: the
``vocab_size - 2`` most frequent words (ties by word), plus ``<eos>`` (id 0, ending every line)
and ``<unk>`` (id 1, every other word). Each non-blank line, with its ``<eos>``, becomes one or
more sequences of ``seq_len`` tokens; the last one of a line is right-padded and masked. The
vocabulary is kept in ``meta["vocab"]`` (samples are written as words with it). Problems raise
ValueError (FileNotFoundError for a missing path) naming the file.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import torch

from .batching import DataBundle, SequenceSplit

EOS, UNK = "<eos>", "<unk>"
HOLDOUT_FRACTION = 0.05
SPLIT_FILES = {"train": ("train.txt",), "valid": ("valid.txt", "dev.txt", "validation.txt"), "test": ("test.txt",)}


def _read_lines(path: Path) -> list[list[str]]:
    """The tokens of every non-blank line of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"path {path}: not UTF-8 text ({exc})") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _find(folder: Path, names) -> Path | None:
    by_lower = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _raw_splits(path: Path) -> dict[str, list[list[str]]]:
    if path.is_dir():
        files = {s: _find(path, names) for s, names in SPLIT_FILES.items()}
        if files["train"] is None:
            raise FileNotFoundError(f"path {path}: a text folder needs train.txt (and optionally valid.txt, test.txt)")
        lines = {s: _read_lines(f) for s, f in files.items() if f is not None}
    elif path.is_file():
        lines = {"train": _read_lines(path)}
    else:
        raise FileNotFoundError(f"path {path} does not exist")
    for s, ls in lines.items():
        if not ls:
            raise ValueError(f"path {path}: the {s} text has no words")
    n = max(1, int(len(lines["train"]) * HOLDOUT_FRACTION))   # 5% of the whole file per held-out split
    for s in ("test", "valid"):   # held out from the end of train, test first
        if s not in lines:
            train = lines["train"]
            if len(train) <= n:
                raise ValueError(f"path {path}: {len(train)} training lines are too few to hold out a {s} split; "
                                 f"give a {s}.txt")
            lines["train"], lines[s] = train[:-n], train[-n:]
    return lines


def build_vocab(lines: list[list[str]], vocab_size: int) -> list[str]:
    """``[<eos>, <unk>, words...]``: the ``vocab_size - 2`` most frequent words, ties by word."""
    counts = collections.Counter(w for line in lines for w in line)
    counts.pop(EOS, None), counts.pop(UNK, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    return [EOS, UNK, *words]


def encode_words(text: str, vocab: list[str]) -> list[int]:
    """The token ids of ``text``'s whitespace-separated words, as the loader reads a line (a word
    outside ``vocab`` is ``<unk>``; no ``<eos>``: the line goes on)."""
    ids = {w: i for i, w in enumerate(vocab)}
    return [ids.get(w, ids[UNK]) for w in text.split()]


def _sequences(lines, ids: dict[str, int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``(N, seq_len)`` and masks: each line with its <eos>, cut into seq_len pieces."""
    rows, masks = [], []
    for line in lines:
        tokens = [ids.get(w, 1) for w in line] + [0]
        for i in range(0, len(tokens), seq_len):
            piece = tokens[i:i + seq_len]
            rows.append(piece + [0] * (seq_len - len(piece)))
            masks.append([1.0] * len(piece) + [0.0] * (seq_len - len(piece)))
    return np.asarray(rows, dtype=np.int64), np.asarray(masks, dtype=np.float32)


def load_text(path: str | os.PathLike, *, seq_len: int = 40, vocab_size: int = 10000, name: str = "text") -> DataBundle:
    """A word-level language-modelling data set from ``path`` (see the module docstring)."""
    for arg, value, least in (("seq_len", seq_len, 1), ("vocab_size", vocab_size, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{arg} must be an int >= {least}, got {value!r}")
    path = Path(path)
    lines = _raw_splits(path)
    vocab = build_vocab(lines["train"], vocab_size)
    ids = {w: i for i, w in enumerate(vocab)}

    def split(s):
        y, mask = _sequences(lines[s], ids, seq_len)
        return SequenceSplit(torch.from_numpy(y), None, None if mask.all() else torch.from_numpy(mask))

    return DataBundle(name=name, train=split("train"), valid=split("valid"), test=split("test"),
                      output_type="categorical", input_dim=len(vocab),
                      meta={"vocab": vocab, "seq_len": seq_len})
