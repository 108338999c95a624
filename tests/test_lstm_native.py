"""The "torch" backend of ``ops.lstm`` (zf_kernels/ops/lstm/native.py): torch's own LSTM op
(ATen on the CPU, cuDNN on CUDA) must give ``lstm_ref``'s values and gradients, and fall back to
``lstm_ref`` wherever it is not known to."""
import warnings

import pytest
import torch

from zf_kernels import ops
from zf_kernels.ops.lstm import native
from zf_kernels.ops.lstm.naive import lstm_ref

# (T, B, I, H): odd sizes, T=1, B=1, H not a power of two
SHAPES = [(1, 1, 1, 1), (5, 3, 7, 6), (9, 1, 4, 13), (3, 6, 2, 5)]
# bias_ih, bias_hh given or not: both, neither, and each alone (the op takes both or neither)
BIASES = ["both", "none", "ih", "hh"]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


def _inputs(T, B, I, H, dtype, biases, states, seed=0, device="cpu", w_scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype).requires_grad_()
    x, w_ih, w_hh = rnd(T, B, I, scale=1.0), rnd(4 * H, I, scale=w_scale), rnd(4 * H, H, scale=w_scale)
    b_ih = rnd(4 * H, scale=w_scale) if biases in ("both", "ih") else None
    b_hh = rnd(4 * H, scale=w_scale) if biases in ("both", "hh") else None
    h0, c0 = (rnd(B, H), rnd(B, H)) if states else (None, None)
    return x, w_ih, w_hh, b_ih, b_hh, h0, c0


def _outputs_and_grads(fn, args, reverse, seed=1):
    out, (h, c) = fn(*args, reverse)
    # grad_output != 1 everywhere: random weights on every output
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) for t in (out, h, c)]
    loss = sum((t * w).sum() for t, w in zip((out, h, c), ws))
    leaves = [a for a in args if a is not None]
    grads = torch.autograd.grad(loss, leaves)
    return [out, h, c, *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("biases", BIASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_native_lstm_matches_the_reference(dtype, shape, biases, reverse):
    states = biases != "none"   # with and without given h0 / c0
    args = _inputs(*shape, dtype, biases, states)
    assert native.why_reference(args[0]) is None
    got = _outputs_and_grads(native.lstm, args, reverse)
    want = _outputs_and_grads(lstm_ref, args, reverse)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"output/grad {i}: {m}")


def test_backend_torch_runs_the_native_op_and_gradcheck_passes():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _inputs(4, 2, 3, 5, torch.float64, "both", True)
    assert ops.explain("lstm", x, w_ih, w_hh, backend="torch")[1] == "requested; torch's own LSTM op (C++, on the CPU)"
    # "auto" on the CPU says the same of what its "torch" runs
    assert ops.explain("lstm", x, w_ih, w_hh) == (
        "torch", "tensors are not on CUDA: the fused kernels only pay off on a GPU; torch's own LSTM op (C++, on the CPU)")

    def f(*a):
        out, (h, c) = ops.lstm(*a, reverse=True, backend="torch")
        return out, h, c
    assert torch.autograd.gradcheck(f, (x, w_ih, w_hh, b_ih, b_hh, h0, c0))


def test_explain_under_torch_compile_names_no_native_op():
    """What "auto" picks under torch.compile is the traced reference: no word of the native op."""
    x, w_ih, w_hh, *_ = _inputs(3, 2, 3, 4, torch.float32, "none", False)
    backend, why = ops.explain("lstm", x, w_ih, w_hh, compiling=True)
    assert backend == "torch" and "LSTM op" not in why and "lstm_ref" not in why


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functorch_transforms_and_forward_ad_take_the_reference(dtype, reference_calls):
    """torch's LSTM op has no vmap batching rule (and oneDNN's float32 one no forward derivative):
    under vmap, jvp and forward-mode AD the "torch" backend is lstm_ref, as before."""
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = (a.detach() for a in _inputs(4, 2, 3, 5, dtype, "both", True))

    def out(x_, w=w_ih):
        return ops.lstm(x_, w, w_hh, b_ih, b_hh, h0, c0, backend="torch")[0]
    xs = torch.stack([x, 2 * x])
    batched = torch.func.vmap(out)(xs)
    assert reference_calls, "vmap did not take lstm_ref"
    for i in range(2):
        torch.testing.assert_close(batched[i], lstm_ref(xs[i], w_ih, w_hh, b_ih, b_hh, h0, c0)[0], **TOL[dtype])
    reference_calls.clear()
    tangent = torch.randn_like(w_ih)
    _, jvp = torch.func.jvp(lambda w: out(x, w), (w_ih,), (tangent,))
    assert reference_calls
    eps = 1e-6 if dtype == torch.float64 else 1e-2
    fd = (out(x, w_ih + eps * tangent) - out(x, w_ih - eps * tangent)) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-3, atol=1e-3 if dtype == torch.float32 else 1e-8)
    reference_calls.clear()
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = out(x, fwAD.make_dual(w_ih, tangent))
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, jvp, **TOL[dtype])
    assert reference_calls


@pytest.fixture
def reference_calls(monkeypatch):
    """How often native.lstm fell back to lstm_ref."""
    calls = []

    def spy(*a):
        calls.append(a[0].dtype)
        return lstm_ref(*a)
    monkeypatch.setattr(native, "lstm_ref", spy)
    return calls


