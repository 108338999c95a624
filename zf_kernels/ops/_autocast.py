"""How the public ops behave under ``torch.autocast`` (mixed precision), for every op family.

Under ``torch.autocast(device_type, dtype)`` -- enabled for the device type of the op's
tensors -- the fused ops follow torch's own autocast policy:

* ``lower_precision`` (``lstm``, ``lstm_cell``, ``zforcing_chain``: GEMM-bound recurrences,
  like ``torch.matmul`` or cuDNN's LSTM): every float16 / bfloat16 / float32 tensor argument
  is cast to the autocast dtype (``torch.get_autocast_dtype(device_type)``), so the op runs
  and returns in that dtype. float64 arguments are left alone, as torch leaves them (mixed
  with lower-precision ones they then fail the op's one-dtype check with a clear error).
* ``float32`` (``reparameterize``, ``gaussian_kl``, ``gaussian_nll``, ``bernoulli_nll``,
  ``categorical_nll``: sampling and likelihoods, like torch's losses): widest type, at least
  float32. float16 / bfloat16 arguments are cast up to float32 (float64, if any argument has
  it, wins), and the result has that dtype.

In both cases the op itself runs with autocast disabled, so the reference backend computes
in the one dtype chosen here instead of being re-autocast operation by operation. The casts
are ordinary ``Tensor.to`` calls, hence differentiable: gradients reach float32 leaves (the
master weights) in float32. Integer tensors (``categorical_nll``'s targets) and non-tensor
arguments are never touched. Outside autocast, or when autocast is enabled only for another
device type, an op is exactly what it is without this module. Unlike torch's own ops, a cast
weight is not cached across calls within one autocast region: ``lstm_cell`` called once per
step casts its ``(4H, H)`` weight each time (cheap next to the step's ``(B, 4H, H)`` GEMM).
"""
from __future__ import annotations

import functools
import itertools

import torch

__all__ = ["lower_precision", "float32"]

_CASTABLE = (torch.float16, torch.bfloat16, torch.float32)
# device types with autocast in every torch build; only others are asked
# torch.amp.is_autocast_available, which torch.compile cannot trace before torch 2.13 (a graph
# break, an error under fullgraph=True: seen with torch 2.11, the GPU machine's)
_AUTOCAST_DEVICE_TYPES = frozenset({"cpu", "cuda"})


def _autocast_dtype(args, kwargs):
    """``(device_type, dtype)`` of an autocast region enabled for the first tensor argument's
    device type, or None."""
    for a in itertools.chain(args, kwargs.values()):
        if isinstance(a, torch.Tensor):
            device_type = a.device.type
            available = device_type in _AUTOCAST_DEVICE_TYPES or torch.amp.is_autocast_available(device_type)
            if available and torch.is_autocast_enabled(device_type):
                return device_type, torch.get_autocast_dtype(device_type)
            return None
    return None


def _cast(a, dtype):
    return a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype in _CASTABLE else a


def _widest(args, kwargs):
    floating = [a.dtype for a in itertools.chain(args, kwargs.values())
                if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return torch.float64 if torch.float64 in floating else torch.float32


def _policy(target):
    """Decorator: under autocast, cast the floating tensor arguments to ``target(autocast
    dtype, args, kwargs)`` and run the op with autocast disabled."""
    def decorate(op):
        @functools.wraps(op)
        def wrapper(*args, **kwargs):
            region = _autocast_dtype(args, kwargs)
            if region is None:
                return op(*args, **kwargs)
            device_type, amp_dtype = region
            dtype = target(amp_dtype, args, kwargs)
            args = tuple(_cast(a, dtype) for a in args)
            kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
            with torch.autocast(device_type, enabled=False):
                return op(*args, **kwargs)
        return wrapper
    return decorate


#: recurrences: run in the autocast dtype
lower_precision = _policy(lambda amp_dtype, args, kwargs: amp_dtype)
#: sampling and likelihoods: run in float32 (or float64 when an argument is float64)
float32 = _policy(lambda amp_dtype, args, kwargs: _widest(args, kwargs))
