"""Sequence data from ``.npz`` files.

Two layouts, told apart by their keys:

- **Speech** (the authors' preprocessed TIMIT / Blizzard): ``u_train, x_train, u_valid,
  x_valid, u_test, x_test``, each (N, T, D) float (D = 200 raw samples per frame), ``u`` the
  input and ``x`` the target one step ahead (checked: ``u[:, t] == x[:, t - 1]`` on valid steps
  after the first); optional ``mask_train``, ``mask_valid``,
  ``mask_test`` (N, T). Output type "gaussian". By default (as the authors) the data are
  normalised with one global mean and std of the training targets (valid frames only),
  stored in ``meta`` as ``mean`` / ``std``; ``normalize=False`` keeps the raw values
  (``meta`` then holds mean 0, std 1).
- **Generic**: ``x`` (required) either float (N, T, D) (or (N, T), read as D = 1) or int
  (N, T) tokens; optional ``mask`` (N, T), ``x_valid`` / ``x_test`` with ``mask_valid`` /
  ``mask_test``, and ``vocab_size`` for tokens (else max token + 1). A missing ``x_valid``
  (``x_test``) is split off the end of ``x``: the last 5% go to test, the 5% before them to
  valid (at least one sequence each), in file order, so the split is deterministic.

Masks must be right-padded prefix masks of 0/1 (1s then 0s) with at least one valid step
per sequence. All values must be finite. Every problem raises ValueError naming the file
and the key.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .batching import DataBundle, SequenceSplit, fixed_binarize

SPLITS = ("train", "valid", "test")
SPEECH_KEYS = tuple(f"{k}_{s}" for s in SPLITS for k in ("u", "x"))
HOLDOUT_FRACTION = 0.05
# Seeds of the one-off binarisation of valid / test with binarize=True (run-independent).
EVAL_BINARIZE_SEEDS = {"valid": 0, "test": 1}


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded eagerly (pickles refused); a missing file
    raises FileNotFoundError, a corrupt or truncated one ValueError naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} does not exist or is not a file")
    # a damaged archive raises many types (BadZipFile, EOFError, zlib.error, UnicodeDecodeError,
    # NotImplementedError for a garbled compression method, ...): all mean "corrupt"
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"path {path}: corrupt, truncated or not an .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"path {path}: a single .npy array, not an .npz archive")
    try:
        with f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"path {path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from e
    for k, v in arrays.items():   # numpy returns the raw bytes of a member that is not a .npy
        if not isinstance(v, np.ndarray):
            raise ValueError(f"path {path}: key {k!r} is not a numpy array (a corrupt or foreign .npz member)")
    return arrays


def _check_finite(arr: np.ndarray, key: str, path) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"path {path}: key {key!r} has a non-finite value ({arr[first]}) at index {first}")


def _check_mask(mask: np.ndarray, key: str, shape, path) -> np.ndarray:
    """A (N, T) right-padded prefix mask of 0/1 with >= 1 valid step per row, as float32."""
    if mask.shape != tuple(shape):
        raise ValueError(f"path {path}: key {key!r} must have shape {tuple(shape)} (N, T), got {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_):
        raise ValueError(f"path {path}: key {key!r} must be numeric 0/1, got dtype {mask.dtype}")
    m = mask.astype(np.float32)
    not_binary = ~((m == 0) | (m == 1))
    if not_binary.any():
        row, t = np.argwhere(not_binary)[0]
        raise ValueError(f"path {path}: key {key!r} must hold only 0 and 1, found {mask[row, t]} at ({row}, {t})")
    gaps = (m[:, 1:] > m[:, :-1]).any(axis=1)
    if gaps.any():
        raise ValueError(f"path {path}: key {key!r} must be a right-padded prefix mask (1s then 0s); "
                         f"row {int(np.argmax(gaps))} has a 1 after a 0")
    empty = m[:, 0] == 0
    if empty.any():
        raise ValueError(f"path {path}: key {key!r}: row {int(np.argmax(empty))} has no valid step")
    return m


def _check_shifted(u: np.ndarray, x: np.ndarray, mask, split: str, path) -> None:
    """``u`` must be ``x`` one step behind on every valid step after the first (``u[:, t] ==
    x[:, t - 1]``, exactly, as the authors' loader asserts): a file whose inputs are not the
    previous targets (swapped keys, no shift) would train a different task without a word."""
    # (N, T - 1) frames that differ, 256 sequences at a time (a TIMIT-sized split at once would
    # hold a boolean copy of it)
    bad = np.concatenate([~(u[i:i + 256, 1:] == x[i:i + 256, :-1]).all(axis=2) for i in range(0, len(u), 256)])
    if mask is not None:
        bad &= mask[:, 1:] > 0
    if bad.any():
        row, t = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"path {path}: u_{split} must be x_{split} one step behind (u[:, t] == x[:, t - 1] "
                         f"for t >= 1, as in the authors' files), but {int(bad.sum())} frame(s) differ, the first "
                         f"at sequence {row}, step {t + 1} (keys swapped, or not shifted?)")


def _check_sizes(arr: np.ndarray, key: str, path) -> None:
    """Every dim of a data array (N sequences, T steps, D features) must be >= 1."""
    if arr.ndim and min(arr.shape) < 1:
        raise ValueError(f"path {path}: key {key!r} has an empty dimension, shape {arr.shape}; "
                         f"need at least one sequence, one step (and one feature)")


def _float_array(arr: np.ndarray, key: str, path) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"path {path}: key {key!r} must be a float array, got dtype {arr.dtype}")
    _check_finite(arr, key, path)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size and not np.isfinite(out).all():   # finite in the file, beyond float32's range
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(f"path {path}: key {key!r} has a value outside the float32 range "
                         f"({arr[first]}) at index {first}")
    return out


def _global_stats(arrays, masks) -> tuple[float, float]:
    """Mean and std over all valid entries of ``arrays`` (two passes, float64, row chunks
    so a large waveform is never copied whole)."""
    def chunks():
        for a, m in zip(arrays, masks):
            for i in range(0, len(a), 256):
                c = a[i:i + 256].astype(np.float64)
                yield c if m is None else c[m[i:i + 256] > 0]

    count = sum(c.size for c in chunks())
    mean = sum(c.sum() for c in chunks()) / count
    var = sum(((c - mean) ** 2).sum() for c in chunks()) / count
    return float(mean), float(np.sqrt(var))


def _normalize(arrays, masks, mean: float, std: float) -> None:
    """In place; padded steps are set to 0 so they carry no information."""
    for a, m in zip(arrays, masks):
        a -= mean
        a /= std
        if m is not None:
            a *= m[:, :, None]


def load_speech_npz(path: str | os.PathLike, *, name: str = "timit", normalize: bool = True) -> DataBundle:
    """The authors' preprocessed TIMIT / Blizzard ``.npz`` (see the module docstring)."""
    data = read_npz(path)
    missing = [k for k in SPEECH_KEYS if k not in data]
    if missing:
        raise ValueError(f"path {path}: missing key(s) {missing}; the speech format needs {list(SPEECH_KEYS)}")
    ys, us, masks = {}, {}, {}
    dim = None
    for s in SPLITS:
        u, x = _float_array(data[f"u_{s}"], f"u_{s}", path), _float_array(data[f"x_{s}"], f"x_{s}", path)
        if x.ndim != 3 or u.shape != x.shape:
            raise ValueError(f"path {path}: u_{s} and x_{s} must both be (N, T, D), "
                             f"got {data[f'u_{s}'].shape} and {data[f'x_{s}'].shape}")
        _check_sizes(x, f"x_{s}", path)
        if dim is not None and x.shape[2] != dim:
            raise ValueError(f"path {path}: x_{s} has frame size {x.shape[2]}, x_train has {dim}")
        dim = x.shape[2]
        mask_key = f"mask_{s}"
        masks[s] = _check_mask(data[mask_key], mask_key, x.shape[:2], path) if mask_key in data else None
        _check_shifted(u, x, masks[s], s, path)
        ys[s], us[s] = x, u
    mean, std = 0.0, 1.0
    if normalize:
        mean, std = _global_stats([ys["train"]], [masks["train"]])
        if not std > 0:
            raise ValueError(f"path {path}: x_train is constant, cannot normalise (pass normalize=False)")
        _normalize([*ys.values(), *us.values()], [*masks.values(), *masks.values()], mean, std)

    def split(s):
        m = masks[s]
        return SequenceSplit(torch.from_numpy(ys[s]), torch.from_numpy(us[s]),
                             None if m is None else torch.from_numpy(m))

    return DataBundle(name=name, train=split("train"), valid=split("valid"), test=split("test"),
                      output_type="gaussian", input_dim=int(dim),
                      meta={"frame_size": int(dim), "mean": mean, "std": std, "normalized": bool(normalize)})


def _generic_raw_splits(data: dict, path) -> dict:
    """split -> (values, float mask or None, key naming the values) of a generic file, with
    a missing valid / test split taken off the end of ``x``."""
    x = data["x"]
    if x.ndim not in (2, 3) or len(x) < 1:
        raise ValueError(f"path {path}: key 'x' must be (N, T, D) or (N, T) with N >= 1, got shape {x.shape}")
    _check_sizes(x, "x", path)
    mask = _check_mask(data["mask"], "mask", x.shape[:2], path) if "mask" in data else None
    n = len(x)
    k = max(1, round(HOLDOUT_FRACTION * n))
    n_valid, n_test = (0 if "x_valid" in data else k), (0 if "x_test" in data else k)
    if n - n_valid - n_test < 1:
        raise ValueError(f"path {path}: key 'x' has only {n} sequences, too few to split off "
                         f"valid/test; give x_valid and x_test")
    bounds = {"train": (0, n - n_valid - n_test), "valid": (n - n_valid - n_test, n - n_test), "test": (n - n_test, n)}
    raw = {}
    for s in SPLITS:
        vkey, mkey = f"x_{s}", f"mask_{s}"
        if vkey in data:
            v = data[vkey]
            if v.ndim not in (2, 3) or len(v) < 1:
                raise ValueError(f"path {path}: key {vkey!r} must be (N, T, D) or (N, T) with N >= 1, "
                                 f"got shape {v.shape}")
            _check_sizes(v, vkey, path)
            raw[s] = (v, _check_mask(data[mkey], mkey, v.shape[:2], path) if mkey in data else None, vkey)
        elif mkey in data:
            raise ValueError(f"path {path}: key {mkey!r} given without {vkey!r}")
        else:
            lo, hi = bounds[s]
            raw[s] = (x[lo:hi], None if mask is None else mask[lo:hi], "x")
    return raw


def load_npz(path: str | os.PathLike, *, output_type: str | None = None, normalize: bool = False,
             binarize: bool = False, name: str = "npz") -> DataBundle:
    """A generic sequence ``.npz`` (see the module docstring); a file in the speech layout is
    passed to :func:`load_speech_npz`.

    ``output_type``: None picks "gaussian" for float ``x`` and "categorical" for int ``x``;
    "bernoulli" needs float values in [0, 1] (kept as soft targets, or with ``binarize=True``
    sampled per epoch for train and binarised once, run-independently, for valid/test).
    ``normalize=True`` (gaussian only) applies one global mean/std of the training data.
    """
    data = read_npz(path)
    if "u_train" in data or "x_train" in data:
        if output_type not in (None, "gaussian") or binarize:
            raise ValueError(f"path {path}: a speech-layout file is gaussian; output_type={output_type!r}, "
                             f"binarize={binarize!r} do not apply")
        return load_speech_npz(path, name=name, normalize=normalize)
    if "x" not in data:
        raise ValueError(f"path {path}: missing key 'x' (found {sorted(data)}); "
                         f"a generic file needs x (N, T, D) float or (N, T) int")
    if output_type not in (None, "gaussian", "bernoulli", "categorical"):
        raise ValueError(f"output_type must be None, 'gaussian', 'bernoulli' or 'categorical', got {output_type!r}")
    dtype = data["x"].dtype
    is_int = np.issubdtype(dtype, np.integer)
    if not (is_int or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise ValueError(f"path {path}: key 'x' must be float or int, got dtype {dtype}")
    output_type = output_type or ("categorical" if is_int else "gaussian")
    if (output_type == "categorical") != is_int:
        raise ValueError(f"path {path}: output_type={output_type!r} needs "
                         f"{'int tokens' if output_type == 'categorical' else 'float values'} in 'x', got dtype {dtype}")
    if binarize and output_type != "bernoulli":
        raise ValueError(f"binarize=True needs output_type='bernoulli', got {output_type!r}")
    if normalize and output_type != "gaussian":
        raise ValueError(f"normalize=True needs gaussian data, got output_type={output_type!r}")

    values, masks, meta = {}, {}, {}
    for s, (v, m, key) in _generic_raw_splits(data, path).items():
        if is_int:
            if not np.issubdtype(v.dtype, np.integer) or v.ndim != 2:
                raise ValueError(f"path {path}: key {key!r} must be int tokens (N, T) like 'x', got {v.dtype} {v.shape}")
            if np.issubdtype(v.dtype, np.unsignedinteger) and v.max() > np.iinfo(np.int64).max:
                raise ValueError(f"path {path}: key {key!r} has a token {v.max()} beyond the int64 range")
            if v.min() < 0:
                raise ValueError(f"path {path}: key {key!r} has a negative token {int(v.min())}")
            v = np.ascontiguousarray(v, dtype=np.int64)
        else:
            v = _float_array(v.astype(np.float32) if v.dtype == np.bool_ else v, key, path)
            v = v[:, :, None] if v.ndim == 2 else v
            if s != "train" and v.shape[2] != values["train"].shape[2]:
                raise ValueError(f"path {path}: key {key!r} has D={v.shape[2]}, 'x' has D={values['train'].shape[2]}")
            if output_type == "bernoulli" and (v.min() < 0 or v.max() > 1):
                raise ValueError(f"path {path}: key {key!r} must lie in [0, 1] for output_type='bernoulli', "
                                 f"found values in [{v.min()}, {v.max()}]")
        values[s], masks[s] = v, m

    if is_int:
        largest = max(int(v.max()) for v in values.values())
        input_dim = largest + 1
        if "vocab_size" in data:
            vs = data["vocab_size"]
            if vs.size != 1 or not np.issubdtype(vs.dtype, np.integer):
                raise ValueError(f"path {path}: key 'vocab_size' must be one integer, got {vs.dtype} {vs.shape}")
            input_dim = int(vs.reshape(()))
        if largest >= input_dim:
            raise ValueError(f"path {path}: token {largest} is out of range for vocab_size {input_dim}")
        meta["vocab_size"] = input_dim
    else:
        input_dim = int(values["train"].shape[2])
    if normalize:
        mean, std = _global_stats([values["train"]], [masks["train"]])
        if not std > 0:
            raise ValueError(f"path {path}: the training data are constant, cannot normalise (pass normalize=False)")
        _normalize(list(values.values()), list(masks.values()), mean, std)
        meta.update(mean=mean, std=std)
    modes = dict.fromkeys(SPLITS, "none")
    if binarize:
        modes = {"train": "dynamic", "valid": "fixed", "test": "fixed"}
        for s in ("valid", "test"):
            values[s] = fixed_binarize(values[s], EVAL_BINARIZE_SEEDS[s])

    def split(s):
        m = masks[s]
        return SequenceSplit(torch.from_numpy(values[s]), None, None if m is None else torch.from_numpy(m),
                             binarize=modes[s])

    return DataBundle(name=name, train=split("train"), valid=split("valid"), test=split("test"),
                      output_type=output_type, input_dim=input_dim, meta=meta)
