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
    """cvt.rna.tf32.f32 of x's float32 value (10 mantissa bits, nearest, ties away from zero;
    NaN and infinity unchanged), in x's dtype."""
    x32 = x.detach().float().contiguous()
    rounded = ((x32.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x32), rounded, x32).to(x.dtype)


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


def zforcing_chain_tf32_ref(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
                            weight_iz, weight_hh):
    """``ops.zforcing_chain``'s contract (float64 inputs advised) with the CUDA chain's TF32
    rounding: its four recurrent products (h W_qh^T, act(s) W_q2^T, h W_hh^T, z W_comb^T with g(z)
    folded, W_comb = W_iz W_gz, as csrc/ runs them) round their operands forward, and backward
    the products that give dh, dz and d act(s), except dh_0 (the gradient of h0: torch GEMMs after
    the loop, as the weight gradients)."""
    from zf_kernels.ops.recurrence import naive as chain

    w_comb = weight_iz @ weight_gz
    first = []

    def step(h, c, gx_t, px_t, eps_t):
        ieee_h = not first            # h is h0: its gradient is a torch GEMM
        first.append(False)
        s = px_t + _RoundedProduct.apply(h, weight_qh, ieee_h)
        params = _RoundedProduct.apply(chain.mlp_act(s), weight_q2, False) + bias_q2
        mu, lv = torch.clamp(params, -chain.PARAM_CLAMP, chain.PARAM_CLAMP).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * lv) * eps_t
        gates = gx_t + _RoundedProduct.apply(h, weight_hh, ieee_h) + _RoundedProduct.apply(z, w_comb, False)
        h, c = chain._lstm_cell(gates, c)
        return h, c, z, mu, lv

    return chain.chain_loop_ref(step, gates_x + weight_iz @ bias_gz, post_x, eps, h0, c0)
