"""Plain-PyTorch reference of the clamped LeakyReLU (the model's MLP activation, and with
slope 1 its clamp of the distribution parameters), and of the clamp itself.

The gradient convention at the clamp's bounds is zf_kernels' own, fixed whatever the torch
version: the gradient passes on the closed interval [-bound, bound] (0 outside it and at NaN).
torch.clamp's autograd did the same up to torch 2.13; torch 2.14 gives 0 at the bounds (the
minimum-norm subgradient), so the references spell the convention out instead of inheriting
it, and every kernel (Triton, CUDA) keeps to it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clamp_ref(x: torch.Tensor, bound: float) -> torch.Tensor:
    """``torch.clamp(x, -bound, bound)`` in value; its gradient passes where
    ``-bound <= x <= bound`` (the bounds included) and is 0 elsewhere, NaN included."""
    inside = (x >= -bound) & (x <= bound)
    return torch.where(inside, x, torch.clamp(x, -bound, bound).detach())


def leaky_clamp_ref(x: torch.Tensor, slope: float, bound: float) -> torch.Tensor:
    """``clamp(leaky_relu(x, slope), -bound, bound)``: leaky_relu's gradient is ``slope`` at
    x <= 0 (torch's), the clamp's that of ``clamp_ref``; NaN stays NaN with gradient 0."""
    return clamp_ref(F.leaky_relu(x, slope), bound)
