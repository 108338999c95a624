"""The Triton LSTM (zf_kernels.ops.lstm.triton) against torch.nn.LSTM / nn.LSTMCell (independent
references, weights copied) and the naive reference: values and every gradient, odd shapes,
NaN-prefilled buffers, float64 gradcheck, the public API. On a CPU the kernels run under
TRITON_INTERPRET=1 (float64 / float32 / float16 / bfloat16, the interpreter's bf16 arithmetic
repaired by tests/_interpreter_bf16.py); the large shapes run only on a GPU."""
import os

import pytest
import torch

_ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not _ON_GPU:
    # must be set before any @triton.jit is decorated (i.e. before the kernel modules import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from _helpers import skip_if_schedule_forced  # noqa: E402
from torch.func import functional_call  # noqa: E402

from zf_kernels import ops  # noqa: E402
from zf_kernels.ops.lstm import naive  # noqa: E402
from zf_kernels.ops.lstm import triton as lt  # noqa: E402

DEVICE = "cuda" if _ON_GPU else "cpu"
# triton 3.6's interpreter converts a 1-element array to int (numpy DeprecationWarning): noise
pytestmark = [pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
              pytest.mark.usefixtures("nan_empty")]   # nan_empty: conftest.py
if not _ON_GPU and type(lt._lstm_fwd_step_kernel).__name__ != "InterpretedFunction":
    pytest.fail("zf_kernels.ops.lstm.triton was imported before TRITON_INTERPRET=1 was set; "
                "set it in the environment (or a conftest.py) to run these tests on a CPU", pytrace=False)

# dtype -> (rtol, atol) for values and gradients at these small shapes
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}
# half precision: relative error of the whole tensor, ||a - b|| / ||b||
HALF_REL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _close(a, b, dtype, name):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _make(T, B, I, H, bias, state, dtype, seed=0, w_scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).to(DEVICE).requires_grad_()

    x = r(T, B, I)
    w_ih = r(4 * H, I, scale=w_scale)
    w_hh = r(4 * H, H, scale=w_scale)
    b_ih = r(4 * H) if bias in ("both", "ih") else None
    b_hh = r(4 * H) if bias in ("both", "hh") else None
    h0 = r(B, H) if state else None
    c0 = r(B, H) if state else None
    # random, non-uniform, non-contiguous upstream gradients for out, h_T and c_T
    d_out = torch.randn(H, B, T, generator=g, dtype=dtype).to(DEVICE).permute(2, 1, 0)
    d_h = torch.randn(H, B, generator=g, dtype=dtype).to(DEVICE).t()
    d_c = torch.randn(B, H, generator=g, dtype=dtype).to(DEVICE)
    return (x, w_ih, w_hh, b_ih, b_hh, h0, c0), (d_out, d_h, d_c)


