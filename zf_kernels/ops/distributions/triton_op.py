"""The Triton sampling and likelihood ops as torch.library custom ops: the form torch.compile
traces (as ``lstm/triton_op.py`` for the LSTM: eagerly each op is an autograd.Function, opaque to
dynamo, a graph break per call, which a per-step sampling loop pays every step). These ops run
the same kernels through the same bodies as the Functions in ``triton.py``
(``_reparameterize_forward`` / ``_backward``, ``_row_reduction_forward`` / ``_backward`` for
gaussian_kl, gaussian_nll and bernoulli_nll, ``_categorical_nll_forward`` / ``_backward``).

A custom op returns tensors only, never None and never an input: "no tensor" is an empty one,
and the tensors backward needs from the forward kernel (the unmasked row values for a mask's
gradient, categorical's per-row statistics) are extra outputs without gradients. Whether to
store the row values is decided by the caller (``store_raw``: a mask that requires grad), as
``ctx.needs_input_grad`` does for the Functions. The mask's gradient is plain torch in the
autograd formula (``triton._mask_grad``), traced with the rest.

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
from typing import Optional

import torch
from torch import Tensor

from . import triton as tl_dist


@torch.library.custom_op("zf_kernels::triton_reparameterize_forward", mutates_args=())
def reparameterize_forward(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    return tl_dist._reparameterize_forward(mu, logvar, eps)


@reparameterize_forward.register_fake
def _(mu, logvar, eps):
    return torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)


@torch.library.custom_op("zf_kernels::triton_reparameterize_backward", mutates_args=())
def reparameterize_backward(grad_z: Tensor, logvar: Tensor, eps: Tensor, need: list[bool]) -> list[Tensor]:
    """The gradients of ``(mu, logvar, eps)``, an empty tensor where ``need`` says none."""
    grads = tl_dist._reparameterize_backward(grad_z, logvar, eps, need)
    # mu's gradient is grad_z itself eagerly; an op may not return an input: a copy, contiguous
    # as the fake says (a plain clone kept a transposed grad_z's strides)
    return [grad_z.new_empty(0) if g is None else (g.clone(memory_format=torch.contiguous_format) if g is grad_z
                                                   else g) for g in grads]


@reparameterize_backward.register_fake
def _(grad_z, logvar, eps, need):
    like = (grad_z, logvar, eps)
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) if n else grad_z.new_empty(0)
            for t, n in zip(like, need)]


def _setup_context(ctx, inputs, output):
    _, logvar, eps = inputs
    ctx.save_for_backward(logvar, eps)


def _backward(ctx, grad_z):
    logvar, eps = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad]
    grads = reparameterize_backward(grad_z, logvar, eps, need)
    return tuple(g if n else None for g, n in zip(grads, need))


reparameterize_forward.register_autograd(_backward, setup_context=_setup_context)


def reparameterize(mu, logvar, eps):
    """:func:`zf_kernels.ops.distributions.triton.reparameterize` through the custom ops."""
    return reparameterize_forward(mu, logvar, eps)


def _empty_like(t):
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _stores_raw(mask):
    """Whether the forward keeps the unmasked row values: the mask will get a gradient."""
    return mask is not None and mask.requires_grad and torch.is_grad_enabled()


def _raw_like(like, n, store_raw):
    """The unmasked row values' tensor: (N,) in the accumulation dtype, or empty."""
    return torch.empty(n if store_raw else 0, dtype=tl_dist._acc_torch_dtype(like), device=like.device)


# ---- gaussian_kl, gaussian_nll, bernoulli_nll: one pair of ops, ``kind`` names the op ----

@torch.library.custom_op("zf_kernels::triton_row_reduction_forward", mutates_args=())
def row_reduction_forward(kind: str, inputs: list[Tensor], mask: Optional[Tensor],
                          store_raw: bool) -> tuple[Tensor, Tensor]:
    """``(out, raw)`` of ``triton._row_reduction_forward`` (``raw`` empty without ``store_raw``)."""
    out, raw = tl_dist._row_reduction_forward(kind, inputs, mask, store_raw)
    return out, (raw if raw is not None else _raw_like(inputs[0], 0, False))


@row_reduction_forward.register_fake
def _(kind, inputs, mask, store_raw):
    like = inputs[0]
    n = tl_dist._rows(like)[1]
    return torch.empty(like.shape[:-1], dtype=like.dtype, device=like.device), _raw_like(like, n, store_raw)


@torch.library.custom_op("zf_kernels::triton_row_reduction_backward", mutates_args=())
def row_reduction_backward(kind: str, grad_out: Tensor, inputs: list[Tensor], mask: Optional[Tensor],
                           need: list[bool]) -> list[Tensor]:
    """The gradients of ``inputs``, an empty tensor where ``need`` says none."""
    grads = tl_dist._row_reduction_backward(kind, grad_out, inputs, mask, need)
    return [grad_out.new_empty(0) if g is None else g for g in grads]


