"""Fused Triton clamped LeakyReLU: one elementwise kernel each way instead of torch's two
forward (leaky_relu, clamp) and up to six backward kernels (leaky_relu_backward; clamp's
ge, le, logical_and, where and its scalar).

Forward computes in float32 (float64 for float64 inputs) and rounds once to the input dtype,
as torch's leaky_relu does for half inputs; the clamp is exact. Backward saves only ``x`` and
recomputes the mask: ``grad * 1`` where ``0 < x`` and ``leaky(x)`` in ``[-bound, bound]``,
``grad * slope`` where ``x <= 0`` inside, ``0`` outside or for NaN, whatever ``grad`` is
(torch's conventions). Inputs that are not contiguous
are copied once; outputs and gradients are contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import fused_backward
from .. import _triton_common as common   # its leaky_clamp (the chains' own) and acc_type

_BLOCK = 1024   # elements per program


@triton.heuristics({"ACC": lambda a: common.acc_type(a["y_ptr"].dtype)})
@triton.jit(do_not_specialize=["numel"])
def _leaky_clamp_fwd_kernel(x_ptr, y_ptr, numel, SLOPE: tl.constexpr, BOUND: tl.constexpr,
                            ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC)
    tl.store(y_ptr + offs, common.leaky_clamp(x, SLOPE, BOUND).to(y_ptr.dtype.element_ty), mask=ok)


@triton.heuristics({"ACC": lambda a: common.acc_type(a["dx_ptr"].dtype)})
@triton.jit(do_not_specialize=["numel"])
def _leaky_clamp_bwd_kernel(g_ptr, x_ptr, dx_ptr, numel, SLOPE: tl.constexpr, BOUND: tl.constexpr,
                            ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
    # torch's two backward steps: the clamp passes g on its closed interval (0 elsewhere and
    # for NaN, whatever g), then leaky_relu scales it by SLOPE where x <= 0
    y = tl.where(x >= 0, x, x * SLOPE)
    hi = common.bound_like(y, BOUND)
    inside = (y >= -hi) & (y <= hi)
    dx = tl.where(inside, tl.where(x > 0, g, g * SLOPE), 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _launch(kernel, numel, *args, slope, bound, dtype):
    if numel:
        # torch clamps to the bound in x's dtype (a bfloat16 tensor's gradient passes at
        # bfloat16(0.1) > 0.1): so do the kernels, which take it in their float32 / float64
        bound = torch.tensor(bound, dtype=dtype).item()
        kernel[(triton.cdiv(numel, _BLOCK),)](*args, numel, SLOPE=slope, BOUND=bound, BLOCK=_BLOCK, num_warps=4,
                                              **common.LAUNCH_OPTIONS)


def _leaky_clamp_forward(x, slope: float, bound: float):
    """``y``; both front ends (the Function, the custom op in ``triton_op.py``) call it."""
    xc = x.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(_leaky_clamp_fwd_kernel, xc.numel(), xc, y, slope=slope, bound=bound, dtype=x.dtype)
    return y


def _leaky_clamp_backward(grad_y, x, slope: float, bound: float):
    xc = x.contiguous()
    dx = torch.empty(xc.shape, dtype=xc.dtype, device=xc.device)
    _launch(_leaky_clamp_bwd_kernel, xc.numel(), grad_y.contiguous(), xc, dx, slope=slope, bound=bound,
            dtype=x.dtype)
    return dx


class TritonLeakyClampFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope, bound):
        ctx.save_for_backward(x)
        ctx.slope, ctx.bound = slope, bound
        return _leaky_clamp_forward(x, slope, bound)

    @staticmethod
    @fused_backward("leaky_clamp", "triton")
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return _leaky_clamp_backward(grad_y, x, ctx.slope, ctx.bound), None, None


def leaky_clamp(x, slope, bound):
    """``clamp(leaky_relu(x, slope), -bound, bound)`` (fused Triton; see ``leaky_clamp_ref``)."""
    return TritonLeakyClampFunction.apply(x, float(slope), float(bound))
