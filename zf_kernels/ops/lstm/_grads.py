"""The GEMMs after a fused LSTM backward loop: from the per-step gate gradients ``dgates``
(``(T, B, 4H)``, time order) to the gradients of x, W_ih, W_hh, the biases, h0 and c0.
Shared by the Triton and the CUDA LSTM (their loops leave exactly this behind)."""
from __future__ import annotations

import torch


def lstm_input_grads(need, dgates, dc0, x, weight_ih, weight_hh, out, h0, c0, reverse):
    """Gradients for ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)``; ``need`` is
    ``ctx.needs_input_grad`` (its first 7 entries), ``dc0`` the cell gradient the loop ended
    with, ``out`` the forward's h_t (time order). ``h0``/``c0`` None: no gradient for them."""
    T, B, I = x.shape
    H = weight_hh.shape[1]
    dg2 = dgates.reshape(T * B, 4 * H)
    grad_x = grad_w_ih = grad_w_hh = grad_b = grad_h0 = grad_c0 = None
    if need[0]:
        grad_x = torch.mm(dg2, weight_ih).view(T, B, I)
    if need[1]:
        grad_w_ih = torch.mm(dg2.t(), x.reshape(T * B, I))
    t_first = T - 1 if reverse else 0
    if need[2]:
        # sum_t dgates_t^T h_{t-1}: h_{t-1} = out of the previous step, h0 at the first one
        if T > 1:
            if reverse:
                grad_w_hh = torch.mm(dg2[: (T - 1) * B].t(), out[1:].reshape((T - 1) * B, H))
            else:
                grad_w_hh = torch.mm(dg2[B:].t(), out[:-1].reshape((T - 1) * B, H))
            if h0 is not None:
                grad_w_hh.addmm_(dgates[t_first].t(), h0)
        elif h0 is not None:
            grad_w_hh = torch.mm(dgates[t_first].t(), h0)
        else:
            grad_w_hh = torch.zeros_like(weight_hh)
    if need[3] or need[4]:
        grad_b = dg2.sum(0)
    if h0 is not None and need[5]:
        grad_h0 = torch.mm(dgates[t_first], weight_hh)
    if c0 is not None and need[6]:
        grad_c0 = dc0.to(c0.dtype)
    grad_b_ih = grad_b if need[3] else None
    grad_b_hh = None
    if need[4]:
        grad_b_hh = grad_b.clone() if need[3] else grad_b
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_h0, grad_c0
