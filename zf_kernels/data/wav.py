"""Speech data from raw audio folders: TIMIT / Blizzard as WAV or NIST SPHERE files -> a DataBundle.

**Files** (:func:`read_audio`): RIFF/WAVE with integer PCM of 8 (unsigned), 16, 24 or 32 bits,
IEEE float of 32 or 64 bits (format codes 1 and 3, and WAVE_FORMAT_EXTENSIBLE with either
subformat), and NIST SPHERE (``NIST_1A``: the original TIMIT ``.WAV`` files) with 2, 3 or
4-byte PCM in either byte order. Integer samples are scaled by ``2**(bits - 1)`` to [-1, 1)
(8-bit: ``(v - 128) / 128``), exactly up to 24 bits (32-bit values are rounded to float32, so
the largest ones become 1.0); float samples are kept as stored (they may exceed [-1, 1]).
Several channels are mixed down to mono by averaging them. Shorten-compressed SPHERE files
(as TIMIT ships on its CD) must be decompressed first (e.g. ``sph2pipe -f rif``).

**Folders** (:func:`load_wav_folder`): every ``*.wav`` file below the folder (any case, hidden
files skipped; of a converted pair ``X.WAV`` + ``X.WAV.wav`` only the latter), sorted by
relative path so runs are reproducible. Splits come from top-level
subfolders named ``train``, ``valid`` / ``validation`` / ``dev`` and ``test`` (any case: TIMIT
ships ``TRAIN/`` and ``TEST/``); a missing valid (test) split is the last 5% of the training
files (at least one); with no split folders at all the sorted files are split 90/5/5.

**Frames and sequences**: a file's waveform is cut into non-overlapping frames of
``frame_size`` samples (a last partial frame is dropped); a sequence is ``seq_len + 1``
consecutive frames ``f_0..f_L`` with input ``u = f_0..f_{L-1}`` and target ``x = f_1..f_L``
(``u_t = x_{t-1}``, as the authors' ``.npz``); consecutive sequences of a file share one frame,
so every frame but a file's first is a target exactly once. A file's tail too short for a whole
sequence is dropped in train (training batches stay full) and kept in valid / test as one
right-padded, masked sequence, so evaluation covers all the audio. Files of fewer than two
frames carry no target and are skipped (counted in ``meta["skipped_files"]``). Each split's
``recording`` says which file each sequence came from: evaluation sums a file's sequences
into a bound per recording (the unit of the published TIMIT log-likelihood; the authors'
Blizzard results are per 8,000-sample sequence, 40 frames of 200: per sequence here);
with ``seq_len`` 40 its sequences are the windows of the authors' ``eval_timit.py``, each
scored from zero states.

**Normalisation** as :func:`zf_kernels.data.npz.load_speech_npz`: one global mean / std of the
valid training targets, applied to ``u`` and ``x`` of every split (padding stays 0), stored
in ``meta`` with ``frame_size``, ``seq_len``, ``sample_rate`` and the files per split.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from .batching import DataBundle, SequenceSplit
from .npz import HOLDOUT_FRACTION, SPLITS, _global_stats, _normalize

AUDIO_SUFFIX = ".wav"
# folder name (lower case) -> split
SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid", "dev": "valid", "test": "test"}

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# the 14 bytes after the format code in the SubFormat GUID of WAVE_FORMAT_EXTENSIBLE
_KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")


# ------------------------------------------------------------------------ one file

def _int_samples(data: bytes, n_bytes: int, big_endian: bool, path) -> np.ndarray:
    """Signed integers of ``n_bytes`` each (unsigned for 8-bit) scaled to [-1, 1), float32."""
    order = ">" if big_endian else "<"
    if n_bytes == 1:   # 8-bit WAV is unsigned, centred on 128
        return ((np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0)
    if n_bytes == 3:   # no 24-bit dtype: place the 3 bytes in the top of an int32, shift back (sign-extends)
        b = np.frombuffer(data, np.uint8).reshape(-1, 3)
        if big_endian:
            b = b[:, ::-1]
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b
        v = wide.view("<i4").reshape(-1) >> 8
    elif n_bytes in (2, 4):
        v = np.frombuffer(data, f"{order}i{n_bytes}")
    else:
        raise ValueError(f"path {path}: {8 * n_bytes}-bit integer samples are not supported "
                         f"(expected 8, 16, 24 or 32 bits)")
    # float64 on the way: int32 / 2**31 is not exact in float32 arithmetic before the final cast
    return (v.astype(np.float64) / float(2 ** (8 * n_bytes - 1))).astype(np.float32)


def _float_samples(data: bytes, n_bytes: int, path) -> np.ndarray:
    if n_bytes not in (4, 8):
        raise ValueError(f"path {path}: {8 * n_bytes}-bit float samples are not supported (expected 32 or 64 bits)")
    v = np.frombuffer(data, f"<f{n_bytes}")
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"path {path}: non-finite sample {v[i]} at index {i} (expected finite float audio)")
    with np.errstate(over="ignore"):
        out = v.astype(np.float32)
    if not np.isfinite(out).all():
        i = int(np.argmax(~np.isfinite(out)))
        raise ValueError(f"path {path}: sample {v[i]} at index {i} is beyond the float32 range")
    return out


def _to_mono(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved frames -> their per-frame channel average (mono), float32."""
    if channels == 1:
        return np.ascontiguousarray(samples, dtype=np.float32)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float64).astype(np.float32)


