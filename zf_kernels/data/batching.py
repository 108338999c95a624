"""Containers for sequence data sets and the deterministic batch iterator the trainer uses.

A split stores its sequences batch-major, ``(N, T, D)`` (or ``(N, T)`` int64 tokens); a
:class:`Batch` is time-major, ``(T, B, D)``, as the model expects.

Determinism: the order of an epoch is a permutation drawn from a generator seeded by
``(seed, epoch)``, and the dynamic binarisation noise of batch ``k`` from one seeded by
``(seed, epoch, k)``. Nothing depends on earlier batches, so ``start_batch=k`` reproduces
exactly the batches ``k, k+1, ...`` of an uninterrupted epoch (exact mid-epoch resume).

All errors about data are ``ValueError`` and name the argument, key or file at fault.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

BINARIZE_MODES = ("none", "dynamic", "fixed")
OUTPUT_TYPES = ("bernoulli", "gaussian", "categorical")
DATASETS = ("seqmnist", "timit", "blizzard", "npz", "text", "synthetic")

# Stream tags keep the permutation and the binarisation noise independent even when their
# other seed components coincide.
_PERMUTATION_STREAM = 0
_BINARIZE_STREAM = 1


@dataclass
class SequenceSplit:
    """One split of a data set, batch-major.

    ``y``: (N, T, D) float32 targets, or (N, T) int64 tokens for categorical data.
    ``u``: (N, T, D) inputs when the file provides them, else None (the model then feeds
    ``u_1 = 0``, ``u_t = y_{t-1}``).
    ``mask``: (N, T) float32 right-padded prefix masks (1s then 0s), None = all valid.
    ``binarize``: "none"; "dynamic" (``y`` holds intensities in [0, 1], resampled as
    Bernoulli every epoch by :func:`iterate_batches`); "fixed" (already binarised once).
    ``recording``: (N,) int64, the recording (file) each sequence was cut from, where a loader
    cuts recordings into sequences (WAV folders); evaluation then also reports bounds per
    recording (the unit of the published TIMIT result). None: each sequence stands alone.
    """
    y: torch.Tensor
    u: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    binarize: str = "none"
    recording: torch.Tensor | None = None

    def __post_init__(self):
        y = self.y
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if y.dtype == torch.int64:
            if y.dim() != 2:
                raise ValueError(f"token y (int64) must have shape (N, T), got {tuple(y.shape)}")
        elif y.dtype == torch.float32:
            if y.dim() != 3:
                raise ValueError(f"float y must have shape (N, T, D), got {tuple(y.shape)}")
        else:
            raise ValueError(f"y must be float32 (N, T, D) or int64 (N, T), got {y.dtype}")
        if y.shape[0] < 1 or y.shape[1] < 1:
            raise ValueError(f"y must hold at least one sequence of at least one step, got {tuple(y.shape)}")
        if self.u is not None and (self.u.shape != y.shape or self.u.dtype != torch.float32):
            raise ValueError(f"u must be float32 with y's shape {tuple(y.shape)}, "
                             f"got {self.u.dtype} {tuple(self.u.shape)}")
        if self.mask is not None and (self.mask.shape != y.shape[:2] or self.mask.dtype != torch.float32):
            raise ValueError(f"mask must be float32 of shape {tuple(y.shape[:2])}, "
                             f"got {self.mask.dtype} {tuple(self.mask.shape)}")
        if self.binarize not in BINARIZE_MODES:
            raise ValueError(f"binarize must be one of {BINARIZE_MODES}, got {self.binarize!r}")
        if self.recording is not None and (self.recording.shape != y.shape[:1] or self.recording.dtype != torch.int64):
            raise ValueError(f"recording must be int64 of shape ({y.shape[0]},), "
                             f"got {self.recording.dtype} {tuple(self.recording.shape)}")
        if self.binarize == "dynamic" and y.dtype != torch.float32:
            raise ValueError("binarize='dynamic' needs float intensities in y, got tokens")

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass
class Batch:
    """Time-major batch: ``y`` (T, B, D) or (T, B), ``u`` like ``y`` or None, ``mask`` (T, B)
    or None; ``index`` (B,) the rows of the split it came from."""
    y: torch.Tensor
    u: torch.Tensor | None
    mask: torch.Tensor | None
    index: torch.Tensor


@dataclass
class DataBundle:
    """A data set: three splits plus what the model needs to know about them.
    ``input_dim`` is D (the vocabulary size for categorical data); ``meta`` is
    JSON-serialisable (e.g. image shape, normalisation constants)."""
    name: str
    train: SequenceSplit
    valid: SequenceSplit
    test: SequenceSplit
    output_type: str
    input_dim: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {self.output_type!r}")


def fingerprint(bundle: DataBundle) -> str:
    """A SHA-256 of every split's tensors (shapes, dtypes and bytes): checkpoints record it so
    that resuming, evaluating or sampling on other data is refused, for the loaders whose ``meta``
    cannot tell (a generic ``.npz`` has none, MNIST only its image shape). ~0.15 s for MNIST."""
    h = hashlib.sha256()
    for name in ("train", "valid", "test"):
        split = getattr(bundle, name)
        for key in ("y", "u", "mask", "recording"):
            value = getattr(split, key)
            h.update(f"{name}.{key}:{None if value is None else (value.dtype, tuple(value.shape))};".encode())
            if value is not None:
                h.update(memoryview(value.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()[:16]


def meta_differences(current: dict, saved: dict) -> list[str]:
    """The ``meta`` keys whose values differ between a loaded data set and a checkpoint's
    ``data_meta``; a ``fingerprint`` only where the checkpoint has one (written since 2026-11-28)."""
    keys = set(current) | set(saved)
    if "fingerprint" not in saved:
        keys.discard("fingerprint")
    return sorted(k for k in keys if current.get(k) != saved.get(k))


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator whose seed is a well-mixed hash of the integer ``keys``
    (so nearby keys such as consecutive epochs give unrelated streams)."""
    words = [int(k) % 2**64 for k in keys]  # SeedSequence takes non-negative ints only
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator()
    g.manual_seed(int(state))
    return g


