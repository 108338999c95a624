"""The CUDA LSTM and Z-forcing chain in bfloat16 (csrc/ with bfloat16 storage: weights,
activations, pre-activations and gradients in bfloat16, products on mma.sync m16n8k16 bf16 tiles
with float32 accumulation, the cell states in float32) run on the CPU in the emulation, whose
zf_mma_bf16 computes each lane's accumulators from all 32 lanes' packed bf16 registers as the GPU
does.

Kernel level, step by step (the chain: stage by stage): each stored value is compared with a
float64 step taken from the kernels' own stored inputs to it (h_{t-1}, dgates_{t+1}, ...), so
rounding to bf16 does not compound and the bound can be tight: a stored bf16 value within half a
bf16 ulp (2^-8 relative) of the exact value, plus float32 accumulation error. A misplaced fragment
element, a missing zero pad (K steps of 16) or a stale chunk is off by O(1). End to end (run_lstm,
run_chain, the torch GEMMs around the kernels in bf16): no worse than the eager reference run in
bfloat16. What this does not show: the instruction on a GPU (tests/test_cuda_lstm.py and
tests/test_cuda_chain.py do)."""
import math

import pytest
import torch

import _cuda_emulation as emu
from _helpers import assert_no_worse_than_eager, NaNFilledChainKernels, smooth_chain_inputs
from test_cuda_emulation import _Directions
from zf_kernels import ops
from zf_kernels.ops.lstm._cuda_function import run_lstm

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

HALF_ULP = 2.0 ** -8           # bf16 round-to-nearest: |stored - exact| <= 2^-8 |exact|
ACC_TOL = 1e-5                 # float32 accumulation, relative to the largest element

# (T, B, H, units per block, threads, chunked): what each exercises
CASES = {
    # B < 16 (11 padding rows), K = 13 padded to 16 forward, 52 -> 64 backward, 3 tiles on 2 warps,
    # 3 blocks, the last with 3 of its 5 units
    "T4 B5 H13 2 warps": (4, 5, 13, 5, 64, False),
    # two batch tiles, 8 warps: the K steps of 16 split among warps sharing a tile
    "T3 B19 H11 ksplit": (3, 19, 11, 4, 256, False),
    # 32-wide chunks: K = 37 forward (32 + 5 padded to 16: W's zero padding past K), 148 backward
    "T3 B17 H37 chunked": (3, 17, 37, 16, 32, True),
    # T = 1, B = 1
    "T1 B1 H8 1 warp": (1, 1, 8, 4, 32, False),
    # the GPU's default launch at the TIMIT batch: 8 units per block, 8 warps, B = 32
    "T3 B32 H24 GPU launch": (3, 32, 24, 8, 256, False),
}


def _limits(lib, B, H, units, threads, chunked):
    """Shared-memory limits (forward, backward) that force 32-wide K chunks, or 0 (no limit)."""
    # a 32-wide bf16 chunk: 32 + 64 (rounding) + 8 (padding) columns of room
    return emu.chunked_limits(lib, B, H, units, threads, 2, 0, 2 * (32 + 64 + 8)) if chunked else (0, 0)


def _kernel_inputs(T, B, H, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, dtype=torch.bfloat16):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    return dict(gx=r(T, B, 4 * H), h0=r(B, H, scale=0.5), w=r(4 * H, H, scale=1.5 / math.sqrt(H)),
                c0=r(B, H, scale=0.5, dtype=torch.float32), d_out=r(T, B, H), d_hT=r(B, H),
                dc=r(B, H, dtype=torch.float32))


def _within_rounding(got, exact, what, acc_tol=ACC_TOL):
    """got (bf16 stored) within half a bf16 ulp of the float64 `exact`, plus accumulation error."""
    err = (got.double() - exact).abs()
    tol = HALF_ULP * exact.abs() + acc_tol * exact.abs().max()
    worst = (err - tol).max().item()
    assert worst <= 0, f"{what}: {(err / exact.abs().max()).max().item():.2e} of max|ref| beyond rounding"


def run_kernels(fwd, bwd, T, B, H, reverse, device="cpu"):
    """One forward and one backward launch of bfloat16 LSTM kernels (the emulated ones or the
    extension's) on random inputs, outputs pre-filled with NaN: (inputs, out, z, c_all, dgates, dc_0)."""
    x = _kernel_inputs(T, B, H, device)
    gates = x["gx"].clone()
    out = torch.full((T, B, H), float("nan"), dtype=torch.bfloat16, device=device)
    c_all = torch.full((T + 1, B, H), float("nan"), device=device)
    c_all[0] = x["c0"]
    fwd.forward(gates, x["h0"], x["w"], out, c_all, reverse)
    z = gates.clone()
    dc = x["dc"].clone()
    bwd.backward(x["d_out"], x["d_hT"], x["w"], gates, c_all, dc, reverse)
    return x, out, z, c_all, gates, dc


