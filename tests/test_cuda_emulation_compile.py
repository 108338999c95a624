"""torch.compile over the CUDA recurrences (``backend="cuda"``): traced through their
torch.library custom ops (``lstm/cuda_op.py``, ``recurrence/cuda_op.py``), no graph break, the
eager Functions' numbers. On the CPU: the kernels are csrc/'s source in the CPU emulation
(tests/_cuda_emulation.py), put behind the ops' kernels factory; the rest of ``ops`` is real
(Triton in the interpreter). Compiled with ``backend="aot_eager"`` (dynamo + AOTAutograd, no code
generation). Nothing here says anything about a GPU run."""
import pytest
import torch

import _cuda_emulation as emu
from _helpers import flat_tensors, model_loss_and_grads, smooth_chain_inputs
from zf_kernels import ZForcing, ops

pytestmark = [pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation"),
              pytest.mark.skipif(torch.cuda.is_available(), reason="the emulated kernels take CPU tensors")]

T, B, I, H = 4, 3, 5, 7


@pytest.fixture
def calls(monkeypatch):
    return emu.install_backend(monkeypatch, threads=8, tf32=0)


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def _outputs_and_grads(fn, args):
    flat = flat_tensors(fn(*args))
    leaves = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(sum((1 + i) * t.sum() for i, t in enumerate(flat)), leaves)
    return [t.detach() for t in flat], list(grads)


