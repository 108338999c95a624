"""GPU tests of ``ops.zforcing_chain(backend="cuda")`` (the persistent kernels of
csrc/chain_kernels.cu, loaded or JIT-built by zf_kernels/ops/_cuda_ext.py), against the float64
torch reference: random shapes in float32, several partitions in float64 and gradcheck, the two
DESIGN shapes with short T, NaN-prefilled outputs, the public op and explain, the dtype refusal
and the shape that does not fit; the TF32 tensor-core tiles against a float64 reference that
rounds the four recurrent products' operands to TF32 where the kernels do
(tests/_tf32_reference.py). Skipped without CUDA; on a GPU a failed build fails them (with
the compiler's reason), it does not skip them. (The same source runs on the CPU in
tests/test_cuda_emulation_chain.py.)"""
import pytest
import torch

from _helpers import assert_no_worse_than_eager, cuda_graph_replays_match_eager, NaNFilledChainKernels, smooth_chain_inputs
from _tf32_reference import zforcing_chain_tf32_ref
from zf_kernels import ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# where _inputs puts the tensors ("cpu" when tests/test_cuda_gpu_bounds.py runs these
# comparisons with the CPU emulation of the kernels)
DEVICE = "cuda"
NAMES = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
         "weight_gz", "bias_gz", "weight_iz", "weight_hh")


@pytest.fixture(scope="module")
def cuda_chain():
    from zf_kernels.ops.recurrence import cuda   # builds the extension on first use (about a minute)
    return cuda


@pytest.fixture(autouse=True)
def _no_tf32():
    """The glue's weight-gradient GEMMs in true float32."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _inputs(T, B, H, M, Z, G, dtype, seed=0, scale=1.0):
    """Leaves in dtype on the GPU; at scale 1 posterior pre-activations on both sides of both
    clamps (tests/test_triton_chain.py's make_inputs); scale < 1: well-conditioned."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * sc
        return t.to(device=DEVICE, dtype=dtype).requires_grad_()

    k = scale
    args = [r(T, B, 4 * H), r(T, B, M, sc=5.0 * k), r(T, B, Z), r(B, H, sc=0.5), r(B, H),
            r(M, H, sc=2.0 * k / H ** 0.5), r(2 * Z, M, sc=6.0 * k / M ** 0.5), r(2 * Z, sc=2.0 * k),
            r(G, Z, sc=0.5 / Z ** 0.5), r(G), r(4 * H, G, sc=1.0 / G ** 0.5), r(4 * H, H, sc=1.0 / H ** 0.5)]
    grads = [(torch.randn(T, B, n, generator=g, dtype=torch.float64) * (1 + i)).to(DEVICE, dtype)
             for i, n in enumerate((H, H, Z, Z, Z))]
    return args, grads


def _outputs_and_grads(fn, args, grads):
    out = fn(*args)
    got = torch.autograd.grad(tuple(out), args, grads)
    return [t.detach() for t in (*out, *got)]


def _err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _compare(cuda_chain, shape, dtype, tol, units_per_block=0, seed=0, scale=1.0, eager_ratio=None, tf32=False):
    """Every output and gradient against float64: max |error| / max |reference| < tol, or with
    ``eager_ratio`` < max(tol, eager_ratio x the error of eager torch in ``dtype`` on the same
    inputs) (the clamp-heavy inputs amplify rounding: how much is the inputs', not the kernels').
    ``tf32=1``: the kernels' TF32 tiles against the TF32-rounded float64 reference, by ||error|| /
    ||reference||: where an operand's float32 and float64 values round to neighbouring TF32
    values (one in ~2^13), one element of a product moves by a TF32 ulp, and the chain carries
    that on; the norm sees such a local move as what it is, the max would not."""
    from zf_kernels.ops.recurrence._cuda_function import run_chain
    args, grads = _inputs(*shape, dtype, seed=seed, scale=scale)
    kernels = NaNFilledChainKernels(cuda_chain._ExtensionKernels(units_per_block, tf32=tf32))
    got = _outputs_and_grads(lambda *a: run_chain(kernels, *a), args, grads)
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref_fn = zforcing_chain_tf32_ref if tf32 == 1 else lambda *a: ops.zforcing_chain(*a, backend="torch")
    ref = _outputs_and_grads(ref_fn, args64, [g.double() for g in grads])
    eager = [None] * len(ref)
    if eager_ratio is not None:
        eager = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="torch"), args, grads)
    names = ("h", "c", "z", "mu_q", "logvar_q") + tuple("grad " + n for n in NAMES)
    for name, a, b, e in zip(names, got, ref, eager):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item() if tf32 == 1 else _err(a, b)
        bound = tol if e is None else max(tol, eager_ratio * _err(e, b))
        assert err < bound, f"{shape} {dtype}: {name}: relative error {err:.2e} >= {bound:.2e}"


