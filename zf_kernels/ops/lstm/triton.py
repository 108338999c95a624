"""Triton LSTM: ``lstm`` over a sequence and ``lstm_cell`` for one step (gate order i, f, g, o).

Same signatures and numbers as :mod:`zf_kernels.ops.lstm.naive`. Import only where Triton is
installed; on a CPU the kernels run under ``TRITON_INTERPRET=1``.

Tiles
-----
Every kernel runs on a grid ``(cdiv(B, BLOCK_B), cdiv(H, BLOCK_H))``; program ``(pb, pj)`` owns
batch rows ``pb*BLOCK_B ..`` and hidden units ``j = pj*BLOCK_H ..`` with their four gate
columns ``j, H+j, 2H+j, 3H+j``. Forward, a tile accumulates ``h_prev @ W_hh^T`` with ``tl.dot``
over K = H in ``BLOCK_K`` chunks (fp32 accumulator; fp64 for float64 inputs), adds the hoisted
input projection, applies the activations and the cell update, and stores ``h_t``, ``c_t`` and
the gate pre-activations. Backward, a tile forms ``dh = dout_t (+ dh_T at the last step) +
(dgates_{t+1} @ W_hh)[:, j]`` (reduction over 4H), recomputes its activations from the saved
pre-activations and stores ``dgates_t`` and ``dc_{t-1}``. The tile bodies are jit helpers
(``_gate_preacts``, ``_cell_forward``, ``_recurrent_dh``, ``_cell_backward``) shared by the two
schedules.

Schedules (``lstm(..., schedule=)``; ``explain_schedule`` / ``ops.explain`` say which runs)
--------------------------------------------------------------------------------------------
``stepwise``: one launch per step each way (``_lstm_fwd_step_kernel``, ``_lstm_bwd_step_kernel``);
the cell state lives in memory between launches. ``lstm_cell`` is one such launch.

``persistent``: one launch per direction (``_lstm_fwd_persistent_kernel``,
``_lstm_bwd_persistent_kernel``). Each program keeps its tile for all T steps, its ``c`` (``dc``)
in registers, and meets the other programs of its batch block at a grid barrier
(``_triton_common.grid_barrier``) once per step: after storing ``h_t`` (``dgates_t``), before
reading the whole ``h_t`` (``dgates_t``) rows the next step needs. That removes T-1 launches
(~3.7 us each back to back on an H200) and the cell state's round trip through memory per step,
for a barrier (~1-2 us). The programs of a batch block must all be resident at once, so the
grid is at most one program per SM (tiles of at most 32 x 16, 8 warps: larger tiles spill
registers in the time loop, see ``PERSISTENT_TILES`` and ``_launch_options``); B=32 at H=1024 is a 1 x 64 grid, and
B=64 at H=1024 a 2 x 64 one; beyond 132 programs on an H100/H200 ``auto`` runs stepwise.
A barrier that never completes (a grid that was not resident) gives up after ``MAX_POLLS``
polls, sets a flag and the op raises (a device-side assert on a GPU) instead of hanging.
``auto`` = persistent where the grid fits, else stepwise; the environment variable
``ZF_LSTM_SCHEDULE=stepwise`` (or ``persistent``) overrides "auto" for the whole process.

Saved vs recomputed
-------------------
``lstm`` saves the gate *pre-activations* ``z_t = x_t W_ih^T + b + h_{t-1} W_hh^T`` and
recomputes the activations in backward. Memory: the hoisted input projection needs a
``(T, B, 4H)`` buffer anyway and the forward kernel overwrites it in place with ``z_t``, so
saving costs nothing extra; recomputing ``z_t`` instead would cost a ``(T*B, H) x (H, 4H)``
GEMM in backward. Pre-activations rather than activations because the activations'
derivatives ``s(1 - s)``, ``1 - g^2`` lose most of their digits when taken from a rounded
*activation* near saturation (a bf16 ``1 - s`` is quantised to 2^-9), not from a rounded
pre-activation; recomputing 3 sigmoids and 2 tanh per element is free in this latency-bound
kernel. The backward kernel then overwrites that same buffer in place with ``dgates``, which is
``grad_gates_x`` for the weight / input / bias GEMMs after the loop. It also saves the cell
states ``c_0..c_T`` (``(T+1, B, H)``, fp32 for half inputs) because ``c_{t-1}`` cannot be
recovered from the gates, and reads ``h_{t-1}`` from ``out``. Saved activations in all:
``T*B*4H`` (input dtype) + ``(T+1)*B*H`` (fp32) elements plus ``out``, and no other
``(T, B, 4H)`` buffer is allocated, forward or backward; eager autograd of the reference keeps
i, f, g, o, c_{t-1}, tanh(c_t), h_t per step (7*B*H, all in the input dtype). A second
backward through the same graph (``retain_graph=True``) finds the buffer consumed and reruns
the forward to rebuild it.

``lstm_cell`` saves its pre-activations likewise (a new ``(B, 4H)`` buffer written by the
forward kernel for free) plus ``h``, ``c`` and ``c_new``; its ``c`` / ``c_new`` are the caller's
tensors, in the input dtype.

Precision: matmuls accumulate in fp32 (fp64 for float64); the cell state of ``lstm`` is kept in
fp32 for bf16/fp16 inputs (cast to the input dtype only for ``c_T``); outputs, saved
pre-activations and dgates are stored in the input dtype. For float32 on CUDA, ``tl.dot`` uses
TF32 only when torch allows it for matmuls (``torch.backends.cuda.matmul.allow_tf32``),
otherwise IEEE fp32.

Launches: forward = 1 GEMM + 1 persistent kernel (or T step kernels); backward = 1 persistent
kernel (or T step kernels) + a few GEMMs. The step index and T are marked
``do_not_specialize``, so no kernel is recompiled per T or per step. ``h0=None`` runs as zeros
(``0 @ W_hh`` is computed, as nn.LSTM does: a non-finite W_hh gives the same NaNs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import fused_backward
from .. import _persistent
from .._persistent import MAX_POLLS, SCHEDULES, check_sync, num_sms, sync_buffer
from .._triton_common import (LAUNCH_OPTIONS, acc_type, barrier_slots, dot_precision, gate_zeros, grid_barrier,
                             sigmoid, store_gates, tanh, tile_dot)
from ._grads import lstm_input_grads

__all__ = ["lstm", "lstm_cell", "explain_schedule", "SCHEDULES"]

# what schedule="auto" means process-wide, if set (e.g. stepwise, to rule the persistent kernels out)
SCHEDULE_ENV = "ZF_LSTM_SCHEDULE"


# ----------------------------------------------------------------------------------------------
# tile helpers shared by the step kernels and the persistent kernels. A program owns batch rows
# ``rb`` and hidden units ``rj`` (and the four gate columns j, H+j, 2H+j, 3H+j of each unit).

@triton.jit
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return rb, rj, rb < B, rj < H


@triton.jit
def _gate_preacts(gx_ptr, h_ptr, w_ptr, bias_ptr, rb, rj, mb, mj, H,
                  HAS_H: tl.constexpr, HAS_BIAS: tl.constexpr, H_CACHE: tl.constexpr,
                  ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                  W_T: tl.constexpr = False):
    """The four gate pre-activations of the tile: ``gx (+ bias) (+ h @ W_hh^T)``.

    ``gx_ptr`` / ``h_ptr`` point at the step's (B, 4H) / (B, H) rows; ``H_CACHE`` is the load
    cache modifier for h (".cg", L2 only, where other programs wrote h in the same launch).
    ``w_ptr``: W_hh (4H, H) row-major, or with ``W_T`` its transpose (H, 4H) row-major, whose
    (K, BLOCK_H) tiles are contiguous along the hidden units (FWD_W_TRANSPOSED)."""
    acc_i, acc_f, acc_g, acc_o = gate_zeros(BLOCK_B, BLOCK_H, ACC_DTYPE)
    if HAS_H:
        # gates[:, gH + j] += sum_k h[:, k] * W_hh[gH + j, k]: W tile loaded transposed (K, BLOCK_H)
        for k0 in range(0, H, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < H
            a = tl.load(h_ptr + rb[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :],
                        other=0.0, cache_modifier=H_CACHE)
            wm = mk[:, None] & mj[None, :]
            if W_T:     # gate blocks are column blocks of W_hh^T
                wp, gate = w_ptr + rk[:, None] * (4 * H) + rj[None, :], H
            else:       # row blocks of W_hh
                wp, gate = w_ptr + rj[None, :] * H + rk[:, None], H * H
            w_i = tl.load(wp, mask=wm, other=0.0)
            w_f = tl.load(wp + gate, mask=wm, other=0.0)
            w_g = tl.load(wp + 2 * gate, mask=wm, other=0.0)
            w_o = tl.load(wp + 3 * gate, mask=wm, other=0.0)
            acc_i = tl.dot(a, w_i, acc_i, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_f = tl.dot(a, w_f, acc_f, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_g = tl.dot(a, w_g, acc_g, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_o = tl.dot(a, w_o, acc_o, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    m2 = mb[:, None] & mj[None, :]
    gx = gx_ptr + rb[:, None] * (4 * H) + rj[None, :]
    z_i = acc_i + tl.load(gx, mask=m2, other=0.0).to(ACC_DTYPE)
    z_f = acc_f + tl.load(gx + H, mask=m2, other=0.0).to(ACC_DTYPE)
    z_g = acc_g + tl.load(gx + 2 * H, mask=m2, other=0.0).to(ACC_DTYPE)
    z_o = acc_o + tl.load(gx + 3 * H, mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        z_i += tl.load(bias_ptr + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_f += tl.load(bias_ptr + H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_g += tl.load(bias_ptr + 2 * H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_o += tl.load(bias_ptr + 3 * H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
    return z_i, z_f, z_g, z_o


@triton.jit
def _cell_forward(z_i, z_f, z_g, z_o, c_prev, g_ptr, ho_ptr, rb, rj, mb, mj, H,
                  STORE_GATES: tl.constexpr):
    """Activations + cell update of the tile; stores h_new (and the pre-activations, for the
    backward pass) and returns c_new in the accumulator dtype. Each pre-activation stored here
    was loaded (as gx) by this program only: ``g_ptr`` may alias ``gx_ptr``."""
    c_new = sigmoid(z_f) * c_prev + sigmoid(z_i) * tanh(z_g)
    h_new = sigmoid(z_o) * tanh(c_new)
    m2 = mb[:, None] & mj[None, :]
    tl.store(ho_ptr + rb[:, None] * H + rj[None, :], h_new.to(ho_ptr.dtype.element_ty), mask=m2)
    if STORE_GATES:
        store_gates(g_ptr + rb[:, None] * (4 * H) + rj[None, :], z_i, z_f, z_g, z_o, H, m2)
    return c_new


@triton.jit
def _recurrent_dh(dgn_ptr, w_ptr, rb, rj, mb, mj, H, DG_CACHE: tl.constexpr,
                  ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """``(dgates_next @ W_hh)[:, j]``, the reduction over all 4H gate columns."""
    return tile_dot(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE), dgn_ptr, 4 * H, rb, mb, w_ptr, H, rj, mj,
                    4 * H, False, DG_CACHE, ACC_DTYPE, PRECISION, BLOCK_K)


@triton.jit
def _cell_backward(g_ptr, dg_ptr, c_prev, c_new, dh, dc, rb, rj, mb, mj, H, ACC_DTYPE: tl.constexpr):
    """Backward of one cell update for the tile. Recomputes the activations from the saved
    pre-activations at ``g_ptr``, stores dgates at ``dg_ptr`` (may alias ``g_ptr``: same elements
    only, read before written) and returns dc_{t-1}."""
    m2 = mb[:, None] & mj[None, :]
    gp = g_ptr + rb[:, None] * (4 * H) + rj[None, :]
    i = sigmoid(tl.load(gp, mask=m2, other=0.0).to(ACC_DTYPE))
    f = sigmoid(tl.load(gp + H, mask=m2, other=0.0).to(ACC_DTYPE))
    g = tanh(tl.load(gp + 2 * H, mask=m2, other=0.0).to(ACC_DTYPE))
    o = sigmoid(tl.load(gp + 3 * H, mask=m2, other=0.0).to(ACC_DTYPE))
    tc = tanh(c_new)
    dc = dc + dh * o * (1.0 - tc * tc)
    dgp = dg_ptr + rb[:, None] * (4 * H) + rj[None, :]
    dty = dg_ptr.dtype.element_ty
    tl.store(dgp, (dc * g * i * (1.0 - i)).to(dty), mask=m2)
    tl.store(dgp + H, (dc * c_prev * f * (1.0 - f)).to(dty), mask=m2)
    tl.store(dgp + 2 * H, (dc * i * (1.0 - g * g)).to(dty), mask=m2)
    tl.store(dgp + 3 * H, (dh * tc * o * (1.0 - o)).to(dty), mask=m2)
    return dc * f


# ----------------------------------------------------------------------------------------------
# stepwise schedule: one launch per step

_OFFSETS = ["gx_off", "h_off", "c_off", "g_off", "ho_off", "co_off"]


@triton.jit(do_not_specialize=_OFFSETS)
def _lstm_fwd_step_kernel(
    gx_ptr, gx_off,       # (B, 4H) rows contiguous: input projection (pre-activation)
    h_ptr, h_off,         # (B, H) previous hidden state (unused without HAS_H)
    c_ptr, c_off,         # (B, H) previous cell state
    w_ptr,                # (4H, H) contiguous W_hh
    bias_ptr,             # (4H,) (unused without HAS_BIAS)
    g_ptr, g_off,         # (B, 4H) out: gate pre-activations (may alias gx: same elements only)
    ho_ptr, ho_off,       # (B, H) out: h_new
    co_ptr, co_off,       # (B, H) out: c_new
    B, H,
    HAS_H: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_GATES: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,   # w_ptr is W_hh^T (H, 4H) (FWD_W_TRANSPOSED)
):
    rb, rj, mb, mj = _tile(B, H, BLOCK_B, BLOCK_H)
    z_i, z_f, z_g, z_o = _gate_preacts(gx_ptr + gx_off, h_ptr + h_off, w_ptr, bias_ptr, rb, rj, mb, mj, H,
                                       HAS_H, HAS_BIAS, "", ACC_DTYPE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                                       W_T)
    row = rb[:, None] * H + rj[None, :]
    m2 = mb[:, None] & mj[None, :]
    c_prev = tl.load(c_ptr + c_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    c_new = _cell_forward(z_i, z_f, z_g, z_o, c_prev, g_ptr + g_off, ho_ptr + ho_off, rb, rj, mb, mj, H,
                          STORE_GATES)
    tl.store(co_ptr + co_off + row, c_new.to(co_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _strided(rb, rj, stride_b, stride_h):
    """Offsets of a (B, H) tile of a gradient with any strides, in 64 bits: a batch-first or
    otherwise permuted grad of ``out`` has a batch stride of T H, and (B - 1) T H passes 2**31
    at long sequences (32-bit products wrapped there)."""
    return tl.cast(rb, tl.int64)[:, None] * stride_b + tl.cast(rj, tl.int64)[None, :] * stride_h


@triton.jit(do_not_specialize=["dh_off", "dgn_off", "g_off", "dg_off", "cp_off", "cn_off"])
def _lstm_bwd_step_kernel(
    dh_ptr, dh_off, s_dh_b, s_dh_h,   # (B, H) grad of h_t from above (any strides, e.g. expanded)
    dhx_ptr, s_dhx_b, s_dhx_h,        # (B, H) extra grad of h_t (dh_T at the last step)
    dgn_ptr, dgn_off,                 # (B, 4H) dgates of the following step (rows contiguous)
    w_ptr,                            # (4H, H) contiguous W_hh
    g_ptr, g_off,                     # (B, 4H) saved gate pre-activations [i, f, g, o]
    dg_ptr, dg_off,                   # (B, 4H) out: dgates (may alias g: same elements only)
    cp_ptr, cp_off,                   # (B, H) c_{t-1}
    cn_ptr, cn_off,                   # (B, H) c_t
    dc_ptr,                           # (B, H) contiguous ACC_DTYPE: in dc_t, out dc_{t-1}
    B, H,
    HAS_DHX: tl.constexpr, HAS_NEXT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rj, mb, mj = _tile(B, H, BLOCK_B, BLOCK_H)
    m2 = mb[:, None] & mj[None, :]
    dh = tl.load(dh_ptr + dh_off + _strided(rb, rj, s_dh_b, s_dh_h),
                 mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_DHX:
        dh += tl.load(dhx_ptr + _strided(rb, rj, s_dhx_b, s_dhx_h),
                      mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_NEXT:
        dh += _recurrent_dh(dgn_ptr + dgn_off, w_ptr, rb, rj, mb, mj, H, "",
                            ACC_DTYPE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    row = rb[:, None] * H + rj[None, :]
    c_prev = tl.load(cp_ptr + cp_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    c_new = tl.load(cn_ptr + cn_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    dc = tl.load(dc_ptr + row, mask=m2, other=0.0)
    dc = _cell_backward(g_ptr + g_off, dg_ptr + dg_off, c_prev, c_new, dh, dc, rb, rj, mb, mj, H, ACC_DTYPE)
    tl.store(dc_ptr + row, dc.to(dc_ptr.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------------------------
# persistent schedule: one launch per direction. Program (pb, ph) keeps its tile for all T
# steps (its c, or dc, stays in registers) and meets the other programs of batch block pb at a
# grid barrier once per step, after its h_t (dgates_t) is stored and before it reads the whole
# h_t row block (dgates_t) of the next step. Batch blocks never wait for each other.

@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_persistent_kernel(
    gates_ptr,            # (T, B, 4H) in: input projection; out: gate pre-activations
    h0_ptr,               # (B, H) initial hidden state (zeros when the caller gave none)
    w_ptr,                # (4H, H) contiguous W_hh
    out_ptr,              # (T, B, H) out: h_t
    c_ptr,                # (T+1, B, H) ACC_DTYPE: c_0 (in) and c_1..c_T in reading order (out)
    sync_ptr,             # (n_batch_blocks + 1,) int32 zeros: barrier counters + timeout flag
    T, B, H,
    REVERSE: tl.constexpr, MAX_POLLS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,   # w_ptr is W_hh^T (H, 4H) (FWD_W_TRANSPOSED)
):
    rb, rj, mb, mj = _tile(B, H, BLOCK_B, BLOCK_H)
    m2 = mb[:, None] & mj[None, :]
    row = rb[:, None] * H + rj[None, :]
    counter, flag, n_h = barrier_slots(sync_ptr)
    BH = B * H
    c = tl.load(c_ptr + row, mask=m2, other=0.0)
    ok = tl.program_id(0) >= 0          # a true scalar: false once a barrier timed out
    t_prev = 0
    for s in range(T):
        t = (T - 1 - s) if REVERSE else s
        t64 = tl.cast(t, tl.int64)
        if s == 0:
            h_src = h0_ptr
        else:
            h_src = out_ptr + tl.cast(t_prev, tl.int64) * BH
        z_i, z_f, z_g, z_o = _gate_preacts(gates_ptr + t64 * (4 * BH), h_src, w_ptr, w_ptr, rb, rj, mb, mj, H,
                                           True, False, ".cg", ACC_DTYPE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                                           W_T)
        c = _cell_forward(z_i, z_f, z_g, z_o, c, gates_ptr + t64 * (4 * BH), out_ptr + t64 * BH,
                          rb, rj, mb, mj, H, True)
        tl.store(c_ptr + tl.cast(s + 1, tl.int64) * BH + row, c, mask=m2)   # 64-bit: (T+1) B H >= 2**31 at long T
        if s + 1 < T:   # the last step's h is read by nobody in this launch
            ok = grid_barrier(counter, (s + 1) * n_h, ok, flag, MAX_POLLS)
        t_prev = t


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_persistent_kernel(
    dh_ptr, s_dh_t, s_dh_b, s_dh_h,   # (T, B, H) grad of out (any strides, e.g. expanded)
    dhx_ptr, s_dhx_b, s_dhx_h,        # (B, H) grad of h_T (added at the last step)
    w_ptr,                            # (4H, H) contiguous W_hh
    gates_ptr,                        # (T, B, 4H) in: pre-activations; out: dgates (in place)
    c_ptr,                            # (T+1, B, H) ACC_DTYPE cell states in reading order
    dc_ptr,                           # (B, H) ACC_DTYPE: in dc_T, out dc_0
    sync_ptr,                         # (n_batch_blocks + 1,) int32 zeros
    T, B, H,
    REVERSE: tl.constexpr, MAX_POLLS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, rj, mb, mj = _tile(B, H, BLOCK_B, BLOCK_H)
    m2 = mb[:, None] & mj[None, :]
    row = rb[:, None] * H + rj[None, :]
    counter, flag, n_h = barrier_slots(sync_ptr)
    BH = B * H
    dc = tl.load(dc_ptr + row, mask=m2, other=0.0)
    dh = tl.load(dhx_ptr + _strided(rb, rj, s_dhx_b, s_dhx_h), mask=m2, other=0.0).to(ACC_DTYPE)
    ok = tl.program_id(0) >= 0
    t_next = 0
    for r in range(T):
        s = T - 1 - r
        t = (T - 1 - s) if REVERSE else s
        t64 = tl.cast(t, tl.int64)
        dh += tl.load(dh_ptr + t64 * s_dh_t + _strided(rb, rj, s_dh_b, s_dh_h),
                      mask=m2, other=0.0).to(ACC_DTYPE)
        if r > 0:
            dh += _recurrent_dh(gates_ptr + tl.cast(t_next, tl.int64) * (4 * BH), w_ptr, rb, rj, mb, mj, H, ".cg",
                                ACC_DTYPE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        s64 = tl.cast(s, tl.int64)
        c_prev = tl.load(c_ptr + s64 * BH + row, mask=m2, other=0.0)
        c_new = tl.load(c_ptr + (s64 + 1) * BH + row, mask=m2, other=0.0)
        gp = gates_ptr + t64 * (4 * BH)
        dc = _cell_backward(gp, gp, c_prev, c_new, dh, dc, rb, rj, mb, mj, H, ACC_DTYPE)
        dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
        if r + 1 < T:
            ok = grid_barrier(counter, (r + 1) * n_h, ok, flag, MAX_POLLS)
        t_next = t
    tl.store(dc_ptr + row, dc, mask=m2)


# ----------------------------------------------------------------------------------------------
# launch helpers

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_b(B: int) -> int:
    return 16 if B <= 16 else (32 if B <= 32 else 64)


def _block_k(ref: torch.Tensor, schedule: str = "stepwise") -> int:
    if ref.dtype in (torch.float16, torch.bfloat16):
        return 64
    return PERSISTENT_FP32_BLOCK_K if schedule == "persistent" else 32


def _launch_options(block_b: int, block_h: int, schedule: str, dtype: torch.dtype) -> dict:
    """Warps, register cap and pipeline stages without register spills on sm_90 (measured by
    benchmarks/compile_check.py). Step tiles of 1024+ elements spill at 4 warps: 8. A persistent
    program is alone on its SM, so it gets 8 warps and the whole register file (ptxas would
    cap 8 warps at 128 registers and spill); its float32 versions also spill with the default
    3-stage K pipeline, so they load one K chunk at a time."""
    if schedule == "persistent":
        opts = dict(num_warps=8, maxnreg=255)
        if dtype in (torch.float32, torch.float64):
            opts["num_stages"] = PERSISTENT_FP32_STAGES
        return opts
    return dict(num_warps=8 if block_b * block_h >= 1024 else 4)


# (BLOCK_B, BLOCK_H) tiles each schedule may pick on a GPU; benchmarks/compile_check.py compiles
# every one for sm_90 and fails on register spills. Persistent tiles stop at 32 x 16: larger
# ones spill inside the time loop even at 8 warps.
STEPWISE_TILES = ((16, 16), (32, 16), (32, 32), (64, 16), (64, 32))
PERSISTENT_TILES = ((16, 16), (32, 16))
# K-loop pipeline depth of the persistent kernels in float32 / float64 (16-bit: Triton's
# default). 1 = no spills on sm_90, but each K chunk's loads wait out their whole latency: on
# the H200 (2026-11-27) the persistent kernels ran 5-12% slower than the stepwise ones (default
# 3 stages) in float32. benchmarks/tune_tiles.py measures 2 and 3 ("-s2", "-s3" rows).
PERSISTENT_FP32_STAGES = 1
# K chunk of the persistent kernels' reductions in float32 / float64 (16-bit inputs: 64). With
# one chunk in flight each chunk's loads wait out the L2 latency, so a wider chunk means fewer
# waits per step (K = 1024: 32 waits at 32, 8 at 128); tune_tiles.py measures "-k64" / "-k128".
PERSISTENT_FP32_BLOCK_K = 32
# The forward's recurrent product in IEEE precision (float32 without TF32, float64) reads
# W_hh^T, a (H, 4H) copy made once per call, instead of W_hh: its (K, BLOCK_H) tiles are then
# contiguous along the hidden units, as the backward's are. On the H200 (2026-11-27) the IEEE
# forward ran 4.4x slower than the TF32 one, the backward only 1.4x: the orientation of the B
# operand of Triton's FMA dot is the lead. Off until measured (benchmarks/tune_tiles.py "-wt").
FWD_W_TRANSPOSED = False


def _config(B: int, H: int, ref: torch.Tensor) -> dict:
    """Stepwise block sizes: tl.dot needs every block dim >= 16; B, H, K need not divide them
    (masks). At small B one batch block covers the batch, and BLOCK_H shrinks until the grid
    has about one program per SM (each program re-reads its (4*BLOCK_H, H) slice of W_hh, from L2).
    """
    block_b = _block_b(B)
    nb = triton.cdiv(B, block_b)
    block_h = 32 if nb * triton.cdiv(H, 32) >= num_sms(ref) else 16
    return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=_block_k(ref),
                **_launch_options(block_b, block_h, "stepwise", ref.dtype))


def _persistent_config(B: int, H: int, ref: torch.Tensor) -> tuple[dict | None, str]:
    """Block sizes of the persistent kernels, or None and the reason they cannot run.

    Every program of a batch block must be resident at once (they wait for each other): the
    grid must stay within one program per SM. The interpreter runs programs one after
    another, so there each batch block is one program."""
    if not ref.is_cuda:
        block_b = _block_b(B)
        nb = triton.cdiv(B, block_b)
        block_h = max(16, triton.next_power_of_2(H))
        return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=_block_k(ref), num_warps=4), \
            f"interpreter: grid {nb} x 1 (one program per batch block)"
    block_b, block_h = PERSISTENT_TILES[0] if B <= 16 else PERSISTENT_TILES[1]
    nb, nh = triton.cdiv(B, block_b), triton.cdiv(H, block_h)
    sms = num_sms(ref)
    if nb * nh > sms:
        return None, (f"B={B}, H={H} needs a grid of {nb} x {nh} programs ({block_b} x {block_h} tiles), "
                      f"more than the {sms} SMs that can hold them all at once")
    return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=_block_k(ref, "persistent"),
                **_launch_options(block_b, block_h, "persistent", ref.dtype)), \
        f"grid {nb} x {nh} programs <= {sms} SMs"


def _pick_schedule(B: int, H: int, ref: torch.Tensor, schedule: str) -> tuple[str, dict, str]:
    """``(schedule, block config, reason)`` for ``lstm``; ``schedule`` is one of SCHEDULES."""
    schedule, forced = _persistent.requested_schedule(schedule, SCHEDULE_ENV)
    if schedule == "stepwise":
        return "stepwise", _config(B, H, ref), "requested: one launch per step" + forced
    cfg, why = _persistent_config(B, H, ref)
    if cfg is not None:
        return "persistent", cfg, f"one launch per direction ({why}){forced}"
    if schedule == "persistent":
        raise ValueError(f"schedule='persistent' cannot run here{forced}: {why}")
    return "stepwise", _config(B, H, ref), f"one launch per step, since the persistent kernel cannot: {why}"


def explain_schedule(x: torch.Tensor, weight_hh: torch.Tensor, schedule: str = "auto") -> str:
    """How :func:`lstm` will run ``x`` (what ``ops.explain("lstm", ...)`` adds for Triton)."""
    name, _, why = _pick_schedule(x.shape[1], weight_hh.shape[1], x, schedule)
    return f"schedule {name}: {why}"


def _grid(B: int, H: int, cfg: dict):
    return (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))


def _steps(T: int, reverse: bool):
    """Time index of step s (steps run in reading order)."""
    return [T - 1 - s for s in range(T)] if reverse else list(range(T))


# ----------------------------------------------------------------------------------------------
# lstm


def _bias(bias_ih, bias_hh):
    if bias_hh is None:
        return bias_ih
    return bias_hh if bias_ih is None else bias_ih + bias_hh


def _lstm_forward(x, weight_ih, weight_hh, bias, h0, c0, reverse, schedule, cfg):
    """Returns ``out (T, B, H)``, gate pre-activations ``(T, B, 4H)`` and cell states ``(T+1, B, H)``
    (index = step in reading order; ``c_all[0] = c0``). ``h0`` is a tensor (zeros if not given):
    nn.LSTM computes ``0 @ W_hh`` too, so a non-finite W_hh gives the same NaNs here."""
    T, B, I = x.shape
    H = weight_hh.shape[1]
    acc = _acc_dtype(x.dtype)
    x2 = x.reshape(T * B, I)
    # hoisted input projection for all t, one GEMM; overwritten in place by the pre-activations
    if bias is not None:
        gates = torch.addmm(bias, x2, weight_ih.t())
    else:
        gates = torch.mm(x2, weight_ih.t())
    gates = gates.view(T, B, 4 * H)
    out = torch.empty((T, B, H), dtype=x.dtype, device=x.device)
    c_all = torch.empty((T + 1, B, H), dtype=acc, device=x.device)
    if c0 is None:
        c_all[0].zero_()
    else:
        c_all[0].copy_(c0)
    h0 = h0.contiguous()
    grid = _grid(B, H, cfg)
    kw = dict(ACC_DTYPE=acc_type(x.dtype), PRECISION=dot_precision(x), **cfg)
    w_t = FWD_W_TRANSPOSED and kw["PRECISION"] == "ieee"
    w_fwd = weight_hh.t().contiguous() if w_t else weight_hh
    kw["W_T"] = w_t
    if schedule == "persistent":
        sync = sync_buffer(grid[0], x)
        _lstm_fwd_persistent_kernel[grid](gates, h0, w_fwd, out, c_all, sync, T, B, H,
                                          REVERSE=reverse, MAX_POLLS=MAX_POLLS, **kw, **LAUNCH_OPTIONS)
        check_sync(sync, "LSTM forward")
        return out, gates, c_all
    steps = _steps(T, reverse)
    BH, B4H = B * H, B * 4 * H
    for s, t in enumerate(steps):
        h_src, h_off = (h0, 0) if s == 0 else (out, steps[s - 1] * BH)
        _lstm_fwd_step_kernel[grid](
            gates, t * B4H, h_src, h_off, c_all, s * BH, w_fwd, w_fwd,
            gates, t * B4H, out, t * BH, c_all, (s + 1) * BH, B, H,
            HAS_H=True, HAS_BIAS=False, STORE_GATES=True, **kw, **LAUNCH_OPTIONS)
    return out, gates, c_all


def _lstm_backward(d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all, reverse,
                   schedule, cfg, need):
    """The gradients of ``(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)`` (None where
    ``need`` says no); overwrites ``gates`` with d(loss)/d(pre-activations)."""
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    dc = d_cT.to(c_all.dtype, copy=True).contiguous()
    grid = _grid(B, H, cfg)
    kw = dict(ACC_DTYPE=acc_type(x.dtype), PRECISION=dot_precision(x), **cfg)
    steps = _steps(T, reverse)
    if schedule == "persistent":
        sync = sync_buffer(grid[0], x)
        _lstm_bwd_persistent_kernel[grid](
            d_out, d_out.stride(0), d_out.stride(1), d_out.stride(2),
            d_hT, d_hT.stride(0), d_hT.stride(1), weight_hh, gates, c_all, dc, sync, T, B, H,
            REVERSE=reverse, MAX_POLLS=MAX_POLLS, **kw, **LAUNCH_OPTIONS)
        check_sync(sync, "LSTM backward")
    else:
        BH, B4H = B * H, B * 4 * H
        for s in range(T - 1, -1, -1):
            t = steps[s]
            last = s == T - 1
            t_next = t if last else steps[s + 1]
            _lstm_bwd_step_kernel[grid](
                d_out, t * d_out.stride(0), d_out.stride(1), d_out.stride(2),
                d_hT, d_hT.stride(0), d_hT.stride(1),
                gates, t_next * B4H, weight_hh,
                gates, t * B4H, gates, t * B4H,
                c_all, s * BH, c_all, (s + 1) * BH, dc, B, H,
                HAS_DHX=last, HAS_NEXT=not last, **kw, **LAUNCH_OPTIONS)
    # `gates` now holds d(loss)/d(pre-activations), (T, B, 4H); the rest is GEMMs
    return lstm_input_grads(need, gates, dc, x, weight_ih, weight_hh, out, h0, c0, reverse)


class _LSTMFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse, schedule):
        T, B, _ = x.shape
        H = weight_hh.shape[1]
        weight_hh = weight_hh.contiguous()
        schedule, cfg, _ = _pick_schedule(B, H, x, schedule)
        h0_in = x.new_zeros(B, H) if h0 is None else h0
        out, gates, c_all = _lstm_forward(x, weight_ih, weight_hh, _bias(bias_ih, bias_hh), h0_in, c0,
                                          reverse, schedule, cfg)
        h_T = out[0 if reverse else T - 1].clone()
        c_T = c_all[T].to(x.dtype, copy=True)
        ctx.save_for_backward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all)
        ctx.reverse, ctx.schedule, ctx.cfg = reverse, schedule, cfg
        ctx.consumed = False  # backward overwrites `gates` with dgates
        return out, h_T, c_T

    @staticmethod
    @fused_backward("lstm", "triton")
    def backward(ctx, d_out, d_hT, d_cT):
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all = ctx.saved_tensors
        reverse, schedule, cfg = ctx.reverse, ctx.schedule, ctx.cfg
        T, B, _ = x.shape
        H = weight_hh.shape[1]
        if ctx.consumed:
            # a second backward through a retained graph: rebuild the gates buffer
            h0_in = x.new_zeros(B, H) if h0 is None else h0
            _, gates, _ = _lstm_forward(x, weight_ih, weight_hh, _bias(bias_ih, bias_hh), h0_in, c0,
                                        reverse, schedule, cfg)
        ctx.consumed = True
        grads = _lstm_backward(d_out, d_hT, d_cT, x, weight_ih, weight_hh, h0, c0, out, gates, c_all,
                               reverse, schedule, cfg, ctx.needs_input_grad)
        return (*grads, None, None)


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False,
         schedule: str = "auto"):
    """Single-layer LSTM over time-major ``x (T, B, I)`` with fused Triton kernels.

    Same contract as :func:`zf_kernels.ops.lstm.naive.lstm_ref` (arguments are checked by
    :func:`zf_kernels.ops.lstm`): returns ``(out (T, B, H), (h_T, c_T))``. ``schedule``:
    "persistent" (one launch per direction), "stepwise" (one launch per step) or "auto"
    (persistent where its grid can be resident, else stepwise; :func:`explain_schedule` says which).
    """
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    if T == 0:
        h = x.new_zeros(B, H) if h0 is None else h0
        c = x.new_zeros(B, H) if c0 is None else c0
        return x.new_zeros(0, B, H), (h, c)
    out, h_T, c_T = _LSTMFunction.apply(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse),
                                        schedule)
    return out, (h_T, c_T)


def _explain_dispatch(x, weight_ih, weight_hh, *rest) -> str:
    return explain_schedule(x, weight_hh)


# what ``ops.explain("lstm", x, weight_ih, weight_hh)`` appends for this backend
lstm.explain = _explain_dispatch


# ----------------------------------------------------------------------------------------------
# lstm_cell


def _lstm_cell_forward(gates_x, h, c, weight_hh, bias):
    """``(h_new, c_new, gates)``: one fused step and the gate pre-activations its backward reads.
    Both front ends call it: the eager Function and the custom op (``triton_op.py``)."""
    B, H = h.shape
    gates_x, h, c, weight_hh = (t.contiguous() for t in (gates_x, h, c, weight_hh))
    bias_c = None if bias is None else bias.contiguous()
    gates = torch.empty_like(gates_x)
    h_new = torch.empty_like(h)
    c_new = torch.empty_like(c)
    cfg = _config(B, H, h)
    _lstm_fwd_step_kernel[_grid(B, H, cfg)](
        gates_x, 0, h, 0, c, 0, weight_hh, bias_c if bias_c is not None else weight_hh,
        gates, 0, h_new, 0, c_new, 0, B, H,
        HAS_H=True, HAS_BIAS=bias_c is not None, STORE_GATES=True,
        ACC_DTYPE=acc_type(h.dtype), PRECISION=dot_precision(h), **cfg, **LAUNCH_OPTIONS)
    return h_new, c_new, gates


def _lstm_cell_backward(d_h, d_c, h, c, weight_hh, gates, c_new, need):
    """The gradients of ``(gates_x, h, c, weight_hh, bias)`` (None where ``need`` says none)."""
    B, H = h.shape
    h, c, weight_hh = (t.contiguous() for t in (h, c, weight_hh))
    dc = d_c.to(_acc_dtype(h.dtype), copy=True).contiguous()
    dgates = torch.empty_like(gates)
    cfg = _config(B, H, h)
    _lstm_bwd_step_kernel[_grid(B, H, cfg)](
        d_h, 0, d_h.stride(0), d_h.stride(1),
        d_h, 0, 0, gates, 0, weight_hh,
        gates, 0, dgates, 0, c, 0, c_new, 0, dc, B, H,
        HAS_DHX=False, HAS_NEXT=False,
        ACC_DTYPE=acc_type(h.dtype), PRECISION=dot_precision(h), **cfg, **LAUNCH_OPTIONS)
    grad_gx = dgates if need[0] else None
    grad_h = torch.mm(dgates, weight_hh) if need[1] else None
    grad_c = dc.to(c.dtype) if need[2] else None
    grad_w = torch.mm(dgates.t(), h) if need[3] else None
    grad_b = dgates.sum(0) if need[4] else None
    return grad_gx, grad_h, grad_c, grad_w, grad_b


class _LSTMCellFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, gates_x, h, c, weight_hh, bias):
        h_new, c_new, gates = _lstm_cell_forward(gates_x, h, c, weight_hh, bias)
        ctx.save_for_backward(h, c, weight_hh, gates, c_new)
        return h_new, c_new

    @staticmethod
    @fused_backward("lstm_cell", "triton")
    def backward(ctx, d_h, d_c):
        h, c, weight_hh, gates, c_new = ctx.saved_tensors
        return _lstm_cell_backward(d_h, d_c, h, c, weight_hh, gates, c_new, ctx.needs_input_grad)


def lstm_cell(gates_x, h, c, weight_hh, bias=None):
    """One fused LSTM step from the precomputed input projection ``gates_x (B, 4H)``.

    Same contract as :func:`zf_kernels.ops.lstm.naive.lstm_cell_ref`: returns
    ``(h_new, c_new)``, each ``(B, H)`` in the input dtype.
    """
    return _LSTMCellFunction.apply(gates_x, h, c, weight_hh, bias)
