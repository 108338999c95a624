"""The CUDA Z-forcing chain kernels (csrc/chain_kernels.cu) run on the CPU: the same source
compiled by g++ with -DZF_CPU_EMULATION (blocks = groups of std::threads, __syncthreads / grid
sync = std::barrier), called through the real autograd glue
(zf_kernels/ops/recurrence/_cuda_function.py), against the float64 torch reference: all five
outputs and the gradients of all twelve inputs from one backward with random, non-uniform
output gradients, float64 and float32, on odd shapes split over several blocks (partial and
empty slices), with every buffer the kernels write pre-filled with NaN and inputs on both sides
of every clamp. A build without the grid sync must fail (the tests have teeth). Nothing here
says anything about a GPU run."""
import functools
import math

import pytest
import torch

import _cuda_emulation as emu
from _helpers import errors_vs_float64, NaNFilledChainKernels, put_on_clamp_ends, put_on_leaky_kink, rel_err
from zf_kernels import ops
from zf_kernels.ops.recurrence._cuda_function import run_chain
from zf_kernels.ops.recurrence.naive import ACT_CLAMP, LEAKY_SLOPE, PARAM_CLAMP, mlp_act, zforcing_chain_ref

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

# max |x - ref| / max |ref| against the float64 reference (as tests/test_triton_chain.py)
TOL = {torch.float64: 1e-11, torch.float32: 1e-4}
NAMES = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
         "weight_gz", "bias_gz", "weight_iz", "weight_hh")
OUT_NAMES = ("h", "c", "z", "mu_q", "logvar_q")

# (T, B, H, M, Z, G), units per block, threads per block, smem squeezed, clamps checked
CASES = {
    # 5 blocks (the last LSTM slice has 1 of 3 units; M=7 -> 2 per block, the last block none),
    # 8 threads: 2 threads per register tile splitting K in the W_hh products
    "T4 B3 H13 M7 Z5 G6 5 blocks": ((4, 3, 13, 7, 5, 6), 3, 8, False, True),
    # T=1, B=1 (3 of 4 tile rows padding), 3 blocks, the last without latent units
    "T1 B1 H5 M3 Z2 G3 3 blocks": ((1, 1, 5, 3, 2, 3), 2, 4, False, False),
    # shared memory squeezed: only the W_hh slice resident (the others read from global memory)
    # and activations staged in 32-wide chunks
    "T3 B5 H37 M11 Z6 G9 squeezed": ((3, 5, 37, 11, 6, 9), 8, 16, True, True),
    # more register tiles than threads: each thread loops over several
    "T3 B9 H11 M9 Z7 G5 tiles>threads": ((3, 9, 11, 9, 7, 5), 4, 4, False, True),
    # the GPU's default launch at the TIMIT batch (256 threads, 8 units per block, B=32)
    "T3 B32 H24 M20 Z12 G10 GPU launch": ((3, 32, 24, 20, 12, 10), 8, 256, False, True),
}