@pytest.mark.parametrize("case,why", [
    ("bfloat16", "in float32 and float64 only, not torch.bfloat16"),
    ("float16", "in float32 and float64 only, not torch.float16"),
    ("T=0", "an empty sequence or batch"),
    ("B=0", "an empty sequence or batch"),
    ("compiling", "under torch.compile the reference loop is traced"),
])
def test_where_it_is_not_known_to_agree_the_reference_runs(case, why, reference_calls, monkeypatch):
    T, B, dtype = 3, 2, torch.float32
    if case in ("bfloat16", "float16"):
        dtype = getattr(torch, case)
    T = 0 if case == "T=0" else T
    B = 0 if case == "B=0" else B
    if case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _inputs(T, B, 3, 4, dtype, "both", False)
    assert why in native.why_reference(x)
    assert why in native.explain(x)
    out, (h, c) = native.lstm(x, w_ih, w_hh, b_ih, b_hh, None, None, False)
    assert len(reference_calls) == 1 and out.shape == (T, B, 4) and h.shape == c.shape == (B, 4)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_hidden_size_zero_runs_the_reference(backend, reference_calls):
    """oneDNN refuses an LSTM of hidden size 0 ("could not create a primitive descriptor"):
    the reference runs, as the Triton backend's empty output does."""
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _inputs(3, 2, 3, 0, torch.float32, "both", False)
    assert "hidden size 0" in native.why_reference(x, w_ih, w_hh)
    out, (h, c) = ops.lstm(x, w_ih, w_hh, b_ih, b_hh, backend=backend)
    assert len(reference_calls) == 1 and out.shape == (3, 2, 0) and h.shape == c.shape == (2, 0)


def test_cuda_tensors_wait_for_the_gpu_tests(monkeypatch, tf32_flags):
    """Until CUDNN_VERIFIED, CUDA tensors run lstm_ref (the reason says so)."""
    tf32_flags(matmul=False, cudnn=False)
    monkeypatch.setattr(native, "CUDNN_VERIFIED", False)
    # what why_reference reads of a CUDA tensor (no GPU here)
    fake = type("CudaLike", (), {"dtype": torch.float32, "shape": (2, 1, 3), "device": torch.device("cuda")})()
    assert "cuDNN's LSTM has not passed the GPU tests yet" in native.why_reference(fake)
    monkeypatch.setattr(native, "CUDNN_VERIFIED", True)
    assert native.why_reference(fake) is None


@pytest.mark.parametrize("cudnn,matmul", [(True, False), (False, True)])
def test_cudnn_float32_only_where_its_tf32_switch_is_the_matmuls(cudnn, matmul, monkeypatch, tf32_flags):
    """cuDNN reads its TF32 switch in the forward and again in the backward pass: float32 takes
    cuDNN only where that switch equals the reference's matmul switch, else lstm_ref, saying why;
    float64 never rounds to TF32."""
    monkeypatch.setattr(native, "CUDNN_VERIFIED", True)
    tf32_flags(matmul=matmul, cudnn=cudnn)

    def cuda_like(dtype):
        return type("CudaLike", (), {"dtype": dtype, "shape": (2, 1, 3), "device": torch.device("cuda")})()
    why = native.why_reference(cuda_like(torch.float32))
    assert f"torch.backends.cudnn.allow_tf32={cudnn}, torch.backends.cuda.matmul.allow_tf32={matmul}" in why
    assert native.why_reference(cuda_like(torch.float64)) is None
    tf32_flags(matmul=cudnn, cudnn=cudnn)
    assert native.why_reference(cuda_like(torch.float32)) is None


# ------------------------------------------------------------------------ GPU: cuDNN

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(40, 32, 512, 1024)])
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_cudnn_lstm_matches_the_reference(dtype, shape, reverse, monkeypatch, tf32_flags):
    """cuDNN's LSTM against lstm_ref on the GPU, IEEE float32 (both TF32 switches off: cuDNN's
    forward and backward) and float64; no weight-layout warning. The T=40, H=1024 case with
    weights at 1 / sqrt(H) (nn.LSTM's initialisation scale): at the small cases' 0.5 a 1024-wide
    recurrence is chaotic over 40 steps (float32 torch against float64 on the CPU: h off by 2,
    gradients of order 1e9 off by as much), so two correct float32 implementations summing in
    different orders disagree by O(1); at 1 / sqrt(H) float32 is within 0.2 of this bound of
    float64 (CPU, both directions), a wrong weight layout or gate order off by O(1)."""
    monkeypatch.setattr(native, "CUDNN_VERIFIED", True)
    tf32_flags(matmul=False, cudnn=False)
    T, B, I, H = shape
    args = _inputs(*shape, dtype, "both", True, device="cuda", w_scale=0.5 if T < 40 else H ** -0.5)
    assert native.why_reference(*args) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _outputs_and_grads(native.lstm, args, reverse)
    assert not [w for w in caught if native._FLAT_WEIGHTS_WARNING in str(w.message)]
    want = _outputs_and_grads(lstm_ref, args, reverse)
    tol = TOL[dtype] if shape[0] < 40 else dict(rtol=1e-4, atol=1e-4)   # T=40, H=1024: longer sums
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"output/grad {i}: {m}")
