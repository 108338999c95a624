"""The GEMMs after a fused Z-forcing chain backward loop: from the per-step gradients the loop
leaves behind (gates ``dgates (T, B, 4H)``, posterior pre-activations ``ds (T, B, M)``,
posterior parameters ``dparams (T, B, 2Z)``, ``grad_eps``, the final cell gradient ``dc``) to
the gradients of the chain's 12 inputs. Shared by the Triton and the CUDA chain."""
from __future__ import annotations

import torch

from .naive import mlp_act


def posterior_and_state_grads(need, dgates, d_hh, ds, dparams, grad_eps, dc, hprev, s, weight_qh, weight_hh,
                              dtype):
    """The gradients of the inputs both chains share, ``(gates_x, post_x, eps, h0, c0, weight_qh,
    weight_q2, bias_q2)`` (the first 8), as a list of 8 (None where ``need`` says no). ``d_hh``: the
    gradient of the recurrent projection ``h_{t-1} W_hh^T`` (the gates' ``dgates`` in the plain
    chain, the layer norm's input gradient in ``zforcing_chain_ln``); ``hprev (T, B, H)``:
    ``h_0 .. h_{T-1}``; ``dtype``: the inputs' dtype (``dc`` may be kept wider)."""
    T, B, H = hprev.shape
    M, Z2 = ds.shape[-1], dparams.shape[-1]
    n = T * B
    ds2, dp2 = ds.reshape(n, M), dparams.reshape(n, Z2)
    grads = [None] * 8
    grads[0] = dgates if need[0] else None
    grads[1] = ds if need[1] else None
    grads[2] = grad_eps if need[2] else None
    if need[3]:
        grads[3] = d_hh[0] @ weight_hh + ds[0] @ weight_qh
    if need[4]:
        grads[4] = dc.to(dtype)
    if need[5]:
        grads[5] = ds2.t() @ hprev.reshape(n, H)
    if need[6]:
        grads[6] = dp2.t() @ mlp_act(s.reshape(n, M))
    if need[7]:
        grads[7] = dp2.sum(0)
    return grads


def chain_input_grads(need, dgates, ds, dparams, grad_eps, dc, h0, h, z, s, weight_qh, bias_gz, weight_gz,
                      weight_iz, weight_hh, dtype):
    """Gradients for ``(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
    bias_gz, weight_iz, weight_hh)``; ``need`` is ``ctx.needs_input_grad`` (its first 12
    entries), ``h``/``z``/``s`` the forward's h_t, z_t and posterior pre-activations, ``dtype``
    the inputs' dtype (``dc`` may be kept wider)."""
    T, B, H = h.shape
    Z = z.shape[-1]
    n = T * B
    hprev = torch.cat([h0[None], h[:-1]])
    grads = posterior_and_state_grads(need, dgates, dgates, ds, dparams, grad_eps, dc, hprev, s, weight_qh,
                                      weight_hh, dtype) + [None] * 4
    dg2, z2 = dgates.reshape(n, 4 * H), z.reshape(n, Z)
    if need[10]:
        grads[10] = dg2.t() @ torch.addmm(bias_gz, z2, weight_gz.t())
    if need[8] or need[9]:
        dgz = dg2 @ weight_iz
        grads[8] = dgz.t() @ z2 if need[8] else None
        grads[9] = dgz.sum(0) if need[9] else None
    if need[11]:
        grads[11] = dg2.t() @ hprev.reshape(n, H)
    return grads