def _run_case(case, reverse):
    T, B, H, units, threads, chunked = CASES[case]
    lib = emu.library()
    fwd, bwd = (emu.EmulatedKernels(lib, threads, units, lim) for lim in _limits(lib, B, H, units, threads, chunked))
    return run_kernels(fwd, bwd, T, B, H, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", list(CASES))
def test_bf16_kernels_store_each_step_within_bf16_rounding(case, reverse):
    check_each_step(*_run_case(case, reverse), reverse)


def check_each_step(x, out, z, c_all, dgates, dc0, reverse, acc_tol=ACC_TOL):
    """Every stored value of run_kernels' launches against a float64 step from the kernels' own
    previous outputs: bf16 values within rounding (_within_rounding), float32 ones within acc_tol."""
    x = {k: v.cpu() for k, v in x.items()}
    out, z, c_all, dgates, dc0 = (v.cpu() for v in (out, z, c_all, dgates, dc0))
    T = out.shape[0]
    w = x["w"].double()
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    # forward, each step from the kernel's own h_{t-1} and c_{t-1}
    for s, t in enumerate(order):
        h_prev = x["h0"].double() if s == 0 else out[order[s - 1]].double()
        zt = x["gx"][t].double() + h_prev @ w.t()
        _within_rounding(z[t], zt, f"pre-activations, step {s}", acc_tol)
        i, f, g, o = zt.chunk(4, -1)
        c = torch.sigmoid(f) * c_all[s].double() + torch.sigmoid(i) * torch.tanh(g)
        assert torch.allclose(c_all[s + 1].double(), c, rtol=acc_tol, atol=acc_tol * c.abs().max().item()), s
        _within_rounding(out[t], torch.sigmoid(o) * torch.tanh(c), f"h, step {s}", acc_tol)
    # backward, each step from the kernel's own dgates of the step after it and its saved z, c
    dc = x["dc"].double()
    for s in range(T - 1, -1, -1):
        t = order[s]
        dh = x["d_out"][t].double() + (x["d_hT"].double() if s == T - 1 else dgates[order[s + 1]].double() @ w)
        zt = z[t].double()
        i, f, g, o = zt.chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        tc = torch.tanh(c_all[s + 1].double())
        dc = dc + dh * o * (1 - tc * tc)
        want = torch.cat([dc * g * i * (1 - i), dc * c_all[s].double() * f * (1 - f), dc * i * (1 - g * g),
                          dh * tc * o * (1 - o)], dim=-1)
        _within_rounding(dgates[t], want, f"dgates, step {s}", acc_tol)
        dc = dc * f
    assert torch.allclose(dc0.double(), dc, rtol=acc_tol, atol=acc_tol * dc.abs().max().item())


def test_the_step_check_catches_one_wrong_product_term():
    """Teeth: one weight element off by 1 (one product term per row of the batch) fails the check."""
    x, out, z, c_all, *_ = _run_case("T3 B19 H11 ksplit", False)
    bad = x["w"].double().clone()
    bad[5, 3] += 1.0
    zt = x["gx"][0].double() + x["h0"].double() @ bad.t()
    with pytest.raises(AssertionError):
        _within_rounding(z[0], zt, "pre-activations with a corrupted weight")


def test_bf16_plan_halves_the_resident_weights_and_pads_for_conflict_free_fragments():
    lib = emu.library()
    for bwd in (False, True):
        p32 = emu.plan(lib, bwd, 32, 1024, 4, emu.ZfLstmLaunch(256, 8, 0, 132, 1))
        p16 = emu.plan(lib, bwd, 32, 1024, 2, emu.ZfLstmLaunch(256, 8, 0, 132, 0))
        assert p16.mma == 1 and p16.blocks == p32.blocks == 128
        assert p16.w_stride % 64 == 8 and p16.a_stride % 64 == 8    # 4 mod 32 words: no bank conflicts
        assert p16.w_bytes < 0.55 * p32.w_bytes
        # fewer staged chunks per step (each costs two block barriers): 1 instead of 2 forward
        # (h_{t-1}, K = 1024), 2 instead of 6 backward (dgates, K = 4096)
        assert math.ceil(p16.k / p16.kc) == (2 if bwd else 1) < math.ceil(p32.k / p32.kc)


def test_bf16_needs_whole_warps():
    with pytest.raises(emu.EmulationError, match="bfloat16 tensor-core tiles need whole warps"):
        emu.plan(emu.library(), False, 4, 16, 2, emu.ZfLstmLaunch(48, 4, 0, 0, 0))


# ------------------------------------------------------------------------ end to end
def _lstm_args(T, B, I, H, seed=1):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).bfloat16().requires_grad_()

    args = [r(T, B, I), r(4 * H, I, scale=0.5), r(4 * H, H, scale=1.0 / math.sqrt(H)), r(4 * H, scale=0.3),
            r(4 * H, scale=0.3), r(B, H, scale=0.5), r(B, H, scale=0.5)]
    grads = [torch.randn(T, B, H, generator=g).bfloat16(), torch.randn(B, H, generator=g).bfloat16(),
             torch.randn(B, H, generator=g).bfloat16()]
    return args, grads