@row_reduction_backward.register_fake
def _(kind, grad_out, inputs, mask, need):
    return [_empty_like(t) if n else grad_out.new_empty(0) for t, n in zip(inputs, need)]


def _row_reduction_setup_context(ctx, inputs, output):
    kind, tensors, mask, _ = inputs
    out, raw = output
    ctx.mark_non_differentiable(raw)
    ctx.kind = kind
    ctx.save_for_backward(mask, raw, *tensors)


def _row_reduction_autograd(ctx, grad_out, _grad_raw):
    mask, raw, *tensors = ctx.saved_tensors
    _, need_inputs, need_mask, _ = ctx.needs_input_grad     # a list input: one flag per tensor
    need = [bool(n) for n in need_inputs]
    grads = row_reduction_backward(ctx.kind, grad_out, tensors, mask, need)
    grad_mask = (tl_dist._mask_grad(mask, grad_out, raw, tensors[0].shape[:-1])
                 if need_mask and raw.numel() else None)
    return None, [g if n else None for g, n in zip(grads, need)], grad_mask, None


row_reduction_forward.register_autograd(_row_reduction_autograd, setup_context=_row_reduction_setup_context)


def _row_reduction(kind, mask, *inputs):
    out, _ = row_reduction_forward(kind, list(inputs), mask, _stores_raw(mask))
    return out


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, mask=None):
    """:func:`zf_kernels.ops.distributions.triton.gaussian_kl` through the custom ops."""
    return _row_reduction("gaussian_kl", mask, mu_q, logvar_q, mu_p, logvar_p)


def gaussian_nll(x, mu, logvar, mask=None):
    """:func:`zf_kernels.ops.distributions.triton.gaussian_nll` through the custom ops."""
    return _row_reduction("gaussian_nll", mask, x, mu, logvar)


def bernoulli_nll(x, logits, mask=None):
    """:func:`zf_kernels.ops.distributions.triton.bernoulli_nll` through the custom ops."""
    return _row_reduction("bernoulli_nll", mask, x, logits)


# ---- categorical_nll ----

@torch.library.custom_op("zf_kernels::triton_categorical_nll_forward", mutates_args=())
def categorical_nll_forward(targets: Tensor, logits: Tensor, mask: Optional[Tensor],
                            store_raw: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, stats, raw)`` of ``triton._categorical_nll_forward`` (``raw`` empty without ``store_raw``)."""
    out, stats, raw = tl_dist._categorical_nll_forward(targets, logits, mask, store_raw)
    return out, stats, (raw if raw is not None else _raw_like(logits, 0, False))


@categorical_nll_forward.register_fake
def _(targets, logits, mask, store_raw):
    n = tl_dist._rows(logits)[1]
    stats = torch.empty(2, n, dtype=tl_dist._acc_torch_dtype(logits), device=logits.device)
    out = torch.empty(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    return out, stats, _raw_like(logits, n, store_raw)


@torch.library.custom_op("zf_kernels::triton_categorical_nll_backward", mutates_args=())
def categorical_nll_backward(grad_out: Tensor, targets: Tensor, logits: Tensor, mask: Optional[Tensor],
                             stats: Tensor) -> Tensor:
    return tl_dist._categorical_nll_backward(grad_out, targets, logits, mask, stats)


@categorical_nll_backward.register_fake
def _(grad_out, targets, logits, mask, stats):
    return _empty_like(logits)


def _categorical_setup_context(ctx, inputs, output):
    targets, logits, mask, _ = inputs
    _, stats, raw = output
    ctx.mark_non_differentiable(stats, raw)
    ctx.save_for_backward(targets, logits, mask, stats, raw)


def _categorical_autograd(ctx, grad_out, _grad_stats, _grad_raw):
    targets, logits, mask, stats, raw = ctx.saved_tensors
    _, need_logits, need_mask, _ = ctx.needs_input_grad
    grad_logits = categorical_nll_backward(grad_out, targets, logits, mask, stats) if need_logits else None
    grad_mask = tl_dist._mask_grad(mask, grad_out, raw, logits.shape[:-1]) if need_mask and raw.numel() else None
    return None, grad_logits, grad_mask, None


categorical_nll_forward.register_autograd(_categorical_autograd, setup_context=_categorical_setup_context)


def categorical_nll(targets, logits, mask=None):
    """:func:`zf_kernels.ops.distributions.triton.categorical_nll` through the custom ops."""
    out, _, _ = categorical_nll_forward(targets, logits, mask, _stores_raw(mask))
    return out