def _compare_compiled(f, args, calls, want_calls):
    """``f`` eagerly (the autograd Function), compiled with fullgraph=True (the custom ops) and
    with backend "torch" in its place: the first two equal, both the reference's numbers; the
    compiled run made the kernel calls ``want_calls``."""
    want = _outputs_and_grads(f("cuda"), args)
    torch._dynamo.reset()
    calls.clear()
    got = _outputs_and_grads(torch.compile(f("cuda"), backend="aot_eager", fullgraph=True), args)
    assert sorted(set(calls)) == want_calls
    ref = _outputs_and_grads(f("torch"), args)
    assert len(got[1]) == len(ref[1]) == len([a for a in args if a.requires_grad])
    for w, g, r in zip(want[0] + want[1], got[0] + got[1], ref[0] + ref[1]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_states", [False, True])
def test_cuda_lstm_is_traced_through_its_custom_ops(calls, reverse, with_states):
    x, wi, wh, bi, bh = _leaves((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))
    states = _leaves((B, H), (B, H), seed=1) if with_states else []

    def f(backend):
        def run(x, wi, wh, bi, bh, *states):
            out, (h, c) = ops.lstm(x, wi, wh, bi, bh, *states, reverse=reverse, backend=backend)
            return out, h, c
        return run

    _compare_compiled(f, [x, wi, wh, bi, bh, *states], calls, ["lstm backward", "lstm forward"])


def test_cuda_chain_is_traced_through_its_custom_ops(calls):
    args = [a.detach().double().requires_grad_() for a in smooth_chain_inputs(T, B, H, 5, 3, 4)[0]]
    _compare_compiled(lambda backend: lambda *a: ops.zforcing_chain(*a, backend=backend), args, calls,
                      ["chain backward", "chain forward"])


def test_inductor_takes_the_backward_ops_gradients_as_the_kernels_write_them(calls, monkeypatch):
    """The backward ops' fake versions give contiguous gradients, as the kernels write them:
    they kept a non-contiguous input's strides (empty_like), and inductor's generated code
    asserted on the real gradient of a transposed x (opcheck does not compare strides)."""
    from torch._inductor import config as inductor_config

    from zf_kernels.ops.lstm import _op_glue as lstm_glue
    from zf_kernels.ops.recurrence import _op_glue as chain_glue
    monkeypatch.setattr(inductor_config, "force_disable_caches", True)   # a cached graph hides the fakes
    xb, wi, wh = _leaves((B, T, I), (4 * H, I), (4 * H, H))
    x_t = xb.detach().transpose(0, 1)
    assert all(g.is_contiguous() for g in lstm_glue.fake_grads(x_t, wi, wh, None, None, [True] * 7)[:3])
    assert all(g.is_contiguous() for g in chain_glue.fake_grads([x_t, wi.t()], [True, True], torch.float64))

    def f(backend):
        def run(xb, wi, wh):
            out, (h, c) = ops.lstm(xb.transpose(0, 1) * 2.0, wi, wh, backend=backend)
            return out, h
        return run
    want = _outputs_and_grads(f("cuda"), [xb, wi, wh])
    torch._dynamo.reset()
    got = _outputs_and_grads(torch.compile(f("cuda"), backend="inductor", fullgraph=True), [xb, wi, wh])
    for w, g in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_cuda_custom_ops_pass_opcheck(calls):
    """torch.library.opcheck: schema, fake versions against the real ops, autograd registration,
    AOTAutograd."""
    from zf_kernels.ops.lstm import cuda_op as lstm_op
    from zf_kernels.ops.recurrence import cuda_op as chain_op
    x, wi, wh, bi, bh = _leaves((3, 2, 5), (4 * 7, 5), (4 * 7, 7), (4 * 7,), (4 * 7,))
    h0 = torch.randn(2, 7, dtype=torch.float64)
    torch.library.opcheck(lstm_op.lstm_forward, (x, wi, wh, bi, bh, h0, None, True, 0, 0))
    torch.library.opcheck(lstm_op.lstm_forward, (x, wi, wh, None, None, None, None, False, 0, 0))
    args = [a.detach().double().requires_grad_() for a in smooth_chain_inputs(3, 2, 5, 4, 3, 4)[0]]
    torch.library.opcheck(chain_op.chain_forward, (*args, 0, 0))


def test_cuda_custom_ops_fake_outputs_in_bfloat16(monkeypatch):
    """The fake (shape-only) versions of the forward ops against the real ones with bfloat16
    inputs, where the state dtype differs from the input's: the LSTM's c_all and the chain's c in
    float32, as the kernels store them (a bfloat16 fake would mistype the traced graph)."""
    from zf_kernels.ops.lstm import cuda_op as lstm_op
    from zf_kernels.ops.recurrence import cuda_op as chain_op
    emu.install_backend(monkeypatch, threads=32, tf32=0)      # bfloat16 tiles: whole warps
    x, wi, wh, bi, bh = (t.to(torch.bfloat16) for t in _leaves((3, 2, 5), (4 * 7, 5), (4 * 7, 7), (4 * 7,), (4 * 7,)))
    assert lstm_op.lstm_forward(x, wi, wh, bi, bh, None, None, False, 0, 0)[4].dtype == torch.float32
    torch.library.opcheck(lstm_op.lstm_forward, (x, wi, wh, bi, bh, None, None, False, 0, 0),
                          test_utils="test_faketensor")
    args = [a.detach().to(torch.bfloat16) for a in smooth_chain_inputs(3, 2, 5, 4, 3, 4)[0]]
    assert chain_op.chain_forward(*args, 0, 0)[1].dtype == torch.float32
    torch.library.opcheck(chain_op.chain_forward, (*args, 0, 0), test_utils="test_faketensor")


def test_compiled_cuda_model_is_one_graph_with_the_eager_numbers(calls):
    """ZForcing(backend="cuda") (``--backend cuda``: both recurrences on the CUDA kernels, the
    other ops "auto", which under compile traces their references): fullgraph=True compiles its
    training step, whose loss and gradients are the eager model's."""
    torch.manual_seed(0)
    model = ZForcing(3, "gaussian", emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6, backend="cuda").double()
    y = torch.randn(T, 2, 3, dtype=torch.float64)
    eps = torch.randn(T, 2, 3, dtype=torch.float64)
    step, loss_and_grads = model_loss_and_grads(model, y, eps)
    want = loss_and_grads(step)
    torch._dynamo.reset()
    calls.clear()
    got = loss_and_grads(torch.compile(step, backend="aot_eager", fullgraph=True))
    assert sorted(set(calls)) == ["chain backward", "chain forward", "lstm backward", "lstm forward"]
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