def _outputs_and_grads(fn, args, grads):
    out, (h, c) = fn(*args)
    return [out, h, c, *torch.autograd.grad([out, h, c], args, grads)]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_bf16_run_lstm_no_worse_than_the_eager_reference_in_bf16(reverse):
    """ops.lstm's contract in bfloat16 through the emulated kernels (the glue's float32 c_all and
    dc, c_T returned in bf16): each output's and gradient's error against float64 at most the
    eager reference's own bf16 error (+ 1e-3); measured: about half of it (2e-3 vs 4e-3 in the
    outputs; the cell state stays float32 here, bfloat16 in the eager run)."""
    T, B, I, H = 5, 7, 6, 13
    args, grads = _lstm_args(T, B, I, H)
    lib = emu.library()
    kernels = _Directions(emu.EmulatedKernels(lib, 64, 5), emu.EmulatedKernels(lib, 64, 5))
    got = _outputs_and_grads(lambda *a: run_lstm(kernels, *a, reverse=reverse), args, grads)
    assert [t.dtype for t in got[:3]] == [torch.bfloat16] * 3
    eager = _outputs_and_grads(lambda *a: ops.lstm(*a, reverse=reverse, backend="torch"), args, grads)
    args64 = [a.detach().double().requires_grad_() for a in args]
    exact = _outputs_and_grads(lambda *a: ops.lstm(*a, reverse=reverse, backend="torch"), args64,
                               [g.double() for g in grads])
    names = ["out", "h_T", "c_T", "x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"]
    assert_no_worse_than_eager(names, got, eager, exact)


# ------------------------------------------------------------------------ the chain in bfloat16
# (T, B, H, M, Z, G), units per block, threads, squeezed (shared memory for W_hh, W_qh and one
# more slice only: forward W_comb, backward W_q2^T read from global memory, K stride M, with the
# K guard; 32-wide chunks)
CHAIN_CASES = {
    "T4 B5 H13 M7 Z5 G6 2 warps": ((4, 5, 13, 7, 5, 6), 3, 64, False),
    "T3 B19 H11 M9 Z7 G5 8 warps": ((3, 19, 11, 9, 7, 5), 4, 256, False),
    "T3 B17 H37 M11 Z6 G9 squeezed 1 warp": ((3, 17, 37, 11, 6, 9), 8, 32, True),
    "T3 B32 H24 M20 Z12 G10 GPU launch": ((3, 32, 24, 20, 12, 10), 8, 256, False),
}


def _chain_limits(lib, shape, units, threads, squeezed):
    if not squeezed:
        return 0, 0
    T, B, H, M, Z, G = shape
    limits = []
    for bwd, missing in ((False, 1), (True, 3)):
        p = emu.chain_plan(lib, bwd, B, H, M, Z, 2, emu.ZfChainLaunch(threads, units, 0, 0, 0))
        limit = p.w_bytes[0] + p.part_bytes + p.state_bytes + p.pre_bytes + p.row_groups_b * 16 * 2 * (32 + 72) + 8
        q = emu.chain_plan(lib, bwd, B, H, M, Z, 2, emu.ZfChainLaunch(threads, units, limit, 0, 0))
        assert q.mma == 1 and not (q.resident >> missing) & 1 and q.kc == 32 < max(q.k), (q.resident, q.kc)
        limits.append(limit)
    return tuple(limits)