def make_inputs(T, B, H, M, Z, G, seed=0):
    """float64 leaves; at this scale the posterior pre-activations exceed +3 and -9 and the
    parameters +-8 for a good fraction of entries (tests/test_triton_chain.py's make_inputs)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * sc).requires_grad_()

    return [r(T, B, 4 * H), r(T, B, M, sc=5.0), r(T, B, Z), r(B, H, sc=0.5), r(B, H),
            r(M, H, sc=2.0 / H ** 0.5), r(2 * Z, M, sc=6.0 / M ** 0.5), r(2 * Z, sc=2.0),
            r(G, Z, sc=0.5 / Z ** 0.5), r(G), r(4 * H, G, sc=1.0 / G ** 0.5), r(4 * H, H, sc=1.0 / H ** 0.5)]


def clamp_activity(args, h):
    _, post_x, _, h0, _, w_qh, w_q2, b_q2, *_ = [a.detach() for a in args]
    s = torch.cat([h0[None], h.detach()[:-1]]) @ w_qh.t() + post_x
    p = mlp_act(s) @ w_q2.t() + b_q2
    lo = -ACT_CLAMP / LEAKY_SLOPE
    frac = lambda m: m.double().mean().item()  # noqa: E731
    return {"s_clamped_hi": frac(s > ACT_CLAMP), "s_clamped_lo": frac(s < lo), "s_leaky": frac((s > lo) & (s < 0)),
            "s_linear": frac((s > 0) & (s < ACT_CLAMP)), "p_above": frac(p > PARAM_CLAMP),
            "p_below": frac(p < -PARAM_CLAMP), "p_inside": frac(p.abs() < PARAM_CLAMP)}


def _kernels(lib, dtype, shape, units, threads, squeezed, backward_lib=None):
    T, B, H, M, Z, G = shape
    es = torch.tensor([], dtype=dtype).element_size()
    limits = []
    for bwd in (False, True):
        p = emu.chain_plan(lib, bwd, B, H, M, Z, es, emu.ZfChainLaunch(threads, units, 0, 0))
        assert p.blocks == math.ceil(H / units) and p.resident == 15
        if not squeezed:
            limits.append(0)
            continue
        # room for the W_hh slice and one 32-wide chunk only
        bp = p.row_groups_b * 4
        limit = p.w_bytes[0] + p.part_bytes + p.state_bytes + p.pre_bytes + bp * 36 * es + 8
        q = emu.chain_plan(lib, bwd, B, H, M, Z, es, emu.ZfChainLaunch(threads, units, limit, 0))
        assert q.resident == 1 and q.kc == 32 < max(q.k), (q.resident, q.kc, list(q.k))
        limits.append(limit)
    fwd = emu.EmulatedChainKernels(lib, threads, units, limits[0])
    bwd = emu.EmulatedChainKernels(backward_lib or lib, threads, units, limits[1])
    return _Directions(fwd, bwd)


class _Directions:
    def __init__(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd

    def forward(self, *a):
        self.fwd.forward(*a)

    def backward(self, *a):
        self.bwd.backward(*a)


def _errors(kernels, shape, dtype, seed=0, check_clamps=True, prepare=None):
    """{name: error} of the emulated kernels in dtype against the float64 reference; ``prepare``
    edits the float64 inputs in place first (e.g. _helpers.put_on_clamp_ends)."""
    args64 = make_inputs(*shape, seed=seed)
    if prepare is not None:
        prepare(args64)
    ref = functools.partial(ops.zforcing_chain, backend="torch")
    if check_clamps:
        act = clamp_activity(args64, ref(*args64).h)
        assert all(v > 0 for v in act.values()), f"inputs do not exercise both sides of the clamps: {act}"
    return errors_vs_float64(functools.partial(run_chain, kernels), ref, args64, OUT_NAMES, NAMES, dtype, seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_emulated_chain_matches_torch(case, dtype):
    shape, units, threads, squeezed, check_clamps = CASES[case]
    kernels = NaNFilledChainKernels(_kernels(emu.chain_library(), dtype, shape, units, threads, squeezed))
    errs = _errors(kernels, shape, dtype, check_clamps=check_clamps)
    bad = {k: v for k, v in errs.items() if not v < TOL[dtype]}
    assert not bad, f"{case}: {bad}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_emulated_chain_clamps_pass_the_gradient_at_their_ends(dtype, min_norm_torch_clamp):
    """Pre-activations exactly at -9 and 3 and parameters exactly at -8 and 8 (put_on_clamp_ends):
    zf_kernels' clamps pass the gradient on their closed intervals, the reference's too with
    torch.clamp giving 0 there (torch >= 2.14's rule, the fixture); an open interval in a kernel
    shows."""
    shape, units, threads, squeezed, _ = CASES["T4 B3 H13 M7 Z5 G6 5 blocks"]
    kernels = NaNFilledChainKernels(_kernels(emu.chain_library(), dtype, shape, units, threads, squeezed))
    errs = _errors(kernels, shape, dtype, check_clamps=False, prepare=put_on_clamp_ends)
    bad = {k: v for k, v in errs.items() if not v < TOL[dtype]}
    assert not bad, bad


def test_cuda_emulated_chain_leaky_kink_at_zero_passes_the_slope():
    """A posterior pre-activation exactly 0 (h0 = 0 and post_x[0, :, 2] = 0, on top of
    put_on_clamp_ends): LeakyReLU's gradient there is the slope, 1/3, as torch's leaky_relu gives
    it (``x > 0`` passes g, ``x <= 0`` g / 3); a kernel testing ``x >= 0`` passes g, three times
    too much, for that column of grad post_x."""
    shape, units, threads, squeezed, _ = CASES["T4 B3 H13 M7 Z5 G6 5 blocks"]
    kernels = NaNFilledChainKernels(_kernels(emu.chain_library(), torch.float64, shape, units, threads, squeezed))

    errs = _errors(kernels, shape, torch.float64, check_clamps=False, prepare=put_on_leaky_kink)
    bad = {k: v for k, v in errs.items() if not v < TOL[torch.float64]}
    assert not bad, bad


def test_cuda_emulated_chain_second_backward_through_retained_graph():
    """The backward kernel overwrites the saved pre-activations: a second backward rebuilds them."""
    shape, units, threads, squeezed, _ = CASES["T4 B3 H13 M7 Z5 G6 5 blocks"]
    kernels = _kernels(emu.chain_library(), torch.float64, shape, units, threads, squeezed)
    args = make_inputs(*shape)
    out = run_chain(kernels, *args)
    gs = [torch.randn_like(o) for o in out]
    first = torch.autograd.grad(out, args, gs, retain_graph=True)
    second = torch.autograd.grad(out, args, gs)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cuda_emulated_chain_unused_outputs_have_zero_gradient():
    """Only h reaches the loss: the other outputs' gradients arrive as None (zeros)."""
    shape, units, threads, squeezed, _ = CASES["T4 B3 H13 M7 Z5 G6 5 blocks"]
    kernels = _kernels(emu.chain_library(), torch.float64, shape, units, threads, squeezed)
    args = make_inputs(*shape)
    got = torch.autograd.grad(run_chain(kernels, *args)[0].sum(), args)
    ref = torch.autograd.grad(zforcing_chain_ref(*args).h.sum(), args)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-9, name


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_cuda_emulated_chain_without_grid_sync_fails(direction):
    """Teeth: with the grid sync compiled out (blocks run one after another, each still syncing
    its own threads) the comparison fails, in the forward and in the backward kernel."""
    shape, units, threads, squeezed, _ = CASES["T4 B3 H13 M7 Z5 G6 5 blocks"]
    good, broken = emu.chain_library(), emu.chain_library((emu.NO_GRID_SYNC,))
    if direction == "forward":
        kernels = _kernels(broken, torch.float64, shape, units, threads, squeezed)
    else:
        kernels = _kernels(good, torch.float64, shape, units, threads, squeezed, backward_lib=broken)
    try:
        errs = _errors(NaNFilledChainKernels(kernels), shape, torch.float64, check_clamps=False)
    except AssertionError as exc:      # non-finite (NaN-prefilled, never written) values
        assert "non-finite" in str(exc)
        return
    outs = [errs[n] for n in OUT_NAMES]
    if direction == "backward":   # the forward was the good one
        assert max(outs) < 1e-9
        assert max(v for k, v in errs.items() if k.startswith("grad")) > 1e-3, errs
    else:
        assert max(outs) > 1e-3, errs


# ------------------------------------------------------------------------ the launch plan
# H100 / H200: 132 SMs (H100 PCIe: 114), 227 KB of opt-in shared memory per block
SMEM_OPTIN = 232448


@pytest.mark.parametrize("sms", [132, 114])
@pytest.mark.parametrize("Z", [256, 128], ids=["TIMIT Z256", "SeqMNIST Z128"])
def test_cuda_chain_plan_fits_the_design_shapes_in_float32(Z, sms):
    """B32 H1024 M512 G512 (DESIGN s.1-2): one block per SM; the W_hh slice and (forward) the
    folded W_iz W_gz slice resident in shared memory, in both directions."""
    lib = emu.chain_library()
    B, H, M = 32, 1024, 512
    for bwd in (False, True):
        p = emu.chain_plan(lib, bwd, B, H, M, Z, 4, emu.ZfChainLaunch(256, 0, SMEM_OPTIN, sms))
        assert p.blocks <= sms and p.blocks * p.units_per_block >= H
        assert p.blocks * p.m_per_block >= M and p.blocks * p.z_per_block >= Z
        assert p.smem_bytes <= SMEM_OPTIN and p.kc >= 32
        assert p.resident & 1 and p.w_bytes[0] >= 4 * p.units_per_block * H * 4
        if not bwd:
            assert p.resident & 2, "the W_iz W_gz slice must be resident"


@pytest.mark.parametrize("B,H,M,Z,es,what", [(32, 4096, 512, 256, 4, "float32"), (32, 1024, 512, 256, 8, "float64"),
                                             (4096, 256, 64, 32, 4, "float32")])
def test_cuda_chain_plan_names_the_shape_that_does_not_fit(B, H, M, Z, es, what):
    lib = emu.chain_library()
    for bwd in (False, True):
        with pytest.raises(emu.EmulationError) as info:
            emu.chain_plan(lib, bwd, B, H, M, Z, es, emu.ZfChainLaunch(256, 0, SMEM_OPTIN, 132))
        assert info.value.code == 1
        msg = str(info.value)
        assert f"B={B}, H={H}, M={M}, Z={Z}" in msg and what in msg and "shared memory" in msg
        assert "bytes" in msg and "backend=" in msg