@pytest.mark.parametrize("seed", range(4))
def test_cuda_chain_random_shapes_float32(cuda_chain, seed):
    """Clamp-heavy inputs: bounded by 4x eager float32's own error (floor 1e-4). The kernels in
    the CPU emulation, on these four cases: worst errors 7.8e-6 .. 7.9e-4 (eager: 1.0e-5 ..
    2.8e-4), at most 2.8x eager's per tensor."""
    g = torch.Generator().manual_seed(200 + seed)
    shape = tuple(int(torch.randint(lo, hi, (1,), generator=g))
                  for lo, hi in ((1, 10), (1, 40), (1, 300), (1, 200), (1, 100), (1, 150)))
    _compare(cuda_chain, shape, torch.float32, 1e-4, seed=seed, eager_ratio=4.0)


# TF32 tiles vs the TF32-rounded reference (||error|| / ||ref||), well-conditioned inputs (scale
# 0.25): set without a GPU. The CPU emulation of the tiles on these random shapes: 2.4e-5 ..
# 1.1e-4 (the neighbouring-TF32 flips, see _compare); the IEEE kernels are 4.8e-4 .. 7.4e-4 from
# this reference, and the TF32 rounding itself (this reference vs plain float64) as much. A
# misplaced fragment gives errors of order 1.
TF32_BOUND = 3e-4


@pytest.mark.parametrize("seed", range(4))
def test_cuda_chain_random_shapes_tf32(cuda_chain, seed):
    g = torch.Generator().manual_seed(200 + seed)
    shape = tuple(int(torch.randint(lo, hi, (1,), generator=g))
                  for lo, hi in ((1, 10), (1, 40), (1, 300), (1, 200), (1, 100), (1, 150)))
    _compare(cuda_chain, shape, torch.float32, TF32_BOUND, seed=seed, scale=0.25, tf32=True)


@pytest.mark.parametrize("seed", range(2))
def test_cuda_chain_random_shapes_3xtf32(cuda_chain, seed):
    """3xTF32 tiles (tf32=3) against plain float64 by max |error| / max |ref|, well-conditioned
    inputs: the bound of the IEEE kernels' design-shape test."""
    g = torch.Generator().manual_seed(200 + seed)
    shape = tuple(int(torch.randint(lo, hi, (1,), generator=g))
                  for lo, hi in ((1, 10), (1, 40), (1, 300), (1, 200), (1, 100), (1, 150)))
    _compare(cuda_chain, shape, torch.float32, 1e-4, seed=seed, scale=0.25, tf32=3)


@pytest.mark.parametrize("units", [0, 1, 3])
def test_cuda_chain_small_odd_shapes_float64(cuda_chain, units):
    _compare(cuda_chain, (5, 3, 13, 7, 5, 6), torch.float64, 1e-11, units_per_block=units)
    _compare(cuda_chain, (1, 1, 5, 3, 2, 3), torch.float64, 1e-11, units_per_block=units)


def test_cuda_chain_gradcheck_float64(cuda_chain):
    args, _ = _inputs(3, 2, 5, 4, 3, 4, torch.float64, seed=7)
    # away from the clamps' kinks (finite differences across a kink are meaningless)
    with torch.no_grad():
        args[1].mul_(0.1)
        args[7].mul_(0.1)

    def fn(*a):
        return tuple(cuda_chain.zforcing_chain(*a, units_per_block=2))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("shape", [(40, 32, 1024, 512, 256, 512), (40, 32, 1024, 512, 128, 512)],
                         ids=["TIMIT T40 B32 H1024 M512 Z256 G512", "SeqMNIST B32 H1024 M512 Z128 G512 (T=40)"])
