"""Checkpoints written atomically (temp file, fsync, rename) and read with clear errors.

A checkpoint is an ordinary ``torch.save`` file (``torch.load`` reads it). ``torch.load``
itself does not check the CRC-32 that ``torch.save`` stores for every record, so a flipped
bit in a tensor would load silently; :func:`load_checkpoint` verifies every record's CRC (and
the zip structure) first, so any truncation or corruption is a :class:`CheckpointError`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import zipfile
from pathlib import Path

import torch

FORMAT_VERSION = 1
# Test hook: seconds to sleep between writing the complete temp file and renaming it over
# the checkpoint (widens the window in which a fault test kills the writer).
_SAVE_DELAY_ENV = "ZF_KERNELS_TEST_SAVE_DELAY"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible run."""


@contextlib.contextmanager
def _with_crc32():
    """torch.save writes a CRC-32 per record unless a user switched it off: keep it on."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    if get is None or get():
        yield
        return
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(False)


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` so that ``path`` is always either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, _with_crc32():
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        delay = float(os.environ.get(_SAVE_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; a checkpoint is ordinary output, as the metrics
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _verify(path: Path) -> None:
    """The zip structure and the CRC-32 of every record."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as exc:   # BadZipFile, EOFError, OSError, ... from a damaged archive
        message = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                              f"{type(exc).__name__}: {message}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                              f"record {bad!r} fails its CRC-32 check")


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _verify(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # unpickling errors come in many types
        message = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                              f"{type(exc).__name__}: {message}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a zf_kernels checkpoint of format "
                              f"version {FORMAT_VERSION}")
    return state
