"""Autograd glue of the CUDA LSTM (``backend="cuda"``), independent of how its two recurrence
kernels are reached: :mod:`.cuda` passes the torch extension ``zf_kernels._C``; the CPU tests
pass the same kernels compiled as a CPU emulation (``tests/_cuda_emulation.py``), so this code
runs, GEMMs and buffers included, on a machine without a GPU.

Work split (as in the Triton LSTM): the input projection ``x W_ih^T + b_ih + b_hh`` for all t
is one GEMM before the loop; only the recurrence runs in the kernels (one cooperative launch
per direction, see csrc/README.md); the weight, input and bias gradients are GEMMs after the
backward loop (:mod:`._grads`).

Saved for backward: x, the weights and biases, h0, c0 (the caller's tensors), ``out`` (h_t,
which also gives h_{t-1}), the gate pre-activations ``z_t`` (``(T, B, 4H)``: the projection
buffer, overwritten in place by the forward kernel, so it costs nothing extra) and the cell
states ``c_0..c_T`` (``(T+1, B, H)``: c_{t-1} cannot be recovered from the gates).
Recomputed in backward: the activations sigmoid/tanh of z_t and tanh(c_t). The backward
kernel overwrites the pre-activations with dgates in place; a second backward through a
retained graph reruns the forward to rebuild them.

bfloat16 (as the Triton LSTM): out, the pre-activations and dgates are stored in bfloat16, the
cell states c_0..c_T and the backward's dc in float32 (``c_T`` is returned in bfloat16); the
kernels' products run on bfloat16 tensor-core tiles with float32 accumulation, the cell update in
float32.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .._autograd import fused_backward
from .._precision import state_dtype
from ._grads import lstm_input_grads

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class RecurrenceKernels(Protocol):
    """The two kernels, on contiguous tensors of one dtype (see csrc/lstm_kernels.h)."""

    def forward(self, gates, h0, w_hh, out, c_all, reverse: bool) -> None: ...

    def backward(self, d_out, d_hT, w_hh, gates, c_all, dc, reverse: bool) -> None: ...

    # optional: ``check_backward(x, w_hh)`` raises ValueError where the backward cannot run on
    # these sizes (its W slice padded to whole tiles needs more shared memory than the
    # forward's), so that the refusal comes before a whole forward, not in loss.backward()


def why_unsupported(x, *rest) -> str | None:
    """Why the CUDA LSTM cannot run on ``x`` (dtype, device), or None."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"the CUDA lstm supports float32, float64 and bfloat16, got {x.dtype}"
    if x.device.type != "cuda":
        return f"the CUDA lstm needs CUDA tensors, got {x.device}"
    return None


def _bias(bias_ih, bias_hh):
    if bias_hh is None:
        return bias_ih
    return bias_hh if bias_ih is None else bias_ih + bias_hh


def _forward(kernels, x, weight_ih, weight_hh, bias, h0, c0, reverse):
    """``out (T, B, H)``, pre-activations ``(T, B, 4H)`` and ``c_all (T+1, B, H)`` (index =
    step in reading order, ``c_all[0] = c0``)."""
    T, B, I = x.shape
    H = weight_hh.shape[1]
    x2 = x.reshape(T * B, I)
    # hoisted input projection for all t, one GEMM; the kernel turns it into the pre-activations
    gates = torch.addmm(bias, x2, weight_ih.t()) if bias is not None else torch.mm(x2, weight_ih.t())
    gates = gates.view(T, B, 4 * H)
    out = torch.empty((T, B, H), dtype=x.dtype, device=x.device)
    c_all = torch.empty((T + 1, B, H), dtype=state_dtype(x.dtype), device=x.device)
    if c0 is None:
        c_all[0].zero_()
    else:
        c_all[0].copy_(c0)
    h0_in = x.new_zeros(B, H) if h0 is None else h0.contiguous()
    kernels.forward(gates, h0_in, weight_hh, out, c_all, reverse)
    return out, gates, c_all


def _backward(kernels, d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse, need):
    """The gradients of ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)`` (None where
    ``need`` says none); overwrites ``gates`` with dgates. ``d_*`` None: that output did not reach
    the loss. Both front ends call it: the eager Function and the custom op (``cuda_op.py``)."""
    B, H = x.shape[1], weight_hh.shape[1]
    d_out = torch.zeros_like(out) if d_out is None else d_out.contiguous()
    d_hT = x.new_zeros(B, H) if d_hT is None else d_hT.contiguous()
    dc = c_all.new_zeros(B, H) if d_cT is None else d_cT.to(c_all.dtype, copy=True).contiguous()
    kernels.backward(d_out, d_hT, weight_hh, gates, c_all, dc, reverse)
    return lstm_input_grads(need, gates, dc, x, weight_ih, weight_hh, out, h0, c0, reverse)


class _LSTMFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, kernels):
        T = x.shape[0]
        weight_hh = weight_hh.contiguous()
        out, gates, c_all = _forward(kernels, x, weight_ih, weight_hh, _bias(bias_ih, bias_hh), h0, c0,
                                     reverse)
        h_T = out[0 if reverse else T - 1].clone()
        c_T = c_all[T].to(x.dtype, copy=True)
        ctx.save_for_backward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all)
        ctx.reverse, ctx.kernels = reverse, kernels
        ctx.consumed = False  # backward overwrites `gates` with dgates
        return out, h_T, c_T

    @staticmethod
    @fused_backward("lstm", "cuda")
    def backward(ctx, d_out, d_hT, d_cT):
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all = ctx.saved_tensors
        reverse, kernels = ctx.reverse, ctx.kernels
        if ctx.consumed:
            # a second backward through a retained graph: rebuild the pre-activations
            _, gates, _ = _forward(kernels, x, weight_ih, weight_hh, _bias(bias_ih, bias_hh), h0, c0, reverse)
        ctx.consumed = True
        grads = _backward(kernels, d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse,
                          ctx.needs_input_grad)
        return (*grads, None, None)


def run_lstm(kernels: RecurrenceKernels, x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None,
             c0=None, reverse=False):
    """``(out, (h_T, c_T))`` of the LSTM with the recurrence run by ``kernels``; same contract
    as :func:`zf_kernels.ops.lstm.naive.lstm_ref` (arguments checked by ``ops.lstm``)."""
    T, B, _ = x.shape
    if T == 0 or B == 0:
        # nothing to launch: the reference, whose outputs stay connected to the inputs (fresh zeros
        # had no grad_fn, and a backward through them failed where the reference's runs)
        from .naive import lstm_ref
        return lstm_ref(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)
    check_backward = getattr(kernels, "check_backward", None)
    if check_backward is not None and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)):
        check_backward(x, weight_hh)
    out, h_T, c_T = _LSTMFunction.apply(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse),
                                        kernels)
    return out, (h_T, c_T)
