"""Small Triton device functions shared by the fused kernels (a tile's rows and columns, gate
nonlinearities and the four gate accumulators / stores, the model's clamped LeakyReLU, the tiled
product with one weight matrix, the grid barrier of the persistent kernels), and the one rule for
``tl.dot``'s input precision. Import only where Triton is installed."""
import torch
import triton
import triton.language as tl

# the one float32 precision rule, shared with the CUDA extension's kernels (no Triton there)
from ._precision import FP32_DOT_CHOICES, FP32_DOT_ENV, dot_precision  # noqa: F401

# Compile options every launch passes, so that the kernels do not change with Triton's defaults:
# FMA contraction on. It is the default of triton 3.6 (on the GPU machine) and 3.9, but 3.9 warns
# that 3.10 turns it off unless asked; the kernels' GPU tolerances and register budgets were
# measured with it, and csrc/ compiles with nvcc's default --fmad=true.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


def acc_type(dtype: torch.dtype):
    """The accumulation type of the kernels for inputs of ``dtype``: float64 for float64, else
    float32 (half precision loads are upcast, results rounded once to the input dtype)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def tile_block(pid_b, pid_n, B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """The batch rows ``rb`` and columns ``rn`` of tile ``(pid_b, pid_n)`` of a (B, N) output and
    their in-range flags ``mb``, ``mn``: the prologue of the tiled kernels."""
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rb, rn, rb < B, rn < N


@triton.jit
def tile_dot(acc, X, ldx, rb, mb, W, ldw, rn, mn, K, W_ROWS_ARE_N: tl.constexpr,
             CACHE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc + X[rb, :K] @ V[:K, rn]`` with ``X[b, k]`` at ``X + b * ldx + k``; ``V = W^T`` of a
    row-major (N, K) weight with row stride ``ldw`` when ``W_ROWS_ARE_N``, else ``V = W``, a
    row-major (K, N) weight. Rows and columns outside ``mb`` / ``mn`` and ``k >= K`` load as 0.
    X is loaded with ``CACHE`` (".cg" where other programs of the launch wrote it)."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        mk = kk < K
        x = tl.load(X + rb[:, None] * ldx + kk[None, :], mask=mb[:, None] & mk[None, :],
                    other=0.0, cache_modifier=CACHE)
        if W_ROWS_ARE_N:
            w = tl.load(W + rn[None, :] * ldw + kk[:, None], mask=mn[None, :] & mk[:, None], other=0.0)
        else:
            w = tl.load(W + kk[:, None] * ldw + rn[None, :], mask=mk[:, None] & mn[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def gate_zeros(BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """Four zero (BLOCK_B, BLOCK_N) accumulators, one per LSTM gate (i, f, g, o)."""
    return (tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC), tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC),
            tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC), tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC))


@triton.jit
def store_gates(P, i, f, g, o, H, mask):
    """Stores the four gate tiles of a tile's units: i at ``P``, f at ``P + H``, g at ``P + 2H``,
    o at ``P + 3H`` (``P``: the gate-i columns of rows of a (.., 4H) tensor), in P's dtype."""
    ty = P.dtype.element_ty
    tl.store(P, i.to(ty), mask=mask)
    tl.store(P + H, f.to(ty), mask=mask)
    tl.store(P + 2 * H, g.to(ty), mask=mask)
    tl.store(P + 3 * H, o.to(ty), mask=mask)