@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_bf16_chain_no_worse_than_the_eager_reference_in_bf16(case):
    """ops.zforcing_chain's contract in bfloat16 through the emulated kernels (c kept float32 and
    returned in bf16): every output's and gradient's error against float64 (by norm) at most the
    eager reference's own bf16 error (+ 1e-3), on inputs away from the chain's kinks
    (smooth_chain_inputs). Measured here (6 seeds, these shapes): ours 0.27-1.04x eager's, at
    most 8e-5 above it."""
    import test_cuda_emulation_chain as emu_chain
    from zf_kernels.ops.recurrence._cuda_function import run_chain

    shape, units, threads, squeezed = CHAIN_CASES[case]
    args, grads = smooth_chain_inputs(*shape)
    args = [a.detach().bfloat16().requires_grad_() for a in args]
    grads = [g.bfloat16() for g in grads]
    lib = emu.chain_library()
    kernels = NaNFilledChainKernels(emu_chain._Directions(*(
        emu.EmulatedChainKernels(lib, threads, units, lim) for lim in _chain_limits(lib, shape, units, threads, squeezed))))

    def run(fn, a, g):
        outs = fn(*a)
        return [*outs, *torch.autograd.grad(outs, a, g)]

    got = run(lambda *a: run_chain(kernels, *a), args, grads)
    assert [t.dtype for t in got[:5]] == [torch.bfloat16] * 5
    eager = run(lambda *a: ops.zforcing_chain(*a, backend="torch"), args, grads)
    args64 = [a.detach().double().requires_grad_() for a in args]
    exact = run(lambda *a: ops.zforcing_chain(*a, backend="torch"), args64, [g.double() for g in grads])
    names = emu_chain.OUT_NAMES + tuple("grad " + n for n in emu_chain.NAMES)
    assert_no_worse_than_eager(names, got, eager, exact)


def test_bf16_chain_rounds_ties_to_even():
    """The emulator's float32 -> bfloat16 rounding (zf_bf16_from, as the GPU's
    __float2bfloat16_rn) is to nearest, ties to even, as torch's: with W_q2 = 0 the posterior's mu
    is its bias and logvar 0, so z = mu + eps exactly in float32, here halfway between two
    bfloat16 numbers (1 + 2^-8 and its like). Random inputs never hit a tie; a rounding of ties
    away from zero passes every other bf16 test while the kernels' every store rounds unlike a GPU."""
    import test_cuda_emulation_chain as emu_chain
    from zf_kernels.ops.recurrence._cuda_function import run_chain

    T, B, H, M, Z, G = 1, 2, 5, 3, 3, 3
    mu = torch.tensor([1.0, 1.0 + 2 ** -7, -1.0], dtype=torch.float64)
    eps = torch.tensor([2 ** -8, 2 ** -8, -2 ** -8], dtype=torch.float64)
    zeros = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    args = [zeros(T, B, 4 * H), zeros(T, B, M), eps.expand(T, B, Z).clone(), zeros(B, H), zeros(B, H), zeros(M, H),
            zeros(2 * Z, M), torch.cat([mu, zeros(Z)]), zeros(G, Z), zeros(G), zeros(4 * H, G), zeros(4 * H, H)]
    args = [a.bfloat16() for a in args]
    lib = emu.chain_library()
    kernels = emu_chain._Directions(emu.EmulatedChainKernels(lib, 64, 3, 0), emu.EmulatedChainKernels(lib, 64, 3, 0))
    with torch.no_grad():
        z = run_chain(kernels, *args)[2]
        eager = ops.zforcing_chain(*args, backend="torch")[2]
    want = (mu + eps).to(torch.bfloat16)           # float64 -> bfloat16: nearest, ties to even
    assert want.tolist() == [1.0, 1.0 + 2 ** -6, -1.0]
    assert torch.equal(eager, want.expand(T, B, Z))
    assert torch.equal(z, want.expand(T, B, Z)), z