def test_cuda_chain_design_shapes_float32(cuda_chain, shape):
    """Well-conditioned inputs (scale 0.25, as the model's initialisation): at scale 1 these
    shapes are chaotic, eager float32 torch is itself off from float64 by 3.3e-3 at T=8 (the
    Triton chain's H200 run of 2026-11-27 failed on the like); at 0.25 by <= 2.6e-6 at T=40
    (both measured on the CPU with these inputs). A wrong barrier or a stale row gives errors of
    order 1."""
    _compare(cuda_chain, shape, torch.float32, 1e-4, scale=0.25)
    T, B, H, M, Z, G = shape
    fwd, bwd = cuda_chain.plan(torch.empty(T, B, 4 * H, device="cuda"), torch.empty(T, B, M, device="cuda"),
                               torch.empty(T, B, Z, device="cuda"))
    assert fwd["blocks"] <= torch.cuda.get_device_properties(0).multi_processor_count
    assert fwd["resident"] & 3 == 3 and bwd["resident"] & 1


@pytest.mark.parametrize("shape", [(4, 32, 1024, 512, 256, 512), (4, 32, 1024, 512, 128, 512)],
                         ids=["TIMIT B32 H1024 M512 Z256 G512 (T=4)", "SeqMNIST B32 H1024 M512 Z128 G512 (T=4)"])
def test_cuda_chain_design_shapes_tf32(cuda_chain, shape):
    """T=4: over 40 steps the chain carries TF32 rounding far (the TF32-rounded reference vs plain
    float64 at T=40: 2.5e-3 .. 2.1e-2 by norm, up to 0.48 by max, measured on the CPU), which no
    reference can follow element by element; four steps exercise every tile of the design shapes.
    At T=4 (TIMIT widths, CPU emulation, 128 blocks): the tiles 1.9e-4 from the rounded reference,
    the IEEE kernels 5.0e-4, TF32 rounding itself 5.0e-4: the bound is for errors of order 1."""
    _compare(cuda_chain, shape, torch.float32, 1e-3, scale=0.25, tf32=True)


def _bf16_no_worse_than_eager(shape, seed):
    """ops.zforcing_chain(backend="cuda") in bfloat16 on inputs away from the chain's kinks
    (_helpers.smooth_chain_inputs: near one, rounding decides by chance which
    elements' gradients change by a third): every output's and gradient's error against float64
    (by norm) at most that of eager torch in bfloat16 (+ 1e-3). The CPU emulation measured
    0.27-1.04x eager's, at most 8e-5 above it (the cell state stays float32)."""
    args, grads = smooth_chain_inputs(*shape, seed=seed, device=DEVICE)
    args = [a.detach().to(torch.bfloat16).requires_grad_() for a in args]
    grads = [g.to(torch.bfloat16) for g in grads]
    got = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="cuda"), args, grads)
    eager = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="torch"), args, grads)
    args64 = [a.detach().double().requires_grad_() for a in args]
    exact = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="torch"), args64,
                               [g.double() for g in grads])
    names = ("h", "c", "z", "mu_q", "logvar_q") + tuple("grad " + n for n in NAMES)
    assert all(a.dtype == torch.bfloat16 for a in got)
    assert_no_worse_than_eager(names, got, eager, exact, label=f"{shape}: ")


# The bf16 kernels launch by launch: every stored value against a float64 stage taken from the
# kernels' own stored inputs to it, within half a bf16 ulp plus accumulation error
# (tests/test_cuda_emulation_bf16.py; the emulation meets it with 1e-5 of the largest element, the
# hardware's accumulation order and truncation get 1e-4).
@pytest.mark.parametrize("shape,units", [((4, 5, 13, 7, 5), 0), ((3, 19, 100, 37, 9), 0),
                                         ((3, 32, 1024, 512, 256), 0), ((3, 1, 40, 11, 6), 3)],
                         ids=["T4 B5 H13 M7 Z5", "T3 B19 H100 M37 Z9", "TIMIT widths T3", "T3 B1 H40 3 units"])
def test_cuda_chain_bf16_kernels_store_each_stage_within_rounding(cuda_chain, shape, units):
    from test_cuda_emulation_bf16 import check_chain_steps, run_chain_kernels
    kernels = cuda_chain._ExtensionKernels(units)
    check_chain_steps(*run_chain_kernels(kernels, kernels, *shape, device=DEVICE), acc_tol=1e-4)


@pytest.mark.parametrize("seed", range(2))
def test_cuda_chain_random_shapes_bfloat16_no_worse_than_eager(cuda_chain, seed):
    g = torch.Generator().manual_seed(300 + seed)
    T, B, H, M, Z, G = (int(torch.randint(lo, hi, (1,), generator=g))
                        for lo, hi in ((1, 10), (1, 40), (1, 200), (1, 100), (1, 40), (1, 60)))
    _bf16_no_worse_than_eager((T, B, H, M, Z, G), seed)


