"""Autograd glue of the CUDA Z-forcing chain (``backend="cuda"``), independent of how its two
recurrence kernels are reached: :mod:`.cuda` passes the torch extension ``zf_kernels._C``; the
CPU tests pass the same kernels compiled as a CPU emulation (``tests/_cuda_emulation.py``), so
this code runs, GEMMs and buffers included, on a machine without a GPU.

Work split (as in the Triton chain, ``triton.py``'s docstring has the math): g(z) is folded into
the gate projection, ``W_comb = W_iz W_gz`` (4H, Z) and ``W_iz b_gz`` added to ``gates_x``
before the loop (one small GEMM each); only the recurrence runs in the kernels (one cooperative
launch per direction, three grid syncs per step, csrc/README.md); the weight and bias gradients
are GEMMs over the flattened T*B dim after the backward loop.

Saved for backward: the outputs h, c, z, mu_q, logvar_q, h0, c0, eps, the weights and W_comb,
the posterior pre-activation s (T, B, M), a uint8 "inside the [-8, 8] clamp" mask (T, B, 2Z)
and the gate pre-activations (T, B, 4H) (the ``gates_x + W_iz b_gz`` buffer, overwritten in
place by the forward kernel: no extra memory). Recomputed: the gate activations (in the
backward kernel), act(s) (after the loop) and g = z W_gz^T + b_gz (one GEMM after the loop).
The backward kernel overwrites the pre-activations with dgates; a second backward through a
retained graph reruns the forward to rebuild them.

bfloat16 (as the Triton chain): every buffer in bfloat16 but the cell states (c0 as the kernels
read it, c, grad_c, dc: float32; ``c`` is returned in bfloat16); products on bfloat16 tensor-core
tiles with float32 accumulation, all arithmetic in float32.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .._autograd import fused_backward
from .._precision import state_dtype
from ._grads import chain_input_grads

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class ChainKernels(Protocol):
    """The two kernels, on contiguous tensors of one dtype (see csrc/chain_kernels.h)."""

    def forward(self, gates, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_comb, w_hh,
                h, c, z, mu, lv, s, okmask) -> None: ...

    def backward(self, grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0, c, lv, eps, okmask, s,
                 w_qh, w_q2, w_comb, w_hh, dparams, ds, grad_eps, dc) -> None: ...


def why_unsupported(gates_x, *rest) -> str | None:
    """Why the CUDA chain cannot run on these tensors (dtype, device), or None."""
    if gates_x.dtype not in SUPPORTED_DTYPES:
        return f"the CUDA zforcing_chain supports float32, float64 and bfloat16, got {gates_x.dtype}"
    if gates_x.device.type != "cuda":
        return f"the CUDA zforcing_chain needs CUDA tensors, got {gates_x.device}"
    return None


def _forward(kernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
             weight_iz, weight_hh, w_comb):
    T, B, four_h = gates_x.shape
    H, M, Z = four_h // 4, weight_qh.shape[0], eps.shape[-1]
    new = lambda *shape: torch.empty(*shape, dtype=gates_x.dtype, device=gates_x.device)  # noqa: E731
    # W_iz b_gz added once for all t; the kernel turns this buffer into the pre-activations
    gates = (gates_x + weight_iz @ bias_gz).contiguous()
    state = state_dtype(gates_x.dtype)
    h, c = new(T, B, H), torch.empty(T, B, H, dtype=state, device=gates_x.device)
    z, mu, lv = new(T, B, Z), new(T, B, Z), new(T, B, Z)
    s = new(T, B, M)
    okmask = torch.empty(T, B, 2 * Z, dtype=torch.uint8, device=gates_x.device)
    kernels.forward(gates, post_x, eps, h0, c0.to(state).contiguous(), weight_qh, weight_q2, bias_q2, w_comb,
                    weight_hh, h, c, z, mu, lv, s, okmask)
    return gates, h, c, z, mu, lv, s, okmask


def _backward(kernels, grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, eps, weight_qh, weight_q2, weight_gz,
              bias_gz, weight_iz, weight_hh, w_comb, gates, h, c, z, lv, s, okmask, need):
    """The gradients of the chain's 12 tensor inputs (None where ``need`` says none); overwrites
    ``gates`` (the pre-activations) with dgates. ``grad_*`` None: that output did not reach the
    loss. Both front ends call it: the eager Function and the custom op (``cuda_op.py``)."""
    T, B, four_h = gates.shape
    H, M, Z = four_h // 4, weight_qh.shape[0], eps.shape[-1]
    state = c.dtype
    outs = ((grad_h, H, gates.dtype), (grad_c, H, state), (grad_z, Z, gates.dtype), (grad_mu, Z, gates.dtype),
            (grad_lv, Z, gates.dtype))
    grad_h, grad_c, grad_z, grad_mu, grad_lv = (
        gates.new_zeros(T, B, n, dtype=dt) if g is None else g.to(dt).contiguous() for g, n, dt in outs)
    new = lambda *shape: torch.empty(*shape, dtype=gates.dtype, device=gates.device)  # noqa: E731
    dparams, ds, grad_eps = new(T, B, 2 * Z), new(T, B, M), new(T, B, Z)
    dc = torch.empty(B, H, dtype=state, device=gates.device)
    kernels.backward(grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0.to(state).contiguous(), c, lv, eps,
                     okmask, s, weight_qh, weight_q2, w_comb, weight_hh, dparams, ds, grad_eps, dc)
    # the backward kernel left dgates in place of the pre-activations
    return chain_input_grads(need, gates, ds, dparams, grad_eps, dc, h0, h, z, s, weight_qh, bias_gz, weight_gz,
                             weight_iz, weight_hh, gates.dtype)


def _first_forward(kernels, *inputs):
    """The chain's 12 inputs made contiguous where the kernels read them, the folded
    ``W_comb = W_iz W_gz`` and :func:`_forward`'s buffers ``(gates, h, c, z, mu, lv, s, okmask)``.
    Both front ends call it: the eager Function and the custom op (``cuda_op.py``)."""
    c_ = lambda t: t.contiguous()  # noqa: E731
    gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh = inputs
    gates_x, post_x, eps, h0, c0 = map(c_, (gates_x, post_x, eps, h0, c0))
    weight_qh, weight_q2, bias_q2, weight_hh = map(c_, (weight_qh, weight_q2, bias_q2, weight_hh))
    inputs = (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh)
    # g(z) folded into the gate projection (recurrence/triton.py's docstring)
    w_comb = (weight_iz @ weight_gz).contiguous()
    return inputs, w_comb, _forward(kernels, *inputs, w_comb)


class _ChainFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
                weight_iz, weight_hh, kernels):
        inputs, w_comb, (gates, h, c, z, mu, lv, s, okmask) = _first_forward(
            kernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz,
            weight_hh)
        ctx.save_for_backward(*inputs, w_comb, gates, h, c, z, lv, s, okmask)
        ctx.kernels = kernels
        ctx.consumed = False   # the backward kernel overwrites `gates` with dgates
        return h, c.to(h.dtype), z, mu, lv

    @staticmethod
    @fused_backward("zforcing_chain", "cuda")
    def backward(ctx, grad_h, grad_c, grad_z, grad_mu, grad_lv):
        (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh,
         w_comb, gates, h, c, z, lv, s, okmask) = ctx.saved_tensors
        kernels = ctx.kernels
        if ctx.consumed:
            # a second backward through a retained graph: rebuild the pre-activations
            gates = _forward(kernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                             bias_gz, weight_iz, weight_hh, w_comb)[0]
        ctx.consumed = True
        grads = _backward(kernels, grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, eps, weight_qh, weight_q2,
                          weight_gz, bias_gz, weight_iz, weight_hh, w_comb, gates, h, c, z, lv, s, okmask,
                          ctx.needs_input_grad)
        return (*grads, None)


def run_chain(kernels: ChainKernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
              weight_gz, bias_gz, weight_iz, weight_hh):
    """``(h, c, z, mu_q, logvar_q)`` of the chain with the recurrence run by ``kernels``; same
    contract as :func:`zf_kernels.ops.recurrence.naive.zforcing_chain_ref` (arguments checked by
    ``ops.zforcing_chain``)."""
    T, B, four_h = gates_x.shape
    if T == 0 or B == 0:
        from .naive import zforcing_chain_ref
        return tuple(zforcing_chain_ref(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                                        bias_gz, weight_iz, weight_hh))
    return _ChainFunction.apply(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
                                weight_iz, weight_hh, kernels)
