"""What the chains' torch.library custom ops (``triton_op.py``, ``cuda_op.py``) share: the autograd
formula of a forward op and the public outputs from its results. No Triton or extension import
here: each backend's op module imports only its own kernels."""
import torch

from .naive import ChainOutput


def _output_grads(grads, outputs):
    """The five outputs' gradients, zeros for an output the loss did not use (an op's arguments
    are tensors)."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, outputs)]


def autograd_backward(backward_op, n_inputs):
    """The autograd formula of a chain's forward op. Its ``setup_context`` saved the inputs the
    backward reads (9) then the outputs h, c, z, mu, lv and the internals, in ``backward_op``'s
    order, and set ``ctx.op_args``, the non-tensor arguments ``backward_op`` takes before ``need``."""
    def backward(ctx, grad_h, grad_c, grad_z, grad_mu, grad_lv, *_internal):
        saved = ctx.saved_tensors
        grads = _output_grads((grad_h, grad_c, grad_z, grad_mu, grad_lv), saved[9:14])
        need = [bool(n) for n in ctx.needs_input_grad[:n_inputs]]
        got = backward_op(*grads, *saved, *ctx.op_args, need)
        return (*(g if n else None for g, n in zip(got, need)), *[None] * len(ctx.op_args))
    return backward


def fake_grads(like, need, dtype):
    """A backward op's outputs on fake tensors: each needed gradient shaped like its input in
    ``like`` (in ``dtype``), an empty tensor for the others."""
    return [torch.empty_like(t, dtype=dtype) if n else t.new_empty(0, dtype=dtype) for t, n in zip(like, need)]


def chain_output(outputs) -> ChainOutput:
    """The public outputs from a forward op's: ``c`` back in the inputs' dtype."""
    h, c, z, mu, lv, *_ = outputs
    return ChainOutput(h, c if c.dtype == h.dtype else c.to(h.dtype), z, mu, lv)
