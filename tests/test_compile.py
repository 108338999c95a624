"""torch.compile over the ops and the model: every Triton op (the recurrences lstm, lstm_cell,
zforcing_chain, zforcing_chain_ln; leaky_clamp; the sampling and likelihood ops) is traced
through its torch.library custom ops (``*/triton_op.py``; the CUDA recurrences' alike:
tests/test_cuda_emulation_compile.py); a fused op without such a form would be opaque to dynamo
(``_dispatch._callable``: ``torch.compiler.disable``), run as eager code does between its graphs,
and so is any fused op in a frame dynamo runs eagerly; the reference ("torch") stays traceable;
under torch.compile "auto" keeps only the recurrences fused and traces the other ops' references
(``compile_traced``). Before that, dynamo traced into the Triton launches, and in the interpreter
failed (InterpreterError, a fake-tensor KeyError on uint64). Compiled with ``backend="aot_eager"``
(dynamo + AOTAutograd, no code generation: seconds on the CPU; inductor also ran here, ~40 s per
model). Outside torch.compile nothing is wrapped: wrapping imports torch._dynamo, ~1.5 s in every
process."""
import os
import subprocess
import sys

import pytest
import torch

from _helpers import flat_tensors, model_loss_and_grads, smooth_chain_inputs
from zf_kernels import ZForcing, ops, training_loss
from zf_kernels.ops import _dispatch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton backend in the interpreter")

T, B, I, H, D = 4, 3, 5, 7, 6


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _lstm(backend):
    return lambda x, wi, wh, bi, bh: ops.lstm(x, wi, wh, bi, bh, reverse=True, backend=backend)


def _chain(backend):
    return lambda *a: ops.zforcing_chain(*a, backend=backend)


def _likelihoods(backend):
    def f(x, mu, logvar, mu_p, logvar_p, logits, mask):
        lv = ops.leaky_clamp(logvar, 1.0, 8.0, backend=backend)
        z = ops.reparameterize(mu, lv, x, backend=backend)
        return (ops.gaussian_kl(mu, lv, mu_p, logvar_p, mask, backend=backend),
                ops.gaussian_nll(x, z, lv, mask, backend=backend),
                ops.bernoulli_nll(torch.sigmoid(x).detach().round(), logits, mask, backend=backend),
                ops.categorical_nll(x.detach().argmax(-1), logits, mask, backend=backend))
    return f


def _likelihood_args():
    *args, mask = _leaves((T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B))
    return [*args, (mask.detach() > 0).float()]


CASES = {
    "lstm": (_lstm, lambda: _leaves((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))),
    "zforcing_chain": (_chain, lambda: smooth_chain_inputs(T, B, H, 5, 3, 4)[0]),
    "likelihoods": (_likelihoods, _likelihood_args),
}


