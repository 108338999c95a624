"""Helpers every sequence model of the package shares: checking a time-major batch,
shifting targets into inputs, and reversing right-padded sequences in place."""
from __future__ import annotations

import math

import torch

from .ops._checks import check_tensor, value_checks_enabled


def check_batch(y, u, mask, input_dim: int, output_type: str, like=None) -> None:
    """Validate targets ``y`` (``(T, B, D)`` floats, or ``(T, B)`` token ids for categorical
    data), optional inputs ``u`` of the same shape and a right-padded 0/1 ``mask (T, B)``;
    ``like`` (a parameter of the model): floating data in its dtype, everything on its device.
    Inside ``ops.assume_valid_inputs()`` only shapes and dtypes are checked (no GPU sync)."""
    _check_sequences("y", y, input_dim, output_type)
    if u is not None and u.shape != y.shape:
        raise ValueError(f"u must have the shape of y {tuple(y.shape)}, got {tuple(u.shape)}")
    if like is not None:   # else the first kernel's check named its own arguments (weight_ih, x)
        for name, t in (("y", y), ("u", u), ("mask", mask)):
            if t is None:
                continue
            if t.device != like.device:
                raise ValueError(f"{name} is on {t.device} but the model is on {like.device}: move one of them")
            if name != "mask" and t.dtype.is_floating_point and t.dtype != like.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but the model's parameters have {like.dtype}: "
                                f"cast the data ({name}.to({like.dtype})) or the model (model.to({t.dtype}))")
    if mask is not None:
        check_tensor("mask", mask, ndim=2, floating=False)
        if tuple(mask.shape) != tuple(y.shape[:2]):
            raise ValueError(f"mask must have shape (T, B) = {tuple(y.shape[:2])}, got {tuple(mask.shape)}")
    if value_checks_enabled():
        check_batch_values(y, u, mask, input_dim, output_type)


def _check_sequences(name: str, y, input_dim: int, output_type: str) -> None:
    """Shape and dtype of time-major data ``name``: ``(T, B, input_dim)`` floats, or ``(T, B)``
    integer token ids for categorical data, with T, B >= 1."""
    if output_type == "categorical":
        check_tensor(name, y, ndim=2, floating=False)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids for categorical output, got {y.dtype}")
    else:
        check_tensor(name, y, ndim=3)
        if y.shape[-1] != input_dim:
            raise ValueError(f"{name} must have shape (T, B, {input_dim}), got {tuple(y.shape)}")
    if y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"{name} must have at least one step and one sequence, got shape {tuple(y.shape)}")


def _check_sequence_values(name: str, y, input_dim: int, output_type: str) -> None:
    if output_type == "categorical":
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= input_dim):
            raise ValueError(f"{name} token ids must lie in [0, {input_dim - 1}], "
                             f"got [{int(y.min())}, {int(y.max())}]")
    elif not torch.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    elif output_type == "bernoulli" and y.numel() and ((y < 0) | (y > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1] for Bernoulli output, got values in "
                         f"[{float(y.min()):g}, {float(y.max()):g}]")


def check_batch_values(y, u, mask, input_dim: int, output_type: str) -> None:
    """The value half of ``check_batch`` (finite frames, token ids in range, a right-padded
    0/1 mask): each check reads the tensor back, so on a GPU each is a synchronisation."""
    _check_sequence_values("y", y, input_dim, output_type)
    if u is not None and u.dtype.is_floating_point and not torch.isfinite(u).all():
        raise ValueError("u contains NaN or Inf values")
    if mask is not None:
        m = mask.float()
        if ((m != 0) & (m != 1)).any():
            raise ValueError("mask must hold only 0 and 1")
        if (m[1:] > m[:-1]).any():
            raise ValueError("mask must be right-padded: each column 1s then 0s")


def check_sample_args(steps: int, batch_size: int, prefix, input_dim: int, output_type: str, like: torch.Tensor,
                      temperature: float = 1.0):
    """The arguments of a model's ``sample``: ``steps`` and ``batch_size`` >= 1, a finite
    ``temperature`` >= 0 (0: the means, and the most likely token), and the ``prefix``: data (time-major, as ``y`` of ``forward``) for the
    first ``K <= steps`` steps of ``batch_size`` sequences, which the model reads instead of its
    own samples. Returns the prefix on ``like``'s device, in its dtype (token ids as int64); None
    stays None."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    # -1 flipped the noise's sign (a Gaussian model sampled as at 1), NaN failed in multinomial
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if prefix is None:
        return None
    _check_sequences("prefix", prefix, input_dim, output_type)
    K, B = prefix.shape[:2]
    if B != batch_size:
        raise ValueError(f"prefix must hold batch_size = {batch_size} sequences (its dim 1), got {B}")
    if K > steps:
        raise ValueError(f"prefix must have at most steps = {steps} steps (its dim 0), got {K}")
    if value_checks_enabled():
        _check_sequence_values("prefix", prefix, input_dim, output_type)
    dtype = torch.long if output_type == "categorical" else like.dtype
    return prefix.to(device=like.device, dtype=dtype)


def forced_input(sample, prefix, t: int):
    """What a sampling loop reads next after step ``t``: ``prefix[t]`` while the prefix lasts,
    else its own ``sample``."""
    return prefix[t] if prefix is not None and t < prefix.shape[0] else sample


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
