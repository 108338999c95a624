"""Double backward through the fused ops: their backward passes are not differentiable, so a
second backward (a gradient penalty, a Hessian-vector product) must fail naming the op, never
return second-order terms that silently miss the op's part. torch's once_differentiable, used
before, failed only when the incoming gradient required grad: a penalty on gaussian_kl's
gradient with respect to mu_q then gave mu_q.grad = 1 (the penalty's own term) where the
reference gives 22. The first-order gradients under create_graph=True stay the plain ones."""
import importlib.util

import pytest
import torch

import _cuda_emulation as emu
from _helpers import smooth_chain_inputs
from zf_kernels import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # Triton: the GPU, else the interpreter


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_() for s in shapes]


def _chain_call(ln):
    args, _ = smooth_chain_inputs(T=3, B=2, H=5, M=4, Z=3, G=6, device=DEVICE, ln=ln)
    op = ops.zforcing_chain_ln if ln else ops.zforcing_chain
    return (lambda *a, backend: tuple(op(*a, backend=backend))), args


def _lstm_call():
    x, w_ih, w_hh, b_ih, h0 = _leaves((4, 2, 3), (20, 3), (20, 5), (20,), (2, 5))
    return (lambda *a, backend: (lambda out, hc: (out, *hc))(*ops.lstm(*a, backend=backend))), \
        [x, w_ih, w_hh, b_ih, None, h0]


def _calls():
    """op name -> (function of (*args, backend) giving a tuple of tensors, its args)."""
    mu, lv, mp, lp, x = _leaves((2, 3, 5), (2, 3, 5), (2, 3, 5), (2, 3, 5), (2, 3, 5), seed=1)
    probs = torch.rand(2, 3, 5, dtype=torch.float64).to(DEVICE)
    targets = torch.randint(0, 5, (2, 3)).to(DEVICE)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64).to(DEVICE)
    gates_x, h, c, w_hh, bias = _leaves((2, 12), (2, 3), (2, 3), (12, 3), (12,), seed=2)
    one = lambda f: (lambda *a, backend: (f(*a, backend=backend),))   # noqa: E731
    return {
        "reparameterize": (one(ops.reparameterize), [mu, lv, x.detach()]),
        "gaussian_kl": (one(ops.gaussian_kl), [mu, lv, mp, lp, mask]),
        "gaussian_nll": (one(ops.gaussian_nll), [x, mu, lv, mask]),
        "bernoulli_nll": (one(ops.bernoulli_nll), [probs, mu, mask]),
        "categorical_nll": (one(ops.categorical_nll), [targets, mu, mask]),
        "leaky_clamp": (one(lambda t, backend: ops.leaky_clamp(t, 1 / 3, 1.5, backend=backend)), [mu]),
        "lstm_cell": (lambda *a, backend: tuple(ops.lstm_cell(*a, backend=backend)), [gates_x, h, c, w_hh, bias]),
        "lstm": _lstm_call(),
        "zforcing_chain": _chain_call(ln=False),
        "zforcing_chain_ln": _chain_call(ln=True),
    }


def _first_order(fn, args, backend, create_graph):
    """The outputs' weighted sum and its gradients w.r.t. the args that require grad."""
    outs = fn(*args, backend=backend)
    g = torch.Generator().manual_seed(7)
    y = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return leaves, torch.autograd.grad(y, leaves, create_graph=create_graph)


def _penalty_backward(leaves, grads):
    """A gradient penalty plus a first-order term of every leaf, so the backward always has a
    path: before the fix it then ran through without the op's second-order part."""
    (sum(gr.pow(2).sum() for gr in grads) + sum(a.sum() for a in leaves)).backward()


def _check_double_backward_fails(name, backend):
    fn, args = _calls()[name]
    _, plain = _first_order(fn, args, backend, create_graph=False)
    leaves, grads = _first_order(fn, args, backend, create_graph=True)
    for a, b in zip(grads, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)   # the same kernels (a GPU's atomics may reorder)
    with pytest.raises(RuntimeError, match=rf"double backward through zf_kernels\.ops\.{name} with "
                                           rf"backend='{backend}'.*backend='torch'"):
        _penalty_backward(leaves, grads)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("name", sorted(_calls()))
def test_triton_double_backward_fails_naming_the_op(name):
    _check_double_backward_fails(name, "triton")


@pytest.mark.skipif(emu.compiler() is None or torch.cuda.is_available(),
                    reason="the CUDA kernels' CPU emulation: a CPU machine with g++")
@pytest.mark.parametrize("name", ["lstm", "zforcing_chain"])
def test_cuda_double_backward_fails_naming_the_op(name, monkeypatch):
    emu.install_backend(monkeypatch, threads=8, tf32=0)
    _check_double_backward_fails(name, "cuda")


def test_torch_backend_double_backward_gives_the_second_order_terms():
    """What the error sends users to: the reference's penalty gradient, checked by gradgradcheck."""
    fn, args = _calls()["gaussian_kl"]
    leaves = [a for a in args if a.requires_grad]

    def kl(*ls):
        it = iter(ls)
        return fn(*[next(it) if a.requires_grad else a for a in args], backend="torch")[0]
    assert torch.autograd.gradgradcheck(kl, leaves)


def test_without_create_graph_a_fused_backward_builds_no_graph():
    fn, args = _calls()["gaussian_kl"]
    _, grads = _first_order(fn, args, "triton", create_graph=False)
    assert not any(g.requires_grad for g in grads)
