"""The Triton ``reparameterize`` as torch.library custom ops: the form torch.compile traces (as
``lstm/triton_op.py`` for the LSTM: eagerly an autograd.Function, opaque to dynamo, a graph break
per call, which a per-step sampling loop pays every step; these ops run the same kernels,
``triton._reparameterize_forward`` / ``_backward``). The likelihood ops, called once on all
steps, have no such form yet: a graph break each under torch.compile with backend="triton".

(No ``from __future__ import annotations`` here: custom_op reads the annotations as types.)
"""
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
    # mu's gradient is grad_z itself eagerly; an op may not return an input: a copy
    return [grad_z.new_empty(0) if g is None else (g.clone() if g is grad_z else g) for g in grads]


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
