"""The CUDA ``lstm`` as torch.library custom ops: the form torch.compile traces.

As ``triton_op.py`` for the Triton LSTM: eagerly the CUDA LSTM is an autograd.Function
(``_cuda_function._LSTMFunction``) holding a kernels object, which dynamo cannot trace (a graph
break). These two ops, forward and backward, run the same code (``_cuda_function._forward`` /
``_backward``) behind schemas dynamo and AOTAutograd understand, with fake (shape-only) versions
for tracing. The kernels object cannot cross an op's schema, so each op makes its own from
``(units_per_block, threads)`` and the inputs' precision (``tf32_passes``, read by the forward and
the backward alike, as the Triton ops read ``dot_precision``) through :data:`kernels_factory`:
the extension ``zf_kernels._C``, imported on the first call (not at this module's import, so the
CPU tests can put the emulated kernels there). The backward op writes dgates into a copy of the
saved pre-activations (an op may not change its inputs unannounced), one (T, B, 4H) copy per
backward.

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
from typing import Callable, Optional

import torch
from torch import Tensor

from .._precision import state_dtype, tf32_passes
from . import _cuda_function as glue
from ._op_glue import autograd_backward, fake_grads, setup_context


def _extension_kernels(units_per_block: int, threads: int, tf32: int) -> glue.RecurrenceKernels:
    from .cuda import _ExtensionKernels   # loads (or builds) zf_kernels._C: at the first call only
    return _ExtensionKernels(units_per_block, threads, tf32)


# (units_per_block, threads, tf32 passes) -> the two recurrence kernels the ops run
kernels_factory: Callable[[int, int, int], glue.RecurrenceKernels] = _extension_kernels


@torch.library.custom_op("zf_kernels::cuda_lstm_forward", mutates_args=())
def lstm_forward(x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
                 bias_hh: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor], reverse: bool,
                 units_per_block: int, threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, h_T, c_T, gates, c_all)``: the LSTM's outputs and what its backward reads."""
    T = x.shape[0]
    kernels = kernels_factory(units_per_block, threads, tf32_passes(x))
    out, gates, c_all = glue._forward(kernels, x, weight_ih, weight_hh.contiguous(), glue._bias(bias_ih, bias_hh),
                                      h0, c0, reverse)
    return out, out[0 if reverse else T - 1].clone(), c_all[T].to(x.dtype, copy=True), gates, c_all


@lstm_forward.register_fake
def _(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, units_per_block, threads):
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T + 1, B, H, dtype=state_dtype(x.dtype)))


@torch.library.custom_op("zf_kernels::cuda_lstm_backward", mutates_args=())
def lstm_backward(d_out: Tensor, d_hT: Tensor, d_cT: Tensor, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                  h0: Optional[Tensor], c0: Optional[Tensor], out: Tensor, gates: Tensor, c_all: Tensor,
                  reverse: bool, units_per_block: int, threads: int, need: list[bool]) -> list[Tensor]:
    """The gradients of ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)``, an empty
    tensor where ``need`` says none (an op returns tensors only)."""
    kernels = kernels_factory(units_per_block, threads, tf32_passes(x))
    grads = glue._backward(kernels, d_out, d_hT, d_cT, x, weight_ih, weight_hh.contiguous(), h0, c0, out,
                           gates.clone(), c_all, reverse, need)
    return [x.new_empty(0) if g is None else g for g in grads]


@lstm_backward.register_fake
def _(d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse, units_per_block, threads,
      need):
    return fake_grads(x, weight_ih, weight_hh, h0, c0, need)


lstm_forward.register_autograd(autograd_backward(lstm_backward), setup_context=setup_context)


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False, *,
         units_per_block: int = 0, threads: int = 0):
    """:func:`zf_kernels.ops.lstm.cuda.lstm` through the custom ops."""
    T, B, _ = x.shape
    if T == 0 or B == 0:
        return glue.run_lstm(None, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)
    out, h_T, c_T, _, _ = lstm_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse),
                                       units_per_block, threads)
    return out, (h_T, c_T)
