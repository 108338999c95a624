"""GPU tests of ``ops.lstm(backend="cuda")`` (the persistent kernels of csrc/, loaded or JIT-built
by zf_kernels/ops/_cuda_ext.py), against the torch reference: random shapes in float32, float64
with gradcheck, the DESIGN s.2 benchmark shapes, NaN-prefilled outputs, and the errors for shapes
that cannot be resident; the TF32 tensor-core tiles against a float64 reference that rounds the
recurrent products' operands to TF32 where the kernels do (tests/_tf32_reference.py); the bfloat16
kernels step by step within bf16 rounding, and end to end no worse than the eager reference in
bfloat16. Skipped without CUDA; on a GPU a failed build fails them (with the compiler's reason),
it does not skip them."""
import math

import pytest
import torch

from _helpers import cuda_graph_replays_match_eager, NaNFilledLSTMKernels
from _tf32_reference import lstm_tf32_ref
from zf_kernels import ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


# where _inputs puts the tensors ("cpu" when tests/test_cuda_gpu_bounds.py runs these
# comparisons with the CPU emulation of the kernels)
DEVICE = "cuda"


@pytest.fixture(scope="module")
def cuda_lstm():
    from zf_kernels.ops.lstm import cuda   # builds the extension on first use (about a minute)
    return cuda


def _inputs(T, B, I, H, dtype, seed=0, biases=True, states=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        t = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
        return t.to(device=DEVICE, dtype=dtype).requires_grad_()

    args = [r(T, B, I), r(4 * H, I, scale=1 / math.sqrt(I)), r(4 * H, H, scale=1 / math.sqrt(H)),
            r(4 * H, scale=0.1) if biases else None, r(4 * H, scale=0.1) if biases else None,
            r(B, H, scale=0.5) if states else None, r(B, H, scale=0.5) if states else None]
    grads = [torch.randn(T, B, H, generator=g, dtype=torch.float64).to(DEVICE, dtype),
             torch.randn(B, H, generator=g, dtype=torch.float64).to(DEVICE, dtype),
             torch.randn(B, H, generator=g, dtype=torch.float64).to(DEVICE, dtype)]
    return args, grads


def _outputs_and_grads(fn, args, grads):
    out, (h, c) = fn(*args)
    leaves = [a for a in args if a is not None]
    got = torch.autograd.grad([out, h, c], leaves, grads)
    return [t.detach() for t in (out, h, c, *got)]


def _compare(cuda_lstm, T, B, I, H, dtype, reverse, tol, units_per_block=0, tf32=False, **kw):
    from zf_kernels.ops.lstm._cuda_function import run_lstm
    args, grads = _inputs(T, B, I, H, dtype, **kw)
    kernels = NaNFilledLSTMKernels(cuda_lstm._ExtensionKernels(units_per_block, tf32=tf32))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # torch's GEMMs of the glue in IEEE, as the reference's
    try:
        got = _outputs_and_grads(lambda *a: run_lstm(kernels, *a, reverse=reverse), args, grads)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    # reference in float64 (the float32 one would add its own rounding to the comparison); for the
    # TF32 tiles with their operand rounding
    args64 = [None if a is None else a.detach().double().requires_grad_() for a in args]
    ref_fn = lstm_tf32_ref if tf32 == 1 else lambda *a, reverse: ops.lstm(*a, reverse=reverse, backend="torch")
    ref = _outputs_and_grads(lambda *a: ref_fn(*a, reverse=reverse), args64, [g.double() for g in grads])
    for i, (a, b) in enumerate(zip(got, ref)):
        assert torch.isfinite(a).all(), f"output/grad {i} has non-finite values"
        err = (a.double() - b).norm() / b.norm().clamp_min(1e-30)
        assert err < tol, f"output/grad {i}: relative error {err:.2e} >= {tol}"


@pytest.mark.parametrize("seed", range(4))
def test_cuda_lstm_random_shapes_float32(cuda_lstm, seed):
    g = torch.Generator().manual_seed(100 + seed)
    T, B, I, H = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 12), (1, 40), (1, 70), (1, 300)))
    for reverse in (False, True):
        _compare(cuda_lstm, T, B, I, H, torch.float32, reverse, 1e-5, seed=seed, biases=seed % 2 == 0,
                 states=seed < 2)


# TF32 tiles vs the TF32-rounded reference: set without a GPU. The CPU emulation of the tiles is
# within 6.1e-7 of it (sums in k order, round to nearest); the hardware's accumulation may truncate
# and adds in its own order: ~1e-6 per K = 1024 sum expected, amplified a little over T steps. The
# IEEE kernels are >= 5.8e-5 away from this reference. On the GPU tests' random shapes (emulated,
# 16 blocks): the tiles <= 2.0e-5, the IEEE kernels >= 1.1e-4; at the design shapes TF32 rounding
# itself (the rounded reference vs float64) is 1.7e-4 / 1.8e-4 (torch, CPU).
TF32_RANDOM_BOUND, TF32_DESIGN_BOUND = 5e-5, 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_cuda_lstm_random_shapes_tf32(cuda_lstm, seed):
    g = torch.Generator().manual_seed(100 + seed)
    T, B, I, H = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 12), (1, 40), (1, 70), (1, 300)))
    for reverse in (False, True):
        _compare(cuda_lstm, T, B, I, H, torch.float32, reverse, TF32_RANDOM_BOUND, tf32=True, seed=seed,
                 biases=seed % 2 == 0, states=seed < 2)


