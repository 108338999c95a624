"""The Triton ``leaky_clamp`` as torch.library custom ops: the form torch.compile traces (as
``lstm/triton_op.py`` for the LSTM: eagerly an autograd.Function, opaque to dynamo, a graph
break per call; these ops run the same kernels, ``triton._leaky_clamp_forward`` / ``_backward``).

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
import torch
from torch import Tensor

from . import triton as tl_act


@torch.library.custom_op("zf_kernels::triton_leaky_clamp_forward", mutates_args=())
def leaky_clamp_forward(x: Tensor, slope: float, bound: float) -> Tensor:
    return tl_act._leaky_clamp_forward(x, slope, bound)


@leaky_clamp_forward.register_fake
def _(x, slope, bound):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("zf_kernels::triton_leaky_clamp_backward", mutates_args=())
def leaky_clamp_backward(grad_y: Tensor, x: Tensor, slope: float, bound: float) -> Tensor:
    return tl_act._leaky_clamp_backward(grad_y, x, slope, bound)


@leaky_clamp_backward.register_fake
def _(grad_y, x, slope, bound):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, slope, bound = inputs
    ctx.save_for_backward(x)
    ctx.slope, ctx.bound = slope, bound


def _backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    return leaky_clamp_backward(grad_y, x, ctx.slope, ctx.bound), None, None


leaky_clamp_forward.register_autograd(_backward, setup_context=_setup_context)


def leaky_clamp(x, slope, bound):
    """:func:`zf_kernels.ops.activations.triton.leaky_clamp` through the custom ops."""
    return leaky_clamp_forward(x, float(slope), float(bound))