@pytest.mark.parametrize("shape", [(8, 32, 1024, 512, 256, 512), (8, 32, 1024, 512, 128, 512)],
                         ids=["TIMIT B32 H1024 M512 Z256 G512 (T=8)", "SeqMNIST B32 H1024 M512 Z128 G512 (T=8)"])
def test_cuda_chain_design_shapes_bfloat16(cuda_chain, shape):
    _bf16_no_worse_than_eager(shape, 0)
    T, B, H, M, Z, G = shape
    x = [torch.empty(T, B, n, device="cuda", dtype=torch.bfloat16) for n in (4 * H, M, Z)]
    fwd, bwd = cuda_chain.plan(*x)
    assert fwd["resident"] == bwd["resident"] == 0b1111     # every bf16 slice fits (CPU planner: 114 SMs too)
    assert "bfloat16 tensor cores" in ops.explain("zforcing_chain", *x, backend="cuda")[1]


def test_cuda_chain_tf32_follows_torchs_matmul_switch(cuda_chain, monkeypatch):
    """The public op takes the TF32 tiles exactly when torch allows TF32 for its float32 matmuls
    (explain says which); with TF32 allowed torch's own GEMMs (the g(z) fold, the weight
    gradients) round too, so that side is held to TF32 accuracy against plain float64."""
    monkeypatch.delenv("ZF_FP32_DOT", raising=False)
    args, grads = _inputs(4, 3, 24, 10, 6, 8, torch.float32, scale=0.25)
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="torch"), args64, [g.double() for g in grads])
    for allow, bound, label in ((True, 1e-2, "TF32 tensor cores"), (False, 1e-4, "IEEE FMAs")):
        torch.backends.cuda.matmul.allow_tf32 = allow     # the autouse fixture restores it
        assert label in ops.explain("zforcing_chain", *args, backend="cuda")[1]
        got = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="cuda"), args, grads)
        for i, (a, b) in enumerate(zip(got, ref)):
            assert _err(a, b) < bound, f"allow_tf32={allow}: output/grad {i}: {_err(a, b):.2e}"


def test_cuda_chain_through_the_public_op(cuda_chain):
    """Elementwise closeness at rtol 1e-3: on well-conditioned inputs (scale 0.25), away from the
    clamps' kinks, where the GPU's contracted FMAs may flip an element's side (the clamp-heavy
    inputs are the random-shape tests', bounded by norm against eager's own error)."""
    args, grads = _inputs(4, 3, 24, 10, 6, 8, torch.float32, scale=0.25)
    got = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="cuda"), args, grads)
    ref = _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="torch"), args, grads)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    backend, why = ops.explain("zforcing_chain", *args, backend="cuda")
    assert backend == "cuda" and "cooperative launch" in why and "W_hh" in why
    backend, why = ops.explain("zforcing_chain", *args)
    assert backend != "cuda" and "not been verified on a GPU" in why


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_chain_forward_backward_replays_from_a_cuda_graph(cuda_chain, dtype):
    """The cooperative launches captured in a CUDA graph (how the training step runs them) and
    replayed, on new values too, equal an eager call's results."""
    args, grads = _inputs(4, 5, 40, 12, 6, 8, dtype, scale=0.5)
    cuda_graph_replays_match_eager(
        lambda: _outputs_and_grads(lambda *a: ops.zforcing_chain(*a, backend="cuda"), args, grads), args)


def test_cuda_chain_refuses_unsupported_dtype(cuda_chain):
    args, _ = _inputs(2, 2, 4, 3, 2, 3, torch.float32)
    args = [a.detach().to(torch.float16) for a in args]
    with pytest.raises(ops.BackendUnavailableError, match="float32, float64 and bfloat16"):
        ops.zforcing_chain(*args, backend="cuda")


def test_cuda_chain_shape_that_does_not_fit_raises(cuda_chain):
    """H=4096 float32: the W_hh slice alone exceeds a block's shared memory."""
    args, _ = _inputs(2, 2, 4096, 8, 4, 8, torch.float32)
    with pytest.raises(ValueError, match=r"B=2, H=4096, M=8, Z=4.*shared memory"):
        cuda_chain.zforcing_chain(*args)
    # one hidden unit per block: 4096 blocks cannot all be resident
    with pytest.raises(ValueError, match=r"B=2, H=4096, M=8, Z=4.*resident"):
        cuda_chain.zforcing_chain(*args, units_per_block=1)
    torch.cuda.synchronize()   # nothing was launched: the device is still healthy
