"""Fused Triton kernels for the sampling and likelihood ops.

Same signatures and numbers as :mod:`zf_kernels.ops.distributions.naive` (the public
wrapper in ``__init__`` has already checked shapes, devices and dtypes and turned a bool
or integer ``mask`` into a floating one that broadcasts to the leading shape).

Layout: every input is read as ``(N, D)`` rows (``N`` = product of the leading dims, ``D`` =
last dim) with its own row stride: a slice of the last dim (the mu / logvar halves of one
Linear output) or any input whose leading dims collapse into one stride is read in place;
others (a strided last dim, leading dims that do not collapse) are copied once. The per-row
upstream gradient and mask are vectors with their own stride (0 for the expanded gradient of
a sum: no copy). Each op has one forward and one backward kernel, launched by plain functions
(``_*_forward`` / ``_*_backward``) that two front ends share: the autograd Functions here (the
three reductions of same-shaped inputs share one, ``TritonRowReductionFunction``) and the
torch.library custom ops of ``triton_op.py``, which torch.compile traces:

* ``reparameterize`` is elementwise, on the same row tiles as the reductions (its last dim
  as D, so the halves of one Linear output are read in place too).
* The reductions (``gaussian_kl``, ``gaussian_nll``, ``bernoulli_nll``,
  ``categorical_nll``) use a 1-D grid over blocks of ``BLOCK_N`` rows; each program walks
  the last dim in ``BLOCK_D``-wide slices (``BLOCK_D = min(next_pow2(D), 1024)``, so any
  ``D`` works: 1, odd, or 10k classes) and keeps ``BLOCK_N * BLOCK_D <= 4096``.
  ``categorical_nll`` computes the log-sum-exp in the same single pass with a running
  max (online softmax).

Arithmetic is in float32 (float64 when the inputs are float64), loads of half/bfloat16
are upcast, results are cast back to the input dtype once, as the reference does.
Numerics: ``exp(lq - lp)`` rather than ``exp(lq) / exp(lp)``; the Gaussians' quadratic term
as the square of the scaled residual ``r = (x - mu) * exp(-lv / 2)``, never ``(x - mu)^2 *
exp(-lv)`` (whose factors overflow in float32 for ``|x - mu| > 1.8e19`` or ``|lv| > 88`` where
the product is finite: ``inf * 0 = NaN``), with gradients ``g (x - mu) exp(-lv) = ((g (x - mu))
s) s`` and ``g r^2 = (g r) r`` (``s = exp(-lv / 2)``), zero where ``g`` is (as the reference,
``naive._ScaledSquare`` / ``naive._Exp``); Bernoulli as the reference's
``(1 - x) * l - logsigmoid(l)`` with ``logsigmoid(l) = min(l, 0) - log1p(exp(-|l|))`` (never
exp of a positive number); log-sum-exp relative to the row max. A broadcast ``mask`` that
no single stride describes is copied to an ``(N,)`` vector (``D`` times smaller than the data).

Backward saves only the inputs (recomputing the cheap elementwise terms), plus for
``categorical_nll`` two per-row statistics, the row max and ``log(sum(exp(l - max)))``
(float32, float64 for float64 inputs): kept apart rather than summed into one
log-sum-exp, so logits of 1e4 lose no digits in ``(l - max) - log_sum``.

``mask``: a constant multiplier of each row's result. It gets a gradient like in the
reference (``grad_mask = grad_out * unmasked_row_value``, summed over the dims it was
broadcast along) only when it requires grad; the forward kernel then also writes the
unmasked per-row values, which are kept for backward. Integer ``targets`` get no gradient.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._autograd import fused_backward
from .._triton_common import LAUNCH_OPTIONS, acc_type, sigmoid

_MAX_BLOCK_D = 1024   # widest slice of the last dim one program loads at a time
_TILE = 4096          # max BLOCK_N * BLOCK_D of the row kernels
_MAX_BLOCK_N = 1024   # max rows per program: 4096 rows of D=1 spill registers in the backward
                      # kernels on sm_90 (benchmarks/compile_check.py)


# ----------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------


@triton.jit
def _row_block(N, BLOCK_N: tl.constexpr, IDX: tl.constexpr):
    """This program's rows: indices, in-range flags, indices in the offset type ``IDX`` (int32
    where every offset fits, see ``_strided``; times a row stride: an input's row offsets)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < N, rows.to(IDX)


