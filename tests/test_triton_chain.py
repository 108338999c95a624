"""The Triton Z-forcing chain (zf_kernels/ops/recurrence/triton.py) against the reference.

On the CPU the kernels run under TRITON_INTERPRET=1 (set below when CUDA is absent, before
any kernel module is imported). Every buffer that ``torch.empty`` / ``torch.empty_like``
hands out during a comparison is NaN-filled (int buffers: junk), so a value a kernel never
writes cannot pass.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import zf_kernels.ops as ops  # noqa: E402
from zf_kernels.ops.recurrence import triton as chain_triton  # noqa: E402
from zf_kernels.ops.recurrence.naive import (  # noqa: E402
    ACT_CLAMP, LEAKY_SLOPE, PARAM_CLAMP, mlp_act, zforcing_chain_ref)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

# Error measure: max |x - x_ref| / max |x_ref| per output / gradient, x_ref from the float64
# reference on the same (upcast) inputs.
# fp64 / fp32: fixed bounds. Measured: fp64 ~1e-12; fp32 <= 5e-5 (the fp32 torch reference
# itself is off by ~4e-5 on the 4-step multi-block case, whose large weights make the chain
# sensitive).
TOL = {torch.float64: 1e-9, torch.float32: 3e-4}
# 16-bit: on those sensitive inputs the eager torch reference in the same dtype is itself off
# by 1e-2 .. 3e-1, so the bound is relative to it: triton error <= RATIO * torch error
# (+ a floor for tensors torch happens to get almost exactly right).
HALF_RATIO, HALF_FLOOR = 1.5, 1e-2
GPU_FLOOR = {torch.float16: 1e-2, torch.bfloat16: 2e-2}

SMALL_BLOCKS = {"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_K": 16}
NAMES = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
         "weight_gz", "bias_gz", "weight_iz", "weight_hh")
OUT_NAMES = ("h", "c", "z", "mu_q", "logvar_q")


def make_inputs(T, B, H, M, Z, G, dtype=torch.float64, seed=0, scale=1.0, device=DEVICE):
    """Random inputs; at scale=1 the posterior MLP pre-activations exceed +3 (and -9) and
    its outputs exceed +-8 for a good fraction of entries, so both clamps are exercised."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * sc
        return x.to(device=device, dtype=dtype).requires_grad_()

    k = scale
    return [
        r(T, B, 4 * H), r(T, B, M, sc=4.0 * k), r(T, B, Z), r(B, H, sc=0.5), r(B, H),
        r(M, H, sc=2.0 * k / H ** 0.5), r(2 * Z, M, sc=6.0 * k / M ** 0.5), r(2 * Z, sc=2.0 * k),
        r(G, Z, sc=0.5 / Z ** 0.5), r(G), r(4 * H, G, sc=1.0 / G ** 0.5), r(4 * H, H, sc=1.0 / H ** 0.5),
    ]


def clamp_activity(args, h):
    """Fractions of posterior pre-activations s above / below the MLP clamp and of
    pre-clamp parameters outside [-8, 8], recomputed from the reference's h."""
    _, post_x, _, h0, _, w_qh, w_q2, b_q2, *_ = [a.detach() for a in args]
    hprev = torch.cat([h0[None], h.detach()[:-1]])
    s = hprev @ w_qh.t() + post_x
    p = mlp_act(s) @ w_q2.t() + b_q2
    lo = -ACT_CLAMP / LEAKY_SLOPE
    frac = lambda m: m.double().mean().item()  # noqa: E731
    return {"s_clamped": frac((s > ACT_CLAMP) | (s < lo)), "s_leaky": frac((s > lo) & (s < 0)),
            "s_linear": frac((s > 0) & (s < ACT_CLAMP)),
            "p_outside": frac(p.abs() > PARAM_CLAMP), "p_inside": frac(p.abs() < PARAM_CLAMP)}


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled (float) or junk-filled (int) tensors."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(77)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))
    assert torch.empty(3).isnan().all()


def run_errors(fn, shape, dtype, seed=0, check_clamps=True):
    """{tensor name: error of fn in dtype against the float64 reference}: all 5 outputs and
    the gradients of all 12 inputs from one backward call with random, non-uniform output
    gradients."""
    args64 = make_inputs(*shape, seed=seed)
    ref = zforcing_chain_ref(*args64)
    if check_clamps:
        act = clamp_activity(args64, ref.h)
        assert all(v > 0 for v in act.values()), f"inputs do not exercise both sides of the clamps: {act}"
    g = torch.Generator().manual_seed(seed + 1)
    grads_out = [(torch.randn(o.shape, generator=g, dtype=torch.float64) * (1 + i)).to(DEVICE)
                 for i, o in enumerate(ref)]
    ref_grads = torch.autograd.grad(ref, args64, grads_out)

    args = [a.detach().to(dtype).requires_grad_() for a in args64]
    out = fn(*args)
    grads = torch.autograd.grad(tuple(out), args, [go.to(dtype) for go in grads_out])
    errs = {}
    for name, o, r in zip(OUT_NAMES, out, ref):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"output {name} has non-finite entries"
        errs[name] = rel_err(o, r)
    for name, gr, r in zip(NAMES, grads, ref_grads):
        assert gr is not None and gr.shape == r.shape, name
        assert torch.isfinite(gr).all(), f"grad of {name} has non-finite entries"
        errs["grad " + name] = rel_err(gr, r)
    return errs


