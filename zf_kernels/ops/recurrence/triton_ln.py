"""Triton version of the ``cond_ln`` Z-forcing chain (``naive.zforcing_chain_ln_ref`` has the
equations): the posterior stages are the plain chain's tile helpers (``triton.py``), the
layer-normalised, z-conditioned LSTM cell is new. g(z) is the model's ``gen`` MLP
(Z -> G -> 8H = [gain, bias]).

Two schedules run the same stages (``zforcing_chain_ln(..., schedule=)``; ``explain_schedule``
/ ``ops.explain`` say which one runs), chosen exactly as the plain chain's
(``triton._persistent_config``, ``ZF_CHAIN_SCHEDULE``):

- ``stepwise``: the time loop on the host, 5 launches per step forward, 5 backward.
- ``persistent``: one launch per direction (``_fwd_ln_persistent``, ``_bwd_ln_persistent``),
  the programs of a batch block meeting at a grid barrier after each phase: 4 barriers per
  step in each direction (3 between the phases of a step, 1 between steps). Forward phases:
  {K3, K1} | K2 | K4 | K5; backward: KB1 | {KB2, KB3} | KB4 | KB5. On a GPU its forward
  reductions run in K chunks of 16 (``PERSISTENT_FWD_BLOCK_K``: 32 spills registers).

Forward, per step t (5 launches; grid (B-blocks, column blocks of the stage)):

  K1 ``triton._fwd_posterior_hidden``  s_t = h_{t-1} @ W_qh^T + post_x[t]        -> saved s
  K2 ``triton._fwd_posterior_sample``  mu, lv, z_t, int8 clamp mask              -> saved
  K3 ``_fwd_ln_proj``  (H-blocks)  hh = h_{t-1} @ W_hh^T for the four gate column blocks of
        units j -> an fp32 (B, 4H) scratch, and per (row, tile) the tile's sum and centred
        sum of squares -> a (B, n_tiles, 2) scratch (the row statistics' partial sums).
  K4 ``_fwd_gen_hidden`` (G-blocks)  u_t = z_t @ W_g1^T + b_g1                    -> saved u
  K5 ``_fwd_ln_cell``  (H-blocks)  every tile first reduces the row's partial sums (Chan's
        parallel mean / variance merge, biased variance as F.layer_norm), then
        n = (hh - mean) * rsqrt(var + 1e-5); then gate by gate (two accumulators live, so
        the 32 x 32 tile does not spill; ``_ln_gate_pre``): [gain, bias] = clamp(act(u_t) @
        W_g2^T + b_g2, -3, 3) at the gate's gain and bias columns, gates_x[t] + n (1 + gain)
        + bias, its nonlinearity; then the cell. Writes h_t, c_t and the activated gates (saved).

  The row statistics need the whole row of hh, so they cost a launch boundary / barrier
  (K3 -> K5); K4 sits in between for free. K1 and K3 read only h_{t-1} (one phase in the
  persistent kernel). Each reducer sums the partial sums BLOCK_T (<= 8) tiles at a time.

Backward, reverse loop, per step t (5 launches):

  KB1 ``_bwd_ln_cell`` (H-blocks): ``triton._bwd_lstm_cell_tile`` with the recurrent term
        dh_t += dhh_{t+1} @ W_hh + ds_{t+1} @ W_qh -> dgates_t (saved buffer = grad gates_x);
        then, in the same program on its own tile: dn = dgates (1 + gain), d gain =
        dgates * n, d bias = dgates, times the [-3, 3] clamp masks (closed interval, as
        naive.clamp_ref) -> dgen (T, B, 8H); dn -> a (B, 4H) scratch and the
        per-(row, tile) partial sums of dn and dn * n.
  KB2 ``_bwd_ln_norm`` (4H-blocks; in the persistent kernel each program takes every
        n-th of them): dhh = rstd (dn - mean(dn) - n mean(dn n)) with the row means reduced
        from the partial sums -> dhh (T, B, 4H).
  KB3 ``triton._bwd_posterior_hidden`` on the gen MLP: du = (dgen @ W_g2) * act'(u).
  KB4 ``_bwd_ln_sample`` = ``triton._bwd_posterior_sample_tile`` with reduction width G:
        dz = grad_z + du @ W_g1 -> dparams, grad eps.
  KB5 ``triton._bwd_posterior_hidden``: ds = (dparams @ W_q2) * act'(s).

After the loop, weight gradients are GEMMs over the flattened T*B dim: dW_hh = dhh^T hprev,
dW_qh = ds^T hprev, dW_q2 = dparams^T act(s), dW_g2 = dgen^T act(u), dW_g1 = du^T z, biases
as column sums, grad h0 = dhh_0 W_hh + ds_0 W_qh, grad c0 = the carried dc.

Saved vs recomputed: saved are the outputs h, c, z, mu, lv, h0, c0, eps, s (T, B, M), u
(T, B, G), the activated gates (T, B, 4H), the int8 posterior clamp mask and the weights.
Recomputed once before the backward loop, batched over all T (not latency-bound): hprev =
[h0; h_1..h_{T-1}], hh = hprev @ W_hh^T, its layer norm n and rstd (T, B, .) and the gen
output act(u) @ W_g2^T + b_g2 before the clamp (for gain and the clamp masks). gates_x and
post_x are not kept.

dtypes: float32, float64, float16 and bfloat16 are tested under TRITON_INTERPRET=1 on the
CPU (bfloat16 as for the plain chain, through the tests' interpreter repair); bfloat16 takes
the float16 code (fp32 accumulation, fp32 scratch, cell state and statistics, gradient
buffers in the input dtype).
None of it has run on a GPU yet (tests/test_triton_chain_ln.py's ``gpu`` tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import fused_backward
from .. import _persistent
from .._persistent import check_sync, sync_buffer
from .._triton_common import (LAUNCH_OPTIONS, acc_type, barrier_slots, dot_precision, gate_zeros, grid_barrier,
                             leaky_clamp, sigmoid, tanh, tile_block, tile_dot)
from ._grads import posterior_and_state_grads
from .naive import ACT_CLAMP, COND_CLAMP, LEAKY_SLOPE, LN_EPS, PARAM_CLAMP, ChainOutput, mlp_act
from . import triton as _chain
from .triton import (_empty_chain_backward, _empty_chain_forward, _forward_buffers, _HALF, _bwd_lstm_cell_tile,
                     _bwd_posterior_hidden, _bwd_posterior_hidden_tile, _bwd_posterior_sample_tile, _four_gate_dots,
                     _fwd_posterior_hidden, _fwd_posterior_hidden_tile, _fwd_posterior_sample,
                     _fwd_posterior_sample_tile, _grid, _k, _launch, _launch_options, _pow2, _prev_rows)

__all__ = ["zforcing_chain_ln", "ZForcingChainLNFunction", "explain_schedule"]


# --------------------------------------------------------------------------- jit helpers

@triton.jit
def _clamp(x, bound: tl.constexpr):
    """torch.clamp(x, -bound, bound), NaN propagating."""
    return tl.minimum(tl.maximum(x, -bound, propagate_nan=tl.PropagateNan.ALL), bound,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _row_stats(PSUM, rb, mb, H, NT, CACHE: tl.constexpr, EPS_LN: tl.constexpr, ACC: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """Mean and 1 / sqrt(var + eps) of rows rb over all 4H columns, from the per-(row, tile)
    partial sums PSUM (B, NT, 2) = (sum, centred sum of squares) of tiles of 4 * BLOCK_N
    columns (4 * (the valid units) in the last tile): Chan's parallel merge, in two passes
    over the NT tiles, BLOCK_T at a time (a (BLOCK_B, NT) tile at once spills registers)."""
    rt0 = tl.arange(0, BLOCK_T)
    total = 4 * H
    tot = tl.zeros((BLOCK_B,), dtype=ACC)
    for t0 in range(0, NT, BLOCK_T):
        rt = t0 + rt0
        m2 = mb[:, None] & (rt < NT)[None, :]
        p = PSUM + rb[:, None] * (NT * 2) + rt[None, :] * 2
        tot += tl.sum(tl.load(p, mask=m2, other=0.0, cache_modifier=CACHE).to(ACC), axis=1)
    mean = tot / total
    m2sum = tl.zeros((BLOCK_B,), dtype=ACC)
    for t0 in range(0, NT, BLOCK_T):
        rt = t0 + rt0
        mt = rt < NT
        m2 = mb[:, None] & mt[None, :]
        p = PSUM + rb[:, None] * (NT * 2) + rt[None, :] * 2
        tsum = tl.load(p, mask=m2, other=0.0, cache_modifier=CACHE).to(ACC)
        tm2 = tl.load(p + 1, mask=m2, other=0.0, cache_modifier=CACHE).to(ACC)
        cnt = tl.where(mt, 4 * tl.minimum(H - rt * BLOCK_N, BLOCK_N), 1).to(ACC)
        d = tsum / cnt[None, :] - mean[:, None]
        m2sum += tl.sum(tm2 + tl.where(m2, cnt[None, :] * d * d, 0.0), axis=1)
    rstd = 1.0 / tl.sqrt(m2sum / total + EPS_LN)
    return mean, rstd


@triton.jit
def _store_psum(PSUM, rb, mb, pid_n, NT, a, b):
    """This tile's two partial sums ``a``, ``b`` (per row) into PSUM (B, NT, 2) at tile ``pid_n``."""
    pp = PSUM + rb * (NT * 2) + pid_n * 2
    tl.store(pp, a.to(PSUM.dtype.element_ty), mask=mb)
    tl.store(pp + 1, b.to(PSUM.dtype.element_ty), mask=mb)