def _outputs_and_grads(fn, args):
    flat = flat_tensors(fn(*args))
    leaves = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(sum((1 + i) * t.sum() for i, t in enumerate(flat)), leaves)
    return [t.detach() for t in flat], list(grads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_ops_under_torch_compile_give_the_eager_numbers(case):
    make_fn, make_args = CASES[case]
    torch._dynamo.reset()
    args = make_args()
    want = _outputs_and_grads(make_fn("triton"), args)
    got = _outputs_and_grads(torch.compile(make_fn("triton"), backend="aot_eager"), args)
    ref = _outputs_and_grads(make_fn("torch"), args)
    for w, g, r in zip(want[0] + want[1], got[0] + got[1], ref[0] + ref[1]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)    # the same kernels, run eagerly
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def _kl(backend):
    return lambda mu, logvar, mu_p, logvar_p: ops.gaussian_kl(mu, logvar, mu_p, logvar_p, backend=backend)


def test_fused_op_without_a_traced_form_is_a_graph_break_and_the_reference_is_traced(monkeypatch):
    """A fused op without a traced form (here the Triton gaussian_kl with its form unregistered)
    is opaque: a graph break, which fullgraph=True refuses; with its form it is none; its
    reference is traced."""
    args = _leaves(*[(T, B, D)] * 4)
    _kl("triton")(*args)                        # the implementations loaded, as after a first step
    torch._dynamo.reset()
    assert torch._dynamo.explain(_kl("triton"))(*args).graph_break_count == 0
    monkeypatch.delitem(_dispatch._TRACED_FORMS, "zf_kernels.ops.distributions.triton:gaussian_kl")
    torch._dynamo.reset()
    fused = torch._dynamo.explain(_kl("triton"))(*args)
    # nothing of it traced (whether dynamo reports the skipped call as a break reason depends
    # on what it traced before it in the frame: torch 2.11 reports none, nor does 2.13 since
    # the autocast check no longer asks torch.amp.is_autocast_available on the CPU)
    assert fused.op_count == 0, (fused.op_count, [str(r.reason)[:200] for r in fused.break_reasons])
    torch._dynamo.reset()
    with pytest.raises(Exception, match="disable"):
        torch.compile(_kl("triton"), backend="aot_eager", fullgraph=True)(*args)
    torch._dynamo.reset()
    ref = torch._dynamo.explain(_kl("torch"))(*args)
    assert ref.graph_break_count == 0 and ref.op_count > 0


def _likelihoods_with_mask_grad(backend):
    """The four likelihood ops on one (T, B) mask that requires grad (its gradient needs the
    unmasked row values the forward kernels then also write: a second output of the custom ops)."""
    def f(x, mu, logvar, mu_p, logvar_p, logits, mask):
        return (ops.gaussian_kl(mu, logvar, mu_p, logvar_p, mask, backend=backend),
                ops.gaussian_nll(x, mu, logvar, None if mask is None else mask[:1], backend=backend),  # broadcast over T
                ops.bernoulli_nll(torch.sigmoid(x).detach().round(), logits, mask, backend=backend),
                ops.categorical_nll(x.detach().argmax(-1), logits, mask, backend=backend))
    return f


def test_triton_likelihood_ops_are_traced_through_their_custom_ops():
    """gaussian_kl, gaussian_nll, bernoulli_nll and categorical_nll on Triton under fullgraph=True
    (value checks off: categorical's range check reads the targets), with the eager kernels'
    numbers, every gradient and the mask's; without a mask too; the custom ops pass opcheck
    (masked or not, storing the row values or not)."""
    args = _leaves((T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B, D), (T, B))
    args[-1] = (args[-1].detach() > 0).float().requires_grad_()
    fused = _likelihoods_with_mask_grad("triton")
    unmasked = (lambda *a: fused(*a[:-1], None), args[:-1] + [args[-1].detach()])
    for f, f_args in ((fused, args), unmasked):
        with ops.assume_valid_inputs():
            want = _outputs_and_grads(f, f_args)
            torch._dynamo.reset()
            got = _outputs_and_grads(torch.compile(f, backend="aot_eager", fullgraph=True), f_args)
        for w, g in zip(want[0] + want[1], got[0] + got[1]):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        if f is fused:
            assert len(got[1]) == 7 and got[1][-1].abs().sum() > 0      # the mask got its gradient
            ref = _outputs_and_grads(_likelihoods_with_mask_grad("torch"), args)
            for g, r in zip(got[0] + got[1], ref[0] + ref[1]):
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    from zf_kernels.ops.distributions import triton_op as dist_op
    x, mu, lv, logits = args[0], args[1], args[2], args[5]
    mask = args[-1]
    for m, store in ((None, False), (mask.detach(), False), (mask, True)):
        torch.library.opcheck(dist_op.row_reduction_forward, ("gaussian_kl", [mu, lv, args[3], args[4]], m, store))
        torch.library.opcheck(dist_op.row_reduction_forward, ("gaussian_nll", [x, mu, lv], m, store))
        torch.library.opcheck(dist_op.row_reduction_forward,
                              ("bernoulli_nll", [torch.sigmoid(x).detach().round(), logits], m, store))
        torch.library.opcheck(dist_op.categorical_nll_forward, (x.detach().argmax(-1), logits, m, store))


@pytest.mark.parametrize("reverse", [False, True])
def test_triton_lstm_is_traced_through_its_custom_ops(reverse):
    """The Triton lstm has a traced form (torch.library custom ops, ``lstm/triton_op.py``):
    fullgraph=True compiles a function calling it, with the eager kernels' numbers, forward and
    every gradient, h0 / c0 given or not."""
    x, wi, wh, bi, bh = _leaves((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))
    h0, c0 = _leaves((B, H), (B, H), seed=1)
    for states in ((), (h0, c0)):
        def f(x, wi, wh, bi, bh, *states):
            out, (h, c) = ops.lstm(x, wi, wh, bi, bh, *states, reverse=reverse, backend="triton")
            return out, h, c
        args = [x, wi, wh, bi, bh, *states]
        want = _outputs_and_grads(f, args)
        torch._dynamo.reset()
        got = _outputs_and_grads(torch.compile(f, backend="aot_eager", fullgraph=True), args)
        for w, g in zip(want[0] + want[1], got[0] + got[1]):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_triton_lstm_cell_in_a_loop_is_traced_through_its_custom_ops(with_bias):
    """A per-step loop of the Triton lstm_cell (as python/storn.py and sampling run it):
    fullgraph=True compiles it (a graph break per step before), with the eager kernels' numbers
    and every gradient."""
    gx, h0, c0, w, b = _leaves((T, B, 4 * H), (B, H), (B, H), (4 * H, H), (4 * H,))

    def f(gx, h, c, w, *bias):
        outs = []
        for g in gx.unbind(0):
            h, c = ops.lstm_cell(g, h, c, w, *bias, backend="triton")
            outs.append(h)
        return torch.stack(outs), c

    args = [gx, h0, c0, w, *([b] if with_bias else [])]
    want = _outputs_and_grads(f, args)
    torch._dynamo.reset()
    got = _outputs_and_grads(torch.compile(f, backend="aot_eager", fullgraph=True), args)
    assert len(got[1]) == len(args)
    for w_, g in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(g, w_, rtol=0, atol=0)
    from zf_kernels.ops.lstm import triton_op
    torch.library.opcheck(triton_op.lstm_cell_forward, (gx[0], h0, c0, w, b if with_bias else None))


def test_triton_step_ops_of_a_sampling_loop_are_traced_through_their_custom_ops():
    """The per-step ops of an SRNN / STORN-style loop on Triton: leaky_clamp, reparameterize and
    lstm_cell (custom ops each): fullgraph=True compiles the loop, with the eager kernels' numbers
    and every gradient; the two small ops pass opcheck."""
    gx, h0, c0, w, w_z = _leaves((T, B, 4 * H), (B, H), (B, H), (4 * H, H), (2 * D, H))
    eps = torch.randn(T, B, D)

    def f(gx, h, c, w, w_z):
        zs = []
        for g, e in zip(gx.unbind(0), eps.unbind(0)):
            mu, logvar = ops.leaky_clamp(h @ w_z.t(), 1.0, 8.0, backend="triton").chunk(2, -1)
            zs.append(ops.reparameterize(mu, logvar, e, backend="triton"))
            h, c = ops.lstm_cell(g + zs[-1].sum(-1, keepdim=True), h, c, w, backend="triton")
        return torch.stack(zs), h

    args = [gx, h0, c0, w, w_z]
    want = _outputs_and_grads(f, args)
    torch._dynamo.reset()
    got = _outputs_and_grads(torch.compile(f, backend="aot_eager", fullgraph=True), args)
    for w_, g in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(g, w_, rtol=0, atol=0)
    from zf_kernels.ops.activations import triton_op as act_op
    from zf_kernels.ops.distributions import triton_op as dist_op
    x, mu, lv = _leaves((T, B, D), (T, B, D), (T, B, D))
    torch.library.opcheck(act_op.leaky_clamp_forward, (x, 1 / 3, 3.0))
    torch.library.opcheck(dist_op.reparameterize_forward, (mu, lv, torch.randn(T, B, D)))


def test_triton_step_custom_ops_pass_opcheck_on_transposed_inputs():
    """The fakes of lstm_cell's and reparameterize's custom ops give the real outputs' strides
    when an input is a transposed view: the kernels' outputs and gradients are contiguous, where
    an empty_like fake kept the view's strides (inductor then asserted on the real output:
    torch.compile of an lstm_cell step on a transposed h failed)."""
    from zf_kernels.ops.distributions import triton_op as dist_op
    from zf_kernels.ops.lstm import triton_op
    gx_t, h_t, c, w_t, b = _leaves((4 * H, B), (H, B), (B, H), (H, 4 * H), (4 * H,))
    gx, h, w = gx_t.t(), h_t.t(), w_t.t()
    for args in ((gx, h, c, w, b), (gx.contiguous(), h.contiguous(), c.t().contiguous().t(), w, None)):
        torch.library.opcheck(triton_op.lstm_cell_forward, args)
    h, c, w = (t.detach() for t in (h, c, w))      # the backward ops have no autograd of their own
    h_new, c_new, gates = triton_op.lstm_cell_forward(gx.detach(), h, c, w, b.detach())
    d_h = torch.randn(H, B).t()
    torch.library.opcheck(triton_op.lstm_cell_backward, (d_h, torch.randn(B, H), h, c, w, gates, c_new, [True] * 5))
    mu, lv = _leaves((D, B), (D, B))
    torch.library.opcheck(dist_op.reparameterize_backward,
                          (torch.randn(D, B).t(), lv.detach().t(), torch.randn(B, D), [True, True, True]))
    torch.library.opcheck(dist_op.reparameterize_forward, (mu.t(), lv.t(), torch.randn(D, B).t()))


@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("schedule", ["auto", "stepwise"])
def test_triton_chains_are_traced_through_their_custom_ops(schedule, ln, monkeypatch):
    """The Triton zforcing_chain's and zforcing_chain_ln's traced forms: fullgraph=True, the
    eager kernels' numbers, forward and every gradient (12 and 13 inputs)."""
    monkeypatch.setenv("ZF_CHAIN_SCHEDULE", schedule)
    args = smooth_chain_inputs(T, B, H, 5, 3, 4, ln=ln)[0]
    op = ops.zforcing_chain_ln if ln else ops.zforcing_chain
    f = lambda *a: op(*a, backend="triton")  # noqa: E731
    want = _outputs_and_grads(f, args)
    torch._dynamo.reset()
    got = _outputs_and_grads(torch.compile(f, backend="aot_eager", fullgraph=True), args)
    assert len(got[1]) == (13 if ln else 12)
    for w, g in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("ln", [False, True])
def test_triton_chain_custom_ops_pass_opcheck(ln):
    from zf_kernels.ops.recurrence import triton_op
    args = smooth_chain_inputs(3, 2, 5, 4, 3, 4, ln=ln)[0]
    torch.library.opcheck(triton_op.chain_ln_forward if ln else triton_op.chain_forward, (*args, "auto"))


def test_triton_lstm_custom_ops_pass_opcheck():
    """torch.library.opcheck: the schema, the fake (shape-only) versions against the real ops,
    the autograd registration and AOTAutograd's handling."""
    from zf_kernels.ops.lstm import triton_op
    x, wi, wh, bi, bh = _leaves((3, 2, 5), (4 * 7, 5), (4 * 7, 7), (4 * 7,), (4 * 7,))
    h0 = torch.randn(2, 7)
    torch.library.opcheck(triton_op.lstm_forward, (x, wi, wh, bi, bh, h0, None, True, "auto"))
    torch.library.opcheck(triton_op.lstm_forward, (x, wi, wh, None, None, None, None, False, "stepwise"))


def test_compiled_model_trains_like_the_eager_one():
    """ZForcing(backend="triton") under torch.compile: the loss and every parameter's gradient
    those of the uncompiled model (aot_eager: the same ops, regrouped)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ZForcing(3, "gaussian", emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6, backend="triton")
    y, eps = torch.randn(T, 2, 3), torch.randn(T, 2, 3)

    def step(m):
        model.zero_grad()
        loss = training_loss(m(y, eps=eps), 0.3, 0.5, 1.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = step(model)
    c_loss, c_grads = step(torch.compile(model, backend="aot_eager"))
    torch.testing.assert_close(c_loss, loss, rtol=1e-6, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), c_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _run_fresh(code: str) -> str:
    """``code`` in a new Python process with the Triton interpreter on; its last stdout line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_eager_calls_do_not_import_dynamo():
    code = ("import sys, torch\nfrom zf_kernels import ops\n"
            "x = torch.randn(3, 2, 4)\n"
            "ops.lstm(x, torch.randn(20, 4), torch.randn(20, 5), backend='triton')\n"
            "ops.gaussian_kl(x, x, x, x, backend='triton')\n"
            "print('torch._dynamo' in sys.modules)\n")
    assert _run_fresh(code) == "False"


@pytest.fixture
def as_on_cuda(monkeypatch):
    """"auto" deciding as for CUDA tensors: the interpreter's Triton kernels count as usable."""
    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)