def compare(shape, dtype, seed=0, check_clamps=True):
    errs = run_errors(chain_triton.zforcing_chain, shape, dtype, seed, check_clamps)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= TOL[dtype]}
    assert not bad, f"errors above {TOL[dtype]}: {bad}"


def compare_to_torch(shape, dtype, floor, seed=0):
    errs = run_errors(chain_triton.zforcing_chain, shape, dtype, seed)
    torch_errs = run_errors(zforcing_chain_ref, shape, dtype, seed)
    bound = {k: max(HALF_RATIO * torch_errs[k], floor) for k in errs}
    bad = {k: f"{errs[k]:.2e} > {bound[k]:.2e}" for k in errs if not errs[k] <= bound[k]}
    assert not bad, f"triton in {dtype} is worse than eager torch in {dtype}: {bad}"


# (T, B, H, M, Z, G)
CASES = [
    pytest.param((1, 1, 3, 5, 1, 7), "default", False, id="T1-B1-tiny"),
    pytest.param((4, 3, 20, 19, 3, 21), "default", True, id="T4-B3"),
    # every dim (B, H, M, Z, the reduction dims H, 4H, M, 2Z) spans several 16-wide blocks
    pytest.param((4, 17, 37, 19, 18, 21), "small", True, id="T4-B17-multiblock"),
    pytest.param((4, 1, 37, 5, 18, 7), "small", True, id="T4-B1-multiblock"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,blocks,check_clamps", CASES)
def test_matches_reference(shape, blocks, check_clamps, dtype, nan_empty, monkeypatch):
    if blocks == "small":
        monkeypatch.setattr(chain_triton, "_BLOCK_OVERRIDE", SMALL_BLOCKS)
    compare(shape, dtype, check_clamps=check_clamps)


def test_float16_no_worse_than_torch(nan_empty, monkeypatch):
    """The 16-bit path (fp32 accumulation, fp32 cell state), multi-block. bfloat16 takes the
    same code but triton 3.6's interpreter gets bf16 tl.dot wrong: GPU test only."""
    monkeypatch.setattr(chain_triton, "_BLOCK_OVERRIDE", SMALL_BLOCKS)
    compare_to_torch((4, 17, 37, 19, 18, 21), torch.float16, HALF_FLOOR)


def test_gradcheck_float64():
    # small weights keep every pre-activation away from the clamps; fast_mode checks a
    # random projection of the full Jacobian (the slow mode takes minutes in the interpreter)
    args = make_inputs(2, 2, 3, 4, 2, 3, dtype=torch.float64, seed=3, scale=0.3)
    act = clamp_activity(args, zforcing_chain_ref(*args).h)
    assert act["s_clamped"] == act["p_outside"] == 0.0, act
    assert torch.autograd.gradcheck(lambda *a: tuple(chain_triton.zforcing_chain(*a)), tuple(args),
                                    eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


def test_public_api(nan_empty):
    """ops.zforcing_chain(..., backend="triton"): non-contiguous inputs, an expanded
    (stride-0) output gradient, outputs that only partly carry gradient."""
    T, B, H, M, Z, G = 3, 5, 6, 7, 4, 9
    args = make_inputs(T, B, H, M, Z, G, dtype=torch.float64, seed=5)
    gx_bt = args[0].detach().transpose(0, 1).contiguous().requires_grad_()
    args = [gx_bt.transpose(0, 1)] + args[1:]      # non-contiguous gates_x
    assert not args[0].is_contiguous()
    assert ops.explain("zforcing_chain", *args, backend="triton") == ("triton", "requested")
    out = ops.zforcing_chain(*args, backend="triton")
    ref = ops.zforcing_chain(*args, backend="torch")
    assert isinstance(out, ops.ChainOutput)
    w = torch.linspace(-1, 2, H, dtype=torch.float64, device=DEVICE)
    leaves = [gx_bt] + args[1:]
    loss = lambda o: (o.h * w).sum() + o.z.sum() + (o.logvar_q ** 2).mean()  # noqa: E731
    g_tr = torch.autograd.grad(loss(out), leaves)
    g_ref = torch.autograd.grad(loss(ref), leaves)
    for name, o, r in zip(OUT_NAMES, out, ref):
        assert rel_err(o, r) <= TOL[torch.float64], name
    for name, a, b in zip(NAMES, g_tr, g_ref):
        assert rel_err(a, b) <= TOL[torch.float64], f"grad of {name}"


def test_zero_steps():
    args = make_inputs(0, 3, 4, 5, 2, 6, dtype=torch.float32)
    out = ops.zforcing_chain(*args, backend="triton")
    assert [tuple(o.shape) for o in out] == [(0, 3, 4), (0, 3, 4), (0, 3, 2), (0, 3, 2), (0, 3, 2)]
    sum(o.sum() for o in out).backward()
    assert args[3].grad is not None and (args[3].grad == 0).all()
    assert args[4].grad is not None and (args[4].grad == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_gpu(dtype, nan_empty):
    """GPU block sizes (several programs per dim) against the float64 reference: fp32 with the
    fixed bound, 16-bit no worse than eager torch in the same dtype."""
    shape = (5, 40, 80, 48, 40, 56)
    if dtype == torch.float32:
        compare(shape, dtype, seed=7)
    else:
        compare_to_torch(shape, dtype, GPU_FLOOR[dtype], seed=7)
