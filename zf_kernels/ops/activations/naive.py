"""Plain-PyTorch reference of the clamped LeakyReLU (the model's MLP activation, and with
slope 1 its clamp of the distribution parameters)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def leaky_clamp_ref(x: torch.Tensor, slope: float, bound: float) -> torch.Tensor:
    """``clamp(leaky_relu(x, slope), -bound, bound)``: torch's gradient conventions (slope at
    x <= 0; the clamp passes its closed interval; NaN stays NaN with gradient 0)."""
    return torch.clamp(F.leaky_relu(x, slope), -bound, bound)