@pytest.mark.parametrize("seed", range(2))
def test_cuda_lstm_random_shapes_3xtf32(cuda_lstm, seed):
    """3xTF32 tiles (tf32=3: each operand split into two TF32 parts) against plain float64, with
    the IEEE kernels' bound (CPU emulation: as accurate as the IEEE kernels, ~2e-7 at small shapes)."""
    g = torch.Generator().manual_seed(100 + seed)
    T, B, I, H = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 12), (1, 40), (1, 70), (1, 300)))
    for reverse in (False, True):
        _compare(cuda_lstm, T, B, I, H, torch.float32, reverse, 1e-5, tf32=3, seed=seed)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("units", [0, 1, 3])
def test_cuda_lstm_small_odd_shapes_float64(cuda_lstm, reverse, units):
    _compare(cuda_lstm, 7, 5, 3, 13, torch.float64, reverse, 1e-12, units_per_block=units)
    _compare(cuda_lstm, 1, 1, 2, 5, torch.float64, reverse, 1e-12, units_per_block=units, states=False)


def test_cuda_lstm_gradcheck_float64(cuda_lstm):
    args, _ = _inputs(4, 3, 2, 5, torch.float64, seed=7)

    def fn(*a):
        out, (h, c) = cuda_lstm.lstm(*a, reverse=True, units_per_block=2)
        return out, h, c
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("T,B,I,H", [(40, 32, 512, 1024), (60, 32, 64, 512)],
                         ids=["T40 B32 I512 H1024", "T784 B32 I64 H512 (T=60)"])
def test_cuda_lstm_benchmark_shapes_float32(cuda_lstm, T, B, I, H):
    for reverse in (False, True):
        _compare(cuda_lstm, T, B, I, H, torch.float32, reverse, 2e-5)
    fwd, bwd = cuda_lstm.plan(torch.empty(T, B, I, device="cuda"), torch.empty(4 * H, H, device="cuda"))
    assert fwd["blocks"] <= torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.parametrize("T,B,I,H", [(40, 32, 512, 1024), (60, 32, 64, 512)],
                         ids=["T40 B32 I512 H1024", "T784 B32 I64 H512 (T=60)"])
def test_cuda_lstm_benchmark_shapes_tf32(cuda_lstm, T, B, I, H):
    for reverse in (False, True):
        _compare(cuda_lstm, T, B, I, H, torch.float32, reverse, TF32_DESIGN_BOUND, tf32=True)


def test_cuda_lstm_tf32_follows_torchs_matmul_switch(cuda_lstm, monkeypatch):
    """The public op takes the TF32 tiles exactly when torch allows TF32 for its float32 matmuls
    (the Triton kernels' rule), and says so in explain. With TF32 allowed torch's own GEMMs (the
    input projection, the weight gradients) round too, so that side is held to TF32 accuracy
    against the plain float64 reference (cuDNN's TF32 rows: ~6e-4), the IEEE side to float32's."""
    monkeypatch.delenv("ZF_FP32_DOT", raising=False)
    args, grads = _inputs(6, 5, 3, 40, torch.float32, seed=3)
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref = _outputs_and_grads(lambda *a: ops.lstm(*a, backend="torch"), args64, [g.double() for g in grads])
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for allow, bound, label in ((True, 5e-3, "TF32 tensor cores"), (False, 1e-5, "IEEE FMAs")):
            torch.backends.cuda.matmul.allow_tf32 = allow
            assert label in ops.explain("lstm", *args[:3], backend="cuda")[1]
            got = _outputs_and_grads(lambda *a: ops.lstm(*a, backend="cuda"), args, grads)
            for i, (a, b) in enumerate(zip(got, ref)):
                err = (a.double() - b).norm() / b.norm()
                assert err < bound, f"allow_tf32={allow}: output/grad {i}: {err:.2e}"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_cuda_lstm_through_the_public_op(cuda_lstm):
    args, grads = _inputs(5, 4, 3, 24, torch.float32)
    got = _outputs_and_grads(lambda *a: ops.lstm(*a, backend="cuda"), args, grads)
    ref = _outputs_and_grads(lambda *a: ops.lstm(*a, backend="torch"), args, grads)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    backend, why = ops.explain("lstm", *args[:3], backend="cuda")
    assert backend == "cuda" and "cooperative launch" in why
    # not verified yet -> "auto" does not take it
    backend, why = ops.explain("lstm", *args[:3])
    assert backend != "cuda" and "not been verified on a GPU" in why


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_lstm_forward_backward_replays_from_a_cuda_graph(cuda_lstm, dtype):
    """The cooperative launches captured in a CUDA graph (how the training step runs them) and
    replayed, on new values too, equal an eager call's results."""
    args, grads = _inputs(6, 5, 7, 40, dtype)
    leaves = [a for a in args if a is not None]
    cuda_graph_replays_match_eager(lambda: _outputs_and_grads(lambda *a: ops.lstm(*a, backend="cuda"), args, grads),
                                   leaves)