def test_auto_under_compile_traces_the_small_ops_and_keeps_the_recurrences_fused(as_on_cuda):
    x, w = torch.randn(3, 2, 4), torch.randn(16, 4)
    small = {"leaky_clamp": (x,), "reparameterize": (x, x, x), "gaussian_kl": (x, x, x, x),
             "gaussian_nll": (x, x, x), "bernoulli_nll": (x, x), "categorical_nll": (x, x),
             "lstm_cell": (x[0].repeat(1, 4), x[0], x[0], w)}
    for op, args in small.items():
        assert ops.explain(op, *args, compiling=True) == ("torch", _dispatch.COMPILE_TRACED_REASON), op
        assert ops.explain(op, *args, compiling=False)[0] == "triton", op
    assert ops.explain("lstm", x, w, w, compiling=True)[0] == "triton"
    assert ops.explain("zforcing_chain", *smooth_chain_inputs(T, B, H, 5, 3, 4)[0][:3], compiling=True)[0] == "triton"
    with pytest.raises(TypeError, match="compiling"):
        ops.explain("lstm", x, w, w, compiling="yes")
    with pytest.raises(ValueError, match="compile_traced"):
        _dispatch.register("lstm", "triton", "zf_kernels.ops.lstm.triton:lstm", compile_traced=True)


