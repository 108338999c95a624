"""The CUDA LSTM's and Z-forcing chain's TF32 tensor-core tiles (csrc/lstm_kernels.cu,
csrc/chain_kernels.cu with ZfLstmLaunch / ZfChainLaunch::tf32: mma.sync m16n8k8 per warp,
csrc/zf_device.h, zf_persistent.h's mma_tile_tf32) run on the CPU: the emulation computes each lane's
accumulator elements from all 32 lanes' fragment registers, as the GPU does, so a misplaced
fragment element, a wrong partial-sum layout or missing zero padding shows here. Compared with a
float64 reference whose recurrent products round their operands to TF32 where the kernels do
(tests/_tf32_reference.py): what remains is float32 accumulation (~1e-7), while the IEEE kernels
are ~1e-4 away from that reference (so the bound also shows that the rounding happens). What
this does not show: the hardware's instruction on a GPU (tests/test_cuda_lstm.py does)."""
import math

import pytest
import torch

import _cuda_emulation as emu
import test_cuda_emulation_chain as emu_chain
from _helpers import NaNFilledChainKernels, NaNFilledLSTMKernels
from _tf32_reference import lstm_tf32_ref, to_tf32, zforcing_chain_tf32_ref
from test_cuda_emulation import _Directions
from zf_kernels import ops
from zf_kernels.ops.lstm._cuda_function import run_lstm
from zf_kernels.ops.recurrence._cuda_function import run_chain

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

# max over outputs and gradients of ||got - ref|| / ||ref||; measured <= 6.1e-7 (IEEE kernels: >= 5.8e-5)
BOUND = 1e-5

# (T, B, I, H, units per block, threads, chunked): what each exercises
CASES = {
    # B < 16 (11 padding rows of the batch tile), K = 13 padded to 16, 3 tiles on 2 warps (a warp
    # loops over items), 3 blocks, the last with 3 of its 5 units
    "T4 B5 H13 2 warps": (4, 5, 3, 13, 5, 64, False),
    # two batch tiles, 8 warps: ksplit 2 forward (K steps dealt to two warps per tile), 4 backward
    "T3 B19 H11 ksplit": (3, 19, 2, 11, 4, 256, False),
    # the staged operand in 32-wide chunks (K = 37 forward: 32 + 5 padded to 8; 148 backward), one warp
    "T3 B17 H37 chunked": (3, 17, 2, 37, 16, 32, True),
    # T = 1, B = 1, no partial chunk: the smallest grid
    "T1 B1 H8 1 warp": (1, 1, 2, 8, 4, 32, False),
    # the GPU's default launch at the TIMIT batch: 8 units per block, 8 warps, B = 32 (two whole
    # batch tiles, no padding rows)
    "T3 B32 H24 GPU launch": (3, 32, 5, 24, 8, 256, False),
}


def _inputs(T, B, I, H, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).float().requires_grad_()

    args = [r(T, B, I), r(4 * H, I, scale=0.5), r(4 * H, H, scale=1.0 / math.sqrt(H)), r(4 * H, scale=0.3),
            r(4 * H, scale=0.3), r(B, H, scale=0.5), r(B, H, scale=0.5)]
    grads = [torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)]
    return args, grads


def _limits(lib, B, H, units, threads, chunked):
    """Shared-memory limits (forward, backward) that force 32-wide K chunks, or 0 (no limit)."""
    # a 32-wide float32 chunk with TF32 padding: 64 + 4 columns of room (the planner's rule)
    return emu.chunked_limits(lib, B, H, units, threads, 4, 1, 4 * (64 + 4)) if chunked else (0, 0)