def fixed_binarize(intensities: np.ndarray, seed: int) -> np.ndarray:
    """Binarise intensities in [0, 1] once: pixel = 1 with probability = intensity.
    Uses numpy's PCG64 stream so the result depends on ``seed`` only, not on torch."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.random(intensities.shape) < intensities).astype(np.float32)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def num_batches(split: SequenceSplit, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields per epoch."""
    batch_size = _check_int("batch_size", batch_size, 1)
    n = len(split)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(split: SequenceSplit, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                    start_batch: int = 0, drop_last: bool = False) -> Iterator[Batch]:
    """Yield time-major batches of ``split`` for one epoch, deterministically in
    ``(seed, epoch)``; ``start_batch=k`` skips to batch ``k`` of that same epoch.
    The last batch is smaller when ``len(split)`` is not a multiple of ``batch_size``
    (dropped with ``drop_last=True``)."""
    n_batches = num_batches(split, batch_size, drop_last)
    seed = _check_int("seed", seed, -2**63)
    epoch = _check_int("epoch", epoch, 0)
    start_batch = _check_int("start_batch", start_batch, 0)
    if start_batch > n_batches:
        raise ValueError(f"start_batch must be <= {n_batches} (batches per epoch), got {start_batch}")
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=seeded_generator(_PERMUTATION_STREAM, seed, epoch))
    else:
        order = torch.arange(n)
    for k in range(start_batch, n_batches):
        index = order[k * batch_size:(k + 1) * batch_size]
        y = split.y[index]
        if split.binarize == "dynamic":
            y = torch.bernoulli(y, generator=seeded_generator(_BINARIZE_STREAM, seed, epoch, k))
        yield Batch(
            y=y.transpose(0, 1).contiguous(),
            u=None if split.u is None else split.u[index].transpose(0, 1).contiguous(),
            mask=None if split.mask is None else split.mask[index].t().contiguous(),
            index=index,
        )


def load_dataset(name: str, path: str | None = None, *, seed: int = 0, cache_dir: str | None = None,
                 **kwargs) -> DataBundle:
    """Load a data set by name.

    - ``"seqmnist"``: ``path`` = a folder with the four MNIST IDX files (plain or .gz), or
      None to fetch them into the cache (see :mod:`zf_kernels.data.mnist`).
    - ``"timit"``, ``"blizzard"``: ``path`` = the authors' preprocessed ``.npz`` file
      (:func:`zf_kernels.data.npz.load_speech_npz`), or a folder of raw WAV / NIST SPHERE
      files, framed and split by :func:`zf_kernels.data.wav.load_wav_folder`.
    - ``"npz"``: ``path`` = any ``.npz`` understood by :func:`zf_kernels.data.npz.load_npz`.
    - ``"text"``: ``path`` = a text file or a folder of train / valid / test ``.txt`` files, as word
      sequences (:func:`zf_kernels.data.text.load_text`).
    - ``"synthetic"``: generated; ``seed`` seeds the generator (no other data set uses it).
    Extra keyword arguments go to the loader (e.g. ``train_limit``, ``normalize``, ``T``).
    """
    from . import mnist, npz, synthetic, text, wav  # imported here: those modules import this one

    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if name == "seqmnist":
        return mnist.load_mnist(path, cache_dir=cache_dir, **kwargs)
    if name == "synthetic":
        return synthetic.make_synthetic(seed=seed, **kwargs)
    if path is None:
        what = {"npz": "a .npz file", "text": "a text file or a folder of .txt files"}.get(
            name, "a .npz file or a folder of WAV files")
        raise ValueError(f"path is required for the {name!r} data set ({what}), got None")
    if name == "text":
        return text.load_text(path, **kwargs)
    if name == "npz":
        return npz.load_npz(path, **kwargs)
    if os.path.isdir(path):
        return wav.load_wav_folder(path, name=name, **kwargs)
    if str(path).lower().endswith((wav.AUDIO_SUFFIX, ".sph")):
        # one recording cannot be split into train / valid / test sequences of the same speakers
        raise ValueError(f"path {path} is a single audio file; the {name!r} data set takes the authors' .npz "
                         f"file or a folder of *.wav files (put the recordings in a folder, "
                         f"optionally with TRAIN/ and TEST/ subfolders)")
    return npz.load_speech_npz(path, name=name, **kwargs)
