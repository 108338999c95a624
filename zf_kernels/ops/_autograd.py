"""The guard on the fused (Triton, CUDA) backward passes, which are not differentiable.

torch's ``once_differentiable`` makes a double backward fail only when an incoming gradient
requires grad. A fused backward also reads its saved inputs (``gaussian_kl``'s gradient
depends on ``mu_q`` and both logvars), and those may require grad while the incoming gradient
does not: under ``create_graph=True`` (a gradient penalty, a Hessian-vector product) the
gradient then came back as a constant, and the second-order terms through the op were
silently dropped (a penalty's gradient of 1 where the reference gives 22). Here any backward
run with ``create_graph=True`` returns gradients that fail, naming the op, if a second
backward reaches them.
"""
from __future__ import annotations

import functools
from typing import Callable, Union

import torch
from torch._C import _functions


def fused_backward(op: Union[str, Callable[[object], str]], backend: str):
    """Decorate the ``backward`` of an autograd Function that runs fused kernels: it runs
    without building a graph, and under ``create_graph=True`` its gradients carry a node that
    raises, naming ``op`` (a name, or a function of ``ctx`` giving it) and ``backend``, when a
    double backward reaches it. Without ``create_graph`` nothing changes."""
    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            # grad mode is on inside a backward only under create_graph=True; then the gradients
            # depend on the grad outputs and on every saved input that requires grad, which is
            # any of the forward's inputs: needs_input_grad is all this can know
            if not torch.is_grad_enabled():
                return outputs
            name = op(ctx) if callable(op) else op
            message = (f"double backward through zf_kernels.ops.{name} with backend={backend!r}: its "
                       f"fused backward is not differentiable; use backend='torch' for gradient "
                       f"penalties and Hessian-vector products")
            single = not isinstance(outputs, tuple)
            outs = (outputs,) if single else outputs
            err = _functions.DelayedError(message.encode(), len(outs))
            # DelayedError needs an input that requires grad to attach itself as the grad_fn
            guarded = err(*[None if g is None else g.detach().requires_grad_() for g in outs])
            guarded = (guarded,) if isinstance(guarded, torch.Tensor) else tuple(guarded)
            return guarded[0] if single else guarded
        return wrapper
    return decorate
