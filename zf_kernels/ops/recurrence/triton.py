"""Triton version of the Z-forcing chain (``naive.zforcing_chain_ref`` has the equations).

Two schedules run the same three stages per step (``zforcing_chain(..., schedule=)``;
``explain_schedule`` / ``ops.explain`` say which one runs):

- ``stepwise``: the time loop runs on the host and each step launches three fused kernels
  forward (K1-K3 below) and three backward (KB1-KB3).
- ``persistent``: one launch per direction (``_fwd_persistent``, ``_bwd_persistent``). Program
  (pb, pn) runs column tile pn of each stage for batch block pb and meets the other programs
  of its batch block at a grid barrier (``_triton_common.grid_barrier``) after each stage:
  three barriers per step instead of three launches. All programs must be resident at once:
  one 32 x 16 tile per program (8 warps, the largest tile that does not spill registers, see
  ``PERSISTENT_TILES``), so B <= 32 at H = 1024 is a 1 x 64 grid; where the grid would exceed
  the SM count, "auto" runs stepwise. A barrier that never completes raises (a device-side
  assert on a GPU) instead of hanging. ``ZF_CHAIN_SCHEDULE=stepwise`` overrides "auto".

The stage bodies are jit helpers (``*_tile``) shared by both. Nothing inside either schedule
synchronises with the host, so a whole training step can be captured in a CUDA graph.

Forward, per step t (``hprev`` = h_{t-1}, all blocks masked so no size needs to be a multiple
of a block; ``tl.dot`` tiles are at least 16 wide and padded with masked loads, so B=1 works):

  K1 ``_fwd_posterior_hidden``  grid (B-blocks, M-blocks)
        s_t = hprev @ W_qh^T + post_x[t]               -> saved (T, B, M)
  K2 ``_fwd_posterior_sample``  grid (B-blocks, Z-blocks)
        a = leaky_clamp(s_t) on load; one program owns latent columns j and computes both the
        mu column j and the logvar column Z+j of ``a @ W_q2^T + b_q2``, clamps them to
        [-8, 8], writes mu, logvar, z = mu + exp(lv / 2) * eps[t] and an int8 "inside the
        clamp" mask (T, B, 2Z) for the backward pass.
  K3 ``_fwd_lstm_step``         grid (B-blocks, H-blocks)
        one program owns hidden columns j and the four gate columns j, H+j, 2H+j, 3H+j of
        gates = gates_x[t] + b_comb + hprev @ W_hh^T + z_t @ W_comb^T, applies the gate
        nonlinearities and the cell update, writes h_t, c_t and the activated gates
        (i, f, g, o) -> saved (T, B, 4H).

  g(z) never appears inside the loop: g_t @ W_iz^T = z_t @ (W_iz W_gz)^T + W_iz b_gz, so
  ``W_comb = W_iz @ W_gz`` (4H, Z) and ``b_comb = W_iz @ b_gz`` are formed once per call (one
  small GEMM). That removes a dependent stage (and a launch) per step and, with the usual
  G >= Z (mlp 512 / z 256 at the TIMIT settings), also halves the per-step g-part FLOPs
  (4H x Z instead of G x Z + 4H x G). It changes only the rounding order: the result
  agrees with the reference to float tolerance, and exactly in which entries are NaN / inf
  as long as W_iz, W_gz, b_gz and z are finite (with an infinite one, inf - inf can be NaN in
  one association and not in the other; tests/test_properties.py models both). K1 cannot be merged with K3 (K3 needs
  the whole z row, which needs the whole a row) without recomputing the posterior MLP in
  every H-block program, so three dependent stages per step is the minimum for a launch-
  per-stage design (and three grid barriers per step for the persistent one).

Backward, reverse loop, per step t:

  KB1 ``_bwd_lstm_cell``        grid (B-blocks, H-blocks)
        dh_t = grad_h[t] + dgates_{t+1} @ W_hh + ds_{t+1} @ W_qh  (the recurrent GEMMs,
        fused; absent at t = T-1), then the cell backward with the saved gates and c:
        dgates_t -> (T, B, 4H) buffer (= grad of gates_x), dc carried in an fp32 (B, H)
        buffer that each program updates in place for its own block.
  KB2 ``_bwd_posterior_sample`` grid (B-blocks, Z-blocks)
        dz = grad_z[t] + dgates_t @ W_comb; grad_eps[t] = exp(lv / 2) * dz;
        dparams = [dz + grad_mu[t], dz * eps * exp(lv / 2) / 2 + grad_lv[t]] * clamp mask
        -> (T, B, 2Z) buffer.
  KB3 ``_bwd_posterior_hidden`` grid (B-blocks, M-blocks)
        ds_t = (dparams_t @ W_q2) * leaky_clamp_grad(s_t) -> (T, B, M) (= grad of post_x).

  After the loop, weight and bias gradients are a few big GEMMs over the flattened T*B
  dim (not latency-bound): dW_hh = dgates^T [h0; h_1..h_{T-1}], dW_qh = ds^T [same],
  dW_q2 = dparams^T act(s), dW_iz = dgates^T g with g = z W_gz^T + b_gz recomputed in one
  GEMM, dg = dgates W_iz, dW_gz = dg^T z, biases as column sums; grad h0 = dgates_0 W_hh +
  ds_0 W_qh, grad c0 = the carried dc. The clamp gradients follow torch's autograd
  (gradient passed on the closed interval [-8, 8], zero outside; ``leaky_clamp_grad``).

Saved vs recomputed: saved are the outputs h, c, z, mu_q, logvar_q, h0 and c0, the
activated gates (T, B, 4H) (recomputing them would cost a (T*B) x (H+Z) x 4H GEMM in the
backward pass), the posterior pre-activation s (T, B, M), the int8 clamp mask (T, B, 2Z)
(pre-clamp values are needed to tell "at 8" from "beyond 8"), eps, the weights and W_comb.
Recomputed: a = act(s) (elementwise, in K2 and after the loop), g (one GEMM after the loop)
and [h0; h_1..h_{T-1}] (one copy after the loop). gates_x and post_x are not kept. The kernels
read h_{t-1} / c_{t-1} from h0 / c0 at t = 0 and from the outputs otherwise, so the outputs
are ordinary tensors (no views of a bigger buffer).

dtypes: float32, float64, float16 and bfloat16 are tested under TRITON_INTERPRET=1 on the
CPU (bfloat16 through tests/_interpreter_bf16.py, which repairs triton 3.6's interpreter: it
multiplies bf16 bit patterns in ``tl.dot`` and truncates where a GPU rounds; bfloat16 takes
the float16 code path). fp32 dots use IEEE
precision unless torch allows TF32 for its matmuls (``_precision.dot_precision``);
fp64 dots accumulate in fp64. float16 / bfloat16: dot operands in the input dtype with fp32 accumulation, all gate,
cell and sampling arithmetic in fp32, the cell state c kept in an fp32 buffer (returned cast
to the input dtype), the carried dc in fp32; saved gates, s and the per-step gradient buffers
are in the input dtype. h_t and z_t, outputs in the input dtype, are read back in it by the
next stage: a float16 h of 1e-21 is 0 there (as in any float16 implementation), so an
infinite weight then gives 0 * inf = NaN where a float64 evaluation gives inf.

Batch rows never mix: every tl.dot reduces over a feature dim (H, 4H, M, Z, 2Z), padded rows
and columns are masked loads of 0, and each program writes only its own rows; a NaN / Inf
in one sequence's inputs leaves the other sequences' outputs and input gradients bit for
bit unchanged (tests/test_triton_chain.py). Only the weight gradients, sums over all rows,
see it. Non-finite values: the [-8, 8] parameter clamp, like the shared ``leaky_clamp``,
propagates NaN as torch.clamp does (``propagate_nan``: by default a GPU min / max returns the
non-NaN operand; the interpreter propagates NaN either way, so the CPU tests cannot tell),
and the shared ``tanh`` keeps tiny values tiny rather than 0 (see its docstring).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import fused_backward
from .. import _persistent
from .._persistent import MAX_POLLS, check_sync, num_sms, sync_buffer
from .._triton_common import (LAUNCH_OPTIONS, acc_type, barrier_slots, dot_precision, gate_zeros, grid_barrier,
                             leaky_clamp, leaky_clamp_grad, sigmoid, store_gates, tanh, tile_block, tile_dot)
from ._grads import chain_input_grads
from .naive import ACT_CLAMP, LEAKY_SLOPE, PARAM_CLAMP, ChainOutput

__all__ = ["zforcing_chain", "ZForcingChainFunction", "explain_schedule"]

# Tests set this to e.g. {"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_K": 16} to force every
# dimension of small problems onto several blocks.
_BLOCK_OVERRIDE: dict | None = None


# --------------------------------------------------------------------------- jit helpers

@triton.jit
def _prev_rows(X0, X_OUT, t, t64, B, H):
    """The rows of step t-1 of a (T, B, H) output (h or c), read by step t: ``X0`` (the initial
    state) at t = 0."""
    if t == 0:
        prev = X0
    else:
        prev = X_OUT + (t64 - 1) * B * H
    return prev


# --------------------------------------------------------------------------- forward kernels

@triton.jit
def _four_gate_dots(acc_i, acc_f, acc_g, acc_o, X, W, KD, rb, rh, mb, mh, H,
                    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_K: tl.constexpr,
                    W_T: tl.constexpr = False):
    """``acc_g += X @ W[g*H + rh, :]^T`` for the four gate column blocks g = i, f, g, o of units
    ``rh``: ``X`` (B, KD) rows (loaded with ``CACHE``), ``W`` (4H, KD) row-major, or with
    ``W_T`` its transpose (KD, 4H) row-major (FWD_W_TRANSPOSED: tiles contiguous along the units)."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, KD, BLOCK_K):
        kk = k0 + rk
        mk = kk < KD
        x = tl.load(X + rb[:, None] * KD + kk[None, :], mask=mb[:, None] & mk[None, :],
                    other=0.0, cache_modifier=CACHE)
        wm = mh[None, :] & mk[:, None]
        if W_T:     # gate blocks are column blocks of W^T
            wp = W + kk[:, None] * (4 * H) + rh[None, :]
            p_f, p_g, p_o = wp + H, wp + 2 * H, wp + 3 * H
        else:       # row blocks of W
            wp = W + rh[None, :] * KD + kk[:, None]
            p_f, p_g, p_o = wp + H * KD, wp + 2 * H * KD, wp + 3 * H * KD
        acc_i = tl.dot(x, tl.load(wp, mask=wm, other=0.0), acc_i, input_precision=PREC, out_dtype=ACC)
        acc_f = tl.dot(x, tl.load(p_f, mask=wm, other=0.0), acc_f, input_precision=PREC, out_dtype=ACC)
        acc_g = tl.dot(x, tl.load(p_g, mask=wm, other=0.0), acc_g, input_precision=PREC, out_dtype=ACC)
        acc_o = tl.dot(x, tl.load(p_o, mask=wm, other=0.0), acc_o, input_precision=PREC, out_dtype=ACC)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _fwd_posterior_hidden_tile(
    pid_b, pid_n,
    H0, H_OUT, W_QH, POST_X, S, t, B, H, M,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,   # W_QH is W_qh^T (H, M) (FWD_W_TRANSPOSED)
):
    rb, rn, mb, mn = tile_block(pid_b, pid_n, B, M, BLOCK_B, BLOCK_N)
    t64 = tl.cast(t, tl.int64)
    hprev = _prev_rows(H0, H_OUT, t, t64, B, H)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    if W_T:
        acc = tile_dot(acc, hprev, H, rb, mb, W_QH, M, rn, mn, H, False, CACHE, ACC, PREC, BLOCK_K)
    else:
        acc = tile_dot(acc, hprev, H, rb, mb, W_QH, H, rn, mn, H, True, CACHE, ACC, PREC, BLOCK_K)
    off = t64 * B * M + rb[:, None] * M + rn[None, :]
    m2 = mb[:, None] & mn[None, :]
    s = acc + tl.load(POST_X + off, mask=m2, other=0.0).to(ACC)
    tl.store(S + off, s.to(S.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _fwd_posterior_hidden(
    H0, H_OUT, W_QH, POST_X, S, t, B, H, M,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,
):
    _fwd_posterior_hidden_tile(tl.program_id(0), tl.program_id(1), H0, H_OUT, W_QH, POST_X, S, t, B, H, M, "", ACC, PREC,
        BLOCK_B, BLOCK_N, BLOCK_K, W_T)


@triton.jit
def _fwd_posterior_sample_tile(
    pid_b, pid_n,
    S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK, t, B, M, Z,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, PARAM_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,   # W_Q2 is W_q2^T (M, 2Z) (FWD_W_TRANSPOSED)
):
    rb, rz, mb, mz = tile_block(pid_b, pid_n, B, Z, BLOCK_B, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    t64 = tl.cast(t, tl.int64)
    s_t = S + t64 * B * M
    acc_mu = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    acc_lv = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, M, BLOCK_K):
        kk = k0 + rk
        mk = kk < M
        s = tl.load(s_t + rb[:, None] * M + kk[None, :], mask=mb[:, None] & mk[None, :],
                    other=0.0, cache_modifier=CACHE)
        # leaky_clamp(0) = 0, so the masked padding stays zero
        a = leaky_clamp(s.to(ACC), SLOPE, ACT_BOUND).to(W_Q2.dtype.element_ty)
        wm = mz[None, :] & mk[:, None]
        if W_T:
            wp, lv_off = W_Q2 + kk[:, None] * (2 * Z) + rz[None, :], Z
        else:
            wp, lv_off = W_Q2 + rz[None, :] * M + kk[:, None], Z * M
        w_mu = tl.load(wp, mask=wm, other=0.0)
        w_lv = tl.load(wp + lv_off, mask=wm, other=0.0)
        acc_mu = tl.dot(a, w_mu, acc_mu, input_precision=PREC, out_dtype=ACC)
        acc_lv = tl.dot(a, w_lv, acc_lv, input_precision=PREC, out_dtype=ACC)
    p_mu = acc_mu + tl.load(B_Q2 + rz, mask=mz, other=0.0).to(ACC)[None, :]
    p_lv = acc_lv + tl.load(B_Q2 + Z + rz, mask=mz, other=0.0).to(ACC)[None, :]
    m2 = mb[:, None] & mz[None, :]
    # the gradient passes on the closed interval (zf_kernels' convention: naive.clamp_ref)
    ok_mu = (p_mu >= -PARAM_BOUND) & (p_mu <= PARAM_BOUND)
    ok_lv = (p_lv >= -PARAM_BOUND) & (p_lv <= PARAM_BOUND)
    # NaN stays NaN, as in torch.clamp (by default tl.minimum / tl.maximum return the other
    # operand on a GPU; the interpreter's numpy propagates NaN either way)
    mu = tl.minimum(tl.maximum(p_mu, -PARAM_BOUND, propagate_nan=tl.PropagateNan.ALL), PARAM_BOUND,
                    propagate_nan=tl.PropagateNan.ALL)
    lv = tl.minimum(tl.maximum(p_lv, -PARAM_BOUND, propagate_nan=tl.PropagateNan.ALL), PARAM_BOUND,
                    propagate_nan=tl.PropagateNan.ALL)
    off = t64 * B * Z + rb[:, None] * Z + rz[None, :]
    eps = tl.load(EPS + off, mask=m2, other=0.0).to(ACC)
    z = mu + tl.exp(0.5 * lv) * eps
    tl.store(MU + off, mu.to(MU.dtype.element_ty), mask=m2)
    tl.store(LV + off, lv.to(LV.dtype.element_ty), mask=m2)
    tl.store(Z_OUT + off, z.to(Z_OUT.dtype.element_ty), mask=m2)
    moff = t64 * B * 2 * Z + rb[:, None] * (2 * Z) + rz[None, :]
    tl.store(OKMASK + moff, ok_mu.to(tl.int8), mask=m2)
    tl.store(OKMASK + moff + Z, ok_lv.to(tl.int8), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _fwd_posterior_sample(
    S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK, t, B, M, Z,
    ACC: tl.constexpr, PREC: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, PARAM_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,
):
    _fwd_posterior_sample_tile(tl.program_id(0), tl.program_id(1), S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK, t, B, M, Z,
        "", ACC, PREC, SLOPE, ACT_BOUND, PARAM_BOUND, BLOCK_B, BLOCK_N, BLOCK_K, W_T)


@triton.jit
def _fwd_lstm_step_tile(
    pid_b, pid_n,
    H0, C0, H_OUT, C_OUT, Z_IN, GATES_X, B_COMB, W_HH, W_COMB, ACTS, t, B, H, Z,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,   # W_HH / W_COMB are W_hh^T (H, 4H) / W_comb^T (Z, 4H)
):
    rb, rh, mb, mh = tile_block(pid_b, pid_n, B, H, BLOCK_B, BLOCK_N)
    t64 = tl.cast(t, tl.int64)
    hprev = _prev_rows(H0, H_OUT, t, t64, B, H)
    cprev = _prev_rows(C0, C_OUT, t, t64, B, H)
    acc_i, acc_f, acc_g, acc_o = gate_zeros(BLOCK_B, BLOCK_N, ACC)
    # h_{t-1} @ W_hh^T, the four gate column blocks of this program
    acc_i, acc_f, acc_g, acc_o = _four_gate_dots(acc_i, acc_f, acc_g, acc_o, hprev, W_HH, H, rb, rh, mb, mh, H,
                                                 CACHE, ACC, PREC, BLOCK_K, W_T)
    # z_t @ W_comb^T  (W_comb = W_iz @ W_gz: g(z) folded into the gate projection)
    acc_i, acc_f, acc_g, acc_o = _four_gate_dots(acc_i, acc_f, acc_g, acc_o, Z_IN + t64 * B * Z, W_COMB, Z,
                                                 rb, rh, mb, mh, H, CACHE, ACC, PREC, BLOCK_K, W_T)
    m2 = mb[:, None] & mh[None, :]
    gx = GATES_X + t64 * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :]
    bc = B_COMB + rh
    acc_i += tl.load(gx, mask=m2, other=0.0).to(ACC) + tl.load(bc, mask=mh, other=0.0).to(ACC)[None, :]
    acc_f += tl.load(gx + H, mask=m2, other=0.0).to(ACC) + tl.load(bc + H, mask=mh, other=0.0).to(ACC)[None, :]
    acc_g += tl.load(gx + 2 * H, mask=m2, other=0.0).to(ACC) + tl.load(bc + 2 * H, mask=mh, other=0.0).to(ACC)[None, :]
    acc_o += tl.load(gx + 3 * H, mask=m2, other=0.0).to(ACC) + tl.load(bc + 3 * H, mask=mh, other=0.0).to(ACC)[None, :]
    i = sigmoid(acc_i)
    f = sigmoid(acc_f)
    g = tanh(acc_g)
    o = sigmoid(acc_o)
    st = rb[:, None] * H + rh[None, :]
    c_prev = tl.load(cprev + st, mask=m2, other=0.0).to(ACC)
    c = f * c_prev + i * g
    h = o * tanh(c)
    tl.store(C_OUT + t64 * B * H + st, c.to(C_OUT.dtype.element_ty), mask=m2)
    tl.store(H_OUT + t64 * B * H + st, h.to(H_OUT.dtype.element_ty), mask=m2)
    store_gates(ACTS + t64 * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :], i, f, g, o, H, m2)


@triton.jit(do_not_specialize=["t"])
def _fwd_lstm_step(
    H0, C0, H_OUT, C_OUT, Z_IN, GATES_X, B_COMB, W_HH, W_COMB, ACTS, t, B, H, Z,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,
):
    _fwd_lstm_step_tile(tl.program_id(0), tl.program_id(1), H0, C0, H_OUT, C_OUT, Z_IN, GATES_X, B_COMB, W_HH,
        W_COMB, ACTS, t, B, H, Z, "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K, W_T)


# -------------------------------------------------------------------------- backward kernels

@triton.jit
def _bwd_lstm_cell_tile(
    pid_b, pid_n,
    GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DREC, DS, W_HH, W_QH, t, B, H, M,
    HAS_NEXT, CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rh, mb, mh = tile_block(pid_b, pid_n, B, H, BLOCK_B, BLOCK_N)
    m2 = mb[:, None] & mh[None, :]
    t64 = tl.cast(t, tl.int64)
    st = rb[:, None] * H + rh[None, :]
    dh = tl.load(GRAD_H + t64 * B * H + st, mask=m2, other=0.0).to(ACC)
    if HAS_NEXT:
        # h_t fed step t+1 through W_hh and W_qh; DREC is the gradient of step t+1's
        # h_t @ W_hh^T (dgates for the plain chain, the layer norm's input for cond_ln)
        dh = tile_dot(dh, DREC + (t64 + 1) * B * 4 * H, 4 * H, rb, mb, W_HH, H, rh, mh, 4 * H, False,
                      CACHE, ACC, PREC, BLOCK_K)
        dh = tile_dot(dh, DS + (t64 + 1) * B * M, M, rb, mb, W_QH, H, rh, mh, M, False, CACHE, ACC, PREC, BLOCK_K)
    dc = tl.load(GRAD_C + t64 * B * H + st, mask=m2, other=0.0).to(ACC) \
        + tl.load(DC + st, mask=m2, other=0.0).to(ACC)
    ap = ACTS + t64 * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :]
    i = tl.load(ap, mask=m2, other=0.0).to(ACC)
    f = tl.load(ap + H, mask=m2, other=0.0).to(ACC)
    g = tl.load(ap + 2 * H, mask=m2, other=0.0).to(ACC)
    o = tl.load(ap + 3 * H, mask=m2, other=0.0).to(ACC)
    if t == 0:
        cprev = C0
    else:
        cprev = C_OUT + (t64 - 1) * B * H
    c = tl.load(C_OUT + t64 * B * H + st, mask=m2, other=0.0).to(ACC)
    c_prev = tl.load(cprev + st, mask=m2, other=0.0).to(ACC)
    tc = tanh(c)
    d_o = dh * tc
    dc += dh * o * (1.0 - tc * tc)
    d_i = dc * g
    d_g = dc * i
    d_f = dc * c_prev
    tl.store(DC + st, (dc * f).to(DC.dtype.element_ty), mask=m2)
    dp = DGATES + t64 * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :]
    ty = DGATES.dtype.element_ty
    tl.store(dp, (d_i * i * (1.0 - i)).to(ty), mask=m2)
    tl.store(dp + H, (d_f * f * (1.0 - f)).to(ty), mask=m2)
    tl.store(dp + 2 * H, (d_g * (1.0 - g * g)).to(ty), mask=m2)
    tl.store(dp + 3 * H, (d_o * o * (1.0 - o)).to(ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _bwd_lstm_cell(
    GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DS, W_HH, W_QH, t, B, H, M,
    HAS_NEXT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _bwd_lstm_cell_tile(tl.program_id(0), tl.program_id(1), GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DGATES, DS,
        W_HH, W_QH, t, B, H, M, HAS_NEXT, "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit
def _bwd_posterior_sample_tile(
    pid_b, pid_n,
    GRAD_Z, GRAD_MU, GRAD_LV, DGATES, W_COMB, MU, LV, EPS, OKMASK, DPARAMS, GRAD_EPS,
    t, B, KD, Z,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rz, mb, mz = tile_block(pid_b, pid_n, B, Z, BLOCK_B, BLOCK_N)
    m2 = mb[:, None] & mz[None, :]
    t64 = tl.cast(t, tl.int64)
    off = t64 * B * Z + rb[:, None] * Z + rz[None, :]
    dz = tl.load(GRAD_Z + off, mask=m2, other=0.0).to(ACC)
    # dz += DGATES[t] @ W_COMB, DGATES (T, B, KD), W_COMB (KD, Z): KD = 4H for the plain chain
    # (dgates, W_iz W_gz), the gen MLP's hidden width for cond_ln (its hidden gradient, W_g1)
    dz = tile_dot(dz, DGATES + t64 * B * KD, KD, rb, mb, W_COMB, Z, rz, mz, KD, False, CACHE, ACC, PREC, BLOCK_K)
    lv = tl.load(LV + off, mask=m2, other=0.0).to(ACC)
    eps = tl.load(EPS + off, mask=m2, other=0.0).to(ACC)
    std = tl.exp(0.5 * lv)
    tl.store(GRAD_EPS + off, (dz * std).to(GRAD_EPS.dtype.element_ty), mask=m2)
    moff = t64 * B * 2 * Z + rb[:, None] * (2 * Z) + rz[None, :]
    ok_mu = tl.load(OKMASK + moff, mask=m2, other=0) != 0
    ok_lv = tl.load(OKMASK + moff + Z, mask=m2, other=0) != 0
    d_mu = dz + tl.load(GRAD_MU + off, mask=m2, other=0.0).to(ACC)
    d_lv = dz * eps * 0.5 * std + tl.load(GRAD_LV + off, mask=m2, other=0.0).to(ACC)
    ty = DPARAMS.dtype.element_ty
    tl.store(DPARAMS + moff, tl.where(ok_mu, d_mu, 0.0).to(ty), mask=m2)
    tl.store(DPARAMS + moff + Z, tl.where(ok_lv, d_lv, 0.0).to(ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _bwd_posterior_sample(
    GRAD_Z, GRAD_MU, GRAD_LV, DGATES, W_COMB, MU, LV, EPS, OKMASK, DPARAMS, GRAD_EPS,
    t, B, H, Z,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _bwd_posterior_sample_tile(tl.program_id(0), tl.program_id(1), GRAD_Z, GRAD_MU, GRAD_LV, DGATES, W_COMB, MU, LV, EPS,
        OKMASK, DPARAMS, GRAD_EPS, t, B, 4 * H, Z, "", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit
def _bwd_posterior_hidden_tile(
    pid_b, pid_n,
    DPARAMS, W_Q2, S, DS, t, B, M, Z,
    CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rm, mb, mm = tile_block(pid_b, pid_n, B, M, BLOCK_B, BLOCK_N)
    m2 = mb[:, None] & mm[None, :]
    t64 = tl.cast(t, tl.int64)
    acc = tile_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC), DPARAMS + t64 * B * 2 * Z, 2 * Z, rb, mb,
                   W_Q2, M, rm, mm, 2 * Z, False, CACHE, ACC, PREC, BLOCK_K)
    off = t64 * B * M + rb[:, None] * M + rm[None, :]
    s = tl.load(S + off, mask=m2, other=0.0).to(ACC)
    # leaky_clamp_grad gives the conventions (1, slope or 0); its slope is an fp32 literal
    # when it comes back from tl.where, so scale by SLOPE here (weakly typed: exact in fp64)
    dact = leaky_clamp_grad(s, SLOPE, ACT_BOUND)
    ds = tl.where(dact == 1.0, acc, tl.where(dact == 0.0, 0.0, acc * SLOPE))
    tl.store(DS + off, ds.to(DS.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["t"])
def _bwd_posterior_hidden(
    DPARAMS, W_Q2, S, DS, t, B, M, Z,
    ACC: tl.constexpr, PREC: tl.constexpr, SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _bwd_posterior_hidden_tile(tl.program_id(0), tl.program_id(1), DPARAMS, W_Q2, S, DS, t, B, M, Z, "", ACC, PREC, SLOPE,
        ACT_BOUND, BLOCK_B, BLOCK_N, BLOCK_K)


# ------------------------------------------------------------------------- persistent kernels
# One launch per direction. Program (pb, pn) runs, at every step, column tile pn of each of the
# three stages (when the stage has that many tiles) for batch block pb, and meets the other
# programs of its batch block at a grid barrier after each stage: the next stage reads whole
# rows (s_t, z_t, h_t; backward dgates_t, dparams_t, ds_t) that every program helped write.
# Loads of those rows ask to bypass L1 (".cg"; visibility rests on the barrier's acquire:
# grid_barrier). Three barriers per step, no launch.

@triton.jit(do_not_specialize=["T"])
def _fwd_persistent(
    H0, C0, H_OUT, C_OUT, Z_OUT, GATES_X, B_COMB, W_HH, W_COMB, ACTS,
    W_QH, POST_X, S, W_Q2, B_Q2, EPS, MU, LV, OKMASK, SYNC, T, B, H, M, Z,
    ACC: tl.constexpr, PREC: tl.constexpr, MAX_POLLS: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr, PARAM_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr, BLOCK_K3: tl.constexpr,
    W_T: tl.constexpr = False,   # the four weights transposed (FWD_W_TRANSPOSED)
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    counter, flag, n_prog = barrier_slots(SYNC)
    ok = pid_b >= 0
    for t in range(T):
        if pid_n < tl.cdiv(M, BLOCK_N):
            _fwd_posterior_hidden_tile(pid_b, pid_n, H0, H_OUT, W_QH, POST_X, S, t, B, H, M,
                                       ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K1, W_T)
        ok = grid_barrier(counter, (3 * t + 1) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(Z, BLOCK_N):
            _fwd_posterior_sample_tile(pid_b, pid_n, S, W_Q2, B_Q2, EPS, Z_OUT, MU, LV, OKMASK, t, B, M, Z,
                                       ".cg", ACC, PREC, SLOPE, ACT_BOUND, PARAM_BOUND,
                                       BLOCK_B, BLOCK_N, BLOCK_K2, W_T)
        ok = grid_barrier(counter, (3 * t + 2) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(H, BLOCK_N):
            _fwd_lstm_step_tile(pid_b, pid_n, H0, C0, H_OUT, C_OUT, Z_OUT, GATES_X, B_COMB, W_HH, W_COMB,
                                ACTS, t, B, H, Z, ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K3, W_T)
        if t + 1 < T:   # the last h_t is read by nobody in this launch
            ok = grid_barrier(counter, (3 * t + 3) * n_prog, ok, flag, MAX_POLLS)


@triton.jit(do_not_specialize=["T"])
def _bwd_persistent(
    GRAD_H, GRAD_C, GRAD_Z, GRAD_MU, GRAD_LV, DC, ACTS, C0, C_OUT, DGATES, DS, W_HH, W_QH,
    W_COMB, MU, LV, EPS, OKMASK, DPARAMS, GRAD_EPS, W_Q2, S, SYNC, T, B, H, M, Z,
    ACC: tl.constexpr, PREC: tl.constexpr, MAX_POLLS: tl.constexpr,
    SLOPE: tl.constexpr, ACT_BOUND: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr, BLOCK_K3: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    counter, flag, n_prog = barrier_slots(SYNC)
    ok = pid_b >= 0
    for r in range(T):
        t = T - 1 - r
        if pid_n < tl.cdiv(H, BLOCK_N):
            _bwd_lstm_cell_tile(pid_b, pid_n, GRAD_H, GRAD_C, DC, ACTS, C0, C_OUT, DGATES, DGATES, DS, W_HH,
                                W_QH, t, B, H, M, r > 0, ".cg", ACC, PREC, BLOCK_B, BLOCK_N, BLOCK_K1)
        ok = grid_barrier(counter, (3 * r + 1) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(Z, BLOCK_N):
            _bwd_posterior_sample_tile(pid_b, pid_n, GRAD_Z, GRAD_MU, GRAD_LV, DGATES, W_COMB, MU, LV, EPS,
                                       OKMASK, DPARAMS, GRAD_EPS, t, B, 4 * H, Z, ".cg", ACC, PREC,
                                       BLOCK_B, BLOCK_N, BLOCK_K2)
        ok = grid_barrier(counter, (3 * r + 2) * n_prog, ok, flag, MAX_POLLS)
        if pid_n < tl.cdiv(M, BLOCK_N):
            _bwd_posterior_hidden_tile(pid_b, pid_n, DPARAMS, W_Q2, S, DS, t, B, M, Z, ".cg", ACC, PREC,
                                       SLOPE, ACT_BOUND, BLOCK_B, BLOCK_N, BLOCK_K3)
        if r + 1 < T:
            ok = grid_barrier(counter, (3 * r + 3) * n_prog, ok, flag, MAX_POLLS)


# ------------------------------------------------------------------------------- launching

_HALF = (torch.float16, torch.bfloat16)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _config(B: int, dims: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """Block sizes. Every tile side is a power of two >= 16 (tl.dot's minimum); the masks
    handle the rest. On the GPU the column block shrinks until the grid has about one
    program per SM; under the interpreter big blocks are simply faster."""
    if _BLOCK_OVERRIDE is not None:
        return dict(_BLOCK_OVERRIDE)
    on_gpu = device.type == "cuda"
    block_b = min(max(16, _pow2(B)), 64)
    if on_gpu:
        # the LSTM-step kernel holds four BLOCK_B x BLOCK_N fp32 accumulators: keep them at
        # 32 x 32 at most (32 registers per thread at 4 warps)
        block_b = min(block_b, 32)
        cap_n, block_k = 32, (64 if dtype in _HALF else 32)
        target = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap_n, block_k, target = 64, 64, 1
    nb = triton.cdiv(B, block_b)
    n = max(dims.values())
    block_n = 16
    for p in (64, 32, 16):
        if p <= cap_n and p <= max(16, _pow2(n)) and nb * triton.cdiv(n, p) >= target:
            block_n = p
            break
    return {"BLOCK_B": block_b, "BLOCK_N": block_n, "BLOCK_K": block_k}


def _k(cfg: dict, k: int) -> dict:
    """The config with BLOCK_K no wider than needed for a reduction over k."""
    out = dict(cfg)
    out["BLOCK_K"] = min(cfg["BLOCK_K"], max(16, _pow2(k)))
    return out


def _grid(B: int, N: int, cfg: dict):
    return (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(N, cfg["BLOCK_N"]))


def _launch(kernel, grid, *args, **kw):
    if grid[0] > 0 and grid[1] > 0:
        kernel[grid](*args, **kw, **LAUNCH_OPTIONS)


# what schedule="auto" means process-wide, if set (e.g. stepwise, to rule the persistent kernels out)
SCHEDULE_ENV = "ZF_CHAIN_SCHEDULE"
# (BLOCK_B, BLOCK_N) tiles the persistent kernels may use on a GPU, smallest (most programs)
# first; benchmarks/compile_check.py compiles each for sm_90 and fails on register spills.
# 32 x 32 spills, and so does 16 x 16 in bfloat16 (ptxas): a batch of <= 16 takes 32 rows too.
PERSISTENT_TILES = ((32, 16),)
# K-loop pipeline depth of the persistent kernels in float32 / float64 (as the LSTM's
# PERSISTENT_FP32_STAGES: 1 = no spills, latency-bound loads; tune_tiles.py measures 2 and 3)
PERSISTENT_FP32_STAGES = 1
# K chunk of the persistent kernels in float32 / float64 (as the LSTM's PERSISTENT_FP32_BLOCK_K;
# tune_tiles.py "-k64" / "-k128"; narrowed per stage to the reduction's width by ``_k``)
PERSISTENT_FP32_BLOCK_K = 32
# ... except in the forward's gate stage, whose four accumulators leave no registers for wider
# chunks (sm_90, 1 stage, IEEE: 64 / 128 wide there spill 352 B / 2.9 KB; 32 there and 64 / 128
# in the posterior stages: 0 / 8 B, tf32 0 / 448 B; benchmarks/compile_check.py --fp32-block-k)
PERSISTENT_FP32_GATE_BLOCK_K = 32
# The forward's products in IEEE precision (float32 without TF32, float64) read W_hh^T, W_comb^T,
# W_qh^T and W_q2^T, copies made once per call, so that their (K, BLOCK_N) tiles are contiguous
# along the output columns, as the backward's are (the LSTM's FWD_W_TRANSPOSED, same lead: on the
# H200, 2026-11-27, the chain's IEEE forward ran 3.1x slower than its TF32 one, the backward
# 1.35x). Off until measured (benchmarks/tune_tiles.py "-wt").
FWD_W_TRANSPOSED = False


def _launch_options(schedule: str, dtype: torch.dtype, cfg: dict) -> dict:
    """Options without register spills on sm_90 (measured by benchmarks/compile_check.py).
    Stepwise: the LSTM-step kernel's four accumulators spill at 4 warps from 32 x 32 tiles on,
    so it gets 8 there (the other step kernels are fine at the default 4). Persistent: a
    program is alone on its SM, so 8 warps and the whole register file (ptxas would cap 8
    warps at 128 registers and spill), one K chunk in flight in float32 (the 3-stage pipeline
    spills there)."""
    if schedule != "persistent":
        return dict(num_warps=8) if cfg["BLOCK_B"] * cfg["BLOCK_N"] >= 1024 else {}
    opts = dict(num_warps=8, maxnreg=255)
    if dtype in (torch.float32, torch.float64):
        opts["num_stages"] = PERSISTENT_FP32_STAGES
    return opts


def _persistent_config(B: int, dims: dict, dtype: torch.dtype, ref: torch.Tensor):
    """``(config, why)`` of the persistent kernels, or ``(None, why not)``. The grid is
    (batch blocks, the most column tiles of any stage); every program of a batch block must
    be resident at once. The interpreter runs programs one after another: one per batch block."""
    if _BLOCK_OVERRIDE is not None:
        return None, "block sizes are overridden (_BLOCK_OVERRIDE): several programs per batch block"
    n = max(dims.values())
    if not ref.is_cuda:
        block_b = min(max(16, _pow2(B)), 64)
        cfg = {"BLOCK_B": block_b, "BLOCK_N": max(16, _pow2(n)), "BLOCK_K": 64}
        return cfg, f"interpreter: grid {triton.cdiv(B, block_b)} x 1 (one program per batch block)"
    sms = num_sms(ref)
    block_k = 64 if dtype in _HALF else PERSISTENT_FP32_BLOCK_K
    for block_b, block_n in PERSISTENT_TILES:
        nb, nn = triton.cdiv(B, block_b), triton.cdiv(n, block_n)
        if nb * nn <= sms:
            return ({"BLOCK_B": block_b, "BLOCK_N": block_n, "BLOCK_K": block_k},
                    f"grid {nb} x {nn} programs <= {sms} SMs")
    return None, (f"B={B} and the widest stage ({n} columns) need more than the {sms} programs "
                  f"that can be resident at once, even at {PERSISTENT_TILES[-1]} tiles")


def _pick_schedule(B: int, dims: dict, dtype: torch.dtype, ref: torch.Tensor, schedule: str,
                   launches: int = 3, barriers: int = 3):
    """``(schedule, block config, reason)`` of ``zforcing_chain`` (and of ``zforcing_chain_ln``,
    whose step takes ``launches`` stepwise launches or ``barriers`` grid barriers)."""
    schedule, forced = _persistent.requested_schedule(schedule, SCHEDULE_ENV)
    if schedule == "stepwise":
        return "stepwise", _config(B, dims, dtype, ref.device), f"requested: {launches} launches per step{forced}"
    cfg, why = _persistent_config(B, dims, dtype, ref)
    if cfg is not None:
        return "persistent", cfg, f"one launch per direction, {barriers} grid barriers per step ({why}){forced}"
    if schedule == "persistent":
        raise ValueError(f"schedule='persistent' cannot run here{forced}: {why}")
    return ("stepwise", _config(B, dims, dtype, ref.device),
            f"{launches} launches per step, since the persistent kernel cannot: {why}")


def explain_schedule(gates_x: torch.Tensor, post_x: torch.Tensor, eps: torch.Tensor,
                     schedule: str = "auto") -> str:
    """How :func:`zforcing_chain` will run these shapes (``ops.explain`` appends it)."""
    T, B, four_h = gates_x.shape
    dims = {"H": four_h // 4, "M": post_x.shape[-1], "Z": eps.shape[-1]}
    name, _, why = _pick_schedule(B, dims, gates_x.dtype, gates_x, schedule)
    return f"schedule {name}: {why}"


def _forward_buffers(T, B, H, M, Z, dtype, state_dtype, dev):
    """What both chains' forwards write: ``h, c`` (state dtype), ``z, mu, lv``, the posterior's
    pre-activation ``s``, the gate activations ``acts`` and the clamp mask ``okmask``."""
    e = lambda n, dt=dtype: torch.empty(T, B, n, dtype=dt, device=dev)  # noqa: E731
    return e(H), e(H, state_dtype), e(Z), e(Z), e(Z), e(M), e(4 * H), e(2 * Z, torch.int8)


def _chain_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
                   weight_iz, weight_hh, schedule):
    """The chain's forward over T >= 1 steps and B >= 1: ``(h, c, z, mu, lv)`` (``c`` in the state
    dtype), what its backward reads ``(s, acts, okmask, w_comb)``, the contiguous inputs the
    backward needs ``(h0, c0, eps, weight_qh, weight_q2, weight_hh)`` and the launch
    ``(schedule, cfg)``."""
    T, B, four_h = gates_x.shape
    H, M, Z = four_h // 4, weight_qh.shape[0], eps.shape[-1]
    dtype, dev = gates_x.dtype, gates_x.device
    state_dtype = torch.float32 if dtype in _HALF else dtype
    gates_x, post_x, eps = gates_x.contiguous(), post_x.contiguous(), eps.contiguous()
    weight_qh, weight_q2, bias_q2 = weight_qh.contiguous(), weight_q2.contiguous(), bias_q2.contiguous()
    weight_hh = weight_hh.contiguous()
    # g(z) folded into the gate projection (module docstring)
    w_comb = (weight_iz.to(state_dtype) @ weight_gz.to(state_dtype)).to(dtype).contiguous()
    b_comb = (weight_iz.to(state_dtype) @ bias_gz.to(state_dtype)).contiguous()

    h0 = h0.contiguous()
    c0 = c0.to(state_dtype).contiguous()
    h, c, z, mu, lv, s, acts, okmask = _forward_buffers(T, B, H, M, Z, dtype, state_dtype, dev)

    schedule, cfg, _ = _pick_schedule(B, {"H": H, "M": M, "Z": Z}, dtype, gates_x, schedule)
    common = {"ACC": acc_type(dtype), "PREC": dot_precision(gates_x)}
    w_t = FWD_W_TRANSPOSED and common["PREC"] == "ieee"
    # the forward's weights, transposed where it reads them so (the backward reads the originals)
    f_hh, f_comb, f_qh, f_q2 = ((w.t().contiguous() for w in (weight_hh, w_comb, weight_qh, weight_q2))
                                if w_t else (weight_hh, w_comb, weight_qh, weight_q2))
    g1, c1 = _grid(B, M, cfg), _k(cfg, H)
    g2, c2 = _grid(B, Z, cfg), _k(cfg, M)
    g3, c3 = _grid(B, H, cfg), _k(cfg, max(H, Z))
    if schedule == "persistent" and gates_x.is_cuda and dtype not in _HALF:
        c3["BLOCK_K"] = min(c3["BLOCK_K"], PERSISTENT_FP32_GATE_BLOCK_K)
    if schedule == "persistent":
        grid = _grid(B, max(H, M, Z), cfg)
        sync = sync_buffer(grid[0], gates_x)
        _fwd_persistent[grid](
            h0, c0, h, c, z, gates_x, b_comb, f_hh, f_comb, acts,
            f_qh, post_x, s, f_q2, bias_q2, eps, mu, lv, okmask, sync, T, B, H, M, Z,
            MAX_POLLS=MAX_POLLS, SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, PARAM_BOUND=PARAM_CLAMP,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K1=c1["BLOCK_K"],
            BLOCK_K2=c2["BLOCK_K"], BLOCK_K3=c3["BLOCK_K"], W_T=w_t, **common,
            **_launch_options(schedule, dtype, cfg), **LAUNCH_OPTIONS)
        check_sync(sync, "zforcing_chain forward")
    for t in range(T if schedule == "stepwise" else 0):
        _launch(_fwd_posterior_hidden, g1, h0, h, f_qh, post_x, s, t, B, H, M, W_T=w_t, **common, **c1)
        _launch(_fwd_posterior_sample, g2, s, f_q2, bias_q2, eps, z, mu, lv, okmask, t, B, M, Z,
                SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, PARAM_BOUND=PARAM_CLAMP, W_T=w_t, **common, **c2)
        _launch(_fwd_lstm_step, g3, h0, c0, h, c, z, gates_x, b_comb, f_hh, f_comb, acts,
                t, B, H, Z, W_T=w_t, **common, **c3, **_launch_options(schedule, dtype, cfg))

    return ((h, c, z, mu, lv), (s, acts, okmask, w_comb), (h0, c0, eps, weight_qh, weight_q2, weight_hh),
            (schedule, cfg))


def _chain_backward(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, h, c, z, mu, lv, s, acts, okmask,
                    eps, weight_qh, weight_q2, weight_gz, bias_gz, weight_iz, weight_hh, w_comb, schedule,
                    cfg, need):
    """The gradients of the chain's 12 tensor inputs (None where ``need`` says no), from the
    forward's saved tensors (``_chain_forward``: ``c0`` in the state dtype, all contiguous)."""
    T, B, H = h.shape
    M, Z = s.shape[-1], z.shape[-1]
    dtype, state_dtype = h.dtype, c.dtype
    dev = h.device
    grad_h, grad_c, grad_z, grad_mu, grad_lv = (
        g.to(dtype).contiguous() for g in (grad_h, grad_c, grad_z, grad_mu, grad_lv))

    dgates = torch.empty(T, B, 4 * H, dtype=dtype, device=dev)
    dparams = torch.empty(T, B, 2 * Z, dtype=dtype, device=dev)
    ds = torch.empty(T, B, M, dtype=dtype, device=dev)
    grad_eps = torch.empty(T, B, Z, dtype=dtype, device=dev)
    dc = torch.zeros(B, H, dtype=state_dtype, device=dev)

    common = {"ACC": acc_type(dtype), "PREC": dot_precision(grad_h)}
    g1, c1 = _grid(B, H, cfg), _k(cfg, max(4 * H, M))
    g2, c2 = _grid(B, Z, cfg), _k(cfg, 4 * H)
    g3, c3 = _grid(B, M, cfg), _k(cfg, 2 * Z)
    if schedule == "persistent":
        grid = _grid(B, max(H, M, Z), cfg)
        sync = sync_buffer(grid[0], grad_h)
        _bwd_persistent[grid](
            grad_h, grad_c, grad_z, grad_mu, grad_lv, dc, acts, c0, c, dgates, ds, weight_hh, weight_qh,
            w_comb, mu, lv, eps, okmask, dparams, grad_eps, weight_q2, s, sync, T, B, H, M, Z,
            MAX_POLLS=MAX_POLLS, SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K1=c1["BLOCK_K"],
            BLOCK_K2=c2["BLOCK_K"], BLOCK_K3=c3["BLOCK_K"], **common,
            **_launch_options(schedule, dtype, cfg), **LAUNCH_OPTIONS)
        check_sync(sync, "zforcing_chain backward")
    for t in range(T - 1 if schedule == "stepwise" else -1, -1, -1):
        _launch(_bwd_lstm_cell, g1, grad_h, grad_c, dc, acts, c0, c, dgates, ds, weight_hh, weight_qh,
                t, B, H, M, HAS_NEXT=t < T - 1, **common, **c1)
        _launch(_bwd_posterior_sample, g2, grad_z, grad_mu, grad_lv, dgates, w_comb, mu, lv, eps,
                okmask, dparams, grad_eps, t, B, H, Z, **common, **c2)
        _launch(_bwd_posterior_hidden, g3, dparams, weight_q2, s, ds, t, B, M, Z,
                SLOPE=LEAKY_SLOPE, ACT_BOUND=ACT_CLAMP, **common, **c3)

    return chain_input_grads(need, dgates, ds, dparams, grad_eps, dc, h0, h, z, s, weight_qh, bias_gz,
                             weight_gz, weight_iz, weight_hh, dtype)


def _empty_chain_forward(ctx, inputs):
    """Either chain's Function at T == 0 or B == 0: zero-sized outputs, nothing launched; the
    backward (:func:`_empty_chain_backward`) gives every input that needs one a zero gradient,
    as the reference does (the weights' were None: at B == 0 a weight read by nothing else had no
    gradient, and autograd.grad called it unused)."""
    gates_x, eps = inputs[0], inputs[2]
    T, B, four_h = gates_x.shape
    e = lambda n: gates_x.new_zeros(T, B, n)  # noqa: E731
    ctx.save_for_backward(*inputs)     # every tensor input of the Function, in order
    return e(four_h // 4), e(four_h // 4), e(eps.shape[-1]), e(eps.shape[-1]), e(eps.shape[-1])


def _empty_chain_backward(ctx):
    """The gradients of :func:`_empty_chain_forward`'s Function: zeros where needed, None for
    the rest (the trailing ``schedule`` included)."""
    saved = ctx.saved_tensors
    return tuple(torch.zeros_like(saved[i]) if i < len(saved) and need else None
                 for i, need in enumerate(ctx.needs_input_grad))


class ZForcingChainFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                weight_gz, bias_gz, weight_iz, weight_hh, schedule="auto"):
        ctx.empty = gates_x.shape[0] == 0 or gates_x.shape[1] == 0
        if ctx.empty:
            return _empty_chain_forward(ctx, (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                              weight_gz, bias_gz, weight_iz, weight_hh))
        ((h, c, z, mu, lv), (s, acts, okmask, w_comb), (h0, c0, eps, weight_qh, weight_q2, weight_hh),
         (ctx.schedule, ctx.cfg)) = _chain_forward(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                                                   weight_gz, bias_gz, weight_iz, weight_hh, schedule)
        ctx.save_for_backward(h0, c0, h, c, z, mu, lv, s, acts, okmask, eps, weight_qh, weight_q2,
                              weight_gz, bias_gz, weight_iz, weight_hh, w_comb)
        return h, c.to(h.dtype), z, mu, lv

    @staticmethod
    @fused_backward("zforcing_chain", "triton")
    def backward(ctx, grad_h, grad_c, grad_z, grad_mu, grad_lv):
        need = ctx.needs_input_grad
        if ctx.empty:
            return _empty_chain_backward(ctx)
        (h0, c0, h, c, z, mu, lv, s, acts, okmask, eps, weight_qh, weight_q2,
         weight_gz, bias_gz, weight_iz, weight_hh, w_comb) = ctx.saved_tensors
        grads = _chain_backward(grad_h, grad_c, grad_z, grad_mu, grad_lv, h0, c0, h, c, z, mu, lv, s, acts,
                                okmask, eps, weight_qh, weight_q2, weight_gz, bias_gz, weight_iz, weight_hh,
                                w_comb, ctx.schedule, ctx.cfg, need)
        return tuple(grads) + (None,)


def zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                   weight_gz, bias_gz, weight_iz, weight_hh, schedule: str = "auto") -> ChainOutput:
    """Triton implementation of ``zforcing_chain`` (same signature and numbers as
    ``naive.zforcing_chain_ref``; shapes in ``zf_kernels.ops.recurrence.zforcing_chain``).
    Call it through ``zf_kernels.ops.zforcing_chain(..., backend="triton")``, which checks
    the arguments first. ``schedule``: "persistent" (one launch per direction), "stepwise"
    (three launches per step) or "auto" (persistent where its grid can be resident;
    :func:`explain_schedule` says which)."""
    return ChainOutput(*ZForcingChainFunction.apply(
        gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
        weight_gz, bias_gz, weight_iz, weight_hh, schedule))


def _explain_dispatch(gates_x, post_x, eps, *rest) -> str:
    return explain_schedule(gates_x, post_x, eps)


# what ``ops.explain("zforcing_chain", ...)`` appends for this backend
zforcing_chain.explain = _explain_dispatch
