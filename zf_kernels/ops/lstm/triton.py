"""Triton LSTM: ``lstm`` over a sequence and ``lstm_cell`` for one step (gate order i, f, g, o).

Same signatures and numbers as :mod:`zf_kernels.ops.lstm.naive`. Import only where Triton is
installed; on a CPU the kernels run under ``TRITON_INTERPRET=1``.

Kernels
-------
``_lstm_fwd_step_kernel`` -- one LSTM step, fully fused. Grid ``(cdiv(B, BLOCK_B), cdiv(H, BLOCK_H))``;
program ``(pb, pj)`` owns batch rows ``pb*BLOCK_B ..`` and hidden units ``j = pj*BLOCK_H ..``.
It accumulates the four gate pre-activations of its units (columns ``j, H+j, 2H+j, 3H+j``) as
``h_prev @ W_hh^T`` with ``tl.dot`` over K = H in ``BLOCK_K`` chunks (fp32 accumulator; fp64
for float64 inputs), adds ``gates_x`` (and ``bias``), applies the activations and the cell
update, and writes ``h_new``, ``c_new`` and (optionally) the full gate pre-activations.

``_lstm_bwd_step_kernel`` -- the backward of one step, fully fused, same grid. For hidden block
j it forms ``dh = dout_t (+ dh_T at the last step) + (dgates_{t+1} @ W_hh)[:, j]`` with
``tl.dot`` over the 4H reduction, recomputes the four activations of block j from the saved
pre-activations, reads ``c_{t-1}, c_t``, and writes ``dgates_t`` (w.r.t. the pre-activations)
for the 4 gates of block j and ``dc_{t-1}`` into an fp32 carry buffer. Without
``dgates_{t+1}`` it is the pointwise backward of ``lstm_cell``.

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

Launches: forward = 1 GEMM + T step kernels; backward = T step kernels + a few GEMMs. The step
index enters the kernels only through pointer offsets marked ``do_not_specialize``, so no
kernel is recompiled per T or per step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_common import sigmoid, tanh

__all__ = ["lstm", "lstm_cell"]

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
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]

    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    if HAS_H:
        # gates[:, gH + j] += sum_k h[:, k] * W_hh[gH + j, k]: W tile loaded transposed (K, BLOCK_H)
        for k0 in range(0, H, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < H
            a = tl.load(h_ptr + h_off + rb[:, None] * H + rk[None, :],
                        mask=mb[:, None] & mk[None, :], other=0.0)
            wp = w_ptr + rj[None, :] * H + rk[:, None]
            wm = mk[:, None] & mj[None, :]
            w_i = tl.load(wp, mask=wm, other=0.0)
            w_f = tl.load(wp + H * H, mask=wm, other=0.0)
            w_g = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
            w_o = tl.load(wp + 3 * H * H, mask=wm, other=0.0)
            acc_i = tl.dot(a, w_i, acc_i, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_f = tl.dot(a, w_f, acc_f, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_g = tl.dot(a, w_g, acc_g, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            acc_o = tl.dot(a, w_o, acc_o, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    row4 = rb[:, None] * (4 * H) + rj[None, :]
    gx = gx_ptr + gx_off + row4
    z_i = acc_i + tl.load(gx, mask=m2, other=0.0).to(ACC_DTYPE)
    z_f = acc_f + tl.load(gx + H, mask=m2, other=0.0).to(ACC_DTYPE)
    z_g = acc_g + tl.load(gx + 2 * H, mask=m2, other=0.0).to(ACC_DTYPE)
    z_o = acc_o + tl.load(gx + 3 * H, mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        z_i += tl.load(bias_ptr + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_f += tl.load(bias_ptr + H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_g += tl.load(bias_ptr + 2 * H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
        z_o += tl.load(bias_ptr + 3 * H + rj, mask=mj, other=0.0).to(ACC_DTYPE)[None, :]
    i = sigmoid(z_i)
    f = sigmoid(z_f)
    g = tanh(z_g)
    o = sigmoid(z_o)

    row = rb[:, None] * H + rj[None, :]
    c_prev = tl.load(c_ptr + c_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    c_new = f * c_prev + i * g
    h_new = o * tanh(c_new)
    tl.store(co_ptr + co_off + row, c_new.to(co_ptr.dtype.element_ty), mask=m2)
    tl.store(ho_ptr + ho_off + row, h_new.to(ho_ptr.dtype.element_ty), mask=m2)
    if STORE_GATES:
        # the full pre-activations, for backward. Each element stored here was loaded (as gx) by
        # this program only, and the stored value depends on it: aliasing g == gx is safe.
        gp = g_ptr + g_off + row4
        gty = g_ptr.dtype.element_ty
        tl.store(gp, z_i.to(gty), mask=m2)
        tl.store(gp + H, z_f.to(gty), mask=m2)
        tl.store(gp + 2 * H, z_g.to(gty), mask=m2)
        tl.store(gp + 3 * H, z_o.to(gty), mask=m2)


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
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]

    dh = tl.load(dh_ptr + dh_off + rb[:, None] * s_dh_b + rj[None, :] * s_dh_h,
                 mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_DHX:
        dh += tl.load(dhx_ptr + rb[:, None] * s_dhx_b + rj[None, :] * s_dhx_h,
                      mask=m2, other=0.0).to(ACC_DTYPE)
    if HAS_NEXT:
        # dh[:, j] += sum_k dgates_next[:, k] * W_hh[k, j], k over all 4H gate columns
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
        for k0 in range(0, 4 * H, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < 4 * H
            a = tl.load(dgn_ptr + dgn_off + rb[:, None] * (4 * H) + rk[None, :],
                        mask=mb[:, None] & mk[None, :], other=0.0)
            w = tl.load(w_ptr + rk[:, None] * H + rj[None, :], mask=mk[:, None] & mj[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        dh += acc

    row4 = rb[:, None] * (4 * H) + rj[None, :]
    gp = g_ptr + g_off + row4
    # activations recomputed from the saved pre-activations (see the module docstring)
    i = sigmoid(tl.load(gp, mask=m2, other=0.0).to(ACC_DTYPE))
    f = sigmoid(tl.load(gp + H, mask=m2, other=0.0).to(ACC_DTYPE))
    g = tanh(tl.load(gp + 2 * H, mask=m2, other=0.0).to(ACC_DTYPE))
    o = sigmoid(tl.load(gp + 3 * H, mask=m2, other=0.0).to(ACC_DTYPE))
    row = rb[:, None] * H + rj[None, :]
    c_prev = tl.load(cp_ptr + cp_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    c_new = tl.load(cn_ptr + cn_off + row, mask=m2, other=0.0).to(ACC_DTYPE)
    dc = tl.load(dc_ptr + row, mask=m2, other=0.0)

    tc = tanh(c_new)
    dc = dc + dh * o * (1.0 - tc * tc)
    d_i = dc * g * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    d_o = dh * tc * o * (1.0 - o)

    dgp = dg_ptr + dg_off + row4
    dty = dg_ptr.dtype.element_ty
    tl.store(dgp, d_i.to(dty), mask=m2)
    tl.store(dgp + H, d_f.to(dty), mask=m2)
    tl.store(dgp + 2 * H, d_g.to(dty), mask=m2)
    tl.store(dgp + 3 * H, d_o.to(dty), mask=m2)
    tl.store(dc_ptr + row, (dc * f).to(dc_ptr.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------------------------
# launch helpers

_NUM_SMS: dict[int, int] = {}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision(t: torch.Tensor) -> str:
    """tl.dot input precision. It matters only for float32 inputs: IEEE unless torch allows TF32
    for matmuls. 16-bit inputs get Triton's default ("tf32", a no-op for them); float64 "ieee"."""
    if t.dtype == torch.float32:
        return "tf32" if (t.is_cuda and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    return "ieee" if t.dtype == torch.float64 else "tf32"


def _num_sms(t: torch.Tensor) -> int:
    if not t.is_cuda:
        return 1 << 30  # interpreter: no occupancy to fill, prefer the smallest blocks
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def _config(B: int, H: int, ref: torch.Tensor) -> dict:
    """Block sizes: tl.dot needs every block dim >= 16; B, H, K need not divide them (masks).

    At small B one batch block covers the batch, and BLOCK_H shrinks until the grid has
    about one program per SM (each program re-reads its (4*BLOCK_H, H) slice of W_hh, from L2).
    """
    block_b = 16 if B <= 16 else (32 if B <= 32 else 64)
    nb = triton.cdiv(B, block_b)
    block_h = 32 if nb * triton.cdiv(H, 32) >= _num_sms(ref) else 16
    block_k = 64 if ref.dtype in (torch.float16, torch.bfloat16) else 32
    return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=4)


