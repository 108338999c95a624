"""The Triton ``zforcing_chain`` and ``zforcing_chain_ln`` as torch.library custom ops: the form
torch.compile traces.

As ``lstm/triton_op.py`` for the LSTM: eagerly each chain is an autograd.Function
(``triton.ZForcingChainFunction``, ``triton_ln.ZForcingChainLNFunction``) that dynamo cannot
trace, so ``_dispatch._callable`` makes it opaque (a graph break); these ops, forward and
backward per chain, run the same kernels (``triton._chain_forward`` / ``_chain_backward``,
``triton_ln._chain_ln_forward`` / ``_chain_ln_backward``) behind schemas dynamo and AOTAutograd
understand, with fake (shape-only) versions for tracing.

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
import torch
from torch import Tensor

from . import triton as tl_chain
from . import triton_ln as tl_chain_ln
from ._op_glue import autograd_backward, chain_output, fake_grads, save_for_backward_op
from .naive import ChainOutput


def _state_dtype(dtype):
    return torch.float32 if dtype in tl_chain._HALF else dtype


@torch.library.custom_op("zf_kernels::triton_zforcing_chain_forward", mutates_args=())
def chain_forward(gates_x: Tensor, post_x: Tensor, eps: Tensor, h0: Tensor, c0: Tensor, weight_qh: Tensor,
                  weight_q2: Tensor, bias_q2: Tensor, weight_gz: Tensor, bias_gz: Tensor, weight_iz: Tensor,
                  weight_hh: Tensor, schedule: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                             Tensor, Tensor, Tensor]:
    """``(h, c, z, mu, lv, s, acts, okmask, w_comb)``: the outputs (``c`` in the state dtype) and
    what the backward reads."""
    outputs, saved, _, _ = tl_chain._chain_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                                   weight_gz, bias_gz, weight_iz, weight_hh, schedule)
    return (*outputs, *saved)


@chain_forward.register_fake
def _(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh,
      schedule):
    T, B, four_h = gates_x.shape
    H, M, Z = four_h // 4, weight_qh.shape[0], eps.shape[-1]
    e = lambda *shape, dtype=None: gates_x.new_empty(*shape, dtype=dtype)  # noqa: E731
    return (e(T, B, H), e(T, B, H, dtype=_state_dtype(gates_x.dtype)), e(T, B, Z), e(T, B, Z), e(T, B, Z),
            e(T, B, M), e(T, B, 4 * H), e(T, B, 2 * Z, dtype=torch.int8), e(4 * H, Z))


@torch.library.custom_op("zf_kernels::triton_zforcing_chain_backward", mutates_args=())
def chain_backward(grad_h: Tensor, grad_c: Tensor, grad_z: Tensor, grad_mu: Tensor, grad_lv: Tensor,
                   h0: Tensor, c0: Tensor, eps: Tensor, weight_qh: Tensor, weight_q2: Tensor, weight_gz: Tensor,
                   bias_gz: Tensor, weight_iz: Tensor, weight_hh: Tensor, h: Tensor, c: Tensor, z: Tensor,
                   mu: Tensor, lv: Tensor, s: Tensor, acts: Tensor, okmask: Tensor, w_comb: Tensor,
                   schedule: str, need: list[bool]) -> list[Tensor]:
    """The gradients of the chain's 12 tensor inputs, an empty tensor where ``need`` says none."""
    T, B, H = h.shape
    M, Z = s.shape[-1], z.shape[-1]
    schedule, cfg, _ = tl_chain._pick_schedule(B, {"H": H, "M": M, "Z": Z}, h.dtype, acts, schedule)
    grads = tl_chain._chain_backward(
        grad_h, grad_c, grad_z, grad_mu, grad_lv, h0.contiguous(), c0.to(c.dtype).contiguous(), h, c, z, mu, lv,
        s, acts, okmask, eps.contiguous(), weight_qh.contiguous(), weight_q2.contiguous(), weight_gz, bias_gz,
        weight_iz, weight_hh.contiguous(), w_comb, schedule, cfg, need)
    return [h.new_empty(0) if g is None else g for g in grads]


@chain_backward.register_fake
def _(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, eps, weight_qh, weight_q2, weight_gz, bias_gz,
      weight_iz, weight_hh, h, c, z, mu, lv, s, acts, okmask, w_comb, schedule, need):
    like = (acts, s, eps, h0, c0, weight_qh, weight_q2, weight_q2.new_empty(weight_q2.shape[0]), weight_gz,
            bias_gz, weight_iz, weight_hh)
    return fake_grads(like, need, h.dtype)


def _setup_context(ctx, inputs, output):
    _, _, eps, h0, c0, weight_qh, weight_q2, _, weight_gz, bias_gz, weight_iz, weight_hh, schedule = inputs
    save_for_backward_op(ctx, (h0, c0, eps, weight_qh, weight_q2, weight_gz, bias_gz, weight_iz, weight_hh), output,
                         (schedule,))


chain_forward.register_autograd(autograd_backward(chain_backward, 12), setup_context=_setup_context)


def zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz,
                   weight_hh, schedule: str = "auto") -> ChainOutput:
    """:func:`zf_kernels.ops.recurrence.triton.zforcing_chain` through the custom ops."""
    T, B, _ = gates_x.shape
    if T == 0 or B == 0:
        return tl_chain.zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                                       bias_gz, weight_iz, weight_hh, schedule)
    return chain_output(chain_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                                       bias_gz, weight_iz, weight_hh, schedule))


# ------------------------------------------------------------------------------- zforcing_chain_ln
@torch.library.custom_op("zf_kernels::triton_zforcing_chain_ln_forward", mutates_args=())
def chain_ln_forward(gates_x: Tensor, post_x: Tensor, eps: Tensor, h0: Tensor, c0: Tensor, weight_qh: Tensor,
                     weight_q2: Tensor, bias_q2: Tensor, weight_g1: Tensor, bias_g1: Tensor, weight_g2: Tensor,
                     bias_g2: Tensor, weight_hh: Tensor, schedule: str) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                  Tensor, Tensor, Tensor, Tensor,
                                                                                  Tensor]:
    """``(h, c, z, mu, lv, s, u, acts, okmask)``: the outputs (``c`` in the state dtype) and what
    the backward reads."""
    outputs, saved, _, _ = tl_chain_ln._chain_ln_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2,
                                                         bias_q2, weight_g1, bias_g1, weight_g2, bias_g2,
                                                         weight_hh, schedule)
    return (*outputs, *saved)


@chain_ln_forward.register_fake
def _(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1, bias_g1, weight_g2, bias_g2,
      weight_hh, schedule):
    T, B, four_h = gates_x.shape
    H, M, Z, G = four_h // 4, weight_qh.shape[0], eps.shape[-1], weight_g1.shape[0]
    e = lambda *shape, dtype=None: gates_x.new_empty(*shape, dtype=dtype)  # noqa: E731
    return (e(T, B, H), e(T, B, H, dtype=_state_dtype(gates_x.dtype)), e(T, B, Z), e(T, B, Z), e(T, B, Z),
            e(T, B, M), e(T, B, G), e(T, B, 4 * H), e(T, B, 2 * Z, dtype=torch.int8))


@torch.library.custom_op("zf_kernels::triton_zforcing_chain_ln_backward", mutates_args=())
def chain_ln_backward(grad_h: Tensor, grad_c: Tensor, grad_z: Tensor, grad_mu: Tensor, grad_lv: Tensor,
                      h0: Tensor, c0: Tensor, eps: Tensor, weight_qh: Tensor, weight_q2: Tensor, weight_g1: Tensor,
                      weight_g2: Tensor, bias_g2: Tensor, weight_hh: Tensor, h: Tensor, c: Tensor, z: Tensor,
                      mu: Tensor, lv: Tensor, s: Tensor, u: Tensor, acts: Tensor, okmask: Tensor,
                      schedule: str, need: list[bool]) -> list[Tensor]:
    """The gradients of the 13 tensor inputs, an empty tensor where ``need`` says none."""
    T, B, H = h.shape
    dims = {"H": H, "M": s.shape[-1], "Z": z.shape[-1], "G": u.shape[-1]}
    schedule, cfg, _ = tl_chain_ln._pick_schedule(B, dims, h.dtype, acts, schedule)
    grads = tl_chain_ln._chain_ln_backward(
        grad_h, grad_c, grad_z, grad_mu, grad_lv, h0.contiguous(), c0.to(c.dtype).contiguous(), h, c, z, mu, lv,
        s, u, acts, okmask, eps.contiguous(), weight_qh.contiguous(), weight_q2.contiguous(),
        weight_g1.contiguous(), weight_g2.contiguous(), bias_g2.contiguous(), weight_hh.contiguous(),
        schedule, cfg, need)
    return [h.new_empty(0) if g is None else g for g in grads]


@chain_ln_backward.register_fake
def _(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2,
      weight_hh, h, c, z, mu, lv, s, u, acts, okmask, schedule, need):
    like = (acts, s, eps, h0, c0, weight_qh, weight_q2, weight_q2.new_empty(weight_q2.shape[0]), weight_g1,
            weight_g1.new_empty(weight_g1.shape[0]), weight_g2, bias_g2, weight_hh)
    return fake_grads(like, need, h.dtype)


def _setup_context_ln(ctx, inputs, output):
    _, _, eps, h0, c0, weight_qh, weight_q2, _, weight_g1, _, weight_g2, bias_g2, weight_hh, schedule = inputs
    save_for_backward_op(ctx, (h0, c0, eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh), output,
                         (schedule,))


chain_ln_forward.register_autograd(autograd_backward(chain_ln_backward, 13), setup_context=_setup_context_ln)


def zforcing_chain_ln(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1, bias_g1, weight_g2,
                      bias_g2, weight_hh, schedule: str = "auto") -> ChainOutput:
    """:func:`zf_kernels.ops.recurrence.triton_ln.zforcing_chain_ln` through the custom ops."""
    T, B, _ = gates_x.shape
    if T == 0 or B == 0:
        return tl_chain_ln.zforcing_chain_ln(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1,
                                             bias_g1, weight_g2, bias_g2, weight_hh, schedule)
    return chain_output(chain_ln_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1,
                                          bias_g1, weight_g2, bias_g2, weight_hh, schedule))