@triton.jit
def _slice(d0, D, row_ok, BLOCK_D: tl.constexpr):
    """The columns ``d0 .. d0 + BLOCK_D`` of this program's rows: indices, in-range flags of the
    tile, and the indices as a row (to add to each operand's row offsets)."""
    cols = d0 + tl.arange(0, BLOCK_D)
    return cols, row_ok[:, None] & (cols < D)[None, :], cols[None, :]


@triton.jit
def _tile(ptr, row_offs, c, ok, ACC: tl.constexpr):
    """An operand's (rows x columns c) tile in the accumulation type; 0 outside ``ok``."""
    return tl.load(ptr + (row_offs[:, None] + c), mask=ok, other=0.0).to(ACC)


@triton.jit
def _store_tile(ptr, offs, val, ok):
    """A tile of a gradient (a new contiguous tensor) at ``offs``, in its dtype; nothing outside ``ok``."""
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def _upstream_grad(g_ptr, g_stride, mask_ptr, m_stride, row_i, row_ok, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """The per-row upstream gradient, times the mask when there is one (each a vector with its
    own stride: 0 where it was broadcast, e.g. the gradient of a sum)."""
    g = tl.load(g_ptr + row_i * g_stride, mask=row_ok, other=0.0).to(ACC)
    if HAS_MASK:
        g = g * tl.load(mask_ptr + row_i * m_stride, mask=row_ok, other=0.0).to(ACC)
    return g


@triton.jit
def _store_row_values(val, rows, row_ok, row_i, out_ptr, raw_ptr, mask_ptr, s_mask,
                      STORE_RAW: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """A reduction's per-row results: unmasked into ``raw`` when backward needs them for the
    mask's gradient, then times the mask (a vector with its own stride) into ``out``."""
    if STORE_RAW:
        tl.store(raw_ptr + rows, val, mask=row_ok)
    if HAS_MASK:
        val = val * tl.load(mask_ptr + row_i * s_mask, mask=row_ok, other=0.0).to(ACC)
    tl.store(out_ptr + rows, val.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _scaled_square_grads(g, d, s):
    """``(g r, g r^2)`` for the scaled residual ``r = d s`` (``s = exp(-lv / 2)``), as the
    reference's ``_ScaledSquare`` backward: ``g r = (g d) s`` is exactly 0 where ``g`` is (for
    finite ``d``, ``s``), and a zero ``g r`` gives ``g r^2 = 0`` even where ``r`` overflowed."""
    gr = g * d * s
    return gr, tl.where(gr == 0.0, gr, gr * (d * s))


@triton.jit
def _g_times_exp(g, a):
    """``g * exp(a)``, 0 where ``g`` is 0 and ``a < inf`` (not ``0 * inf`` where exp(a) overflowed)."""
    return tl.where((g == 0.0) & (a < float("inf")), 0.0, g * tl.exp(a))


@triton.jit
def _log1p(e):
    """log(1 + e) accurate for small e (Goldberg's trick: the rounding of 1 + e cancels);
    libdevice's log1p is not available to the interpreter."""
    u = 1.0 + e
    small = u == 1.0
    return tl.where(small, e, tl.log(u) * (e / tl.where(small, 1.0, u - 1.0)))


def _acc_torch_dtype(t: torch.Tensor):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


_ROW_HEURISTICS = {
    "HAS_MASK": lambda a: a["mask_ptr"] is not None,
    "ACC": lambda a: acc_type(a["out_ptr"].dtype),  # out has the inputs' dtype
}


# ----------------------------------------------------------------------------------------
# reparameterize: z = mu + exp(0.5 * logvar) * eps
# ----------------------------------------------------------------------------------------

@triton.heuristics({"ACC": lambda a: acc_type(a["z_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _reparam_fwd_kernel(mu_ptr, s_mu, lv_ptr, s_lv, eps_ptr, s_eps, z_ptr, N, D,
                        ACC: tl.constexpr, IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    mu_rows = row_i * s_mu
    lv_rows = row_i * s_lv
    eps_rows = row_i * s_eps
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        mu = _tile(mu_ptr, mu_rows, c, ok, ACC)
        lv = _tile(lv_ptr, lv_rows, c, ok, ACC)
        eps = _tile(eps_ptr, eps_rows, c, ok, ACC)
        z = mu + tl.exp(0.5 * lv) * eps
        tl.store(z_ptr + ((row_i * D)[:, None] + c), z.to(z_ptr.dtype.element_ty), mask=ok)


@triton.heuristics({"ACC": lambda a: acc_type(a["lv_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _reparam_bwd_kernel(g_ptr, s_g, lv_ptr, s_lv, eps_ptr, s_eps, dlv_ptr, deps_ptr, N, D,
                        NEED_LV: tl.constexpr, NEED_EPS: tl.constexpr,
                        ACC: tl.constexpr, IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    g_rows = row_i * s_g
    lv_rows = row_i * s_lv
    eps_rows = row_i * s_eps
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        offs = (row_i * D)[:, None] + c   # the gradients: new contiguous tensors
        g = _tile(g_ptr, g_rows, c, ok, ACC)
        lv = _tile(lv_ptr, lv_rows, c, ok, ACC)
        g_std = g * tl.exp(0.5 * lv)
        if NEED_EPS:
            _store_tile(deps_ptr, offs, g_std, ok)
        if NEED_LV:
            eps = _tile(eps_ptr, eps_rows, c, ok, ACC)
            _store_tile(dlv_ptr, offs, 0.5 * g_std * eps, ok)


def _rows_of(t: torch.Tensor):
    """(N, D) of an elementwise op's operand: its last dim is D (a 0-dim tensor is 1 x 1)."""
    return (1, 1) if t.dim() == 0 else (math.prod(t.shape[:-1]), t.shape[-1])


def _reparameterize_forward(mu, logvar, eps):
    """``z``; both front ends (the Function, the custom op in ``triton_op.py``) call it."""
    z = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    n, d = _rows_of(mu)
    if n * d:
        grid, bn, bd, opts = _tiles(n, d)
        args, idx = _strided(n, d, *(_as_rows(t, n, d) for t in (mu, logvar, eps)))
        _reparam_fwd_kernel[grid](*args, z, n, d, IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return z


def _reparameterize_backward(grad_z, logvar, eps, need):
    """The gradients of ``(mu, logvar, eps)``, None where ``need`` says none (``mu``'s is
    ``grad_z`` itself)."""
    need_mu, need_lv, need_eps = need[:3]
    grad_mu = grad_z if need_mu else None
    grad_lv = grad_eps = None
    if need_lv or need_eps:
        grad_lv = torch.empty(logvar.shape, dtype=logvar.dtype, device=logvar.device) if need_lv else None
        grad_eps = torch.empty(eps.shape, dtype=eps.dtype, device=eps.device) if need_eps else None
        n, d = _rows_of(logvar)
        if n * d:
            grid, bn, bd, opts = _tiles(n, d)
            args, idx = _strided(n, d, *(_as_rows(t, n, d) for t in (grad_z, logvar, eps)))
            _reparam_bwd_kernel[grid](
                *args, grad_lv if need_lv else args[2], grad_eps if need_eps else args[4], n, d,
                NEED_LV=bool(need_lv), NEED_EPS=bool(need_eps), IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return grad_mu, grad_lv, grad_eps


class TritonReparameterizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, eps):
        ctx.save_for_backward(logvar, eps)
        return _reparameterize_forward(mu, logvar, eps)

    @staticmethod
    @fused_backward("reparameterize", "triton")
    def backward(ctx, grad_z):
        logvar, eps = ctx.saved_tensors
        return _reparameterize_backward(grad_z, logvar, eps, ctx.needs_input_grad)


def reparameterize(mu, logvar, eps):
    """``mu + exp(0.5 * logvar) * eps`` (fused Triton; see ``reparameterize_ref``)."""
    return TritonReparameterizeFunction.apply(mu, logvar, eps)


# ----------------------------------------------------------------------------------------
# row-reduction plumbing
# ----------------------------------------------------------------------------------------

def _rows(x: torch.Tensor):
    """(lead_shape, N, D) of a tensor reduced over its last dim."""
    lead = tuple(x.shape[:-1])
    return lead, math.prod(lead), x.shape[-1]


def _tiles(n: int, d: int):
    """(grid, BLOCK_N, BLOCK_D, launch options: num_warps and LAUNCH_OPTIONS) of the row kernels."""
    block_d = min(triton.next_power_of_2(max(d, 1)), _MAX_BLOCK_D)
    block_n = max(1, min(_TILE // block_d, _MAX_BLOCK_N, triton.next_power_of_2(max(n, 1))))
    num_warps = 8 if block_n * block_d >= 4096 else 4
    return (triton.cdiv(n, block_n),), block_n, block_d, dict(num_warps=num_warps, **LAUNCH_OPTIONS)


def _as_rows(t, n, d):
    """``(tensor, row stride)`` reading ``t`` as ``n`` rows of ``d`` elements with unit column
    stride: a view where its leading dims collapse into one row stride (a slice of the last
    dim, such as the mu / logvar halves of one Linear output, needs no copy), else a
    contiguous copy."""
    if n and d:
        v = t.reshape(n, d)     # a view where the leading dims collapse, else a contiguous copy
        if d == 1 or v.stride(1) == 1:
            return v, (v.stride(0) if n > 1 else d)
    return t.contiguous(), d


def _as_vector(t, n):
    """``(tensor, stride)`` of ``t`` as an (N,) vector: a view where one stride does (the
    expanded gradient of a sum has stride 0), else an N-element copy."""
    v = t.reshape(n)
    return v, v.stride(0)


def _flat_mask(mask, lead, n):
    """``(mask, stride)`` as an (N,) vector, or ``(None, 0)``."""
    return (None, 0) if mask is None else _as_vector(mask.expand(lead), n)


_INT32_MAX = 2 ** 31 - 1


def _strided(n, d, *operands):
    """The kernel arguments of ``(tensor, stride)`` operands, flattened, and the ``IDX``
    offset type of the kernels: int32 where every offset of every operand fits (with the
    masked rows past N of the last program: up to ``_MAX_BLOCK_N`` more; the outputs and
    gradients are contiguous, row stride D), else int64. int32 offsets keep the registers of
    the kernels at the level of one shared offset tile (int64 tiles per operand made the
    Gaussian KL's backward spill on sm_90)."""
    widest = max([d] + [stride for _, stride in operands])
    idx = tl.int32 if (n + _MAX_BLOCK_N) * widest + d <= _INT32_MAX else tl.int64
    return [v for pair in operands for v in pair], idx


def _mask_grad(mask, grad_out, raw, lead):
    """d(out)/d(mask) = grad_out * unmasked row value, reduced to the mask's shape."""
    g = grad_out.to(raw.dtype).reshape(lead) * raw.reshape(lead)
    return g.sum_to_size(mask.shape).to(mask.dtype)


def _grad_buf(need, like):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device) if need else None


# ----------------------------------------------------------------------------------------
# gaussian_kl: 0.5 * sum(lp - lq + exp(lq - lp) + ((mq - mp) * exp(-lp / 2))^2 - 1)
# ----------------------------------------------------------------------------------------

@triton.heuristics(_ROW_HEURISTICS)
@triton.jit(do_not_specialize=["N"])
def _kl_fwd_kernel(mq_ptr, s_mq, lq_ptr, s_lq, mp_ptr, s_mp, lp_ptr, s_lp, mask_ptr, s_mask, out_ptr, raw_ptr, N, D,
                   STORE_RAW: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    mq_rows = row_i * s_mq
    lq_rows = row_i * s_lq
    mp_rows = row_i * s_mp
    lp_rows = row_i * s_lp
    acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        mq = _tile(mq_ptr, mq_rows, c, ok, ACC)
        lq = _tile(lq_ptr, lq_rows, c, ok, ACC)
        mp = _tile(mp_ptr, mp_rows, c, ok, ACC)
        lp = _tile(lp_ptr, lp_rows, c, ok, ACC)
        r = (mq - mp) * tl.exp(-0.5 * lp)  # scaled residual: never (mq - mp)^2 or exp(-lp)
        kl = lp - lq + tl.exp(lq - lp) + r * r - 1.0
        # halved per element, as the reference: a row sum in (max, 2 max) must not overflow
        acc += tl.where(ok, 0.5 * kl, 0.0)
    val = tl.sum(acc, axis=1)
    _store_row_values(val, rows, row_ok, row_i, out_ptr, raw_ptr, mask_ptr, s_mask, STORE_RAW, HAS_MASK, ACC)


@triton.heuristics({"HAS_MASK": lambda a: a["mask_ptr"] is not None,
                    "ACC": lambda a: acc_type(a["mq_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _kl_bwd_kernel(g_ptr, s_g, mask_ptr, s_mask, mq_ptr, s_mq, lq_ptr, s_lq, mp_ptr, s_mp, lp_ptr, s_lp,
                   dmq_ptr, dlq_ptr, dmp_ptr, dlp_ptr, N, D,
                   NEED_MQ: tl.constexpr, NEED_LQ: tl.constexpr, NEED_MP: tl.constexpr,
                   NEED_LP: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    mq_rows = row_i * s_mq
    lq_rows = row_i * s_lq
    mp_rows = row_i * s_mp
    lp_rows = row_i * s_lp
    g = _upstream_grad(g_ptr, s_g, mask_ptr, s_mask, row_i, row_ok, HAS_MASK, ACC)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        offs = (row_i * D)[:, None] + c   # the gradients: new contiguous tensors
        mq = _tile(mq_ptr, mq_rows, c, ok, ACC)
        lq = _tile(lq_ptr, lq_rows, c, ok, ACC)
        mp = _tile(mp_ptr, mp_rows, c, ok, ACC)
        lp = _tile(lp_ptr, lp_rows, c, ok, ACC)
        diff = mq - mp
        s = tl.exp(-0.5 * lp)
        gr, g_q = _scaled_square_grads(g, diff, s)
        g_ratio = _g_times_exp(g, lq - lp)
        dmu = gr * s  # g (mq - mp) exp(-lp)  (terms a flag leaves unused are dead code)
        if NEED_MQ:
            _store_tile(dmq_ptr, offs, dmu, ok)
        if NEED_MP:
            _store_tile(dmp_ptr, offs, -dmu, ok)
        if NEED_LQ:
            dlq = 0.5 * (g_ratio - g)
            _store_tile(dlq_ptr, offs, dlq, ok)
        if NEED_LP:
            dlp = 0.5 * (g - g_ratio - g_q)
            _store_tile(dlp_ptr, offs, dlp, ok)


# ----------------------------------------------------------------------------------------
# gaussian_nll: 0.5 * sum(log(2 pi) + lv + ((x - mu) * exp(-lv / 2))^2)
# ----------------------------------------------------------------------------------------

@triton.heuristics(_ROW_HEURISTICS)
@triton.jit(do_not_specialize=["N"])
def _gnll_fwd_kernel(x_ptr, s_x, mu_ptr, s_mu, lv_ptr, s_lv, mask_ptr, s_mask, out_ptr, raw_ptr, N, D,
                     STORE_RAW: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    x_rows = row_i * s_x
    mu_rows = row_i * s_mu
    lv_rows = row_i * s_lv
    acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        x = _tile(x_ptr, x_rows, c, ok, ACC)
        mu = _tile(mu_ptr, mu_rows, c, ok, ACC)
        lv = _tile(lv_ptr, lv_rows, c, ok, ACC)
        r = (x - mu) * tl.exp(-0.5 * lv)  # scaled residual: never (x - mu)^2 or exp(-lv)
        # the literal is log(2 pi); a Python float keeps full precision in float64 kernels
        nll = 1.8378770664093453 + lv + r * r
        acc += tl.where(ok, 0.5 * nll, 0.0)  # halved per element (as in gaussian_kl)
    val = tl.sum(acc, axis=1)
    _store_row_values(val, rows, row_ok, row_i, out_ptr, raw_ptr, mask_ptr, s_mask, STORE_RAW, HAS_MASK, ACC)


@triton.heuristics({"HAS_MASK": lambda a: a["mask_ptr"] is not None,
                    "ACC": lambda a: acc_type(a["x_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _gnll_bwd_kernel(g_ptr, s_g, mask_ptr, s_mask, x_ptr, s_x, mu_ptr, s_mu, lv_ptr, s_lv, dx_ptr, dmu_ptr, dlv_ptr,
                     N, D, NEED_X: tl.constexpr, NEED_MU: tl.constexpr, NEED_LV: tl.constexpr,
                     HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    x_rows = row_i * s_x
    mu_rows = row_i * s_mu
    lv_rows = row_i * s_lv
    g = _upstream_grad(g_ptr, s_g, mask_ptr, s_mask, row_i, row_ok, HAS_MASK, ACC)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        offs = (row_i * D)[:, None] + c   # the gradients: new contiguous tensors
        x = _tile(x_ptr, x_rows, c, ok, ACC)
        mu = _tile(mu_ptr, mu_rows, c, ok, ACC)
        lv = _tile(lv_ptr, lv_rows, c, ok, ACC)
        s = tl.exp(-0.5 * lv)
        gr, g_q = _scaled_square_grads(g, x - mu, s)
        dx = gr * s  # g (x - mu) exp(-lv)  (terms a flag leaves unused are dead code)
        if NEED_X:
            _store_tile(dx_ptr, offs, dx, ok)
        if NEED_MU:
            _store_tile(dmu_ptr, offs, -dx, ok)
        if NEED_LV:
            dlv = 0.5 * (g - g_q)
            _store_tile(dlv_ptr, offs, dlv, ok)


# ----------------------------------------------------------------------------------------
# bernoulli_nll: sum((1 - x) * l + softplus(-l)), softplus in log space
# ----------------------------------------------------------------------------------------

@triton.heuristics(_ROW_HEURISTICS)
@triton.jit(do_not_specialize=["N"])
def _bnll_fwd_kernel(x_ptr, s_x, l_ptr, s_l, mask_ptr, s_mask, out_ptr, raw_ptr, N, D,
                     STORE_RAW: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    x_rows = row_i * s_x
    l_rows = row_i * s_l
    acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        x = _tile(x_ptr, x_rows, c, ok, ACC)
        lg = _tile(l_ptr, l_rows, c, ok, ACC)
        # (1 - x) * l - logsigmoid(l), logsigmoid(l) = min(l, 0) - log1p(exp(-|l|)): the
        # reference's form (no cancellation of max(l, 0) - l * x when x ~ 1 and l >> 0)
        nll = (1.0 - x) * lg - tl.minimum(lg, 0.0) + _log1p(tl.exp(-tl.abs(lg)))
        acc += tl.where(ok, nll, 0.0)
    val = tl.sum(acc, axis=1)
    _store_row_values(val, rows, row_ok, row_i, out_ptr, raw_ptr, mask_ptr, s_mask, STORE_RAW, HAS_MASK, ACC)


@triton.heuristics({"HAS_MASK": lambda a: a["mask_ptr"] is not None,
                    "ACC": lambda a: acc_type(a["l_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _bnll_bwd_kernel(g_ptr, s_g, mask_ptr, s_mask, x_ptr, s_x, l_ptr, s_l, dx_ptr, dl_ptr, N, D,
                     NEED_X: tl.constexpr, NEED_L: tl.constexpr,
                     HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    l_rows = row_i * s_l
    x_rows = row_i * s_x
    g = _upstream_grad(g_ptr, s_g, mask_ptr, s_mask, row_i, row_ok, HAS_MASK, ACC)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        offs = (row_i * D)[:, None] + c   # the gradients: new contiguous tensors
        lg = _tile(l_ptr, l_rows, c, ok, ACC)
        if NEED_L:
            x = _tile(x_ptr, x_rows, c, ok, ACC)
            _store_tile(dl_ptr, offs, g * (sigmoid(lg) - x), ok)
        if NEED_X:
            _store_tile(dx_ptr, offs, -(g * lg), ok)


# ----------------------------------------------------------------------------------------
# categorical_nll: logsumexp(logits) - logits[target]
# ----------------------------------------------------------------------------------------

@triton.heuristics(_ROW_HEURISTICS)
@triton.jit(do_not_specialize=["N"])
def _cat_fwd_kernel(t_ptr, s_t, l_ptr, s_l, mask_ptr, s_mask, out_ptr, max_ptr, lsum_ptr, raw_ptr, N, D,
                    STORE_RAW: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    l_rows = row_i * s_l   # this program's row offsets, at the logits' row stride
    # online log-sum-exp: running max m and sum s of exp(l - m), one pass over the row
    m = tl.full((BLOCK_N,), float("-inf"), ACC)
    s = tl.zeros((BLOCK_N,), ACC)
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        lg = tl.load(l_ptr + (l_rows[:, None] + c), mask=ok, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(lg, axis=1))
        # a row that is -inf so far (padding rows, -inf logits) must not produce inf - inf
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(lg - m_ref[:, None]), axis=1)
        m = m_new
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    log_s = tl.log(tl.where(row_ok, s, 1.0))
    tgt = tl.load(t_ptr + row_i * s_t, mask=row_ok, other=0).to(tl.int64)
    l_t = tl.load(l_ptr + (l_rows + tgt), mask=row_ok, other=0.0).to(ACC)
    # (max - l_t) + log(s), not (max + log(s)) - l_t: no cancellation for large logits
    val = (m_ref - l_t) + log_s
    tl.store(max_ptr + rows, m_ref, mask=row_ok)
    tl.store(lsum_ptr + rows, log_s, mask=row_ok)
    _store_row_values(val, rows, row_ok, row_i, out_ptr, raw_ptr, mask_ptr, s_mask, STORE_RAW, HAS_MASK, ACC)


@triton.heuristics({"HAS_MASK": lambda a: a["mask_ptr"] is not None,
                    "ACC": lambda a: acc_type(a["max_ptr"].dtype)})
@triton.jit(do_not_specialize=["N"])
def _cat_bwd_kernel(g_ptr, s_g, mask_ptr, s_mask, t_ptr, s_t, l_ptr, s_l, max_ptr, lsum_ptr, dl_ptr, N, D,
                    HAS_MASK: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, row_ok, row_i = _row_block(N, BLOCK_N, IDX)
    # each input's row offsets, at its own row stride
    l_rows = row_i * s_l
    g = _upstream_grad(g_ptr, s_g, mask_ptr, s_mask, row_i, row_ok, HAS_MASK, ACC)
    m = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
    log_s = tl.load(lsum_ptr + rows, mask=row_ok, other=0.0)
    tgt = tl.load(t_ptr + row_i * s_t, mask=row_ok, other=0).to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        cols, ok, c = _slice(d0, D, row_ok, BLOCK_D)
        offs = (row_i * D)[:, None] + c   # the gradient: a new contiguous tensor
        lg = tl.load(l_ptr + (l_rows[:, None] + c), mask=ok, other=float("-inf")).to(ACC)
        p = tl.exp((lg - m[:, None]) - log_s[:, None])  # softmax, as log_softmax's backward
        onehot = (c.to(tl.int64) == tgt[:, None]).to(ACC)
        tl.store(dl_ptr + offs, (g[:, None] * (p - onehot)).to(dl_ptr.dtype.element_ty), mask=ok)


def _categorical_nll_forward(targets, logits, mask, store_raw):
    """``(out, stats, raw)``: the per-row statistics backward needs (the row max and
    ``log(sum(exp(l - max)))``, one (2, N) tensor) and, with ``store_raw``, the unmasked row
    values (else None); both front ends (the Function, the custom op in ``triton_op.py``) call it."""
    lead, n, d = _rows(logits)
    if n and not d:
        raise ValueError("logits must have at least one class (its last dim is 0)")
    out = torch.empty(lead, dtype=logits.dtype, device=logits.device)
    stats = torch.empty(2, n, dtype=_acc_torch_dtype(logits), device=logits.device)
    raw = torch.empty(n, dtype=stats.dtype, device=logits.device) if store_raw else None
    if n:
        grid, bn, bd, opts = _tiles(n, d)
        args, idx = _strided(n, d, _as_vector(targets, n), _as_rows(logits, n, d), _flat_mask(mask, lead, n))
        _cat_fwd_kernel[grid](*args, out, stats[0], stats[1], raw if store_raw else out, n, d,
                              STORE_RAW=bool(store_raw), IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return out, stats, raw


def _categorical_nll_backward(grad_out, targets, logits, mask, stats):
    """The gradient of ``logits`` (integer targets get none)."""
    lead, n, d = _rows(logits)
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if n * d:
        grid, bn, bd, opts = _tiles(n, d)
        args, idx = _strided(n, d, _as_vector(grad_out, n), _flat_mask(mask, lead, n),
                             _as_vector(targets, n), _as_rows(logits, n, d))
        _cat_bwd_kernel[grid](*args, stats[0], stats[1], grad_logits, n, d,
                              IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return grad_logits


class TritonCategoricalNLLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, targets, logits, mask):
        out, stats, raw = _categorical_nll_forward(targets, logits, mask, mask is not None and ctx.needs_input_grad[2])
        ctx.save_for_backward(targets, logits, mask, stats, raw)
        return out

    @staticmethod
    @fused_backward("categorical_nll", "triton")
    def backward(ctx, grad_out):
        targets, logits, mask, stats, raw = ctx.saved_tensors
        grad_logits = _categorical_nll_backward(grad_out, targets, logits, mask, stats) if ctx.needs_input_grad[1] else None
        grad_mask = _mask_grad(mask, grad_out, raw, logits.shape[:-1]) if raw is not None else None
        return None, grad_logits, grad_mask


def categorical_nll(targets, logits, mask=None):
    """-log softmax(logits)[targets] (fused Triton; one pass, online log-sum-exp)."""
    return TritonCategoricalNLLFunction.apply(targets, logits, mask)


# ----------------------------------------------------------------------------------------
# the row reductions of same-shaped inputs (gaussian_kl, gaussian_nll, bernoulli_nll): one
# forward and one backward body, one Function
# ----------------------------------------------------------------------------------------

# kind -> (forward kernel, backward kernel, the backward kernel's NEED_* flag per input)
_ROW_REDUCTIONS = {
    "gaussian_kl": (_kl_fwd_kernel, _kl_bwd_kernel, ("NEED_MQ", "NEED_LQ", "NEED_MP", "NEED_LP")),
    "gaussian_nll": (_gnll_fwd_kernel, _gnll_bwd_kernel, ("NEED_X", "NEED_MU", "NEED_LV")),
    "bernoulli_nll": (_bnll_fwd_kernel, _bnll_bwd_kernel, ("NEED_X", "NEED_L")),
}


def _row_reduction_forward(kind, inputs, mask, store_raw):
    """``(out, raw)``: the masked per-row results (the inputs' dtype) and, with ``store_raw``, the
    unmasked ones (accumulation dtype, for the mask's gradient; else None). ``inputs``: the op's
    same-shaped tensors in its argument order; both front ends (the Function below, the custom
    op in ``triton_op.py``) call it."""
    forward_kernel = _ROW_REDUCTIONS[kind][0]
    like = inputs[0]
    lead, n, d = _rows(like)
    out = torch.empty(lead, dtype=like.dtype, device=like.device)
    raw = torch.empty(n, dtype=_acc_torch_dtype(like), device=like.device) if store_raw else None
    if n:
        grid, bn, bd, opts = _tiles(n, d)
        args, idx = _strided(n, d, *(_as_rows(t, n, d) for t in inputs), _flat_mask(mask, lead, n))
        forward_kernel[grid](*args, out, raw if store_raw else out, n, d,
                             STORE_RAW=bool(store_raw), IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return out, raw


def _row_reduction_backward(kind, grad_out, inputs, mask, need):
    """The gradients of ``inputs``, None where ``need`` says none (the mask's: ``_mask_grad``)."""
    _, backward_kernel, flags = _ROW_REDUCTIONS[kind]
    lead, n, d = _rows(inputs[0])
    grads = [_grad_buf(nd, t) for nd, t in zip(need, inputs)]
    if any(need) and n * d:
        ins = [_as_rows(t, n, d) for t in inputs]
        grid, bn, bd, opts = _tiles(n, d)
        args, idx = _strided(n, d, _as_vector(grad_out, n), _flat_mask(mask, lead, n), *ins)
        backward_kernel[grid](
            *args, *[gr if gr is not None else ins[i][0] for i, gr in enumerate(grads)], n, d,
            **{flag: bool(nd) for flag, nd in zip(flags, need)}, IDX=idx, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return grads


class TritonRowReductionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, mask, *inputs):
        out, raw = _row_reduction_forward(kind, inputs, mask, mask is not None and ctx.needs_input_grad[1])
        ctx.kind = kind
        ctx.save_for_backward(mask, raw, *inputs)
        return out

    @staticmethod
    @fused_backward(lambda ctx: ctx.kind, "triton")
    def backward(ctx, grad_out):
        mask, raw, *inputs = ctx.saved_tensors
        grads = _row_reduction_backward(ctx.kind, grad_out, inputs, mask, ctx.needs_input_grad[2:])
        grad_mask = _mask_grad(mask, grad_out, raw, inputs[0].shape[:-1]) if raw is not None else None
        return (None, grad_mask, *grads)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, mask=None):
    """KL(q || p) of diagonal Gaussians summed over the last dim (fused Triton)."""
    return TritonRowReductionFunction.apply("gaussian_kl", mask, mu_q, logvar_q, mu_p, logvar_p)


def gaussian_nll(x, mu, logvar, mask=None):
    """-log N(x; mu, exp(logvar)) summed over the last dim (fused Triton)."""
    return TritonRowReductionFunction.apply("gaussian_nll", mask, x, mu, logvar)


def bernoulli_nll(x, logits, mask=None):
    """-log Bernoulli(x; sigmoid(logits)) summed over the last dim (fused Triton)."""
    return TritonRowReductionFunction.apply("bernoulli_nll", mask, x, logits)
