"""What a run leaves for people: the metrics file, training-curve plots, samples as pictures
(image data), WAV files (speech) or line plots (other sequences)."""
from __future__ import annotations

import csv
import json
import os
import tempfile
import wave
from pathlib import Path

import numpy as np

# the per-step quantities a training log window averages (besides grad_norm)
TERMS = ("loss", "nll", "kl", "aux", "bwd_nll")


def output_dir(path, flag: str = "--out") -> Path:
    """``path`` as a directory, created if missing; a ValueError naming ``flag`` where a file or
    something unwritable is in the way (mkdir's own error was a traceback)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot create the directory ({exc.strerror})") from exc
    return path


class MetricsLog:
    """Append-only JSONL or CSV log of dict records, each with a ``step``.

    Crash-safe: JSONL records are appended one line per write (a line cut short by a crash
    is ignored when read back); every rewrite (CSV, :meth:`truncate_after`) goes to a temp
    file renamed over the log, so a kill never leaves it half-written."""

    def __init__(self, path, fmt: str = "jsonl"):
        self.path, self.fmt = Path(path), fmt

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        if self.fmt == "jsonl":
            with open(self.path) as f:
                lines = f.readlines()
            records = []
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    if i == len(lines) - 1 and not line.endswith("\n"):
                        break   # the last record, cut short by a crash while it was written
                    raise ValueError(f"metrics file {self.path}: line {i + 1} is not JSON ({exc})") from None
            return records
        with open(self.path, newline="") as f:
            return [{k: _parse(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def truncate_after(self, step: int) -> None:
        """Drop what a resumed run will redo: records of steps after its checkpoint, and the
        end-of-run test summary of the interrupted run."""
        self._rewrite([r for r in self.read() if r.get("step", 0) <= step and r.get("kind") != "test"])

    def write(self, record: dict) -> None:
        if self.fmt == "jsonl":
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            return
        # CSV: a record with new keys rewrites the file with the union of the columns
        self._rewrite(self.read() + [record])

    def _rewrite(self, records: list[dict]) -> None:
        """Replace the log by ``records`` atomically (temp file + rename)."""
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", newline="") as f:
                if self.fmt == "jsonl":
                    f.writelines(json.dumps(r) + "\n" for r in records)
                else:
                    keys = list(dict.fromkeys(k for r in records for k in r))
                    w = csv.DictWriter(f, fieldnames=keys)
                    w.writeheader()
                    w.writerows(records)
            os.chmod(tmp, 0o644)   # mkstemp creates 0600; the log is ordinary readable output
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _parse(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def plot_curves(records: list[dict], path) -> None:
    """Training loss terms against steps, and the valid/test -ELBO at each evaluation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "nll", "kl", "aux", "bwd_nll"):
        pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]   # None: a window of skipped steps
        if pts:
            axes[0].plot(*zip(*pts), label=key)
    axes[0].set(title="training terms (per sequence)", xlabel="step", yscale="symlog")
    for kind in ("valid", "test"):
        pts = [(r["step"], r["neg_elbo"]) for r in records if r.get("kind") == kind]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=f"{kind} -ELBO")
    axes[1].set(title="evaluation (nats per sequence)", xlabel="step")
    for key in ("kl_weight", "aux_weight", "lr"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            axes[2].plot(*zip(*pts), label=key)
    axes[2].set(title="schedules", xlabel="step", yscale="log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_image_grid(images: np.ndarray, path, ncols: int = 8) -> None:
    """``images (N, H, W)`` in [0, 1] as a grid PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    grid = np.ones((nrows * (h + 2), ncols * (w + 2)))
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = img
    plt.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)


def plot_sequences(seqs: np.ndarray, path, n: int = 8) -> None:
    """``seqs (N, T, D)``: the first ``n`` sequences, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(seqs))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.5 * n), squeeze=False)
    for ax, s in zip(axes[:, 0], seqs[:n]):
        ax.plot(s)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_wav(frames: np.ndarray, path, sample_rate: int = 16000) -> None:
    """A waveform (any shape, flattened) as 16-bit mono WAV, scaled to the int16 range if needed."""
    x = np.asarray(frames, dtype=np.float64).reshape(-1)
    peak = np.abs(x).max() if x.size else 0.0
    if 0 < peak <= 1.0:          # float audio in [-1, 1]
        x = x * 32767
    elif peak > 32767:
        x = x / peak * 32767
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())


def _until_eos(ids):
    """A sampled word sequence up to its first end-of-line token (id 0, zf_kernels.data.text)."""
    ids = list(ids)
    return ids[: ids.index(0)] if 0 in ids else ids


def write_samples(samples, means, meta: dict, out_dir, max_wavs: int = 4) -> list[str]:
    """Write generated sequences (``model.sample``'s ``(samples, means)``, time-major) as the data
    set's kind of file in ``out_dir``: an image grid of the means for images (``samples.png``),
    WAV files of the first ``max_wavs`` samples for normalised speech (``sample_<i>.wav``, the
    normalisation undone), token ids for categorical data, as words where ``meta`` has a
    ``vocab`` (``samples.txt``, one sample a line), a plot otherwise
    (``samples_plot.png``). Returns the paths written."""
    out_dir = Path(out_dir)
    n = samples.shape[1]
    if "image_shape" in meta:
        h, w = meta["image_shape"]
        path = out_dir / "samples.png"
        save_image_grid(means.float().permute(1, 0, 2).reshape(n, h, w).cpu().numpy(), path)
        return [str(path)]
    seqs = samples.float().permute(1, 0, *range(2, samples.dim())).cpu().numpy()
    if "mean" in meta and "std" in meta:   # speech: undo the normalisation
        paths = []
        for i in range(min(n, max_wavs)):
            path = out_dir / f"sample_{i}.wav"
            write_wav(seqs[i] * meta["std"] + meta["mean"], path, meta.get("sample_rate", 16000))
            paths.append(str(path))
        return paths
    if seqs.ndim == 2:   # token ids: as words where the data set has a vocabulary (up to <eos>, id 0)
        path = out_dir / "samples.txt"
        vocab = meta.get("vocab")
        if vocab is None:
            lines = (" ".join(map(str, s.astype(int))) for s in seqs)
        else:
            lines = (" ".join(vocab[i] for i in _until_eos(s.astype(int))) for s in seqs)
        path.write_text("\n".join(lines))
        return [str(path)]
    path = out_dir / "samples_plot.png"
    plot_sequences(seqs, path)
    return [str(path)]