# --------------------------------------------------------------------------- forward kernels

@triton.jit
def _fwd_ln_proj_tile(
    pid_b, pid_n,
    H0, H_OUT, W_HH, HH, PSUM, t, B, H, NT,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rh, mb, mh = tile_block(pid_b, pid_n, B, H, BLOCK_B, BLOCK_N)
    t64 = tl.cast(t, tl.int64)
    hprev = _prev_rows(H0, H_OUT, t, t64, B, H)
    acc_i, acc_f, acc_g, acc_o = gate_zeros(BLOCK_B, BLOCK_N, ACC)
    acc_i, acc_f, acc_g, acc_o = _four_gate_dots(acc_i, acc_f, acc_g, acc_o, hprev, W_HH, H, rb, rh, mb, mh, H,
                                                 CACHE, ACC, PREC, BLOCK_K)
    m2 = mb[:, None] & mh[None, :]
    hp = HH + rb[:, None] * (4 * H) + rh[None, :]
    ty = HH.dtype.element_ty
    tl.store(hp, acc_i.to(ty), mask=m2)
    tl.store(hp + H, acc_f.to(ty), mask=m2)
    tl.store(hp + 2 * H, acc_g.to(ty), mask=m2)
    tl.store(hp + 3 * H, acc_o.to(ty), mask=m2)
    # this tile's part of the row statistics: sum and sum of squares about the tile's mean
    # (masked columns are 0 in the accumulators and excluded from the centred sum)
    cnt = 4 * tl.minimum(H - pid_n * BLOCK_N, BLOCK_N)
    tsum = tl.sum(acc_i + acc_f + acc_g + acc_o, axis=1)
    tmean = tsum / cnt
    di = tl.where(m2, acc_i - tmean[:, None], 0.0)
    df = tl.where(m2, acc_f - tmean[:, None], 0.0)
    dg = tl.where(m2, acc_g - tmean[:, None], 0.0)
    do = tl.where(m2, acc_o - tmean[:, None], 0.0)
    tm2 = tl.sum(di * di + df * df + dg * dg + do * do, axis=1)
    _store_psum(PSUM, rb, mb, pid_n, NT, tsum, tm2)


@triton.jit(do_not_specialize=["t"])
def _fwd_ln_proj(
    H0, H_OUT, W_HH, HH, PSUM, t, B, H, NT,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _fwd_ln_proj_tile(tl.program_id(0), tl.program_id(1), H0, H_OUT, W_HH, HH, PSUM, t, B, H, NT,
                      "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit
def _fwd_gen_hidden_tile(
    pid_b, pid_n,
    Z_IN, W_G1, B_G1, U, t, B, Z, G,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rn, mb, mn = tile_block(pid_b, pid_n, B, G, BLOCK_B, BLOCK_N)
    t64 = tl.cast(t, tl.int64)
    acc = tile_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC), Z_IN + t64 * B * Z, Z, rb, mb, W_G1, Z, rn, mn, Z, True,
                   CACHE, ACC, PREC, BLOCK_K)
    u = acc + tl.load(B_G1 + rn, mask=mn, other=0.0).to(ACC)[None, :]
    off = t64 * B * G + rb[:, None] * G + rn[None, :]
    tl.store(U + off, u.to(U.dtype.element_ty), mask=mb[:, None] & mn[None, :])


@triton.jit(do_not_specialize=["t"])
def _fwd_gen_hidden(
    Z_IN, W_G1, B_G1, U, t, B, Z, G,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _fwd_gen_hidden_tile(tl.program_id(0), tl.program_id(1), Z_IN, W_G1, B_G1, U, t, B, Z, G,
                         "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit
def _ln_gate_pre(k: tl.constexpr, u_t, W_G2, B_G2, HH, GATES_X, mean, rstd, rb, mb, rh, mh, t64, B, H, G,
                 CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, SLOPE: tl.constexpr,
                 ACT_BOUND: tl.constexpr, GEN_BOUND: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pre-activation of gate k (0..3 = i, f, g, o) for units rh:
    gates_x + n (1 + clamp(gain)) + clamp(bias), with [gain, bias] = act(u_t) @ W_g2^T + b_g2
    at columns k H + rh and 4H + k H + rh. One gate at a time keeps two accumulators live."""
    rk = tl.arange(0, BLOCK_K)
    acc_gain = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    acc_bias = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, G, BLOCK_K):
        kk = k0 + rk
        mk = kk < G
        u = tl.load(u_t + rb[:, None] * G + kk[None, :], mask=mb[:, None] & mk[None, :],
                    other=0.0, cache_modifier=CACHE)
        # leaky_clamp(0) = 0: the masked padding stays zero
        x = leaky_clamp(u.to(ACC), SLOPE, ACT_BOUND).to(W_G2.dtype.element_ty)
        wm = mh[None, :] & mk[:, None]
        wp = W_G2 + (k * H + rh)[None, :] * G + kk[:, None]
        acc_gain = tl.dot(x, tl.load(wp, mask=wm, other=0.0), acc_gain, input_precision=PREC, out_dtype=ACC)
        acc_bias = tl.dot(x, tl.load(wp + 4 * H * G, mask=wm, other=0.0), acc_bias, input_precision=PREC,
                          out_dtype=ACC)
    m2 = mb[:, None] & mh[None, :]
    gain = _clamp(acc_gain + tl.load(B_G2 + k * H + rh, mask=mh, other=0.0).to(ACC)[None, :], GEN_BOUND)
    bias = _clamp(acc_bias + tl.load(B_G2 + (4 + k) * H + rh, mask=mh, other=0.0).to(ACC)[None, :], GEN_BOUND)
    col = rb[:, None] * (4 * H) + k * H + rh[None, :]
    n = (tl.load(HH + col, mask=m2, other=0.0, cache_modifier=CACHE).to(ACC) - mean[:, None]) * rstd[:, None]
    gx = tl.load(GATES_X + t64 * B * 4 * H + col, mask=m2, other=0.0).to(ACC)
    return gx + n * (1.0 + gain) + bias


@triton.jit
def _fwd_ln_cell_tile(
    pid_b, pid_n,
    C0, H_OUT, C_OUT, HH, PSUM, U, W_G2, B_G2, GATES_X, ACTS, t, B, H, G, NT,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, GEN_BOUND: tl.constexpr, EPS_LN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    mh = rh < H
    m2 = mb[:, None] & mh[None, :]
    t64 = tl.cast(t, tl.int64)
    mean, rstd = _row_stats(PSUM, rb, mb, H, NT, CACHE, EPS_LN, ACC, BLOCK_B, BLOCK_N, BLOCK_T)
    u_t = U + t64 * B * G
    ap = ACTS + t64 * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :]
    ty = ACTS.dtype.element_ty
    # gate by gate (i, g, f, o), each stored as soon as it is known
    i = sigmoid(_ln_gate_pre(0, u_t, W_G2, B_G2, HH, GATES_X, mean, rstd, rb, mb, rh, mh, t64, B, H, G, CACHE,
                             ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, BLOCK_B, BLOCK_N, BLOCK_K))
    tl.store(ap, i.to(ty), mask=m2)
    g = tanh(_ln_gate_pre(2, u_t, W_G2, B_G2, HH, GATES_X, mean, rstd, rb, mb, rh, mh, t64, B, H, G, CACHE,
                          ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, BLOCK_B, BLOCK_N, BLOCK_K))
    tl.store(ap + 2 * H, g.to(ty), mask=m2)
    ig = i * g
    f = sigmoid(_ln_gate_pre(1, u_t, W_G2, B_G2, HH, GATES_X, mean, rstd, rb, mb, rh, mh, t64, B, H, G, CACHE,
                             ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, BLOCK_B, BLOCK_N, BLOCK_K))
    tl.store(ap + H, f.to(ty), mask=m2)
    cprev = _prev_rows(C0, C_OUT, t, t64, B, H)
    st = rb[:, None] * H + rh[None, :]
    c = f * tl.load(cprev + st, mask=m2, other=0.0).to(ACC) + ig
    tl.store(C_OUT + t64 * B * H + st, c.to(C_OUT.dtype.element_ty), mask=m2)
    o = sigmoid(_ln_gate_pre(3, u_t, W_G2, B_G2, HH, GATES_X, mean, rstd, rb, mb, rh, mh, t64, B, H, G, CACHE,
                             ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, BLOCK_B, BLOCK_N, BLOCK_K))
    tl.store(ap + 3 * H, o.to(ty), mask=m2)
    h = o * tanh(c)
    tl.store(H_OUT + t64 * B * H + st, h.to(H_OUT.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _fwd_ln_cell(
    C0, H_OUT, C_OUT, HH, PSUM, U, W_G2, B_G2, GATES_X, ACTS, t, B, H, G, NT,
    ACC: tl.constexpr, PREC: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, GEN_BOUND: tl.constexpr, EPS_LN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):
    _fwd_ln_cell_tile(tl.program_id(0), tl.program_id(1), C0, H_OUT, C_OUT, HH, PSUM, U, W_G2, B_G2, GATES_X, ACTS,
                      t, B, H, G, NT, "", ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, EPS_LN,
                      BLOCK_B, BLOCK_N, BLOCK_K, BLOCK_T)


# -------------------------------------------------------------------------- backward kernels

@triton.jit
def _bwd_ln_gates_tile(
    pid_b, pid_n,
    DGATES, GEN, NORM, DGEN, DN, PSUM, t, B, H, NT,
    ACC: tl.constexpr, GEN_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """From this tile's dgates_t (written by the cell backward of the same program): dgen
    (gain and bias columns of the tile's units), dn -> DN scratch, and the tile's partial
    sums of dn and dn * n per row."""
    rb, rh, mb, mh = tile_block(pid_b, pid_n, B, H, BLOCK_B, BLOCK_N)
    m2 = mb[:, None] & mh[None, :]
    t64 = tl.cast(t, tl.int64)
    col = rb[:, None] * (4 * H) + rh[None, :]
    dgp = DGATES + t64 * B * 4 * H + col
    gp = GEN + t64 * B * 8 * H + rb[:, None] * (8 * H) + rh[None, :]
    np_ = NORM + t64 * B * 4 * H + col
    dgenp = DGEN + t64 * B * 8 * H + rb[:, None] * (8 * H) + rh[None, :]
    ty = DGEN.dtype.element_ty
    s_dn = tl.zeros((BLOCK_B,), dtype=ACC)
    s_dnn = tl.zeros((BLOCK_B,), dtype=ACC)
    for k in tl.static_range(4):
        dg = tl.load(dgp + k * H, mask=m2, other=0.0).to(ACC)
        gain_pre = tl.load(gp + k * H, mask=m2, other=0.0).to(ACC)
        bias_pre = tl.load(gp + (4 + k) * H, mask=m2, other=0.0).to(ACC)
        n = tl.load(np_ + k * H, mask=m2, other=0.0).to(ACC)
        ok_g = (gain_pre >= -GEN_BOUND) & (gain_pre <= GEN_BOUND)
        ok_b = (bias_pre >= -GEN_BOUND) & (bias_pre <= GEN_BOUND)
        dn = dg * (1.0 + _clamp(gain_pre, GEN_BOUND))
        tl.store(dgenp + k * H, tl.where(ok_g, dg * n, 0.0).to(ty), mask=m2)
        tl.store(dgenp + (4 + k) * H, tl.where(ok_b, dg, 0.0).to(ty), mask=m2)
        tl.store(DN + col + k * H, dn.to(DN.dtype.element_ty), mask=m2)
        s_dn += tl.sum(tl.where(m2, dn, 0.0), axis=1)
        s_dnn += tl.sum(tl.where(m2, dn * n, 0.0), axis=1)
    _store_psum(PSUM, rb, mb, pid_n, NT, s_dn, s_dnn)


@triton.jit(do_not_specialize=["t"])
def _bwd_ln_cell(
    GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DHH, DS, W_HH, W_QH,
    GEN, NORM, DGEN, DN, PSUM, t, B, H, M, NT,
    HAS_NEXT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, GEN_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    _bwd_lstm_cell_tile(pid_b, pid_n, GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DHH, DS, W_HH, W_QH,
                        t, B, H, M, HAS_NEXT, "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)
    # the tile's dgates were written by other threads of this program
    tl.debug_barrier()
    _bwd_ln_gates_tile(pid_b, pid_n, DGATES, GEN, NORM, DGEN, DN, PSUM, t, B, H, NT,
                       ACC, GEN_BOUND, BLOCK_B, BLOCK_N)


@triton.jit
def _bwd_ln_norm_tile(
    pid_b, pid_n,
    DN, NORM, RSTD, PSUM, DHH, t, B, H, NT,
    CACHE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """dhh = rstd (dn - mean(dn) - n mean(dn n)) for columns pid_n * BLOCK_N.. of all 4H."""
    rb, rn, mb, mn = tile_block(pid_b, pid_n, B, 4 * H, BLOCK_B, BLOCK_N)
    m2 = mb[:, None] & mn[None, :]
    t64 = tl.cast(t, tl.int64)
    rt0 = tl.arange(0, BLOCK_T)
    s_dn = tl.zeros((BLOCK_B,), dtype=ACC)
    s_dnn = tl.zeros((BLOCK_B,), dtype=ACC)
    for t0 in range(0, NT, BLOCK_T):   # BLOCK_T tiles at a time, as _row_stats
        rt = t0 + rt0
        pm = mb[:, None] & (rt < NT)[None, :]
        p = PSUM + rb[:, None] * (NT * 2) + rt[None, :] * 2
        s_dn += tl.sum(tl.load(p, mask=pm, other=0.0, cache_modifier=CACHE).to(ACC), axis=1)
        s_dnn += tl.sum(tl.load(p + 1, mask=pm, other=0.0, cache_modifier=CACHE).to(ACC), axis=1)
    mean_dn = s_dn / (4 * H)
    mean_dnn = s_dnn / (4 * H)
    col = rb[:, None] * (4 * H) + rn[None, :]
    dn = tl.load(DN + col, mask=m2, other=0.0, cache_modifier=CACHE).to(ACC)
    n = tl.load(NORM + t64 * B * 4 * H + col, mask=m2, other=0.0).to(ACC)
    rstd = tl.load(RSTD + t64 * B + rb, mask=mb, other=0.0).to(ACC)
    dhh = rstd[:, None] * (dn - mean_dn[:, None] - n * mean_dnn[:, None])
    tl.store(DHH + t64 * B * 4 * H + col, dhh.to(DHH.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _bwd_ln_norm(
    DN, NORM, RSTD, PSUM, DHH, t, B, H, NT,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    _bwd_ln_norm_tile(tl.program_id(0), tl.program_id(1), DN, NORM, RSTD, PSUM, DHH, t, B, H, NT,
                      "", ACC, BLOCK_B, BLOCK_N, BLOCK_T)


@triton.jit(do_not_specialize=["t"])
def _bwd_ln_sample(
    GRAD_Z, GRAD_MU, GRAD_LV, DU, W_G1, MU, LV, EPS, OKMASK, DPARAMS, GRAD_EPS, t, B, G, Z,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dz = grad_z + du @ W_g1: the plain chain's sample backward with reduction width G
    _bwd_posterior_sample_tile(tl.program_id(0), tl.program_id(1), GRAD_Z, GRAD_MU, GRAD_LV, DU, W_G1, MU, LV, EPS,
                               OKMASK, DPARAMS, GRAD_EPS, t, B, G, Z, "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)


# ------------------------------------------------------------------------- persistent kernels
# One launch per direction. Program (pb, pn) runs column tile pn of each stage (when the stage
# has that many tiles) for batch block pb and meets the other programs of its batch block at a
# grid barrier after each phase; the layer norm's row statistics only mix tiles of the same
# rows, i.e. programs of one batch block. Loads of rows other programs wrote ask to bypass L1
# (".cg"; visibility rests on the barrier's acquire: grid_barrier).

@triton.jit(do_not_specialize=["T"])
def _fwd_ln_persistent(
    H0, C0, H_OUT, C_OUT, W_QH, POST_X, S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK,
    W_HH, HH, PSUM, W_G1, B_G1, U, W_G2, B_G2, GATES_X, ACTS, SYNC, T, B, H, M, Z, G, NT,
    ACC: tl.constexpr, PREC: tl.constexpr, MAX_POLLS: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, PARAM_BOUND: tl.constexpr,
    GEN_BOUND: tl.constexpr, EPS_LN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    BK_S: tl.constexpr, BK_Z: tl.constexpr, BK_H: tl.constexpr, BK_U: tl.constexpr, BK_G: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    counter, flag, n_prog = barrier_slots(SYNC)
    ok = pid_b >= 0
    for t in range(T):
        # phase 1: everything that reads only h_{t-1}: hh + partial sums (K3) and s_t (K1)
        if pid_n < tl.cdiv(H, BLOCK_N):
            _fwd_ln_proj_tile(pid_b, pid_n, H0, H_OUT, W_HH, HH, PSUM, t, B, H, NT,
                              ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BK_H)
        if pid_n < tl.cdiv(M, BLOCK_N):
            _fwd_posterior_hidden_tile(pid_b, pid_n, H0, H_OUT, W_QH, POST_X, S, t, B, H, M,
                                       ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BK_S)
        ok = grid_barrier(counter, (4 * t + 1) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(Z, BLOCK_N):
            _fwd_posterior_sample_tile(pid_b, pid_n, S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK, t, B, M, Z,
                                       ".cg", ACC, PREC, SLOPE, ACT_BOUND, PARAM_BOUND,
                                       BLOCK_B, BLOCK_N, BK_Z)
        ok = grid_barrier(counter, (4 * t + 2) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(G, BLOCK_N):
            _fwd_gen_hidden_tile(pid_b, pid_n, Z_OUT, W_G1, B_G1, U, t, B, Z, G,
                                 ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BK_U)
        ok = grid_barrier(counter, (4 * t + 3) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(H, BLOCK_N):
            _fwd_ln_cell_tile(pid_b, pid_n, C0, H_OUT, C_OUT, HH, PSUM, U, W_G2, B_G2, GATES_X, ACTS,
                              t, B, H, G, NT, ".cg", ACC, PREC, SLOPE, ACT_BOUND, GEN_BOUND, EPS_LN,
                              BLOCK_B, BLOCK_N, BK_G, BLOCK_T)
        if t + 1 < T:   # the last h_t is read by nobody in this launch
            ok = grid_barrier(counter, (4 * t + 4) * n_prog, ok, flag, MAX_POLLS)


@triton.jit(do_not_specialize=["T"])
def _bwd_ln_persistent(
    GRAD_H, GRAD_C, GRAD_Z, GRAD_MU, GRAD_LV, DC, ACTS, C0, C_OUT, DGATES, DHH, DS, W_HH, W_QH,
    GEN, NORM, RSTD, DGEN, DN, PSUM, W_G2, U, DU, W_G1, MU, LV, EPS, OKMASK, DPARAMS, GRAD_EPS,
    W_Q2, S, SYNC, T, B, H, M, Z, G, NT,
    ACC: tl.constexpr, PREC: tl.constexpr, MAX_POLLS: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, GEN_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    BK_C: tl.constexpr, BK_U: tl.constexpr, BK_Z: tl.constexpr, BK_S: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    counter, flag, n_prog = barrier_slots(SYNC)
    ok = pid_b >= 0
    for r in range(T):
        t = T - 1 - r
        if pid_n < tl.cdiv(H, BLOCK_N):
            _bwd_lstm_cell_tile(pid_b, pid_n, GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DHH, DS, W_HH,
                                W_QH, t, B, H, M, r > 0, ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BK_C)
            tl.debug_barrier()
            _bwd_ln_gates_tile(pid_b, pid_n, DGATES, GEN, NORM, DGEN, DN, PSUM, t, B, H, NT,
                               ACC, GEN_BOUND, BLOCK_B, BLOCK_N)
        ok = grid_barrier(counter, (4 * r + 1) * n_prog, ok, flag, MAX_POLLS)
        # the layer norm backward over 4H columns (4x the tiles of a unit stage: each program
        # takes every n_prog-th) and the gen MLP's hidden gradient, both from phase 1
        for q in range(pid_n, tl.cdiv(4 * H, BLOCK_N), n_prog):
            _bwd_ln_norm_tile(pid_b, q, DN, NORM, RSTD, PSUM, DHH, t, B, H, NT,
                              ".cg", ACC, BLOCK_B, BLOCK_N, BLOCK_T)
        if pid_n < tl.cdiv(G, BLOCK_N):
            _bwd_posterior_hidden_tile(pid_b, pid_n, DGEN, W_G2, U, DU, t, B, G, 4 * H, ".cg", ACC, PREC,
                                       SLOPE, ACT_BOUND, BLOCK_B, BLOCK_N, BK_U)
        ok = grid_barrier(counter, (4 * r + 2) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(Z, BLOCK_N):
            _bwd_posterior_sample_tile(pid_b, pid_n, GRAD_Z, GRAD_MU, GRAD_LV, DU, W_G1, MU, LV, EPS,
                                       OKMASK, DPARAMS, GRAD_EPS, t, B, G, Z, ".cg", ACC, PREC,
                                       BLOCK_B, BLOCK_N, BK_Z)
        ok = grid_barrier(counter, (4 * r + 3) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(M, BLOCK_N):
            _bwd_posterior_hidden_tile(pid_b, pid_n, DPARAMS, W_Q2, S, DS, t, B, M, Z, ".cg", ACC, PREC,
                                       SLOPE, ACT_BOUND, BLOCK_B, BLOCK_N, BK_S)
        if r + 1 < T:
            ok = grid_barrier(counter, (4 * r + 4) * n_prog, ok, flag, MAX_POLLS)


# ------------------------------------------------------------------------------- launching

def _stat_chunk(nt: int) -> int:
    """Tiles of row-statistics partial sums the kernels reduce at a time (BLOCK_T): at most 8
    (16 already spills the persistent forward kernel in float32: compile_check)."""
    return min(8, max(2, _pow2(nt)))


# K chunk of every reduction in the persistent forward kernel on a GPU: 32 (64 in bfloat16)
# spills registers there (8 to 576 B per thread on sm_90), 16 does not (compile_check)
PERSISTENT_FWD_BLOCK_K = 16

# polls of a grid barrier before giving up (tests shrink it; _persistent.MAX_POLLS by default)
MAX_POLLS = _persistent.MAX_POLLS


def _pick_schedule(B: int, dims: dict, dtype: torch.dtype, ref: torch.Tensor, schedule: str):
    """``(schedule, block config, reason)`` of ``zforcing_chain_ln``: the plain chain's rule
    (``triton._persistent_config``: persistent where its grid can be resident, the same
    ``ZF_CHAIN_SCHEDULE`` override and block-size override)."""
    return _chain._pick_schedule(B, dims, dtype, ref, schedule, launches=5, barriers=4)


def explain_schedule(gates_x: torch.Tensor, post_x: torch.Tensor, eps: torch.Tensor, G: int,
                     schedule: str = "auto") -> str:
    """How :func:`zforcing_chain_ln` will run these shapes, with g(z)'s hidden width G
    (``ops.explain`` appends it)."""
    T, B, four_h = gates_x.shape
    dims = {"H": four_h // 4, "M": post_x.shape[-1], "Z": eps.shape[-1], "G": G}
    name, _, why = _pick_schedule(B, dims, gates_x.dtype, gates_x, schedule)
    return f"schedule {name}: {why}"


def _chain_ln_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1, bias_g1,
                      weight_g2, bias_g2, weight_hh, schedule):
    """The forward over T >= 1 steps and B >= 1: ``(h, c, z, mu, lv)`` (``c`` in the state dtype),
    what the backward reads ``(s, u, acts, okmask)``, the contiguous inputs it needs ``(h0, c0,
    eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh)`` and the launch
    ``(schedule, cfg)``."""
    T, B, four_h = gates_x.shape
    H, M, Z, G = four_h // 4, weight_qh.shape[0], eps.shape[-1], weight_g1.shape[0]
    dtype, dev = gates_x.dtype, gates_x.device
    state_dtype = torch.float32 if dtype in _HALF else dtype
    gates_x, post_x, eps = gates_x.contiguous(), post_x.contiguous(), eps.contiguous()
    weight_qh, weight_q2, bias_q2 = weight_qh.contiguous(), weight_q2.contiguous(), bias_q2.contiguous()
    weight_g1, bias_g1 = weight_g1.contiguous(), bias_g1.contiguous()
    weight_g2, bias_g2 = weight_g2.contiguous(), bias_g2.contiguous()
    weight_hh = weight_hh.contiguous()
    h0 = h0.contiguous()
    c0 = c0.to(state_dtype).contiguous()
    h, c, z, mu, lv, s, acts, okmask = _forward_buffers(T, B, H, M, Z, dtype, state_dtype, dev)
    u = torch.empty(T, B, G, dtype=dtype, device=dev)
    hh = torch.empty(B, 4 * H, dtype=state_dtype, device=dev)

    dims = {"H": H, "M": M, "Z": Z, "G": G}
    schedule, cfg, _ = _pick_schedule(B, dims, dtype, gates_x, schedule)
    nt = triton.cdiv(H, cfg["BLOCK_N"])
    psum = torch.empty(B, nt, 2, dtype=state_dtype, device=dev)
    common = {"ACC": acc_type(dtype), "PREC": dot_precision(gates_x)}
    g1, c1 = _grid(B, M, cfg), _k(cfg, H)
    g2, c2 = _grid(B, Z, cfg), _k(cfg, M)
    g3, c3 = _grid(B, H, cfg), _k(cfg, H)
    g4, c4 = _grid(B, G, cfg), _k(cfg, Z)
    c5 = _k(cfg, G)
    opts = _launch_options(schedule, dtype, cfg)
    consts = dict(SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, GEN_BOUND=COND_CLAMP)
    if schedule == "persistent":
        grid = _grid(B, max(dims.values()), cfg)
        sync = sync_buffer(grid[0], gates_x)
        bk = {n: (PERSISTENT_FWD_BLOCK_K if gates_x.is_cuda else c["BLOCK_K"])
              for n, c in (("BK_S", c1), ("BK_Z", c2), ("BK_H", c3), ("BK_U", c4), ("BK_G", c5))}
        _fwd_ln_persistent[grid](
            h0, c0, h, c, weight_qh, post_x, s, weight_q2, bias_q2, eps, z, mu, lv, okmask,
            weight_hh, hh, psum, weight_g1, bias_g1, u, weight_g2, bias_g2, gates_x, acts, sync,
            T, B, H, M, Z, G, nt, MAX_POLLS=MAX_POLLS, PARAM_BOUND=PARAM_CLAMP, EPS_LN=LN_EPS,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_T=_stat_chunk(nt),
            **bk, **consts, **common, **opts, **LAUNCH_OPTIONS)
        check_sync(sync, "zforcing_chain_ln forward")
    for t in range(T if schedule == "stepwise" else 0):
        _launch(_fwd_posterior_hidden, g1, h0, h, weight_qh, post_x, s, t, B, H, M, **common, **c1)
        _launch(_fwd_posterior_sample, g2, s, weight_q2, bias_q2, eps, z, mu, lv, okmask, t, B, M, Z,
                SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, PARAM_BOUND=PARAM_CLAMP, **common, **c2)
        _launch(_fwd_ln_proj, g3, h0, h, weight_hh, hh, psum, t, B, H, nt, **common, **c3, **opts)
        _launch(_fwd_gen_hidden, g4, z, weight_g1, bias_g1, u, t, B, Z, G, **common, **c4)
        _launch(_fwd_ln_cell, g3, c0, h, c, hh, psum, u, weight_g2, bias_g2, gates_x, acts,
                t, B, H, G, nt, SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, GEN_BOUND=COND_CLAMP,
                EPS_LN=LN_EPS, BLOCK_T=_stat_chunk(nt), **common, **c5, **opts)
    return ((h, c, z, mu, lv), (s, u, acts, okmask),
            (h0, c0, eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh), (schedule, cfg))


def _chain_ln_backward(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, h, c, z, mu, lv, s, u, acts, okmask,
                       eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh, schedule, cfg, need):
    """The gradients of the 13 tensor inputs (None where ``need`` says no), from the forward's
    saved tensors (``_chain_ln_forward``: ``c0`` in the state dtype, all contiguous)."""
    T, B, H = h.shape
    M, Z, G = s.shape[-1], z.shape[-1], u.shape[-1]
    dtype, state_dtype = h.dtype, c.dtype
    dev = h.device
    grad_h, grad_c, grad_z, grad_mu, grad_lv = (
        g.to(dtype).contiguous() for g in (grad_h, grad_c, grad_z, grad_mu, grad_lv))
    n_rows = T * B
    # recomputed, batched over all steps: the layer norm of h_{t-1} W_hh^T and the gen
    # MLP's output before its clamp
    hprev = torch.cat([h0[None], h[:-1]])
    hh = (hprev.to(state_dtype) @ weight_hh.to(state_dtype).t())
    var, mean = torch.var_mean(hh, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + LN_EPS)
    norm = ((hh - mean) * rstd).contiguous()
    rstd = rstd.squeeze(-1).contiguous()
    gen = (mlp_act(u.to(state_dtype)) @ weight_g2.to(state_dtype).t() + bias_g2.to(state_dtype)).contiguous()

    dgates = torch.empty(T, B, 4 * H, dtype=dtype, device=dev)
    dhh = torch.empty(T, B, 4 * H, dtype=dtype, device=dev)
    dgen = torch.empty(T, B, 8 * H, dtype=dtype, device=dev)
    du = torch.empty(T, B, G, dtype=dtype, device=dev)
    dparams = torch.empty(T, B, 2 * Z, dtype=dtype, device=dev)
    ds = torch.empty(T, B, M, dtype=dtype, device=dev)
    grad_eps = torch.empty(T, B, Z, dtype=dtype, device=dev)
    dn = torch.empty(B, 4 * H, dtype=state_dtype, device=dev)
    dc = torch.zeros(B, H, dtype=state_dtype, device=dev)
    nt = triton.cdiv(H, cfg["BLOCK_N"])
    psum = torch.empty(B, nt, 2, dtype=state_dtype, device=dev)
    common = {"ACC": acc_type(dtype), "PREC": dot_precision(grad_h)}
    g1, c1 = _grid(B, H, cfg), _k(cfg, max(4 * H, M))
    g2 = _grid(B, 4 * H, cfg)
    g3, c3 = _grid(B, G, cfg), _k(cfg, 8 * H)
    g4, c4 = _grid(B, Z, cfg), _k(cfg, G)
    g5, c5 = _grid(B, M, cfg), _k(cfg, 2 * Z)
    bt = _stat_chunk(nt)
    # stepwise: 8 warps from 32 x 32 tiles on, as the forward's cell (4 spill: compile_check)
    opts = _launch_options(schedule, dtype, cfg)
    if schedule == "persistent":
        grid = _grid(B, max(H, M, Z, G), cfg)
        sync = sync_buffer(grid[0], grad_h)
        _bwd_ln_persistent[grid](
            grad_h, grad_c, grad_z, grad_mu, grad_lv, dc, acts, c0, c, dgates, dhh, ds, weight_hh, weight_qh,
            gen, norm, rstd, dgen, dn, psum, weight_g2, u, du, weight_g1, mu, lv, eps, okmask, dparams,
            grad_eps, weight_q2, s, sync, T, B, H, M, Z, G, nt,
            MAX_POLLS=MAX_POLLS, SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, GEN_BOUND=COND_CLAMP,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_T=bt, BK_C=c1["BLOCK_K"],
            BK_U=c3["BLOCK_K"], BK_Z=c4["BLOCK_K"], BK_S=c5["BLOCK_K"], **common, **opts, **LAUNCH_OPTIONS)
        check_sync(sync, "zforcing_chain_ln backward")
    for t in range(T - 1 if schedule == "stepwise" else -1, -1, -1):
        _launch(_bwd_ln_cell, g1, grad_h, grad_c, dc, acts, c0, c, dgates, dhh, ds, weight_hh, weight_qh,
                gen, norm, dgen, dn, psum, t, B, H, M, nt, HAS_NEXT=t < T - 1, GEN_BOUND=COND_CLAMP,
                **common, **c1, **opts)
        _launch(_bwd_ln_norm, g2, dn, norm, rstd, psum, dhh, t, B, H, nt, ACC=common["ACC"],
                BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_T=bt)
        _launch(_bwd_posterior_hidden, g3, dgen, weight_g2, u, du, t, B, G, 4 * H,
                SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, **common, **c3)
        _launch(_bwd_ln_sample, g4, grad_z, grad_mu, grad_lv, du, weight_g1, mu, lv, eps, okmask,
                dparams, grad_eps, t, B, G, Z, **common, **c4)
        _launch(_bwd_posterior_hidden, g5, dparams, weight_q2, s, ds, t, B, M, Z,
                SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, **common, **c5)

    grads = posterior_and_state_grads(need, dgates, dhh, ds, dparams, grad_eps, dc, hprev, s, weight_qh, weight_hh,
                                      dtype) + [None] * 5
    if need[8] or need[9]:
        du2 = du.reshape(n_rows, G)
        grads[8] = du2.t() @ z.reshape(n_rows, Z) if need[8] else None
        grads[9] = du2.sum(0) if need[9] else None
    if need[10] or need[11]:
        dgen2 = dgen.reshape(n_rows, 8 * H)
        grads[10] = dgen2.t() @ mlp_act(u.reshape(n_rows, G)) if need[10] else None
        grads[11] = dgen2.sum(0) if need[11] else None
    if need[12]:
        grads[12] = dhh.reshape(n_rows, 4 * H).t() @ hprev.reshape(n_rows, H)
    return grads


class ZForcingChainLNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                weight_g1, bias_g1, weight_g2, bias_g2, weight_hh, schedule="auto"):
        ctx.empty = gates_x.shape[0] == 0 or gates_x.shape[1] == 0
        if ctx.empty:
            return _empty_chain_forward(ctx, (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                              weight_g1, bias_g1, weight_g2, bias_g2, weight_hh))
        ((h, c, z, mu, lv), (s, u, acts, okmask),
         (h0, c0, eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh),
         (ctx.schedule, ctx.cfg)) = _chain_ln_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                                      weight_g1, bias_g1, weight_g2, bias_g2, weight_hh, schedule)
        ctx.save_for_backward(h0, c0, h, c, z, mu, lv, s, u, acts, okmask, eps, weight_qh, weight_q2,
                              weight_g1, weight_g2, bias_g2, weight_hh)
        return h, c.to(h.dtype), z, mu, lv

    @staticmethod
    @fused_backward("zforcing_chain_ln", "triton")
    def backward(ctx, grad_h, grad_c, grad_z, grad_mu, grad_lv):
        need = ctx.needs_input_grad
        if ctx.empty:
            return _empty_chain_backward(ctx)
        (h0, c0, h, c, z, mu, lv, s, u, acts, okmask, eps, weight_qh, weight_q2,
         weight_g1, weight_g2, bias_g2, weight_hh) = ctx.saved_tensors
        grads = _chain_ln_backward(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, h, c, z, mu, lv, s, u, acts,
                                   okmask, eps, weight_qh, weight_q2, weight_g1, weight_g2, bias_g2, weight_hh,
                                   ctx.schedule, ctx.cfg, need)
        return tuple(grads) + (None,)


def zforcing_chain_ln(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                      weight_g1, bias_g1, weight_g2, bias_g2, weight_hh,
                      schedule: str = "auto") -> ChainOutput:
    """Triton implementation of ``zforcing_chain_ln`` (same signature and numbers as
    ``naive.zforcing_chain_ln_ref``). Call it through
    ``zf_kernels.ops.zforcing_chain_ln(..., backend="triton")``, which checks the arguments."""
    return ChainOutput(*ZForcingChainLNFunction.apply(
        gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
        weight_g1, bias_g1, weight_g2, bias_g2, weight_hh, schedule))


def _explain_dispatch(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1, *rest) -> str:
    return explain_schedule(gates_x, post_x, eps, weight_g1.shape[0])


zforcing_chain_ln.explain = _explain_dispatch
