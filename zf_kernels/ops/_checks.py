"""Argument checks shared by the public ops: each raises a ValueError/TypeError that names
the offending argument and says what was expected, before any kernel runs."""
from __future__ import annotations

import contextlib
import contextvars

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Checks of tensor *values* (NaN in data, class ids in range, 0/1 masks) read the tensor back
# to the host: a GPU synchronisation per check, which a CUDA graph cannot capture. A caller
# that has validated its inputs already (the trainer's CUDA-graph step checks each batch on
# its host copy) turns them off for a block; shape, dtype and device checks always run.
_VALUE_CHECKS = contextvars.ContextVar("zf_kernels_value_checks", default=True)
# The same flag as torch.compile reads it: dynamo cannot trace ContextVar.get (a graph break at
# every check, trusted or not); a module global it traces and guards on (changing it recompiles).
# Under torch.compile the flag is thus the innermost assume_valid_inputs() entered in any thread.
_value_checks_traced = True


@contextlib.contextmanager
def assume_valid_inputs():
    """Within this block the ops and the models skip the checks of tensor values (those
    that synchronise with the GPU); the caller vouches for the values. Nestable."""
    global _value_checks_traced
    token, traced = _VALUE_CHECKS.set(False), _value_checks_traced
    _value_checks_traced = False
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)
        _value_checks_traced = traced


def value_checks_enabled() -> bool:
    """False inside ``assume_valid_inputs()``."""
    if torch.compiler.is_compiling():
        return _value_checks_traced
    return _VALUE_CHECKS.get()


def values_readable(*tensors) -> bool:
    """Whether an op may check these tensors' values: value checks on, and no tensor inside a
    functorch transform (vmap and grad cannot read a value back: ``.item()`` raises there)."""
    if not value_checks_enabled():
        return False
    return not any(isinstance(t, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t)
                   for t in tensors)


def check_tensor(name: str, t, *, ndim: int | None = None, min_ndim: int | None = None,
                 floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, shape, where: str = "") -> None:
    """``where``: where the expected sizes come from, so that a wrong *other* argument shows."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{where}, got {tuple(t.shape)}")


def check_same(names_and_tensors, *, dtype: bool = True) -> None:
    """All tensors on one device and (optionally) of one dtype."""
    items = [(n, t) for n, t in names_and_tensors if t is not None]
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; put all arguments on one device")
        if dtype and t.dtype != t0.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {t0.dtype}; use one dtype for all arguments")


def check_mask(mask, lead_shape, ref: torch.Tensor, name: str = "mask"):
    """A mask multiplies per-position results: it must broadcast to ``lead_shape``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != ref.device:
        raise ValueError(f"{name} is on {mask.device} but the data is on {ref.device}")
    if mask.is_complex():    # cast to a real dtype below, its imaginary part silently dropped
        raise TypeError(f"{name} must be a real (bool, integer or floating) tensor, got {mask.dtype}")
    try:
        shape = torch.broadcast_shapes(mask.shape, tuple(lead_shape))
    except RuntimeError:
        shape = None
    if shape != torch.Size(lead_shape):
        raise ValueError(f"{name} must broadcast to the leading shape {tuple(lead_shape)} "
                         f"(the input shape without its last dim), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool or not mask.dtype.is_floating_point:
        mask = mask.to(ref.dtype if ref.dtype.is_floating_point else torch.float32)
    return mask