def _grid(B: int, H: int, cfg: dict):
    return (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))


def _steps(T: int, reverse: bool):
    """Time index of step s (steps run in reading order)."""
    return [T - 1 - s for s in range(T)] if reverse else list(range(T))


# ----------------------------------------------------------------------------------------------
# lstm


def _lstm_forward(x, weight_ih, weight_hh, bias, h0, c0, reverse):
    """Returns ``out (T, B, H)``, gate pre-activations ``(T, B, 4H)`` and cell states ``(T+1, B, H)``
    (index = step in reading order; ``c_all[0] = c0``)."""
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
    h0c = None if h0 is None else h0.contiguous()
    cfg = _config(B, H, x)
    grid = _grid(B, H, cfg)
    kw = dict(ACC_DTYPE=_tl_acc(x.dtype), PRECISION=_precision(x), **cfg)
    steps = _steps(T, reverse)
    BH, B4H = B * H, B * 4 * H
    for s, t in enumerate(steps):
        if s == 0:
            h_src, h_off, has_h = (h0c, 0, True) if h0c is not None else (out, 0, False)
        else:
            h_src, h_off, has_h = out, steps[s - 1] * BH, True
        _lstm_fwd_step_kernel[grid](
            gates, t * B4H, h_src, h_off, c_all, s * BH, weight_hh, weight_hh,
            gates, t * B4H, out, t * BH, c_all, (s + 1) * BH, B, H,
            HAS_H=has_h, HAS_BIAS=False, STORE_GATES=True, **kw)
    return out, gates, c_all