def _model_step(backend, cond_ln=False):
    torch.manual_seed(0)
    model = ZForcing(3, "gaussian", emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6, cond_ln=cond_ln, backend=backend)
    return model_loss_and_grads(model, torch.randn(T, 2, 3), torch.randn(T, 2, 3))


@pytest.mark.parametrize("cond_ln", [False, True])
def test_compiled_auto_model_is_one_graph(as_on_cuda, cond_ln):
    """ZForcing(backend="auto") under torch.compile, as on a GPU: its backward LSTM and its chain
    through the Triton kernels' custom ops, every other op traced: fullgraph=True compiles the
    step, which gives the eager numbers (eager "auto" runs every op on Triton here)."""
    torch._dynamo.reset()
    step, loss_and_grads = _model_step("auto", cond_ln)
    want = loss_and_grads(step)
    got = loss_and_grads(torch.compile(step, backend="aot_eager", fullgraph=True))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,cond_ln", [("torch", False), ("triton", False), ("triton", True)])
def test_model_compiles_into_one_graph(backend, cond_ln):
    """ZForcing(backend="torch") with its value checks off (``assume_valid_inputs``, as the
    trainer's and the benchmarks' compiled steps): no graph break, so fullgraph=True compiles it
    (its backward LSTM's weights are no nn.LSTM, which dynamo refuses; the checks' flag is read
    without a ContextVar, which dynamo cannot trace); so does ZForcing(backend="triton"), every
    op through its custom ops, with the eager kernels' numbers."""
    torch._dynamo.reset()
    step, loss_and_grads = _model_step(backend, cond_ln)
    want = loss_and_grads(step)
    got = loss_and_grads(torch.compile(step, backend="aot_eager", fullgraph=True))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_op_stays_opaque_in_frames_dynamo_runs_eagerly(monkeypatch):
    """Past its recompile limit dynamo runs a frame eagerly, where torch.compiler.is_compiling()
    is False: the dispatcher's frames (recompiled per op) must still hand back the opaque
    wrapper, or the traced caller would trace the Triton launch (in the interpreter: an
    InterpreterError)."""
    monkeypatch.setattr(_dispatch, "_OPAQUE", {})     # wrappers created while dynamo traces
    torch._dynamo.reset()

    def f(x, mu, logvar):
        a = ops.leaky_clamp(x, 1 / 3, 3.0, backend="triton")
        z = ops.reparameterize(mu, logvar, a, backend="triton")
        return ops.gaussian_kl(mu, logvar, z, a, backend="triton"), ops.gaussian_nll(x, z, logvar, backend="triton")

    args = _leaves((T, B, D), (T, B, D), (T, B, D))
    want = _outputs_and_grads(f, args)
    with torch._dynamo.config.patch(recompile_limit=1):
        got = _outputs_and_grads(torch.compile(f, backend="aot_eager"), args)
    for w, g in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_compiled_model_keeps_its_value_checks_and_their_switch():
    """Under torch.compile the model's value checks run (between graphs) unless
    ``assume_valid_inputs()``: the flag dynamo reads follows the block (a guard: recompiled)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ZForcing(3, "gaussian", emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6, backend="torch")
    step = torch.compile(lambda y: model(y).nll, backend="aot_eager")
    y = torch.randn(T, 2, 3)
    y[1, 0, 2] = float("nan")
    with ops.assume_valid_inputs():
        assert torch.isnan(step(y)).any()
    with pytest.raises(ValueError, match="NaN"):
        step(y)
    with ops.assume_valid_inputs():
        assert torch.isnan(step(y)).any()


def test_a_compiled_step_can_be_the_process_first_call():
    """The Triton implementations are imported with the package where they can run
    (``_dispatch.preload_triton``): a fresh process whose first call is a compiled step with
    fullgraph=True (as on a GPU; here "auto" told the tensors are CUDA ones) meets no import
    inside the trace. Before, the first import of the Triton lstm broke the graph there."""
    code = ("import torch\nfrom zf_kernels import ZForcing, ops, training_loss\n"
            "from zf_kernels.ops import _dispatch\n"
            "_dispatch._on_cuda = lambda tensors: True\n"
            "m = ZForcing(3, emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6)\n"
            "f = torch.compile(lambda y: training_loss(m(y), 0.3, 0.5, 1.0), backend='aot_eager', fullgraph=True)\n"
            "with ops.assume_valid_inputs():\n"
            "    f(torch.randn(4, 2, 3)).backward()\n"
            "print('ok')\n")
    assert _run_fresh(code) == "ok"


def test_an_implementation_not_loaded_yet_is_refused_inside_a_trace_with_the_reason(monkeypatch):
    """Dynamo cannot trace an import (and the CUDA extension's first load may be a build): a fused
    implementation met first inside a trace is unavailable there, with a reason saying what to do,
    rather than dynamo's error about importlib (here the Triton lstm, as if not preloaded)."""
    target = _dispatch._REGISTRY["lstm"]["triton"]
    monkeypatch.delitem(_dispatch._LOADED, target)
    x = torch.randn(T, B, I)
    why = torch.compile(lambda x: _dispatch._why_not("lstm", "triton", (x,)), backend="eager", fullgraph=True)(x)
    assert "not loaded yet" in why and "once eagerly before compiling" in why, why
    assert target not in _dispatch._LOADED
    assert _dispatch._why_not("lstm", "triton", (x,)) is None    # eagerly: loaded