def _errors(case, reverse, tf32=True):
    T, B, I, H, units, threads, chunked = CASES[case]
    lib = emu.library()
    args, grads = _inputs(T, B, I, H)
    limits = _limits(lib, B, H, units, threads, chunked)
    kernels = NaNFilledLSTMKernels(_Directions(*(emu.EmulatedKernels(lib, threads, units, lim, tf32=tf32) for lim in limits)))
    out, (h, c) = run_lstm(kernels, *args, reverse=reverse)
    got = [out, h, c, *torch.autograd.grad([out, h, c], args, grads)]
    args64 = [a.detach().double().requires_grad_() for a in args]
    out, (h, c) = lstm_tf32_ref(*args64, reverse=reverse)
    ref = [out, h, c, *torch.autograd.grad([out, h, c], args64, [g.double() for g in grads])]
    names = ["out", "h_T", "c_T", "x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"]
    return {n: ((a.double() - b).norm() / b.norm()).item() for n, a, b in zip(names, got, ref)}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", list(CASES))
def test_tf32_tiles_match_the_tf32_rounded_reference(case, reverse):
    errs = _errors(case, reverse)
    assert max(errs.values()) < BOUND, {k: f"{v:.1e}" for k, v in errs.items()}


def test_ieee_kernels_miss_the_tf32_bound():
    """Teeth: the IEEE tiles (no operand rounding) are far outside BOUND of the rounded reference."""
    errs = _errors("T3 B19 H11 ksplit", False, tf32=False)
    assert min(errs.values()) > 3 * BOUND, {k: f"{v:.1e}" for k, v in errs.items()}


