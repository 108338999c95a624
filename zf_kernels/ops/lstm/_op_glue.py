"""What the LSTM's torch.library custom ops (``triton_op.py``, ``cuda_op.py``) share: the autograd
formula of the forward op and the fake (shape-only) gradients of the backward op. No Triton or
extension import here: each backend's op module imports only its own kernels.

Both forward ops take ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, *rest)`` and
return ``(out, h_T, c_T, gates, c_all)``; both backward ops take ``(d_out, d_hT, d_cT, x,
weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse, *rest, need)``, ``rest`` being each
backend's own non-tensor arguments (a schedule; a partition)."""
import torch

N_TENSOR_INPUTS = 7   # x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0


def setup_context(ctx, inputs, output):
    x, weight_ih, weight_hh, _, _, h0, c0, *op_args = inputs
    out, _, _, gates, c_all = output
    ctx.mark_non_differentiable(gates, c_all)
    ctx.save_for_backward(x, weight_ih, weight_hh, h0, c0, out, gates, c_all)
    ctx.op_args = op_args


def autograd_backward(backward_op):
    """The autograd formula of a forward op whose context :func:`setup_context` filled."""
    def backward(ctx, d_out, d_hT, d_cT, _d_gates, _d_c_all):
        x, weight_ih, weight_hh, h0, c0, out, gates, c_all = ctx.saved_tensors
        need = [bool(n) for n in ctx.needs_input_grad[:N_TENSOR_INPUTS]]
        # an op's arguments are tensors: zeros for an output that did not reach the loss
        d_out = torch.zeros_like(out) if d_out is None else d_out
        d_hT = torch.zeros_like(out[0]) if d_hT is None else d_hT
        d_cT = torch.zeros_like(out[0]) if d_cT is None else d_cT
        grads = backward_op(d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, *ctx.op_args,
                            need)
        return (*(g if n else None for g, n in zip(grads, need)), *[None] * len(ctx.op_args))
    return backward


def fake_grads(x, weight_ih, weight_hh, h0, c0, need):
    """A backward op's outputs on fake tensors: each needed gradient shaped like its input and
    contiguous, as the kernels write them whatever the input's strides (empty_like kept a
    transposed x's strides: inductor asserted on the real gradient's), an empty tensor for the
    others (and for an absent h0 / c0)."""
    bias = weight_hh.new_empty(weight_hh.shape[0])
    like = (x, weight_ih, weight_hh, bias, bias, h0, c0)
    return [x.new_empty(t.shape, dtype=t.dtype) if n and t is not None else x.new_empty(0) for t, n in zip(like, need)]