def _read_riff(raw: bytes, path) -> tuple[np.ndarray, int]:
    if len(raw) < 12 or raw[8:12] != b"WAVE":
        raise ValueError(f"path {path}: a RIFF file but not RIFF/WAVE (expected 'WAVE' at byte 8, got {raw[8:12]!r})")
    fmt = data = None
    pos = 12
    while pos + 8 <= len(raw):   # chunks may come in any order; unknown ones (LIST, fact, ...) are skipped
        cid, size = raw[pos:pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        body = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt " and fmt is None:
            fmt = body
        elif cid == b"data" and data is None:
            if len(body) < size:
                raise ValueError(f"path {path}: truncated data chunk: header says {size} bytes, "
                                 f"the file holds {len(body)}")
            data = body
        pos += 8 + size + (size & 1)   # chunks are padded to an even size
    if fmt is None or data is None:
        missing = [n for n, c in (("'fmt '", fmt), ("'data'", data)) if c is None]
        raise ValueError(f"path {path}: RIFF/WAVE without a complete {' and '.join(missing)} chunk")
    if len(fmt) < 16:
        raise ValueError(f"path {path}: 'fmt ' chunk of {len(fmt)} bytes, expected at least 16")
    code, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if code == _EXTENSIBLE:
        if len(fmt) < 40:
            raise ValueError(f"path {path}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk of {len(fmt)} bytes, expected 40")
        sub = fmt[24:40]
        if sub[2:] != _KSDATAFORMAT_TAIL:
            raise ValueError(f"path {path}: WAVE_FORMAT_EXTENSIBLE with an unknown SubFormat GUID {sub.hex()} "
                             f"(expected PCM or IEEE float)")
        code = struct.unpack_from("<H", sub)[0]
    if code not in (_PCM, _FLOAT):
        raise ValueError(f"path {path}: unsupported WAV format code {code:#06x} "
                         f"(expected 1 = PCM, 3 = IEEE float or WAVE_FORMAT_EXTENSIBLE of these)")
    if channels < 1 or rate < 1:
        raise ValueError(f"path {path}: {channels} channels at {rate} Hz (expected >= 1 channel and a positive rate)")
    if bits % 8 or not (bits in (8, 16, 24, 32) if code == _PCM else bits in (32, 64)):
        kind = "PCM (expected 8, 16, 24 or 32)" if code == _PCM else "IEEE float (expected 32 or 64)"
        raise ValueError(f"path {path}: unsupported bit depth {bits} for {kind}")
    n_bytes = bits // 8
    if block_align != channels * n_bytes:
        raise ValueError(f"path {path}: block align {block_align} does not match {channels} channel(s) "
                         f"of {bits} bits (expected {channels * n_bytes})")
    if len(data) % block_align:
        raise ValueError(f"path {path}: truncated data chunk: {len(data)} bytes is not a whole number "
                         f"of {block_align}-byte sample frames")
    samples = (_int_samples(data, n_bytes, False, path) if code == _PCM else _float_samples(data, n_bytes, path))
    return _to_mono(samples, channels), int(rate)


def _sphere_header(raw: bytes, path) -> tuple[dict, int]:
    """The fields of a NIST SPHERE header (name -> int / float / str) and its size in bytes."""
    lines = raw[:64].split(b"\n")
    try:
        header_size = int(lines[1])
    except (IndexError, ValueError):
        raise ValueError(f"path {path}: NIST SPHERE header without its size on the second line") from None
    if header_size < 16 or len(raw) < header_size:
        raise ValueError(f"path {path}: NIST SPHERE header of {header_size} bytes, the file holds {len(raw)}")
    fields = {}
    for line in raw[:header_size].decode("ascii", "replace").split("\n")[2:]:
        line = line.strip()
        if line == "end_head":
            return fields, header_size
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[1].startswith("-"):
            continue   # comments (';') and blank lines
        name, kind, value = parts
        try:
            fields[name] = int(value) if kind == "-i" else float(value) if kind == "-r" else value
        except ValueError:
            raise ValueError(f"path {path}: NIST SPHERE field {name} {kind} has a bad value {value!r}") from None
    raise ValueError(f"path {path}: NIST SPHERE header without 'end_head' in its first {header_size} bytes")


def _read_sphere(raw: bytes, path) -> tuple[np.ndarray, int]:
    f, header_size = _sphere_header(raw, path)
    coding = str(f.get("sample_coding", "pcm"))
    if "shorten" in coding:
        raise ValueError(f"path {path}: shorten-compressed NIST SPHERE (sample_coding {coding}); decompress "
                         f"it first (e.g. 'sph2pipe -f rif in.wav out.wav' or 'w_decode -o pcm in out')")
    if coding != "pcm":
        raise ValueError(f"path {path}: unsupported NIST SPHERE sample_coding {coding!r} (expected 'pcm')")
    for key in ("sample_count", "sample_n_bytes", "sample_rate"):
        if not isinstance(f.get(key), (int, float)):
            raise ValueError(f"path {path}: NIST SPHERE header without the numeric field {key}")
    count, n_bytes, rate = int(f["sample_count"]), int(f["sample_n_bytes"]), int(f["sample_rate"])
    channels = int(f.get("channel_count", 1))
    if n_bytes not in (2, 3, 4):
        raise ValueError(f"path {path}: NIST SPHERE sample_n_bytes {n_bytes} is not supported (expected 2, 3 or 4)")
    if channels < 1 or rate < 1:
        raise ValueError(f"path {path}: {channels} channels at {rate} Hz (expected >= 1 channel and a positive rate)")
    order = str(f.get("sample_byte_format", ""))
    if order not in ("01", "10"):
        raise ValueError(f"path {path}: NIST SPHERE sample_byte_format {order!r} "
                         f"(expected '01' = little endian or '10' = big endian)")
    if count < 1:
        raise ValueError(f"path {path}: zero samples (expected audio)")
    need = count * channels * n_bytes
    data = raw[header_size:header_size + need]
    if len(data) < need:
        raise ValueError(f"path {path}: truncated NIST SPHERE data: sample_count {count} x {channels} channel(s) "
                         f"x {n_bytes} bytes = {need} bytes, the file holds {len(data)}")
    return _to_mono(_int_samples(data, n_bytes, order == "10", path), channels), rate


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)`` of a RIFF/WAVE or NIST SPHERE file: float32 mono ``(n,)``
    (integers scaled to [-1, 1), channels averaged; see the module docstring). A missing path
    raises FileNotFoundError; every problem with the file ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} does not exist or is not a file")
    raw = path.read_bytes()
    if raw[:4] == b"RIFF":
        samples, rate = _read_riff(raw, path)
    elif raw[:7] == b"NIST_1A":
        samples, rate = _read_sphere(raw, path)
    else:
        raise ValueError(f"path {path}: not a RIFF/WAVE or NIST SPHERE file "
                         f"(expected 'RIFF' or 'NIST_1A' at the start, got {raw[:8]!r})")
    if samples.size == 0:
        raise ValueError(f"path {path}: zero samples (expected audio)")
    return samples, rate


