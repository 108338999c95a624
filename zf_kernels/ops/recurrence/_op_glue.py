"""What the chains' torch.library custom ops (``triton_op.py``, ``cuda_op.py``) share: the autograd
formula of a forward op and the public outputs from its results. No Triton or extension import
here: each backend's op module imports only its own kernels."""
import torch

from .naive import ChainOutput


N_READ_INPUTS = 9      # the inputs a chain's backward op reads, saved first
N_PUBLIC_OUTPUTS = 5   # h, c, z, mu, lv; a forward op's other outputs are internals


def save_for_backward_op(ctx, read_inputs, output, op_args):
    """A chain forward op's ``setup_context``: keep the inputs its backward op reads, then every
    output (the public ones, then the internals, which get no gradient), and its non-tensor
    arguments, in the order :func:`autograd_backward` passes them on."""
    assert len(read_inputs) == N_READ_INPUTS
    ctx.mark_non_differentiable(*output[N_PUBLIC_OUTPUTS:])
    ctx.save_for_backward(*read_inputs, *output)
    ctx.op_args = tuple(op_args)


def _output_grads(grads, outputs):
    """The five outputs' gradients, zeros for an output the loss did not use (an op's arguments
    are tensors)."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, outputs)]


def autograd_backward(backward_op, n_inputs):
    """The autograd formula of a chain's forward op whose ``setup_context`` called
    :func:`save_for_backward_op` (in ``backward_op``'s argument order; ``ctx.op_args``: the
    non-tensor arguments ``backward_op`` takes before ``need``)."""
    def backward(ctx, grad_h, grad_c, grad_z, grad_mu, grad_lv, *_internal):
        saved = ctx.saved_tensors
        grads = _output_grads((grad_h, grad_c, grad_z, grad_mu, grad_lv),
                              saved[N_READ_INPUTS:N_READ_INPUTS + N_PUBLIC_OUTPUTS])
        need = [bool(n) for n in ctx.needs_input_grad[:n_inputs]]
        got = backward_op(*grads, *saved, *ctx.op_args, need)
        return (*(g if n else None for g, n in zip(got, need)), *[None] * len(ctx.op_args))
    return backward


def fake_grads(like, need, dtype):
    """A backward op's outputs on fake tensors: each needed gradient shaped like its input in
    ``like`` (in ``dtype``) and contiguous, as the kernels write them (empty_like kept a
    non-contiguous input's strides), an empty tensor for the others."""
    return [t.new_empty(t.shape, dtype=dtype) if n else t.new_empty(0, dtype=dtype) for t, n in zip(like, need)]


def chain_output(outputs) -> ChainOutput:
    """The public outputs from a forward op's: ``c`` back in the inputs' dtype."""
    h, c, z, mu, lv, *_ = outputs
    return ChainOutput(h, c if c.dtype == h.dtype else c.to(h.dtype), z, mu, lv)
