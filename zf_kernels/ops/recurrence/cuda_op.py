"""The CUDA ``zforcing_chain`` as torch.library custom ops: the form torch.compile traces.

As ``lstm/cuda_op.py`` for the CUDA LSTM (its docstring says why): forward and backward ops over
the eager Function's code (``_cuda_function._forward`` / ``_backward``), fake versions for
tracing, the kernels made per call by :data:`kernels_factory` from ``(units_per_block,
threads)`` and the inputs' precision. The backward op writes dgates into a copy of the saved
pre-activations, one (T, B, 4H) copy per backward.

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
from typing import Callable

import torch
from torch import Tensor

from .._precision import state_dtype, tf32_passes
from . import _cuda_function as glue
from ._op_glue import autograd_backward, chain_output, fake_grads, save_for_backward_op
from .naive import ChainOutput


def _extension_kernels(units_per_block: int, threads: int, tf32: int) -> glue.ChainKernels:
    from .cuda import _ExtensionKernels   # loads (or builds) zf_kernels._C: at the first call only
    return _ExtensionKernels(units_per_block, threads, tf32)


# (units_per_block, threads, tf32 passes) -> the two chain kernels the ops run
kernels_factory: Callable[[int, int, int], glue.ChainKernels] = _extension_kernels


@torch.library.custom_op("zf_kernels::cuda_zforcing_chain_forward", mutates_args=())
def chain_forward(gates_x: Tensor, post_x: Tensor, eps: Tensor, h0: Tensor, c0: Tensor, weight_qh: Tensor,
                  weight_q2: Tensor, bias_q2: Tensor, weight_gz: Tensor, bias_gz: Tensor, weight_iz: Tensor,
                  weight_hh: Tensor, units_per_block: int, threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                  Tensor, Tensor, Tensor, Tensor,
                                                                                  Tensor]:
    """``(h, c, z, mu, lv, w_comb, gates, s, okmask)``: the outputs (``c`` in the state dtype) and
    what the backward reads (``gates``: the pre-activations)."""
    kernels = kernels_factory(units_per_block, threads, tf32_passes(gates_x))
    _, w_comb, (gates, h, c, z, mu, lv, s, okmask) = glue._first_forward(
        kernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh)
    return h, c, z, mu, lv, w_comb, gates, s, okmask


@chain_forward.register_fake
def _(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh,
      units_per_block, threads):
    T, B, four_h = gates_x.shape
    H, M, Z = four_h // 4, weight_qh.shape[0], eps.shape[-1]
    e = lambda *shape, dtype=None: gates_x.new_empty(*shape, dtype=dtype)  # noqa: E731
    return (e(T, B, H), e(T, B, H, dtype=state_dtype(gates_x.dtype)), e(T, B, Z), e(T, B, Z), e(T, B, Z),
            e(4 * H, Z), e(T, B, 4 * H), e(T, B, M), e(T, B, 2 * Z, dtype=torch.uint8))


@torch.library.custom_op("zf_kernels::cuda_zforcing_chain_backward", mutates_args=())
def chain_backward(grad_h: Tensor, grad_c: Tensor, grad_z: Tensor, grad_mu: Tensor, grad_lv: Tensor,
                   h0: Tensor, c0: Tensor, eps: Tensor, weight_qh: Tensor, weight_q2: Tensor, weight_gz: Tensor,
                   bias_gz: Tensor, weight_iz: Tensor, weight_hh: Tensor, h: Tensor, c: Tensor, z: Tensor,
                   mu: Tensor, lv: Tensor, w_comb: Tensor, gates: Tensor, s: Tensor, okmask: Tensor,
                   units_per_block: int, threads: int, need: list[bool]) -> list[Tensor]:
    """The gradients of the chain's 12 tensor inputs, an empty tensor where ``need`` says none."""
    kernels = kernels_factory(units_per_block, threads, tf32_passes(h))
    c_ = lambda t: t.contiguous()  # noqa: E731
    grads = glue._backward(kernels, grad_h, grad_c, grad_z, grad_mu, grad_lv, c_(h0), c_(c0), c_(eps),
                           c_(weight_qh), c_(weight_q2), weight_gz, bias_gz, weight_iz, c_(weight_hh), w_comb,
                           gates.clone(), h, c, z, lv, s, okmask, need)
    return [h.new_empty(0) if g is None else g for g in grads]


@chain_backward.register_fake
def _(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, eps, weight_qh, weight_q2, weight_gz, bias_gz, weight_iz,
      weight_hh, h, c, z, mu, lv, w_comb, gates, s, okmask, units_per_block, threads, need):
    like = (gates, s, eps, h0, c0, weight_qh, weight_q2, weight_q2.new_empty(weight_q2.shape[0]), weight_gz,
            bias_gz, weight_iz, weight_hh)
    return fake_grads(like, need, h.dtype)


def _setup_context(ctx, inputs, output):
    _, _, eps, h0, c0, weight_qh, weight_q2, _, weight_gz, bias_gz, weight_iz, weight_hh, units, threads = inputs
    save_for_backward_op(ctx, (h0, c0, eps, weight_qh, weight_q2, weight_gz, bias_gz, weight_iz, weight_hh), output,
                         (units, threads))


chain_forward.register_autograd(autograd_backward(chain_backward, 12), setup_context=_setup_context)


def zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz,
                   weight_hh, *, units_per_block: int = 0, threads: int = 0) -> ChainOutput:
    """:func:`zf_kernels.ops.recurrence.cuda.zforcing_chain` through the custom ops."""
    T, B, _ = gates_x.shape
    if T == 0 or B == 0:
        return ChainOutput(*glue.run_chain(None, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                           weight_gz, bias_gz, weight_iz, weight_hh))
    return chain_output(chain_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                                      bias_gz, weight_iz, weight_hh, units_per_block, threads))