@pytest.mark.parametrize("sms", [132, 114])
def test_bf16_chain_plan_keeps_every_slice_resident_and_stages_in_few_chunks(sms):
    """The TIMIT chain (B=32, H=1024, M=512, Z=256) in bfloat16: all four weight slices resident
    (float32 at 114 SMs: W_comb or W_q2 read from L2 each step), and its activations staged in 1
    (forward, K <= 1024) and 3 (backward, K = 4096) chunks per product, where float32 TF32 plans
    take 96-256-wide chunks (11 and 16 per product)."""
    lib = emu.chain_library()
    for bwd in (False, True):
        launch = emu.ZfChainLaunch(256, 0, 232448, sms, 0)
        p16 = emu.chain_plan(lib, bwd, 32, 1024, 512, 256, 2, launch)
        p32 = emu.chain_plan(lib, bwd, 32, 1024, 512, 256, 4, emu.ZfChainLaunch(256, 0, 232448, sms, 1))
        assert p16.mma == 1 and p16.resident == 0b1111 and p16.a_stride % 64 == 8
        chunks16, chunks32 = (math.ceil(max(p.k) / p.kc) for p in (p16, p32))
        assert chunks16 == (3 if bwd else 1) and chunks32 >= 4 * chunks16, (chunks16, chunks32)