# ------------------------------------------------------------------------ a folder

def _audio_files(root: Path) -> list[Path]:
    """Every ``*.wav`` (any case) below ``root``, hidden files and folders skipped, sorted
    by relative path (independent of the file system's listing order)."""
    out, seen = [], set()
    # symlinked folders are followed (data sets are often linked in); each real folder once, so a loop ends
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names = {f for f in filenames if f.lower().endswith(AUDIO_SUFFIX) and not f.startswith(".")}
        # a converted twin: many TIMIT copies hold SA1.WAV (SPHERE) beside SA1.WAV.wav (RIFF);
        # the same audio twice would count double, so the RIFF twin is read and its source skipped
        names -= {f[: -len(AUDIO_SUFFIX)] for f in names if f[: -len(AUDIO_SUFFIX)] in names}
        out += [Path(dirpath, f) for f in names]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _split_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """split -> its files, and split -> where they came from (a folder or the train files)."""
    folders = {}
    for child in sorted(root.iterdir()):
        s = SPLIT_FOLDERS.get(child.name.lower())
        if s is not None and child.is_dir():
            if s in folders:
                raise ValueError(f"path {root}: folders {folders[s].name!r} and {child.name!r} are both the {s} split")
            folders[s] = child
    files = _audio_files(root)
    if not files:
        # FileNotFoundError: nothing to read (a folder given where a file or WAVs were expected)
        raise FileNotFoundError(f"path {root} is a folder without *.wav files and not a file "
                                f"(expected a folder of WAV / SPHERE files or an .npz file)")
    if not folders:
        split, source = {"train": files}, {"train": "all files"}
    else:
        if "train" not in folders:
            raise ValueError(f"path {root}: split folders {sorted(p.name for p in folders.values())} "
                             f"but no train folder (expected one named 'train', any case)")
        split, source = {}, {}
        for s, folder in folders.items():
            split[s] = [p for p in files if folder in p.parents]
            source[s] = folder.name
            if not split[s]:
                raise ValueError(f"path {root}: the {s} folder {folder.name!r} holds no *.wav files")
        outside = [p for p in files if not any(f in p.parents for f in folders.values())]
        if outside:
            raise ValueError(f"path {root}: {len(outside)} *.wav file(s) outside the split folders "
                             f"{sorted(p.name for p in folders.values())}, e.g. {outside[0]}; "
                             f"move them into a split folder")
    missing = [s for s in ("valid", "test") if s not in split]
    if missing:
        _hold_out(root, split, source, missing)
    return split, source


