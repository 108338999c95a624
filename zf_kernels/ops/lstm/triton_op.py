"""The Triton ``lstm`` and ``lstm_cell`` as torch.library custom ops: the form torch.compile traces.

Eagerly the Triton LSTM is an autograd.Function (``triton._LSTMFunction``) that dynamo cannot
trace (``_dispatch._callable`` makes it opaque: a graph break). These two ops, forward and
backward, run the same kernels (``triton._lstm_forward`` / ``triton._lstm_backward``; for the
step, ``_lstm_cell_forward`` / ``_lstm_cell_backward``: a break per step before) behind
schemas dynamo and AOTAutograd understand, with fake (shape-only) versions for tracing, so a
compiled model keeps its graph whole across ``ops.lstm``. One difference from the eager
Function: the backward op writes the gate gradients into a copy of the saved gates (an op may
not change its inputs unannounced), one (T, B, 4H) copy per backward.

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
from typing import Optional

import torch
from torch import Tensor

from . import triton as tl_lstm
from ._op_glue import autograd_backward, fake_grads, setup_context


@torch.library.custom_op("zf_kernels::triton_lstm_forward", mutates_args=())
def lstm_forward(x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
                 bias_hh: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor], reverse: bool,
                 schedule: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, h_T, c_T, gates, c_all)``: the LSTM's outputs and what its backward reads."""
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    weight_hh = weight_hh.contiguous()
    schedule, cfg, _ = tl_lstm._pick_schedule(B, H, x, schedule)
    h0_in = x.new_zeros(B, H) if h0 is None else h0
    out, gates, c_all = tl_lstm._lstm_forward(x, weight_ih, weight_hh, tl_lstm._bias(bias_ih, bias_hh), h0_in,
                                              c0, reverse, schedule, cfg)
    return out, out[0 if reverse else T - 1].clone(), c_all[T].to(x.dtype, copy=True), gates, c_all


@lstm_forward.register_fake
def _(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, schedule):
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T + 1, B, H, dtype=tl_lstm._acc_dtype(x.dtype)))


@torch.library.custom_op("zf_kernels::triton_lstm_backward", mutates_args=())
def lstm_backward(d_out: Tensor, d_hT: Tensor, d_cT: Tensor, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                  h0: Optional[Tensor], c0: Optional[Tensor], out: Tensor, gates: Tensor, c_all: Tensor,
                  reverse: bool, schedule: str, need: list[bool]) -> list[Tensor]:
    """The gradients of ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)``, an empty
    tensor where ``need`` says none (an op returns tensors only)."""
    B, H = x.shape[1], weight_hh.shape[1]
    weight_hh = weight_hh.contiguous()
    schedule, cfg, _ = tl_lstm._pick_schedule(B, H, x, schedule)
    grads = tl_lstm._lstm_backward(d_out, d_hT, d_cT, x, weight_ih, weight_hh,
                                   h0, c0, out, gates.clone(), c_all, reverse, schedule, cfg, need)
    return [x.new_empty(0) if g is None else g for g in grads]


@lstm_backward.register_fake
def _(d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse, schedule, need):
    return fake_grads(x, weight_ih, weight_hh, h0, c0, need)


lstm_forward.register_autograd(autograd_backward(lstm_backward), setup_context=setup_context)


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False,
         schedule: str = "auto"):
    """:func:`zf_kernels.ops.lstm.triton.lstm` through the custom ops."""
    T, B, _ = x.shape
    if T == 0:
        return tl_lstm.lstm(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, schedule)
    out, h_T, c_T, _, _ = lstm_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse), schedule)
    return out, (h_T, c_T)


# ------------------------------------------------------------------------------------ lstm_cell
@torch.library.custom_op("zf_kernels::triton_lstm_cell_forward", mutates_args=())
def lstm_cell_forward(gates_x: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor,
                      bias: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(h_new, c_new, gates)``: the step and the gate pre-activations its backward reads."""
    return tl_lstm._lstm_cell_forward(gates_x, h, c, weight_hh, bias)


def _contiguous_empty(t):
    # the kernels' outputs and gradients are contiguous whatever the inputs' strides: an
    # empty_like fake kept a transposed input's, and inductor asserted on the real tensor's
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


@lstm_cell_forward.register_fake
def _(gates_x, h, c, weight_hh, bias):
    return _contiguous_empty(h), _contiguous_empty(c), _contiguous_empty(gates_x)


@torch.library.custom_op("zf_kernels::triton_lstm_cell_backward", mutates_args=())
def lstm_cell_backward(d_h: Tensor, d_c: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, gates: Tensor,
                       c_new: Tensor, need: list[bool]) -> list[Tensor]:
    """The gradients of ``(gates_x, h, c, weight_hh, bias)``, an empty tensor where ``need`` says none."""
    grads = tl_lstm._lstm_cell_backward(d_h.contiguous(), d_c, h, c, weight_hh, gates, c_new, need)
    return [h.new_empty(0) if g is None else g for g in grads]


@lstm_cell_backward.register_fake
def _(d_h, d_c, h, c, weight_hh, gates, c_new, need):
    like = (gates, h, c, weight_hh, weight_hh.new_empty(weight_hh.shape[0]))
    return [_contiguous_empty(t) if n else h.new_empty(0) for t, n in zip(like, need)]


def _cell_setup_context(ctx, inputs, output):
    gates_x, h, c, weight_hh, bias = inputs
    _, c_new, gates = output
    ctx.mark_non_differentiable(gates)
    ctx.save_for_backward(h, c, weight_hh, gates, c_new)


def _cell_backward(ctx, d_h, d_c, _d_gates):
    h, c, weight_hh, gates, c_new = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad]
    grads = lstm_cell_backward(torch.zeros_like(h) if d_h is None else d_h,
                               torch.zeros_like(c_new) if d_c is None else d_c, h, c, weight_hh, gates, c_new, need)
    return tuple(g if n else None for g, n in zip(grads, need))


lstm_cell_forward.register_autograd(_cell_backward, setup_context=_cell_setup_context)


def lstm_cell(gates_x, h, c, weight_hh, bias=None):
    """:func:`zf_kernels.ops.lstm.triton.lstm_cell` through the custom ops."""
    h_new, c_new, _ = lstm_cell_forward(gates_x, h, c, weight_hh, bias)
    return h_new, c_new