@triton.jit
def sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def tanh(x):
    """tanh with its relative accuracy kept as |x| -> 0. The plain ``(1 - e) / (1 + e)`` with
    ``e = exp(-2|x|)`` rounds e to 1 and so returns exactly 0 for |x| below ~3e-8 in float32
    (~6e-17 in float64): a tiny h_t (o * tanh(c) with c ~ 1e-22) became 0, and 0 * an infinite
    weight made the next step NaN where the reference's tiny value gives +-inf. Below
    |x| = 2^-8 this uses the series x (1 - x^2/3 (1 - 0.4 x^2)) (relative error < 2e-16
    there); above, the formula, whose cancellation costs at most ~eps / (2|x|) relative."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    x2 = a * a
    t = tl.where(a < 0.00390625, a * (1.0 - (x2 * (1.0 / 3.0)) * (1.0 - 0.4 * x2)), big)
    return tl.where(x >= 0, t, -t)


@triton.jit
def bound_like(x, bound: tl.constexpr):
    """``bound`` in x's dtype: a float constexpr in tl.minimum / tl.maximum or a comparison is
    a float32 constant, so a float64 clamp to 0.1 clamped to float32's 0.1 (off by 1.5e-9) and
    passed the gradient past the bound; a sum with a tensor takes the tensor's dtype."""
    return tl.zeros_like(x) + bound


@triton.jit
def leaky_clamp(x, slope: tl.constexpr, bound: tl.constexpr):
    """clamp(leaky_relu(x, slope), -bound, bound); NaN stays NaN, as in torch.clamp (a GPU's
    min / max return the non-NaN operand by default; the interpreter propagates either way)."""
    y = tl.where(x >= 0, x, x * slope)
    hi = bound_like(y, bound)
    return tl.minimum(tl.maximum(y, -hi, propagate_nan=tl.PropagateNan.ALL), hi,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def leaky_clamp_grad(x, slope: tl.constexpr, bound: tl.constexpr):
    """d/dx of leaky_clamp at x, as autograd of ``activations.naive.leaky_clamp_ref``: the
    clamp passes the gradient on its closed interval, leaky_relu uses slope at x <= 0."""
    y = tl.where(x >= 0, x, x * slope)
    # (zero + c) gives c in x's dtype: a bare literal in tl.where would be fp32; not x * 0.0,
    # which is NaN at x = +-inf (a float16 pre-activation past 65504), where the gradient is 0
    zero = tl.zeros_like(x)
    g = tl.where(x > 0, zero + 1.0, zero + slope)
    hi = bound_like(y, bound)
    return tl.where((y >= -hi) & (y <= hi), g, zero)


@triton.jit
def grid_barrier(counter_ptr, target, ok, flag_ptr, MAX_POLLS: tl.constexpr):
    """Wait until ``*counter_ptr`` reaches ``target`` after adding this program's arrival.

    For persistent kernels whose programs are all resident at once (grid <= one program per
    SM). The counter only grows: barrier k of a group of n programs waits for k * n arrivals,
    so it never needs resetting inside the launch. Every thread's earlier stores are made
    visible before the arrival (CTA barrier, then a release at GPU scope, as in a cooperative-
    groups grid sync), and the acquire poll + CTA barrier order the loads that follow. That
    acquire is what makes other programs' data visible: on sm_90 it compiles to a strong GPU-scope
    load and ``CCTL.IVALL``, which invalidates the SM's L1 at every barrier. The loads' ``.cg``
    (bypass L1) is a hint only: Triton turns small pipelined loads into ``cp.async.ca`` despite
    it (16-bit tiles under 16 bytes, e.g. the bfloat16 LSTM at B <= 16). Never weaken the poll
    to a relaxed or volatile load.

    A barrier that sees no progress for ``MAX_POLLS`` polls (the grid was not co-resident)
    sets ``*flag_ptr`` and returns false instead of hanging; with ``ok`` false it does not wait
    at all, so a failed launch finishes quickly with the flag set. Returns ``ok`` and success.
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while ok & (seen < target) & (polls < MAX_POLLS):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    passed = ok & (seen >= target)
    if not passed:
        tl.atomic_xchg(flag_ptr, 1)
    tl.debug_barrier()
    return passed


@triton.jit
def barrier_slots(sync_ptr):
    """This program's barrier counter (one per batch block: grid axis 0), the launch's timeout
    flag (after the counters) and the number of programs that meet at each barrier (axis 1),
    in a persistent kernel's ``(n_batch_blocks + 1,)`` sync buffer (``_persistent.sync_buffer``)."""
    return sync_ptr + tl.program_id(0), sync_ptr + tl.num_programs(0), tl.num_programs(1)
