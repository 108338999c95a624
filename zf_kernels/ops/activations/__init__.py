"""The clamped LeakyReLU of the model's MLPs, ``clamp(leaky_relu(x, slope), -bound, bound)``,
which with ``slope=1`` is also its clamp of the distribution parameters to [-8, 8]."""
from __future__ import annotations

import math

import torch

from .. import _dispatch
from .._checks import check_tensor
from .naive import leaky_clamp_ref

__all__ = ["leaky_clamp"]

# elementwise: under torch.compile "auto" leaves it to inductor (see _dispatch)
_dispatch.register("leaky_clamp", "torch", f"{__name__}.naive:leaky_clamp_ref", compile_traced=True)
_dispatch.register("leaky_clamp", "triton", f"{__name__}.triton:leaky_clamp",
                   traced_form=f"{__name__}.triton_op:leaky_clamp")


def leaky_clamp(x: torch.Tensor, slope: float, bound: float, backend: str = "auto") -> torch.Tensor:
    """``clamp(leaky_relu(x, slope), -bound, bound)``, elementwise, any shape, in ``x``'s dtype.

    Gradient, in every backend and whatever torch's version: ``slope`` at x <= 0, passed where
    the leaky value lies in [-bound, bound] (the bounds included; torch.clamp's own rule gives 0
    there from torch 2.14 on), 0 outside and at NaN (``naive.clamp_ref``).

    >>> leaky_clamp(torch.tensor([-12.0, -1.5, 0.5, 9.0]), 1 / 3, 3.0)
    tensor([-3.0000, -0.5000,  0.5000,  3.0000])
    """
    check_tensor("x", x)
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0 <= slope <= 1:
        raise ValueError(f"slope must be a Python int or float in [0, 1], got {slope!r} ({type(slope).__name__})")
    # comparisons, not math.isfinite: dynamo traces them (isfinite of a float was a graph break)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < math.inf:
        raise ValueError(f"bound must be a finite Python int or float > 0, got {bound!r} ({type(bound).__name__})")
    if x.is_floating_point() and bound > torch.finfo(x.dtype).max:
        # torch.clamp failed deep inside ("cannot be converted to type c10::Half without overflow")
        raise ValueError(f"bound must be at most the largest {x.dtype} value ({torch.finfo(x.dtype).max:g}) "
                         f"for x of that dtype, got {bound!r}")
    return _dispatch.resolve("leaky_clamp", backend, x)(x, slope, bound)