def _hold_out(root, split, source, missing):
    """Hold ``missing`` splits (valid, test) out of ``split["train"]``, ~HOLDOUT_FRACTION of its
    files each. Where the files sit in folders small beside that share (TIMIT's TRAIN/DR*/SPEAKER/:
    10 files a speaker, 231 to hold out) whole folders go, evenly spread over the sorted folders:
    no speaker on both sides, every dialect region in each split. Else (a flat folder, or a few
    big ones) the last files of the sorted list: test last, valid before it."""
    train = split["train"]
    k = max(1, round(HOLDOUT_FRACTION * len(train)))
    if len(train) - k * len(missing) < 1:
        raise ValueError(f"path {root}: {len(train)} training file(s), too few to hold out "
                         f"{' and '.join(missing)}; need at least {1 + len(missing)} files "
                         f"(or give {' and '.join(missing)} folder(s))")
    groups: dict = {}
    for p in train:
        groups.setdefault(p.parent, []).append(p)
    folders = sorted(groups)
    per_split = max(1, round(k * len(folders) / len(train)))   # k files in folders of the mean size
    if len(train) / len(folders) <= k and len(folders) - per_split * len(missing) >= 1:
        stride = len(folders) / per_split
        taken = set()
        for j, s in enumerate(missing):   # split j of n takes the folders at (i + (j+1)/(n+1)) * stride
            picks = [folders[int((i + (j + 1) / (len(missing) + 1)) * stride)] for i in range(per_split)]
            split[s] = [p for f in picks for p in groups[f]]
            taken.update(picks)
            source[s] = f"{per_split} of the {len(folders)} train folders, spread over them"
        split["train"] = [p for p in train if p.parent not in taken]
        return
    for s in reversed(missing):   # "test" first off the end, then "valid"
        split[s], train = train[-k:], train[:-k]
        source[s] = f"last {k} of the train files"
    split["train"] = train


def _frame_counts(n_frames: int, seq_len: int, keep_tail: bool) -> tuple[int, int]:
    """(whole sequences, target steps of the padded tail sequence or 0) of a file."""
    targets = n_frames - 1
    full, tail = divmod(targets, seq_len)
    return full, (tail if keep_tail else 0)


