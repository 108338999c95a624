"""A float64 reference of the LSTM whose recurrent products round their operands to TF32 where
the CUDA kernels' tensor-core tiles do (csrc/lstm_kernels.cu with ZfLstmLaunch::tf32), so that
the kernels' TF32 path can be held to float32-accumulation accuracy rather than to TF32's
~1e-3: a misplaced fragment element or a missing rounding then shows.

What the kernels round: forward, h_{t-1} and W_hh in h_{t-1} W_hh^T; backward, dgates_{t+1} and
W_hh in dh_t += dgates_{t+1} W_hh, for every step but the first one read (its dh_0 = dgates W_hh,
the gradient of h0, is a torch GEMM outside the kernel, IEEE on a CPU). The input projection
and the weight gradients are torch GEMMs (IEEE here)."""
import torch

from zf_kernels.ops.lstm import naive


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 of x's float32 value (10 mantissa bits, nearest, ties away from zero), in x's dtype."""
    bits = x.detach().float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).to(x.dtype)


class _RoundedProduct(torch.autograd.Function):
    """h @ w^T with TF32 operands; backward: grad_h from TF32 operands (the kernel's product)
    unless ``ieee_grad_h``, grad_w exact."""

    @staticmethod
    def forward(ctx, h, w, ieee_grad_h):
        ctx.save_for_backward(h, w)
        ctx.ieee_grad_h = ieee_grad_h
        return to_tf32(h) @ to_tf32(w).t()

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        grad_h = g @ w if ctx.ieee_grad_h else to_tf32(g) @ to_tf32(w)
        return grad_h, g.t() @ h, None


def lstm_tf32_ref(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """``ops.lstm``'s contract (float64 inputs advised) with the kernels' TF32 rounding."""
    first = []

    def cell(gx, h, c, w):
        gates = gx + _RoundedProduct.apply(h, w, not first)
        first.append(False)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    return naive.lstm_loop_ref(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)