# the chain's kernels launch by launch (as the LSTM's above): every stored value against a float64
# stage computed from the kernels' own stored inputs to that stage
def _chain_kernel_inputs(T, B, H, M, Z, device="cpu", seed=0):
    """Mild kernel-level inputs (gates = gates_x + W_iz b_gz, w_comb = W_iz W_gz already folded)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0, dtype=torch.bfloat16):
        return (sc * torch.randn(*shape, generator=g)).to(device, dtype)

    return dict(gates=r(T, B, 4 * H), post_x=r(T, B, M, sc=0.5), eps=r(T, B, Z), h0=r(B, H, sc=0.5),
                c0=r(B, H, dtype=torch.float32), w_qh=r(M, H, sc=H ** -0.5), w_q2=r(2 * Z, M, sc=M ** -0.5),
                b_q2=r(2 * Z, sc=0.3), w_comb=r(4 * H, Z, sc=Z ** -0.5), w_hh=r(4 * H, H, sc=H ** -0.5),
                grad_h=r(T, B, H), grad_c=r(T, B, H, dtype=torch.float32), grad_z=r(T, B, Z), grad_mu=r(T, B, Z),
                grad_lv=r(T, B, Z))


def run_chain_kernels(fwd, bwd, T, B, H, M, Z, device="cpu"):
    """One forward and one backward launch of bfloat16 chain kernels on random inputs, outputs
    pre-filled with NaN: (inputs, forward buffers, backward buffers) as dicts of tensors (the
    forward's pre-activations as "pre", the backward's gate gradients as "dgates")."""
    x = _chain_kernel_inputs(T, B, H, M, Z, device)
    nan = lambda *shape, dtype=torch.bfloat16: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    f = dict(pre=x["gates"].clone(), h=nan(T, B, H), c=nan(T, B, H, dtype=torch.float32), z=nan(T, B, Z),
             mu=nan(T, B, Z), lv=nan(T, B, Z), s=nan(T, B, M),
             okmask=torch.full((T, B, 2 * Z), 77, dtype=torch.uint8, device=device))
    fwd.forward(f["pre"], x["post_x"], x["eps"], x["h0"], x["c0"], x["w_qh"], x["w_q2"], x["b_q2"], x["w_comb"],
                x["w_hh"], f["h"], f["c"], f["z"], f["mu"], f["lv"], f["s"], f["okmask"])
    b = dict(dgates=f["pre"].clone(), dparams=nan(T, B, 2 * Z), ds=nan(T, B, M), grad_eps=nan(T, B, Z),
             dc=nan(B, H, dtype=torch.float32))
    bwd.backward(x["grad_h"], x["grad_c"], x["grad_z"], x["grad_mu"], x["grad_lv"], b["dgates"], x["c0"], f["c"],
                 f["lv"], x["eps"], f["okmask"], f["s"], x["w_qh"], x["w_q2"], x["w_comb"], x["w_hh"], b["dparams"],
                 b["ds"], b["grad_eps"], b["dc"])
    return x, f, b


def _leaky_clamp(x):
    return torch.clamp(torch.where(x >= 0, x, x / 3), -3, 3)


def check_chain_steps(x, f, b, acc_tol=ACC_TOL):
    """Every stored value of run_chain_kernels' launches against a float64 stage taken from the
    kernels' own stored inputs to it (h_{t-1}, s_t, z_t; dgates_{t+1}, ds_{t+1}, dparams_t): bf16
    values within rounding (_within_rounding), float32 ones (c, dc) within acc_tol."""
    d = {k: v.cpu().double() for k, v in {**x, **f, **b}.items()}
    ok = f["okmask"].cpu()
    T = d["h"].shape[0]
    Z = d["eps"].shape[-1]
    b_or_f = lambda name: {**f, **b}[name].cpu()  # noqa: E731  (the stored tensor itself, bf16)
    c_prev = d["c0"]
    for t in range(T):
        h_prev = d["h0"] if t == 0 else d["h"][t - 1]
        s = h_prev @ d["w_qh"].t() + d["post_x"][t]
        _within_rounding(b_or_f("s")[t], s, f"s, step {t}", acc_tol)
        act = _leaky_clamp(d["s"][t]).bfloat16().double()          # the kernel stages act(s) in bf16
        params = act @ d["w_q2"].t() + d["b_q2"]
        pm, pl = params[:, :Z], params[:, Z:]
        mu, lv = pm.clamp(-8, 8), pl.clamp(-8, 8)
        _within_rounding(b_or_f("mu")[t], mu, f"mu, step {t}", acc_tol)
        _within_rounding(b_or_f("lv")[t], lv, f"logvar, step {t}", acc_tol)
        assert torch.equal(ok[t], torch.cat([(pm.abs() <= 8), (pl.abs() <= 8)], -1).to(torch.uint8)), t
        _within_rounding(b_or_f("z")[t], mu + torch.exp(0.5 * lv) * d["eps"][t], f"z, step {t}", acc_tol)
        gates = d["gates"][t] + h_prev @ d["w_hh"].t() + d["z"][t] @ d["w_comb"].t()
        _within_rounding(b_or_f("pre")[t], gates, f"pre-activations, step {t}", acc_tol)
        i, fg, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(fg) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        assert torch.allclose(d["c"][t], c, rtol=acc_tol, atol=acc_tol * c.abs().max().item()), t
        _within_rounding(b_or_f("h")[t], torch.sigmoid(o) * torch.tanh(c), f"h, step {t}", acc_tol)
        c_prev = d["c"][t]
    dcs = torch.zeros_like(d["c0"])
    for t in range(T - 1, -1, -1):
        dh = d["grad_h"][t]
        if t < T - 1:
            dh = dh + d["dgates"][t + 1] @ d["w_hh"] + d["ds"][t + 1] @ d["w_qh"]
        i, fg, g, o = d["pre"][t].chunk(4, -1)                   # the forward's stored pre-activations
        i, fg, g, o = torch.sigmoid(i), torch.sigmoid(fg), torch.tanh(g), torch.sigmoid(o)
        c_prev = d["c0"] if t == 0 else d["c"][t - 1]
        tc = torch.tanh(d["c"][t])
        dc = d["grad_c"][t] + dcs + dh * o * (1 - tc * tc)
        want = torch.cat([dc * g * i * (1 - i), dc * c_prev * fg * (1 - fg), dc * i * (1 - g * g),
                          dh * tc * o * (1 - o)], -1)
        _within_rounding(b_or_f("dgates")[t], want, f"dgates, step {t}", acc_tol)
        dcs = dc * fg
        dz = d["grad_z"][t] + d["dgates"][t] @ d["w_comb"]
        sd = torch.exp(0.5 * d["lv"][t])
        _within_rounding(b_or_f("grad_eps")[t], dz * sd, f"grad_eps, step {t}", acc_tol)
        okt = ok[t].bool()
        dpar = torch.cat([dz + d["grad_mu"][t], dz * d["eps"][t] * 0.5 * sd + d["grad_lv"][t]], -1)
        _within_rounding(b_or_f("dparams")[t], torch.where(okt, dpar, 0.0), f"dparams, step {t}", acc_tol)
        gs = d["dparams"][t] @ d["w_q2"]
        s = d["s"][t]
        y = torch.where(s >= 0, s, s / 3)
        ds = torch.where((y >= -3) & (y <= 3), torch.where(s > 0, gs, gs / 3), 0.0)
        _within_rounding(b_or_f("ds")[t], ds, f"ds, step {t}", acc_tol)
    assert torch.allclose(d["dc"], dcs, rtol=acc_tol, atol=acc_tol * dcs.abs().max().item())


@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_bf16_chain_kernels_store_each_stage_within_bf16_rounding(case):
    shape, units, threads, squeezed = CHAIN_CASES[case]
    T, B, H, M, Z, G = shape
    lib = emu.chain_library()
    fwd, bwd = (emu.EmulatedChainKernels(lib, threads, units, lim)
                for lim in _chain_limits(lib, shape, units, threads, squeezed))
    check_chain_steps(*run_chain_kernels(fwd, bwd, T, B, H, M, Z))