def _build_split(files: list[Path], lengths: list[int], frame_size: int, seq_len: int, keep_tail: bool):
    """u, x (N, L, D) float32, the mask (N, L) (None when no sequence is padded) and the
    recording (N,) int64 (the file's index in ``files``) of one split; ``lengths`` are the
    files' frame counts from the first pass."""
    counts = [_frame_counts(n, seq_len, keep_tail) if n >= 2 else (0, 0) for n in lengths]
    per_file = [full + (tail > 0) for full, tail in counts]
    n_seq = sum(per_file)
    L, D = seq_len, frame_size
    u = np.zeros((n_seq, L, D), np.float32)
    x = np.zeros((n_seq, L, D), np.float32)
    mask = np.ones((n_seq, L), np.float32)
    recording = np.repeat(np.arange(len(files), dtype=np.int64), per_file)
    i = 0
    for path, n_frames, (full, tail) in zip(files, lengths, counts):
        if full == 0 and tail == 0:
            continue
        samples, _ = read_audio(path)   # second read: only one file's waveform is ever held
        frames = samples[:n_frames * D].reshape(n_frames, D)
        if full:
            # sequence j covers frames jL .. jL+L: inputs jL.., targets jL+1.. (one frame shared with j+1)
            u[i:i + full] = frames[:full * L].reshape(full, L, D)
            x[i:i + full] = frames[1:full * L + 1].reshape(full, L, D)
            i += full
        if tail:
            start = full * L
            u[i, :tail] = frames[start:start + tail]
            x[i, :tail] = frames[start + 1:start + 1 + tail]
            mask[i, tail:] = 0
            i += 1
    assert i == n_seq
    return u, x, (mask if (mask == 0).any() else None), recording


def load_wav_folder(path: str | os.PathLike, *, name: str = "timit", frame_size: int = 200, seq_len: int = 40,
                    normalize: bool = True) -> DataBundle:
    """A folder of WAV / NIST SPHERE files as a speech DataBundle (see the module docstring):
    ``u``/``x`` (N, seq_len, frame_size), output type "gaussian". Errors: FileNotFoundError for
    a missing path or a folder without audio files; ValueError naming the file otherwise."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"path {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"path {root} is not a folder (expected a folder of *.wav files)")
    for arg, v in (("frame_size", frame_size), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {v!r}")
    frame_size, seq_len = int(frame_size), int(seq_len)
    files, source = _split_files(root)

    # first pass: check every file and the common sample rate, count frames; the waveforms are
    # not kept (a TIMIT train set is ~1e8 samples: holding them and u, x at once triples memory)
    rate = rate_file = None
    lengths, skipped = {}, {}
    for s in SPLITS:
        lengths[s] = []
        for f in files[s]:
            samples, r = read_audio(f)
            if rate is None:
                rate, rate_file = r, f
            elif r != rate:
                raise ValueError(f"path {root}: files of different sample rates: {rate_file} at {rate} Hz, "
                                 f"{f} at {r} Hz (expected one rate; resample them first)")
            lengths[s].append(len(samples) // frame_size)
        skipped[s] = sum(n < 2 for n in lengths[s])   # fewer than 2 frames: no (input, target) pair

    built = {}
    for s in SPLITS:
        u, x, mask, recording = _build_split(files[s], lengths[s], frame_size, seq_len, keep_tail=(s != "train"))
        if len(x) == 0:
            need = (seq_len + 1 if s == "train" else 2) * frame_size
            raise ValueError(f"path {root}: no {s} sequence: each of the {len(files[s])} {s} file(s) is shorter "
                             f"than {need} samples ({'seq_len + 1' if s == 'train' else 'two'} frames of "
                             f"{frame_size}); give longer files or a smaller seq_len / frame_size")
        built[s] = (u, x, mask, recording)

    mean, std = 0.0, 1.0
    if normalize:
        # the training split has no padding (its tails are dropped), so all its targets count
        mean, std = _global_stats([built["train"][1]], [built["train"][2]])
        if not std > 0:
            raise ValueError(f"path {root}: the training waveform is constant, cannot normalise (pass normalize=False)")
        _normalize([b[k] for k in (0, 1) for b in built.values()],
                   [b[2] for k in (0, 1) for b in built.values()], mean, std)

    def split(s):
        u, x, m, recording = built[s]
        return SequenceSplit(torch.from_numpy(x), torch.from_numpy(u), None if m is None else torch.from_numpy(m),
                             recording=torch.from_numpy(recording))

    meta = {"frame_size": frame_size, "seq_len": seq_len, "sample_rate": int(rate), "mean": mean, "std": std,
            "normalized": bool(normalize), "source": "wav",
            "files": {s: len(files[s]) for s in SPLITS}, "split_source": source,
            "skipped_files": skipped, "sequences": {s: int(len(built[s][1])) for s in SPLITS},
            # target frames of train files' tails too short for a whole sequence (see the docstring)
            "train_tail_frames_dropped": int(sum((n - 1) % seq_len for n in lengths["train"] if n >= 2))}
    return DataBundle(name=name, train=split("train"), valid=split("valid"), test=split("test"),
                      output_type="gaussian", input_dim=frame_size, meta=meta)