def test_to_tf32_rounds_to_nearest_ties_away():
    one_ulp = 2.0 ** -10                      # TF32's spacing at 1.0
    x = torch.tensor([1.0, 1 + one_ulp / 2, 1 + one_ulp / 2 - 2 ** -23, -(1 + one_ulp / 2), 1 + 3 * one_ulp / 4])
    assert to_tf32(x).tolist() == [1.0, 1 + one_ulp, 1.0, -(1 + one_ulp), 1 + one_ulp]
    special = to_tf32(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert special[0].isnan() and special[1:].tolist() == [float("inf"), -float("inf")]


# ------------------------------------------------------------------------ the chain
# (T, B, H, M, Z, G), units per block, threads, squeezed (only W_hh resident: the other three
# slices' fragments read from global memory, W^T with a K stride backward; 32-wide chunks)
CHAIN_CASES = {
    "T4 B5 H13 M7 Z5 G6 2 warps": ((4, 5, 13, 7, 5, 6), 3, 64, False),
    "T3 B19 H11 M9 Z7 G5 8 warps": ((3, 19, 11, 9, 7, 5), 4, 256, False),
    "T3 B17 H37 M11 Z6 G9 squeezed 1 warp": ((3, 17, 37, 11, 6, 9), 8, 32, True),
    "T3 B32 H24 M20 Z12 G10 GPU launch": ((3, 32, 24, 20, 12, 10), 8, 256, False),
}
# ||got - ref|| / ||ref||, max over outputs and gradients: measured <= 2.2e-6 (IEEE: >= 1e-4)
CHAIN_BOUND = 1e-5


def _chain_inputs(T, B, H, M, Z, G, seed=0):
    """Mild inputs (the clamps mostly inactive; the IEEE tests cover them): float32 leaves."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * sc).float().requires_grad_()

    args = [r(T, B, 4 * H), r(T, B, M, sc=0.5), r(T, B, Z), r(B, H, sc=0.5), r(B, H), r(M, H, sc=H ** -0.5),
            r(2 * Z, M, sc=M ** -0.5), r(2 * Z, sc=0.3), r(G, Z, sc=Z ** -0.5), r(G, sc=0.3),
            r(4 * H, G, sc=G ** -0.5), r(4 * H, H, sc=H ** -0.5)]
    grads = [torch.randn(T, B, n, generator=g) for n in (H, H, Z, Z, Z)]
    return args, grads


def _chain_limits(lib, shape, units, threads, squeezed):
    if not squeezed:
        return 0, 0
    T, B, H, M, Z, G = shape
    limits = []
    for bwd in (False, True):
        p = emu.chain_plan(lib, bwd, B, H, M, Z, 4, emu.ZfChainLaunch(threads, units, 0, 0, 1))
        limit = p.w_bytes[0] + p.part_bytes + p.state_bytes + p.pre_bytes + p.row_groups_b * 16 * 36 * 4 + 8
        q = emu.chain_plan(lib, bwd, B, H, M, Z, 4, emu.ZfChainLaunch(threads, units, limit, 0, 1))
        assert q.mma == 1 and q.resident == 1 and q.kc == 32 < max(q.k), (q.mma, q.resident, q.kc)
        limits.append(limit)
    return tuple(limits)


def _chain_errors(case, tf32=True):
    shape, units, threads, squeezed = CHAIN_CASES[case]
    lib = emu.chain_library()
    args, grads = _chain_inputs(*shape)
    kernels = NaNFilledChainKernels(emu_chain._Directions(*(
        emu.EmulatedChainKernels(lib, threads, units, lim, tf32=tf32)
        for lim in _chain_limits(lib, shape, units, threads, squeezed))))
    outs = run_chain(kernels, *args)
    got = [*outs, *torch.autograd.grad(outs, args, grads)]
    args64 = [a.detach().double().requires_grad_() for a in args]
    outs = zforcing_chain_tf32_ref(*args64)
    ref = [*outs, *torch.autograd.grad(outs, args64, [g.double() for g in grads])]
    names = emu_chain.OUT_NAMES + tuple("grad " + n for n in emu_chain.NAMES)
    return {n: ((a.double() - b).norm() / b.norm()).item() for n, a, b in zip(names, got, ref)}


@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_chain_tf32_tiles_match_the_tf32_rounded_reference(case):
    errs = _chain_errors(case)
    assert max(errs.values()) < CHAIN_BOUND, {k: f"{v:.1e}" for k, v in errs.items()}


def test_chain_ieee_kernels_miss_the_tf32_bound():
    errs = _chain_errors("T3 B19 H11 M9 Z7 G5 8 warps", tf32=False)
    assert min(errs.values()) > 3 * CHAIN_BOUND, {k: f"{v:.1e}" for k, v in errs.items()}


# ------------------------------------------------------------------------ 3xTF32
# each operand split into two TF32 parts, three MMAs: against the plain float64 reference, as the
# IEEE kernels (measured: 3xTF32 <= 4.5e-7, IEEE <= 3.4e-7, one TF32 pass >= 1.8e-4)
X3_BOUND = 2e-6


def _plain_errors(run, ref, args, grads):
    got_out = run(*args)
    got = [*got_out, *torch.autograd.grad(got_out, args, grads)]
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref_out = ref(*args64)
    want = [*ref_out, *torch.autograd.grad(ref_out, args64, [g.double() for g in grads])]
    return [((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, want)]


def _lstm_flat_ref(*a):
    out, (h, c) = ops.lstm(*a, backend="torch")
    return out, h, c


def _lstm_flat(kernels):
    def run(*a):
        out, (h, c) = run_lstm(kernels, *a)
        return out, h, c
    return run


@pytest.mark.parametrize("passes,within", [(3, True), (1, False)], ids=["3xTF32", "TF32 misses it"])
@pytest.mark.parametrize("case", ["T3 B19 H11 ksplit", "T3 B17 H37 chunked"])
def test_lstm_3xtf32_tiles_reach_float32_accuracy(case, passes, within):
    T, B, I, H, units, threads, chunked = CASES[case]
    args, grads = _inputs(T, B, I, H)
    kernels = emu.EmulatedKernels(emu.library(), threads, units, tf32=passes)
    errs = _plain_errors(_lstm_flat(kernels), _lstm_flat_ref, args, grads)
    assert (max(errs) < X3_BOUND) is within, [f"{e:.1e}" for e in errs]


@pytest.mark.parametrize("passes,within", [(3, True), (1, False)], ids=["3xTF32", "TF32 misses it"])
@pytest.mark.parametrize("case", ["T3 B19 H11 M9 Z7 G5 8 warps", "T3 B17 H37 M11 Z6 G9 squeezed 1 warp"])
def test_chain_3xtf32_tiles_reach_float32_accuracy(case, passes, within):
    shape, units, threads, squeezed = CHAIN_CASES[case]
    lib = emu.chain_library()
    args, grads = _chain_inputs(*shape)
    kernels = emu_chain._Directions(*(emu.EmulatedChainKernels(lib, threads, units, lim, tf32=passes)
                                      for lim in _chain_limits(lib, shape, units, threads, squeezed)))
    errs = _plain_errors(lambda *a: run_chain(kernels, *a), lambda *a: ops.zforcing_chain(*a, backend="torch"),
                         args, grads)
    assert (max(errs) < X3_BOUND) is within, [f"{e:.1e}" for e in errs]


# ------------------------------------------------------------------------ the launch plan
SMEM_OPTIN = 232448


@pytest.mark.parametrize("sms", [132, 114])
@pytest.mark.parametrize("B,H", [(32, 1024), (32, 512)])
def test_tf32_plan_fits_the_design_targets(B, H, sms):
    """T40 B32 I512 H1024 and T784 B32 I64 H512 with the tensor-core tiles: one block per SM,
    W_hh resident, 16 x 8 tiles shared by the block's 8 warps."""
    lib = emu.library()
    for bwd in (False, True):
        p = emu.plan(lib, bwd, B, H, 4, emu.ZfLstmLaunch(256, 0, SMEM_OPTIN, sms, 1))
        assert p.mma == 1 and p.blocks <= sms and p.smem_bytes <= SMEM_OPTIN and p.kc >= 32
        assert p.row_groups_b == 2 and p.row_groups_b * p.row_groups_m * p.ksplit >= 8
        assert p.w_stride % 32 == 4 and p.a_stride % 32 == 4   # conflict-free fragment loads


def test_tf32_plan_needs_whole_warps_and_leaves_float64_ieee():
    lib = emu.library()
    with pytest.raises(emu.EmulationError, match="multiple of 32, got 48") as info:
        emu.plan(lib, False, 4, 16, 4, emu.ZfLstmLaunch(48, 0, 0, 0, 1))
    assert info.value.code == 1
    assert emu.plan(lib, False, 4, 16, 8, emu.ZfLstmLaunch(48, 0, 0, 0, 1)).mma == 0
    assert emu.plan(lib, False, 4, 16, 4, emu.ZfLstmLaunch(64, 0, 0, 0, 0)).mma == 0


@pytest.mark.parametrize("sms", [132, 114])
@pytest.mark.parametrize("Z", [256, 128])
def test_chain_tf32_plan_fits_the_design_targets(Z, sms):
    """The TIMIT and Sequential-MNIST chains (B32 H1024 M512 G512) with the tensor-core tiles:
    one block per SM, W_hh resident, 16 x 8 tiles."""
    lib = emu.chain_library()
    for bwd in (False, True):
        p = emu.chain_plan(lib, bwd, 32, 1024, 512, Z, 4, emu.ZfChainLaunch(256, 0, SMEM_OPTIN, sms, 1))
        assert p.mma == 1 and p.blocks <= sms and p.smem_bytes <= SMEM_OPTIN and p.resident & 1
        assert p.row_groups_b == 2 and p.a_stride % 32 == 4


def test_chain_tf32_plan_needs_whole_warps():
    with pytest.raises(emu.EmulationError, match="multiple of 32, got 40"):
        emu.chain_plan(emu.chain_library(), True, 4, 16, 8, 4, 4, emu.ZfChainLaunch(40, 0, 0, 0, 1))


def test_tf32_setting_must_be_ieee_tf32_or_3xtf32():
    assert emu.plan(emu.library(), False, 4, 16, 4, emu.ZfLstmLaunch(64, 0, 0, 0, 3)).mma == 3
    with pytest.raises(emu.EmulationError, match=r"must be 0 \(IEEE\), 1 \(TF32\) or 3 \(3xTF32\), got 2"):
        emu.plan(emu.library(), False, 4, 16, 4, emu.ZfLstmLaunch(64, 0, 0, 0, 2))
    with pytest.raises(emu.EmulationError, match="got 2"):
        emu.chain_plan(emu.chain_library(), False, 4, 16, 8, 4, 4, emu.ZfChainLaunch(64, 0, 0, 0, 2))
