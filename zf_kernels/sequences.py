"""Helpers every sequence model of the package shares: checking a time-major batch,
shifting targets into inputs, and reversing right-padded sequences in place."""
from __future__ import annotations

import torch

from .ops._checks import check_tensor, value_checks_enabled


def check_batch(y, u, mask, input_dim: int, output_type: str) -> None:
    """Validate targets ``y`` (``(T, B, D)`` floats, or ``(T, B)`` token ids for categorical
    data), optional inputs ``u`` of the same shape and a right-padded 0/1 ``mask (T, B)``.
    Inside ``ops.assume_valid_inputs()`` only shapes and dtypes are checked (no GPU sync)."""
    if output_type == "categorical":
        check_tensor("y", y, ndim=2, floating=False)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer token ids for categorical output, got {y.dtype}")
    else:
        check_tensor("y", y, ndim=3)
        if y.shape[-1] != input_dim:
            raise ValueError(f"y must have shape (T, B, {input_dim}), got {tuple(y.shape)}")
    if y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"y must have at least one step and one sequence, got shape {tuple(y.shape)}")
    if u is not None and u.shape != y.shape:
        raise ValueError(f"u must have the shape of y {tuple(y.shape)}, got {tuple(u.shape)}")
    if mask is not None:
        check_tensor("mask", mask, ndim=2, floating=False)
        if tuple(mask.shape) != tuple(y.shape[:2]):
            raise ValueError(f"mask must have shape (T, B) = {tuple(y.shape[:2])}, got {tuple(mask.shape)}")
    if value_checks_enabled():
        check_batch_values(y, u, mask, input_dim, output_type)


def check_batch_values(y, u, mask, input_dim: int, output_type: str) -> None:
    """The value half of ``check_batch`` (finite frames, token ids in range, a right-padded
    0/1 mask): each check reads the tensor back, so on a GPU each is a synchronisation."""
    if output_type == "categorical":
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= input_dim):
            raise ValueError(f"y token ids must lie in [0, {input_dim - 1}], "
                             f"got [{int(y.min())}, {int(y.max())}]")
    elif not torch.isfinite(y).all():
        raise ValueError("y contains NaN or Inf values")
    if u is not None and u.dtype.is_floating_point and not torch.isfinite(u).all():
        raise ValueError("u contains NaN or Inf values")
    if mask is not None:
        m = mask.float()
        if ((m != 0) & (m != 1)).any():
            raise ValueError("mask must hold only 0 and 1")
        if (m[1:] > m[:-1]).any():
            raise ValueError("mask must be right-padded: each column 1s then 0s")


def has_padding(mask) -> bool:
    """Whether some sequence of the batch is shorter than ``T`` (the backward LSTM must then
    read each sequence from its own last step). Inside ``ops.assume_valid_inputs()`` the caller
    has passed ``mask=None`` for a batch without padding, so any mask counts as padded and the
    answer needs no GPU sync; both paths give the same numbers on an unpadded batch."""
    if mask is None:
        return False
    return not value_checks_enabled() or not bool((mask != 0).all())


def shift_inputs(y, start_token: int | None = None):
    """``u_t = y_{t-1}`` with a zero frame at t = 1 (or ``start_token`` for token ids)."""
    start = torch.zeros_like(y[:1]) if start_token is None else torch.full_like(y[:1], start_token)
    return torch.cat([start, y[:-1]], 0)


def padded_flip_index(mask) -> torch.Tensor:
    """``(T, B)`` time index that reverses each column's valid prefix and leaves its padding
    in place. It is its own inverse: gather with it once to reverse, once more to undo."""
    T = mask.shape[0]
    lengths = (mask != 0).sum(0)
    t = torch.arange(T, device=mask.device).unsqueeze(1)
    return torch.where(t < lengths, lengths - 1 - t, t)


def gather_time(x, index):
    """``x (T, B, ...)`` re-ordered along time by ``index (T, B)``."""
    idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)