class _LSTMFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse):
        bias = bias_ih
        if bias_hh is not None:
            bias = bias_hh if bias is None else bias + bias_hh
        weight_hh = weight_hh.contiguous()
        out, gates, c_all = _lstm_forward(x, weight_ih, weight_hh, bias, h0, c0, reverse)
        T = x.shape[0]
        h_T = out[0 if reverse else T - 1].clone()
        c_T = c_all[T].to(x.dtype, copy=True)
        ctx.save_for_backward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all)
        ctx.reverse = reverse
        ctx.consumed = False  # backward overwrites `gates` with dgates
        return out, h_T, c_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, out, gates, c_all = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, I = x.shape
        H = weight_hh.shape[1]
        if ctx.consumed:
            # a second backward through a retained graph: rebuild the gates buffer
            bias = bias_ih
            if bias_hh is not None:
                bias = bias_hh if bias is None else bias + bias_hh
            _, gates, _ = _lstm_forward(x, weight_ih, weight_hh, bias, h0, c0, reverse)
        ctx.consumed = True

        dc = d_cT.to(c_all.dtype, copy=True).contiguous()
        cfg = _config(B, H, x)
        grid = _grid(B, H, cfg)
        kw = dict(ACC_DTYPE=_tl_acc(x.dtype), PRECISION=_precision(x), **cfg)
        steps = _steps(T, reverse)
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
                HAS_DHX=last, HAS_NEXT=not last, **kw)
        dgates = gates  # now holds d(loss)/d(pre-activations), (T, B, 4H)
        dg2 = dgates.view(T * B, 4 * H)

        need = ctx.needs_input_grad
        grad_x = grad_w_ih = grad_w_hh = grad_b = grad_h0 = grad_c0 = None
        if need[0]:
            grad_x = torch.mm(dg2, weight_ih).view(T, B, I)
        if need[1]:
            grad_w_ih = torch.mm(dg2.t(), x.reshape(T * B, I))
        t_first = steps[0]
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
            grad_c0 = dc.to(c0.dtype)
        grad_b_ih = grad_b if need[3] else None
        grad_b_hh = None
        if need[4]:
            grad_b_hh = grad_b.clone() if need[3] else grad_b
        return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_h0, grad_c0, None


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """Single-layer LSTM over time-major ``x (T, B, I)`` with fused Triton step kernels.

    Same contract as :func:`zf_kernels.ops.lstm.naive.lstm_ref` (arguments are checked by
    :func:`zf_kernels.ops.lstm`): returns ``(out (T, B, H), (h_T, c_T))``.
    """
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    if T == 0:
        h = x.new_zeros(B, H) if h0 is None else h0
        c = x.new_zeros(B, H) if c0 is None else c0
        return x.new_zeros(0, B, H), (h, c)
    out, h_T, c_T = _LSTMFunction.apply(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse))
    return out, (h_T, c_T)


