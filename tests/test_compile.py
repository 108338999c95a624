"""torch.compile over the ops and the model: a fused op ("triton"; "cuda" alike) is opaque to
dynamo (``_dispatch._callable``: ``torch.compiler.disable``), so dynamo runs it as eager code does
between its graphs, and the reference ("torch") stays traceable. Before that, dynamo traced into
the Triton launches, and in the interpreter failed (InterpreterError, a fake-tensor KeyError on
uint64). Compiled with ``backend="aot_eager"`` (dynamo + AOTAutograd, no code generation: seconds
on the CPU; inductor also ran here, ~40 s per model). Outside torch.compile nothing is wrapped:
wrapping imports torch._dynamo, ~1.5 s in every process."""
import subprocess
import sys

import pytest
import torch

from _helpers import flat_tensors, smooth_chain_inputs
from zf_kernels import ZForcing, ops, training_loss

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


def test_fused_op_is_a_graph_break_and_the_reference_is_traced():
    args = CASES["lstm"][1]()
    ops.lstm(*args[:3], backend="triton")       # the implementations loaded, as after a first step
    ops.lstm(*args[:3], backend="torch")
    torch._dynamo.reset()
    fused = torch._dynamo.explain(_lstm("triton"))(*args)
    # the first trace breaks at creating the wrapper (dynamo skips torch.compiler.disable itself),
    # later ones at calling it
    assert any("disable" in str(r.reason) for r in fused.break_reasons), [str(r.reason)[:200] for r in fused.break_reasons]
    torch._dynamo.reset()
    with pytest.raises(Exception, match="disable"):
        torch.compile(_lstm("triton"), backend="aot_eager", fullgraph=True)(*args)
    torch._dynamo.reset()
    ref = torch._dynamo.explain(_lstm("torch"))(*args)
    assert not any("disable" in str(r.reason) for r in ref.break_reasons)
    assert ref.op_count > 0


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


def test_eager_calls_do_not_import_dynamo():
    code = ("import sys, torch\nfrom zf_kernels import ops\n"
            "x = torch.randn(3, 2, 4)\n"
            "ops.lstm(x, torch.randn(20, 4), torch.randn(20, 5), backend='triton')\n"
            "ops.gaussian_kl(x, x, x, x, backend='triton')\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