def test_cuda_lstm_refuses_unsupported_dtype(cuda_lstm):
    x = torch.zeros(2, 2, 3, device="cuda", dtype=torch.float16)
    with pytest.raises(ops.BackendUnavailableError, match="float32, float64 and bfloat16"):
        ops.lstm(x, torch.zeros(16, 3, device="cuda", dtype=torch.float16),
                 torch.zeros(16, 4, device="cuda", dtype=torch.float16), backend="cuda")


# ---------------------------------------------------------------------------------- bfloat16
# The bf16 kernels (mma.sync m16n8k16 tiles, float32 accumulation and cell states) one launch each
# way, every stored value against a float64 step from the kernels' own previous outputs: within
# half a bf16 ulp plus accumulation error (tests/test_cuda_emulation_bf16.py; the emulation meets
# it with 1e-5 of the largest element, the hardware's accumulation order and truncation get 1e-4).
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T,B,H,units", [(5, 7, 13, 0), (4, 19, 300, 0), (3, 32, 1024, 0), (3, 1, 40, 3)],
                         ids=["T5 B7 H13", "T4 B19 H300", "T3 B32 H1024", "T3 B1 H40 3 units"])
def test_cuda_lstm_bf16_kernels_store_each_step_within_rounding(cuda_lstm, T, B, H, units, reverse):
    from test_cuda_emulation_bf16 import check_each_step, run_kernels
    kernels = cuda_lstm._ExtensionKernels(units)
    check_each_step(*run_kernels(kernels, kernels, T, B, H, reverse, device=DEVICE), reverse, acc_tol=1e-4)


def _bf16_no_worse_than_eager(T, B, I, H, seed, reverse):
    """ops.lstm(backend="cuda") in bfloat16: each output's and gradient's error against float64
    at most that of the eager reference run in bfloat16 on the same GPU (+ 1e-3; the emulation
    measured about half of it: its cell state stays float32)."""
    args, grads = _inputs(T, B, I, H, torch.bfloat16, seed=seed)
    args64 = [a.detach().double().requires_grad_() for a in args]
    exact = _outputs_and_grads(lambda *a: ops.lstm(*a, reverse=reverse, backend="torch"), args64,
                               [g.double() for g in grads])
    got = _outputs_and_grads(lambda *a: ops.lstm(*a, reverse=reverse, backend="cuda"), args, grads)
    eager = _outputs_and_grads(lambda *a: ops.lstm(*a, reverse=reverse, backend="torch"), args, grads)
    for i, (a, e, ref) in enumerate(zip(got, eager, exact)):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all(), i
        ours = ((a.double() - ref).norm() / ref.norm()).item()
        theirs = ((e.double() - ref).norm() / ref.norm()).item()
        assert ours <= theirs + 1e-3, f"output/grad {i}: ours {ours:.2e}, eager bf16 {theirs:.2e}"


@pytest.mark.parametrize("seed", range(2))
def test_cuda_lstm_random_shapes_bfloat16_no_worse_than_eager(cuda_lstm, seed):
    g = torch.Generator().manual_seed(200 + seed)
    T, B, I, H = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 12), (1, 40), (1, 70), (1, 300)))
    for reverse in (False, True):
        _bf16_no_worse_than_eager(T, B, I, H, seed, reverse)


def test_cuda_lstm_benchmark_shape_bfloat16_no_worse_than_eager(cuda_lstm):
    _bf16_no_worse_than_eager(40, 32, 512, 1024, 0, False)
    _bf16_no_worse_than_eager(40, 32, 512, 1024, 0, True)


def test_cuda_lstm_shape_that_cannot_be_resident_raises(cuda_lstm):
    """Co-residency: one hidden unit per block at H=4096 needs 4096 resident blocks."""
    args, _ = _inputs(2, 2, 3, 4096, torch.float32, biases=False, states=False)
    with pytest.raises(ValueError, match=r"B=2, H=4096.*resident"):
        cuda_lstm.lstm(*args, units_per_block=1)
    # automatic partition: ceil(4096 / SMs) units per block do not fit in shared memory
    with pytest.raises(ValueError, match=r"B=2, H=4096.*shared memory"):
        cuda_lstm.lstm(*args)
    torch.cuda.synchronize()   # nothing was launched: the device is still healthy