# ----------------------------------------------------------------------------------------------
# lstm_cell


class _LSTMCellFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, gates_x, h, c, weight_hh, bias):
        B, H = h.shape
        gates_x = gates_x.contiguous()
        h = h.contiguous()
        c = c.contiguous()
        weight_hh = weight_hh.contiguous()
        bias_c = None if bias is None else bias.contiguous()
        gates = torch.empty_like(gates_x)
        h_new = torch.empty_like(h)
        c_new = torch.empty_like(c)
        cfg = _config(B, H, h)
        _lstm_fwd_step_kernel[_grid(B, H, cfg)](
            gates_x, 0, h, 0, c, 0, weight_hh, bias_c if bias_c is not None else weight_hh,
            gates, 0, h_new, 0, c_new, 0, B, H,
            HAS_H=True, HAS_BIAS=bias_c is not None, STORE_GATES=True,
            ACC_DTYPE=_tl_acc(h.dtype), PRECISION=_precision(h), **cfg)
        ctx.save_for_backward(h, c, weight_hh, gates, c_new)
        ctx.has_bias = bias is not None
        return h_new, c_new

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_h, d_c):
        h, c, weight_hh, gates, c_new = ctx.saved_tensors
        B, H = h.shape
        dc = d_c.to(_acc_dtype(h.dtype), copy=True).contiguous()
        dgates = torch.empty_like(gates)
        cfg = _config(B, H, h)
        _lstm_bwd_step_kernel[_grid(B, H, cfg)](
            d_h, 0, d_h.stride(0), d_h.stride(1),
            d_h, 0, 0, gates, 0, weight_hh,
            gates, 0, dgates, 0, c, 0, c_new, 0, dc, B, H,
            HAS_DHX=False, HAS_NEXT=False,
            ACC_DTYPE=_tl_acc(h.dtype), PRECISION=_precision(h), **cfg)
        need = ctx.needs_input_grad
        grad_gx = dgates if need[0] else None
        grad_h = torch.mm(dgates, weight_hh) if need[1] else None
        grad_c = dc.to(c.dtype) if need[2] else None
        grad_w = torch.mm(dgates.t(), h) if need[3] else None
        grad_b = dgates.sum(0) if (ctx.has_bias and need[4]) else None
        return grad_gx, grad_h, grad_c, grad_w, grad_b


def lstm_cell(gates_x, h, c, weight_hh, bias=None):
    """One fused LSTM step from the precomputed input projection ``gates_x (B, 4H)``.

    Same contract as :func:`zf_kernels.ops.lstm.naive.lstm_cell_ref`: returns
    ``(h_new, c_new)``, each ``(B, H)`` in the input dtype.
    """
    return _LSTMCellFunction.apply(gates_x, h, c, weight_hh, bias)
