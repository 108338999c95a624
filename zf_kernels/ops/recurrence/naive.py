"""Plain-PyTorch reference for the Z-forcing recurrent chain (DESIGN section 2).

Only what depends on h_{t-1} runs inside the loop: the posterior MLP's h half, the sample,
g(z) and the LSTM cell. Everything that can be batched over time arrives precomputed.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..activations.naive import clamp_ref, leaky_clamp_ref

# MLP hidden nonlinearity of the model: LeakyReLU(1/3) clamped to [-3, 3].
LEAKY_SLOPE = 1.0 / 3.0
ACT_CLAMP = 3.0
# Every distribution parameter is clamped to [-PARAM_CLAMP, PARAM_CLAMP].
PARAM_CLAMP = 8.0
# cond_ln: the gain and bias that g(z) gives the layer-normalised recurrent projection are
# clamped to [-COND_CLAMP, COND_CLAMP]; the layer norm's epsilon (F.layer_norm's default).
COND_CLAMP = 3.0
LN_EPS = 1e-5


class ChainOutput(NamedTuple):
    h: torch.Tensor          # (T, B, H)  h_1 .. h_T
    c: torch.Tensor          # (T, B, H)  c_1 .. c_T
    z: torch.Tensor          # (T, B, Z)  posterior samples
    mu_q: torch.Tensor       # (T, B, Z)
    logvar_q: torch.Tensor   # (T, B, Z)


def mlp_act(x):
    return leaky_clamp_ref(x, LEAKY_SLOPE, ACT_CLAMP)


def zforcing_chain_ref(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                       weight_gz, bias_gz, weight_iz, weight_hh) -> ChainOutput:
    """Run the chain for t = 1..T:

        a_t      = act(h_{t-1} @ weight_qh.T + post_x[t])        # posterior hidden layer
        mu, lv   = clamp(a_t @ weight_q2.T + bias_q2, -8, 8).chunk(2)
        z_t      = mu + exp(0.5 lv) * eps[t]
        g_t      = z_t @ weight_gz.T + bias_gz                   # g(z)
        gates    = gates_x[t] + g_t @ weight_iz.T + h_{t-1} @ weight_hh.T
        h_t, c_t = LSTM cell(gates, c_{t-1})                     # gate order i, f, g, o
    """
    return chain_loop_ref(zforcing_chain_step_ref, gates_x, post_x, eps, h0, c0,
                          weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz, weight_hh)


def zforcing_chain_step_ref(h, c, gx_t, px_t, eps_t, weight_qh, weight_q2, bias_q2,
                            weight_gz, bias_gz, weight_iz, weight_hh):
    """One step of ``zforcing_chain_ref``: ``(h_t, c_t, z_t, mu_t, logvar_t)``."""
    z, mu, lv = _posterior_sample(h, px_t, eps_t, weight_qh, weight_q2, bias_q2)
    g = torch.addmm(bias_gz, z, weight_gz.t())
    h, c = _lstm_cell(gx_t + g @ weight_iz.t() + h @ weight_hh.t(), c)
    return h, c, z, mu, lv


def chain_loop_ref(step, gates_x, post_x, eps, h0, c0, *weights) -> ChainOutput:
    """The time loop of both chains around ``step(h, c, gates_x[t], post_x[t], eps[t], *weights)
    -> (h, c, z, mu, logvar)``. The benchmark's ``compile-step`` row passes
    ``torch.compile(step)``: a long chain compiled without unrolling its loop."""
    h, c = h0, c0
    hs, cs, zs, mus, lvs = [], [], [], [], []
    # unbind, not x[t]: indexing inside the loop makes the backward pass O(T^2)
    for gx_t, px_t, eps_t in zip(gates_x.unbind(0), post_x.unbind(0), eps.unbind(0)):
        h, c, z, mu, lv = step(h, c, gx_t, px_t, eps_t, *weights)
        hs.append(h); cs.append(c); zs.append(z); mus.append(mu); lvs.append(lv)
    if gates_x.shape[0] == 0:
        B, H = h0.shape
        Z = eps.shape[-1]
        e = gates_x.new_zeros
        return ChainOutput(e(0, B, H), e(0, B, H), e(0, B, Z), e(0, B, Z), e(0, B, Z))
    st = lambda xs: torch.stack(xs, 0)  # noqa: E731
    return ChainOutput(st(hs), st(cs), st(zs), st(mus), st(lvs))


def _posterior_sample(h, px_t, eps_t, weight_qh, weight_q2, bias_q2):
    """The posterior MLP's h half plus the sample (shared by both chains)."""
    a = mlp_act(torch.addmm(px_t, h, weight_qh.t()))
    params = clamp_ref(torch.addmm(bias_q2, a, weight_q2.t()), PARAM_CLAMP)
    mu, lv = params.chunk(2, dim=-1)
    return mu + torch.exp(0.5 * lv) * eps_t, mu, lv


def _lstm_cell(gates, c):
    i, f, gg, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c), c


def zforcing_chain_ln_ref(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                          weight_g1, bias_g1, weight_g2, bias_g2, weight_hh) -> ChainOutput:
    """The ``cond_ln`` chain (DESIGN section 1), for t = 1..T:

        a_t          = act(h_{t-1} @ weight_qh.T + post_x[t])
        mu, lv       = clamp(a_t @ weight_q2.T + bias_q2, -8, 8).chunk(2)
        z_t          = mu + exp(0.5 lv) * eps[t]
        gain, bias   = clamp(act(z_t @ weight_g1.T + bias_g1) @ weight_g2.T + bias_g2, -3, 3).chunk(2)
        n_t          = layer_norm(h_{t-1} @ weight_hh.T)  # over 4H, no affine, eps 1e-5
        gates        = gates_x[t] + n_t * (1 + gain) + bias
        h_t, c_t     = LSTM cell(gates, c_{t-1})           # gate order i, f, g, o

    g(z) is the model's ``gen`` MLP (Z -> G -> 8H, the same clamped LeakyReLU as every MLP);
    ``gates_x`` is ``LN(W_ie e_t)``, precomputed outside.
    """
    return chain_loop_ref(zforcing_chain_ln_step_ref, gates_x, post_x, eps, h0, c0,
                          weight_qh, weight_q2, bias_q2, weight_g1, bias_g1, weight_g2, bias_g2, weight_hh)


def zforcing_chain_ln_step_ref(h, c, gx_t, px_t, eps_t, weight_qh, weight_q2, bias_q2,
                               weight_g1, bias_g1, weight_g2, bias_g2, weight_hh):
    """One step of ``zforcing_chain_ln_ref``: ``(h_t, c_t, z_t, mu_t, logvar_t)``."""
    z, mu, lv = _posterior_sample(h, px_t, eps_t, weight_qh, weight_q2, bias_q2)
    gen = torch.addmm(bias_g2, mlp_act(torch.addmm(bias_g1, z, weight_g1.t())), weight_g2.t())
    gain, bias = clamp_ref(gen, COND_CLAMP).chunk(2, dim=-1)
    n = F.layer_norm(h @ weight_hh.t(), (weight_hh.shape[0],), eps=LN_EPS)
    h, c = _lstm_cell(gx_t + n * (1.0 + gain) + bias, c)
    return h, c, z, mu, lv