def _nn_lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse=False):
    """torch.nn.LSTM run functionally on our weights (grads flow back to them); a missing bias
    is a zero constant; reverse = flip time before and after."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    has_bias = b_ih is not None or b_hh is not None
    m = torch.nn.LSTM(I, H, bias=has_bias).to(device=x.device, dtype=x.dtype)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    if has_bias:
        zero = torch.zeros(4 * H, dtype=x.dtype, device=x.device)
        params["bias_ih_l0"] = zero if b_ih is None else b_ih
        params["bias_hh_l0"] = zero if b_hh is None else b_hh
    hx = None if h0 is None else (h0.unsqueeze(0), c0.unsqueeze(0))
    # cuDNN rounds float32 operands to TF32 by default (torch.backends.cudnn.allow_tf32): off the
    # 1e-5 bound by 1e-3 on an H200 (2026-11-27); the reference here is IEEE float32. cuDNN reads
    # the switch again when its backward runs (a new RNN descriptor, later, in autograd), so it
    # must stay off until the gradients are taken: the caller holds it off (tf32_flags)
    assert not (x.is_cuda and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32), \
        "cuDNN's TF32 switch is on: the nn.LSTM reference (forward and backward) would round to TF32"
    out, (h, c) = functional_call(m, params, (x.flip(0) if reverse else x, hx))
    return (out.flip(0) if reverse else out), (h[0], c[0])


def _run(fn, inputs, grads, reverse):
    out, (h, c) = fn(*inputs, reverse=reverse)
    wrt = [t for t in inputs if t is not None]
    # one backward call drives all three outputs
    return [out, h, c] + list(torch.autograd.grad([out, h, c], wrt, grads))


NAMES = ["out", "h_T", "c_T", "grad_x", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "grad_h0", "grad_c0"]


def _names(inputs):
    keep = [True] * 3 + [t is not None for t in inputs]
    return [n for n, k in zip(NAMES, keep) if k]


# (T, B, I, H, reverse, bias, h0/c0 given, dtype): odd sizes; H=37 and 20 span several hidden
# blocks (BLOCK_H=16) and K chunks (BLOCK_K=32, backward K=4H); B=17 spans two batch blocks.
LSTM_CASES = [
    (1, 1, 1, 1, False, "both", True, torch.float64),
    (3, 17, 5, 37, True, "both", True, torch.float32),
    (7, 3, 33, 20, False, "none", False, torch.float64),
    (3, 1, 5, 37, False, "ih", True, torch.float32),
    (7, 1, 1, 3, True, "hh", False, torch.float64),
    (3, 3, 33, 37, True, "none", True, torch.float64),
    (7, 17, 33, 37, False, "both", True, torch.float32),
    (4, 70, 3, 5, True, "both", True, torch.float64),    # B=70: two batch blocks of 64
]
SCHEDULES = ["persistent", "stepwise"]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T,B,I,H,reverse,bias,state,dtype", LSTM_CASES)
def test_lstm_matches_nn_lstm_and_naive(T, B, I, H, reverse, bias, state, dtype, schedule, tf32_flags):
    # IEEE float32 everywhere on a GPU, the nn.LSTM reference's cuDNN backward included (it runs in
    # _run's autograd.grad, after _nn_lstm returned); the kernels' "auto" precision follows the
    # matmul switch (zf_kernels/ops/_precision.py)
    tf32_flags(matmul=False, cudnn=False)
    inputs, grads = _make(T, B, I, H, bias, state, dtype)
    got = _run(lambda *a, **k: lt.lstm(*a, **k, schedule=schedule), inputs, grads, reverse)
    names = _names(inputs)
    for ref_fn in (naive.lstm_ref, _nn_lstm):
        ref = _run(ref_fn, inputs, grads, reverse)
        assert len(got) == len(ref) == len(names)
        for n, a, b in zip(names, got, ref):
            assert a.dtype == dtype and a.shape == b.shape, n
            _close(a, b, dtype, f"{n} vs {ref_fn.__name__}")
    # inputs untouched
    assert all(torch.isfinite(t).all() for t in inputs if t is not None)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T,B,I,H,reverse,bias,state,dtype", [LSTM_CASES[1], LSTM_CASES[5], LSTM_CASES[6]])
def test_lstm_forward_reading_transposed_weight(T, B, I, H, reverse, bias, state, dtype, schedule, monkeypatch):
    """FWD_W_TRANSPOSED: the IEEE forward reads W_hh^T (H, 4H); values and every gradient as
    the naive reference (odd H spanning several hidden blocks and K chunks, B over two blocks)."""
    monkeypatch.setattr(lt, "FWD_W_TRANSPOSED", True)
    inputs, grads = _make(T, B, I, H, bias, state, dtype, seed=3)
    got = _run(lambda *a, **k: lt.lstm(*a, **k, schedule=schedule), inputs, grads, reverse)
    ref = _run(naive.lstm_ref, inputs, grads, reverse)
    for n, a, b in zip(_names(inputs), got, ref):
        _close(a, b, dtype, f"{n} (W_hh^T forward)")


@pytest.mark.skipif(_ON_GPU, reason="the GPU's own configuration is what the GPU tests run")
@pytest.mark.parametrize("block_k", [64, 128])
def test_lstm_persistent_wide_k_chunks(block_k, monkeypatch):
    """PERSISTENT_FP32_BLOCK_K's wider chunks (tune_tiles "-k64" / "-k128"), forced into the
    persistent kernels: H = 150 is one partial and one full 128 chunk (three chunks of 64),
    values and every gradient as the reference, both directions."""
    monkeypatch.setattr(lt, "_persistent_config",
                        lambda B, H, ref: (dict(BLOCK_B=16, BLOCK_H=256, BLOCK_K=block_k, num_warps=4), "forced"))
    inputs, grads = _make(3, 5, 7, 150, "both", True, torch.float64, seed=21, w_scale=150 ** -0.5)
    for reverse in (False, True):
        got = _run(lambda *a, **k: lt.lstm(*a, **k, schedule="persistent"), inputs, grads, reverse)
        ref = _run(naive.lstm_ref, inputs, grads, reverse)
        for n, a, b in zip(_names(inputs), got, ref):
            _close(a, b, torch.float64, f"{n} (BLOCK_K {block_k}, reverse={reverse})")


def test_lstm_out_sum_expanded_grad_and_unused_outputs():
    """``out.sum()`` hands backward an expanded (stride-0) gradient; h_T / c_T unused get zeros."""
    inputs, _ = _make(3, 3, 5, 20, "both", True, torch.float64, seed=1)
    wrt = [t for t in inputs if t is not None]
    got = torch.autograd.grad(lt.lstm(*inputs)[0].sum(), wrt)
    ref = torch.autograd.grad(naive.lstm_ref(*inputs)[0].sum(), wrt)
    for n, a, b in zip(NAMES[3:], got, ref):
        _close(a, b, torch.float64, n)
    # only c_T used
    got = torch.autograd.grad(lt.lstm(*inputs, reverse=True)[1][1].square().sum(), wrt)
    ref = torch.autograd.grad(naive.lstm_ref(*inputs, reverse=True)[1][1].square().sum(), wrt)
    for n, a, b in zip(NAMES[3:], got, ref):
        _close(a, b, torch.float64, n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_lstm_retained_graph_second_backward(schedule):
    """The first backward consumes the saved gate buffer; a second one must rebuild it."""
    inputs, grads = _make(3, 2, 5, 20, "both", True, torch.float64, seed=2)
    out, (h, c) = lt.lstm(*inputs, reverse=True, schedule=schedule)
    wrt = [t for t in inputs if t is not None]
    first = torch.autograd.grad([out, h, c], wrt, grads, retain_graph=True)
    second = torch.autograd.grad([out, h, c], wrt, grads)
    for n, a, b in zip(NAMES[3:], second, first):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("reverse,schedule", [(False, "persistent"), (True, "persistent"), (True, "stepwise")])
def test_lstm_gradcheck_float64(reverse, schedule):
    inputs, _ = _make(3, 2, 3, 2, "both", True, torch.float64, seed=3)

    def f(*args):
        out, (h, c) = lt.lstm(*args, reverse=reverse, schedule=schedule)
        return out, h, c

    # fast mode (random projections of the Jacobian): a few interpreter runs instead of hundreds
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_lstm_zero_length():
    x = torch.randn(0, 3, 4, dtype=torch.float64, device=DEVICE)
    w_ih = torch.randn(20, 4, dtype=torch.float64, device=DEVICE)
    w_hh = torch.randn(20, 5, dtype=torch.float64, device=DEVICE)
    out, (h, c) = lt.lstm(x, w_ih, w_hh)
    assert out.shape == (0, 3, 5)
    assert torch.equal(h, torch.zeros(3, 5, dtype=torch.float64, device=DEVICE))
    assert torch.equal(c, torch.zeros(3, 5, dtype=torch.float64, device=DEVICE))
    h0 = torch.randn(3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    c0 = torch.randn(3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out, (h, c) = ops.lstm(x, w_ih, w_hh, h0=h0, c0=c0, reverse=True, backend="triton")
    assert out.shape == (0, 3, 5) and torch.equal(h, h0) and torch.equal(c, c0)
    gh, gc = torch.autograd.grad((2 * h + 3 * c).sum(), [h0, c0])
    assert torch.equal(gh, torch.full_like(h0, 2.0)) and torch.equal(gc, torch.full_like(c0, 3.0))


def test_lstm_schedule_choice_is_explained():
    skip_if_schedule_forced("ZF_LSTM_SCHEDULE")
    inputs, _ = _make(3, 3, 5, 20, "both", True, torch.float32, seed=9)
    x, w_hh = inputs[0], inputs[2]
    backend, why = ops.explain("lstm", x, inputs[1], w_hh, backend="triton")
    assert backend == "triton" and "schedule persistent" in why, why
    assert lt.explain_schedule(x, w_hh, "stepwise").startswith("schedule stepwise")
    with pytest.raises(ValueError, match="schedule must be one of"):
        lt.lstm(*inputs, schedule="fastest")


@pytest.mark.skipif(_ON_GPU, reason="relies on the interpreter running programs one after another")
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_lstm_persistent_barrier_timeout_raises_instead_of_hanging(monkeypatch, direction):
    """A persistent grid whose programs are not all resident must fail loudly, not hang. The
    interpreter runs programs one after another, so a grid of 3 hidden-block programs (2 of
    them fully masked) can never meet at its first barrier."""
    inputs, _ = _make(3, 2, 5, 7, "both", True, torch.float64, seed=10)
    monkeypatch.setattr(lt, "MAX_POLLS", 4)
    wide_grid = lambda B, H, cfg: (1, 3)  # noqa: E731
    if direction == "forward":
        monkeypatch.setattr(lt, "_grid", wide_grid)
        with pytest.raises(RuntimeError, match="grid barrier of the persistent LSTM forward kernel timed out"):
            lt.lstm(*inputs, schedule="persistent")
    else:
        out, _ = lt.lstm(*inputs, schedule="persistent")
        monkeypatch.setattr(lt, "_grid", wide_grid)
        with pytest.raises(RuntimeError, match="grid barrier of the persistent LSTM backward kernel timed out"):
            torch.autograd.grad(out.sum(), inputs[0])


# ---------------------------------------------------------------------------------------------
# lstm_cell

def _nn_lstm_cell(gates_x, h, c, w_hh, bias=None):
    """torch.nn.LSTMCell with input = gates_x and weight_ih = identity."""
    B, H = h.shape
    m = torch.nn.LSTMCell(4 * H, H).to(device=h.device, dtype=h.dtype)
    zero = torch.zeros(4 * H, dtype=h.dtype, device=h.device)
    params = {"weight_ih": torch.eye(4 * H, dtype=h.dtype, device=h.device), "weight_hh": w_hh,
              "bias_ih": zero if bias is None else bias, "bias_hh": zero}
    return functional_call(m, params, (gates_x, (h, c)))


def _make_cell(B, H, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).to(DEVICE).requires_grad_()

    inputs = (r(B, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=0.5), r(4 * H) if bias else None)
    grads = (torch.randn(H, B, generator=g, dtype=dtype).to(DEVICE).t(),
             torch.randn(B, H, generator=g, dtype=dtype).to(DEVICE))
    return inputs, grads


CELL_NAMES = ["h_new", "c_new", "grad_gates_x", "grad_h", "grad_c", "grad_w_hh", "grad_bias"]


@pytest.mark.parametrize("B,H,bias,dtype", [
    (1, 3, True, torch.float64),
    (17, 37, False, torch.float32),
    (3, 20, True, torch.float32),
])
def test_lstm_cell_matches_nn_lstm_cell_and_naive(B, H, bias, dtype):
    inputs, grads = _make_cell(B, H, bias, dtype)
    wrt = [t for t in inputs if t is not None]
    before = [t.detach().clone() for t in wrt]
    h, c = lt.lstm_cell(*inputs)
    got = [h, c] + list(torch.autograd.grad([h, c], wrt, grads))
    for t, t0 in zip(wrt, before):
        assert torch.equal(t, t0), "lstm_cell modified an input"
    for ref_fn in (naive.lstm_cell_ref, _nn_lstm_cell):
        rh, rc = ref_fn(*inputs)
        ref = [rh, rc] + list(torch.autograd.grad([rh, rc], wrt, grads))
        for n, a, b in zip(CELL_NAMES, got, ref):
            assert a.dtype == dtype, n
            _close(a, b, dtype, f"{n} vs {ref_fn.__name__}")


def test_lstm_cell_gradcheck_float64():
    inputs, _ = _make_cell(2, 3, True, torch.float64, seed=4)
    assert torch.autograd.gradcheck(lt.lstm_cell, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# public API

def test_public_api_backend_triton():
    inputs, grads = _make(3, 3, 5, 20, "both", True, torch.float32, seed=5)
    backend, why = ops.explain("lstm", *inputs[:3], backend="triton")
    assert backend == "triton" and why.startswith("requested; schedule "), why
    got = _run(lambda *a, **k: ops.lstm(*a, **k, backend="triton"), inputs, grads, True)
    ref = _run(lambda *a, **k: ops.lstm(*a, **k, backend="torch"), inputs, grads, True)
    for n, a, b in zip(NAMES, got, ref):
        _close(a, b, torch.float32, n)

    cin, cgrads = _make_cell(3, 20, True, torch.float32, seed=6)
    h, c = ops.lstm_cell(*cin, backend="triton")
    rh, rc = ops.lstm_cell(*cin, backend="torch")
    got = [h, c] + list(torch.autograd.grad([h, c], cin, cgrads))
    ref = [rh, rc] + list(torch.autograd.grad([rh, rc], cin, cgrads))
    for n, a, b in zip(CELL_NAMES, got, ref):
        _close(a, b, torch.float32, n)


# ---------------------------------------------------------------------------------------------
# half precision (fp32 accumulation, fp32 cell state): fp16 and bf16 also in the interpreter (its
# bf16 tl.dot repaired by tests/_interpreter_bf16.py); the big shapes on the GPU only

def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


_GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA device")]
SMALL, BIG = (5, 3, 33, 37, False), (40, 32, 512, 1024, True)


@pytest.mark.parametrize("T,B,I,H,reverse,dtype", [
    pytest.param(*SMALL, torch.float16, id="small-f16"),
    pytest.param(*SMALL, torch.bfloat16, id="small-bf16"),
    pytest.param(*BIG, torch.bfloat16, id="big-bf16", marks=_GPU_ONLY),
    pytest.param(*BIG, torch.float16, id="big-f16", marks=_GPU_ONLY),
    pytest.param(*BIG, torch.float32, id="big-f32", marks=_GPU_ONLY),
])
def test_lstm_low_precision(T, B, I, H, reverse, dtype):
    """Against the fp32 reference run on the same (rounded) numbers: whole-tensor relative error."""
    tol = HALF_REL.get(dtype, 1e-4)
    # nn.LSTM-like weight scale, so the gates are not all saturated at H=1024
    inputs, grads = _make(T, B, I, H, "both", True, torch.float32, seed=7, w_scale=H ** -0.5)
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    ref_in = [t.detach().float().requires_grad_() for t in low]
    lg = [g.to(dtype) for g in grads]
    got = _run(lt.lstm, low, lg, reverse)
    ref = _run(naive.lstm_ref, ref_in, [g.float() for g in lg], reverse)
    for n, a, b in zip(NAMES, got, ref):
        assert a.dtype == dtype, n
        assert _rel(a, b) < tol, f"{n}: relative error {_rel(a, b):.2e} >= {tol:.0e} ({dtype})"

    cin, cg = _make_cell(B, H, True, torch.float32, seed=8)
    low = [t.detach().to(dtype).requires_grad_() for t in cin]
    ref_in = [t.detach().float().requires_grad_() for t in low]
    h, c = lt.lstm_cell(*low)
    got = [h, c] + list(torch.autograd.grad([h, c], low, [g.to(dtype) for g in cg]))
    rh, rc = naive.lstm_cell_ref(*ref_in)
    ref = [rh, rc] + list(torch.autograd.grad([rh, rc], ref_in, [g.to(dtype).float() for g in cg]))
    for n, a, b in zip(CELL_NAMES, got, ref):
        assert a.dtype == dtype, n
        assert _rel(a, b) < tol, f"{n}: relative error {_rel(a, b):.2e} >= {tol:.0e} ({dtype})"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_lstm_bfloat16_carried_cell_gradient_in_float32(schedule):
    """bfloat16: the backward's dc is carried in float32 between steps (the stepwise schedule keeps
    it in a buffer between launches, the persistent one in registers). With the weights zero,
    f ~ o ~ 1 and c = 0, dc grows by d_out[t] = 0.003 a step back from d_cT = 1: increments
    below half a bfloat16 step at 1 (2^-8), which a bfloat16 dc would round away every step
    (grad c0 stuck at 1.0 instead of ~1.024). Within one output rounding of float64 on the same
    (rounded) inputs."""
    T, B, I, H = 8, 2, 2, 3
    bias = torch.zeros(4 * H, dtype=torch.float64)
    bias[H:2 * H] = bias[3 * H:] = 12.0                      # f = o = sigmoid(12) ~ 1; i g = 0
    inputs = [torch.zeros(T, B, I, dtype=torch.float64), torch.zeros(4 * H, I, dtype=torch.float64),
              torch.zeros(4 * H, H, dtype=torch.float64), bias, None, torch.zeros(B, H, dtype=torch.float64),
              torch.zeros(B, H, dtype=torch.float64)]
    low = [None if t is None else t.to(DEVICE, torch.bfloat16).requires_grad_() for t in inputs]
    ref_in = [None if t is None else t.detach().double().requires_grad_() for t in low]
    d_out = torch.full((T, B, H), 0.003, dtype=torch.float64, device=DEVICE)
    d_c = torch.ones(B, H, dtype=torch.float64, device=DEVICE)
    out, (h, c) = lt.lstm(*low, schedule=schedule)
    got, = torch.autograd.grad([out, c], low[6], [d_out.to(torch.bfloat16), d_c.to(torch.bfloat16)])
    rout, (rh, rc) = naive.lstm_ref(*ref_in)
    want, = torch.autograd.grad([rout, rc], ref_in[6], [d_out, d_c])
    assert want.min() > 1.02                                  # what a bfloat16 dc would lose
    assert (got.double() - want).abs().max() <= 1.01 * 2.0 ** -8   # half a bfloat16 step in [1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T,B,I,H,reverse", [
    (40, 32, 512, 1024, True),     # TIMIT backward LSTM: persistent grid 1 x 64 on 132 SMs
    (784, 32, 64, 512, False),     # the SeqMNIST shape of the cuDNN comparison: 1 x 32
    (9, 40, 33, 600, True),        # two batch blocks of 32, odd-sized: a 2 x 38 persistent grid
    (5, 1, 7, 19, False),
])
def test_lstm_gpu_schedules_match_float64_reference(T, B, I, H, reverse, schedule):
    """Both schedules at the benchmark shapes (multi-program persistent grids exist only on a
    GPU: the interpreter runs one program per batch block) against a float64 reference."""
    inputs, grads = _make(T, B, I, H, "both", True, torch.float32, seed=11, w_scale=H ** -0.5)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    got = _run(lambda *a, **k: lt.lstm(*a, **k, schedule=schedule), inputs, grads, reverse)
    ref = _run(naive.lstm_ref, ref_in, [g.double() for g in grads], reverse)
    assert lt.explain_schedule(inputs[0], inputs[2], schedule).startswith(f"schedule {schedule}")
    for n, a, b in zip(NAMES, got, ref):
        assert torch.isfinite(a).all(), n
        assert _rel(a, b) < 1e-4, f"{n}: relative error {_rel(a, b):.2e} ({schedule})"


def test_lstm_schedule_environment_override(monkeypatch):
    inputs, grads = _make(3, 2, 5, 7, "both", True, torch.float64, seed=12)
    x, w_hh = inputs[0], inputs[2]
    monkeypatch.setenv("ZF_LSTM_SCHEDULE", "stepwise")
    assert lt.explain_schedule(x, w_hh).startswith("schedule stepwise: requested: one launch per step (ZF_LSTM_SCHEDULE")
    assert lt.explain_schedule(x, w_hh, "persistent").startswith("schedule persistent")   # explicit wins
    got = _run(lt.lstm, inputs, grads, False)
    ref = _run(naive.lstm_ref, inputs, grads, False)
    for n, a, b in zip(NAMES, got, ref):
        _close(a, b, torch.float64, n)
    monkeypatch.setenv("ZF_LSTM_SCHEDULE", "fast")
    with pytest.raises(ValueError, match="ZF_LSTM_SCHEDULE must be one of"):
        lt.lstm(*inputs)


@pytest.mark.skipif(_ON_GPU, reason="CPU emulation of a resident grid (the GPU tests run real ones)")
@pytest.mark.parametrize("reverse,state", [(True, True), (False, False)])
def test_lstm_persistent_multi_program_grid(monkeypatch, reverse, state):
    """A persistent grid of 2 batch blocks x 3 hidden blocks, its programs run concurrently
    (tests/_concurrent_grid.py): the barrier, the partitioning and the data each program reads
    from the others, on the CPU. Without the barrier this fails (errors ~0.5)."""
    _check_concurrent_2x3_grid(monkeypatch, reverse, state)


@pytest.mark.skipif(_ON_GPU, reason="CPU emulation of a resident grid (the GPU tests run real ones)")
def test_lstm_persistent_barriers_hold_back_programs_ahead_of_a_slow_one(monkeypatch):
    """test_lstm_persistent_multi_program_grid's 2 x 3 grid with hidden program 0 of each batch
    block slowed down (10 ms before each of its stores): each step's barrier must hold programs
    1 and 2 back until program 0 has written its columns of h_t (forward) or dgates_t (backward),
    which they read at the next step. A barrier that let them through a step early reads the
    NaN-filled h_t or the pre-activations not yet overwritten. Unslowed, such a barrier passes
    or fails as the threads happen to interleave."""
    from _concurrent_grid import slow_down_stores
    slow_down_stores(monkeypatch, column=0, seconds=0.01)
    _check_concurrent_2x3_grid(monkeypatch, reverse=True, state=True)


def _check_concurrent_2x3_grid(monkeypatch, reverse, state):
    """The persistent LSTM on a 2 x 3 grid whose programs run concurrently (T=4, B=20, H=37,
    float64; values and every gradient) against the naive reference."""
    from _concurrent_grid import concurrent_programs
    cfg = dict(BLOCK_B=16, BLOCK_H=16, BLOCK_K=16, num_warps=4)
    monkeypatch.setattr(lt, "_persistent_config", lambda B, H, ref: (cfg, "forced 2 x 3 grid"))
    inputs, grads = _make(4, 20, 5, 37, "both", state, torch.float64, seed=13)
    assert lt._grid(20, 37, cfg) == (2, 3)
    with concurrent_programs(monkeypatch):
        got = _run(lambda *a, **k: lt.lstm(*a, **k, schedule="persistent"), inputs, grads, reverse)
    ref = _run(naive.lstm_ref, inputs, grads, reverse)
    for n, a, b in zip(_names(inputs), got, ref):
        _close(a, b, torch.float64, n)
