"""The reference ("torch") ops against independent implementations: torch.nn.LSTM /
LSTMCell, torch.distributions, torch.nn.functional; float64 gradcheck; masks; bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

from zf_kernels import ops

SHAPES = [(1,), (3, 7), (2, 3, 5), (1, 1, 1)]


def _lstm_module(I, H, bias=True, dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.LSTM(I, H, bias=bias).to(dtype)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (5, 3, 4, 7), (9, 2, 6, 3)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_matches_nn_lstm(T, B, I, H, reverse, bias):
    m = _lstm_module(I, H, bias)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    b = (m.bias_ih_l0, m.bias_hh_l0) if bias else (None, None)
    out, (hT, cT) = ops.lstm(x, m.weight_ih_l0, m.weight_hh_l0, *b, h0, c0, reverse=reverse, backend="torch")
    xin = x.flip(0) if reverse else x
    ref, (rh, rc) = m(xin, (h0.unsqueeze(0), c0.unsqueeze(0)))
    ref = ref.flip(0) if reverse else ref
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(hT, rh[0])
    torch.testing.assert_close(cT, rc[0])
    # one backward through every output, with non-uniform upstream gradients
    g = [torch.randn_like(t) for t in (out, hT, cT)]
    grads = torch.autograd.grad((out, hT, cT), (x, h0, c0, m.weight_ih_l0, m.weight_hh_l0), g)
    rgrads = torch.autograd.grad((ref, rh[0], rc[0]), (x, h0, c0, m.weight_ih_l0, m.weight_hh_l0), g)
    for a, r in zip(grads, rgrads):
        torch.testing.assert_close(a, r)


def test_lstm_default_states_are_zero():
    m = _lstm_module(3, 4, dtype=torch.float32)
    x = torch.randn(4, 2, 3)
    out, _ = ops.lstm(x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    torch.testing.assert_close(out, m(x)[0])


def test_lstm_cell_matches_nn_lstmcell():
    torch.manual_seed(1)
    cell = torch.nn.LSTMCell(5, 6).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    h, c = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    gx = x @ cell.weight_ih.t() + cell.bias_ih
    h1, c1 = ops.lstm_cell(gx, h, c, cell.weight_hh, cell.bias_hh)
    rh, rc = cell(x, (h, c))
    torch.testing.assert_close(h1, rh)
    torch.testing.assert_close(c1, rc)


def test_lstm_gradcheck_float64():
    m = _lstm_module(2, 3)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, wi, wh, h0: ops.lstm(x, wi, wh, None, None, h0, None, reverse=True)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, m.weight_ih_l0, m.weight_hh_l0, h0))


def _normal_params(shape, dtype=torch.float64):
    return [torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_kl_matches_distributions(shape):
    mq, lq, mp, lp = _normal_params(shape)
    ours = ops.gaussian_kl(mq, lq, mp, lp)
    ref = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)
    torch.testing.assert_close(ours, ref)
    # forward-mode AD and vmap'd gradients too (its stable pieces are autograd.Functions: without
    # setup_context / jvp both failed, "must override the setup_context staticmethod")
    assert torch.autograd.gradcheck(ops.gaussian_kl, (mq, lq, mp, lp), check_forward_ad=True, check_batched_grad=True)
    if len(shape) >= 2:   # vmap over the first dim: each call still has a last dim to sum
        assert torch.allclose(torch.func.vmap(ops.gaussian_kl)(mq, lq, mp, lp), ours)


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_nll_matches_distributions(shape):
    x, mu, lv, _ = _normal_params(shape)
    ref = -Normal(mu, (0.5 * lv).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(ops.gaussian_nll(x, mu, lv), ref)
    assert torch.autograd.gradcheck(ops.gaussian_nll, (x, mu, lv), check_forward_ad=True, check_batched_grad=True)
    if len(shape) >= 2:
        assert torch.allclose(torch.func.vmap(ops.gaussian_nll)(x, mu, lv), ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_bernoulli_nll_matches_distributions(shape):
    x = torch.bernoulli(torch.full(shape, 0.5, dtype=torch.float64))
    logits = (5 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    ref = -Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(ops.bernoulli_nll(x, logits), ref)
    assert torch.autograd.gradcheck(lambda lg: ops.bernoulli_nll(x, lg), (logits,))
    if len(shape) >= 2:   # under vmap the range check cannot read x back: it is skipped, not an error
        torch.testing.assert_close(torch.func.vmap(ops.bernoulli_nll)(x, logits), ref)


def test_bernoulli_nll_is_stable_for_huge_logits():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    logits = torch.tensor([[1e4, -1e4, -1e4, 1e4]])
    torch.testing.assert_close(ops.bernoulli_nll(x, logits), torch.tensor([2e4]))


@pytest.mark.parametrize("lead", [(1,), (4, 3), (2, 1, 5)])
def test_categorical_nll_matches_cross_entropy(lead):
    C = 11
    logits = torch.randn(*lead, C, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, C, lead)
    ref = F.cross_entropy(logits.reshape(-1, C), targets.reshape(-1), reduction="none").view(lead)
    torch.testing.assert_close(ops.categorical_nll(targets, logits), ref)
    assert torch.autograd.gradcheck(lambda lg: ops.categorical_nll(targets, lg), (logits,))
    if len(lead) >= 2:
        torch.testing.assert_close(torch.func.vmap(ops.categorical_nll)(targets, logits), ref)


def test_reparameterize_and_gradcheck():
    mu, lv, eps, _ = _normal_params((3, 4))
    torch.testing.assert_close(ops.reparameterize(mu, lv, eps), mu + (0.5 * lv).exp() * eps)
    assert torch.autograd.gradcheck(ops.reparameterize, (mu, lv, eps))


def test_masks_multiply_per_position_and_broadcast():
    mq, lq, mp, lp = _normal_params((4, 3, 5))
    full = ops.gaussian_kl(mq, lq, mp, lp)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0]).view(4, 1)
    torch.testing.assert_close(ops.gaussian_kl(mq, lq, mp, lp, mask=mask), full * mask)
    bool_mask = torch.rand(4, 3) > 0.5
    torch.testing.assert_close(ops.gaussian_nll(mq, mp, lp, mask=bool_mask),
                               ops.gaussian_nll(mq, mp, lp) * bool_mask)
    # the two discrete likelihoods: a bool mask over (T, B) and a float one broadcast over B
    x = torch.bernoulli(torch.full((4, 3, 5), 0.5, dtype=mq.dtype))
    torch.testing.assert_close(ops.bernoulli_nll(x, mq, mask=bool_mask), ops.bernoulli_nll(x, mq) * bool_mask)
    targets = torch.randint(0, 5, (4, 3))
    torch.testing.assert_close(ops.categorical_nll(targets, mq, mask=mask),
                               ops.categorical_nll(targets, mq) * mask)
    assert bool_mask.any() and not bool_mask.all() and (ops.categorical_nll(targets, mq) > 0).all()


def test_half_precision_inputs_are_computed_in_float32():
    mq, lq, mp, lp = [t.detach() for t in _normal_params((6, 9), torch.float32)]
    ref = ops.gaussian_kl(mq, lq, mp, lp)
    out = ops.gaussian_kl(*(t.bfloat16() for t in (mq, lq, mp, lp)))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3)), "mu_p"),
    (lambda: ops.gaussian_nll(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3)), "mask"),
    (lambda: ops.reparameterize(torch.zeros(2), torch.zeros(2, dtype=torch.float64), torch.zeros(2)), "logvar"),
    (lambda: ops.categorical_nll(torch.tensor([0, 5]), torch.zeros(2, 5)), "targets"),
    (lambda: ops.categorical_nll(torch.zeros(2), torch.zeros(2, 5)), "targets"),
    (lambda: ops.bernoulli_nll(torch.zeros(2, 3), [1, 2]), "logits"),
    (lambda: ops.lstm(torch.zeros(3, 2, 4), torch.zeros(12, 5), torch.zeros(12, 3)), "weight_ih"),
    (lambda: ops.lstm(torch.zeros(3, 2), torch.zeros(12, 4), torch.zeros(12, 3)), r"x must have 3 dimensions"),
    (lambda: ops.lstm(torch.zeros(3, 2, 4), torch.zeros(12, 4), torch.zeros(12, 3), h0=torch.zeros(3, 3)), "h0"),
    (lambda: ops.lstm_cell(torch.zeros(2, 12), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(12, 3)), "c"),
    (lambda: ops.gaussian_kl(*[torch.zeros(2)] * 4, backend="fastest"), "backend"),
    (lambda: ops.gaussian_kl(*[torch.zeros(2, dtype=torch.int32)] * 4), "mu_q"),
    # a mask that broadcasts, but to more than the leading shape (2,): it would widen the result
    (lambda: ops.gaussian_nll(*[torch.zeros(2, 3)] * 3, mask=torch.ones(4, 2)),
     r"mask must broadcast to the leading shape \(2,\).*got \(4, 2\)"),
    (lambda: ops.gaussian_kl(*[torch.zeros(2, 3)] * 2, torch.zeros(2, 3, device="meta"), torch.zeros(2, 3)),
     "mu_p is on meta but mu_q is on cpu"),
    (lambda: ops.explain("gaussian_nll", *[torch.zeros(2, 3)] * 3, backend="fastest"), "backend must be one of"),
    # each check on its own: a rule some other check or a deep error would not report in its stead
    (lambda: ops.lstm_cell(torch.zeros(2, 12, 1), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(12, 3)),
     r"gates_x must have 2 dimensions, got shape \(2, 12, 1\)"),
    (lambda: ops.gaussian_nll(*[torch.tensor(0.0)] * 3), r"x must have at least 1 dimension\(s\), got shape \(\)"),
    # as many elements, another shape
    (lambda: ops.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(2, 3)),
     r"mu_p must have shape \(2, 3\), got \(3, 2\)"),
    (lambda: ops.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(2, 3)),
     r"mu_p must have shape \(2, 3\), got \(2, 1\)"),
    (lambda: ops.gaussian_nll(*[torch.zeros(2, 3)] * 3, mask=[1.0, 0.0]), "mask must be a torch.Tensor or None, got list"),
    (lambda: ops.gaussian_nll(*[torch.zeros(2, 3)] * 3, mask=torch.ones(2, device="meta")),
     "mask is on meta but the data is on cpu"),
    (lambda: ops.bernoulli_nll(*[torch.zeros(2, 3)] * 2, mask=torch.ones(4, 2)),
     r"mask must broadcast to the leading shape \(2,\)"),
    (lambda: ops.explain("gaussian_nl", torch.zeros(2, 3)), "unknown op 'gaussian_nl'"),
    (lambda: ops.bernoulli_nll(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2)),
     r"x must lie in \[0, 1\] \(Bernoulli data\), got values in \[0, 2\]"),
    (lambda: ops.bernoulli_nll(torch.tensor([[-0.5, 1.0]]), torch.zeros(1, 2), backend="torch"),
     r"x must lie in \[0, 1\] \(Bernoulli data\), got values in \[-0.5, 1\]"),
    (lambda: ops.lstm(torch.zeros(3, 2, 4), torch.zeros(8, 4), torch.zeros(8, 4)),
     r"weight_hh must have shape \(4H, H\), got \(8, 4\)"),
    (lambda: ops.lstm(torch.zeros(3, 2, 4), torch.zeros(12, 4), torch.zeros(12, 3), reverse="no"),
     "reverse must be a bool, got 'no'"),            # bool("no") read x backwards
    (lambda: ops.gaussian_nll(*[torch.zeros(2, 3)] * 3, mask=torch.ones(2, dtype=torch.complex64)),
     "mask must be a real .* tensor, got torch.complex64"),
    (lambda: ops.lstm(torch.zeros(3, 2, 4), torch.zeros(12, 4), torch.zeros(12, 3), bias_hh=torch.zeros(1)),
     r"bias_hh must have shape \(12,\), got \(1,\)"),
    (lambda: ops.lstm_cell(torch.zeros(2, 16), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(12, 3)),
     r"gates_x must have shape \(2, 12\), got \(2, 16\)"),
    (lambda: ops.lstm_cell(torch.zeros(2, 12), torch.zeros(1, 3), torch.zeros(2, 3), torch.zeros(12, 3)),
     r"h must have shape \(2, 3\), got \(1, 3\)"),
    (lambda: _chain(gates_x=torch.zeros(3, 2, 24)), "gates_x must have last dim 4H = 20"),
    (lambda: _chain(eps=torch.zeros(4, 2, 3)), r"eps must have shape \(3, 2, 3\), got \(4, 2, 3\)"),
    # Z comes from eps: a wrong eps width shows up at weight_q2, which says where its Z came from
    (lambda: _chain(eps=torch.zeros(3, 2, 2)),
     r"weight_q2 must have shape \(4, 4\) \(Z = 2: eps's last dim; M = 4: weight_qh's rows\), got \(6, 4\)"),
    (lambda: _chain(weight_iz=torch.zeros(24, 6)), r"weight_iz must have shape \(20, 6\), got \(24, 6\)"),
    (lambda: _chain(h0=torch.zeros(1, 5)), r"h0 must have shape \(2, 5\), got \(1, 5\)"),
    (lambda: _chain(eps=torch.zeros(3, 2, 3, dtype=torch.float64)), "eps has dtype torch.float64 but gates_x"),
    (lambda: _chain(ln=True, weight_g2=torch.zeros(20, 6)), r"weight_g2 must have shape \(40, 6\), got \(20, 6\)"),
    (lambda: ops.categorical_nll(torch.tensor([True, False]), torch.zeros(2, 5)), "targets must be an integer tensor"),
    (lambda: ops.categorical_nll(torch.tensor([-1, 0]), torch.zeros(2, 5)), r"targets must lie in \[0, 4\]"),
    (lambda: ops.categorical_nll(torch.tensor([0]), torch.zeros(2, 5)), r"targets must have shape \(2,\), got \(1,\)"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def _chain(ln=False, **changes):
    """``zforcing_chain`` (``ln``: ``zforcing_chain_ln``) on zeros of the right shapes (T, B, H, M, Z, G
    = 3, 2, 5, 4, 3, 6) but for ``changes``."""
    T, B, H, M, Z, G = 3, 2, 5, 4, 3, 6
    shapes = dict(gates_x=(T, B, 4 * H), post_x=(T, B, M), eps=(T, B, Z), h0=(B, H), c0=(B, H), weight_qh=(M, H),
                  weight_q2=(2 * Z, M), bias_q2=(2 * Z,))
    if ln:
        shapes.update(weight_g1=(G, Z), bias_g1=(G,), weight_g2=(8 * H, G), bias_g2=(8 * H,))
    else:
        shapes.update(weight_gz=(G, Z), bias_gz=(G,), weight_iz=(4 * H, G))
    shapes.update(weight_hh=(4 * H, H))
    args = {k: changes.get(k, torch.zeros(v)) for k, v in shapes.items()}
    return (ops.zforcing_chain_ln if ln else ops.zforcing_chain)(**args)


def test_an_implementations_unsupported_hook_is_asked(monkeypatch):
    """An implementation's ``unsupported(*tensors)`` (e.g. a dtype it lacks): an explicit request
    is refused with its reason, explain() gives that reason and "auto" falls back to torch."""
    from zf_kernels.ops import _dispatch

    def fake(x, mu, logvar, mask):
        raise AssertionError("an unsupported implementation ran")
    fake.unsupported = lambda *tensors: "no float64 kernel in this test"
    monkeypatch.setitem(_dispatch._LOADED, _dispatch._REGISTRY["gaussian_nll"]["triton"], fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert ops.explain("gaussian_nll", x, x, x, backend="triton") == ("triton", "no float64 kernel in this test")
    with pytest.raises(ops.BackendUnavailableError, match="no float64 kernel in this test"):
        ops.gaussian_nll(x, x, x, backend="triton")
    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    backend, reason = ops.explain("gaussian_nll", x, x, x)
    assert backend == "torch" and "triton: no float64 kernel in this test" in reason


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 3)
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.gaussian_nll(x, x, x, backend="cuda")
    with pytest.raises(ops.BackendUnavailableError, match="CUDA tensors"):
        ops.gaussian_nll(x, x, x, backend="triton")


def test_auto_on_cpu_picks_torch_and_says_why():
    x = torch.zeros(2, 3)
    backend, reason = ops.explain("gaussian_nll", x, x, x)
    assert backend == "torch" and "not on CUDA" in reason
    # without tensors there is nothing to decide on (it said "triton is available" here)
    assert ops.explain("lstm") == ("torch", "no tensors given: 'auto' decides on the op's tensors "
                                            "(their device, dtype and sizes)")
    torch.testing.assert_close(ops.gaussian_nll(x, x, x, backend="auto"), ops.gaussian_nll(x, x, x, backend="torch"))


# ------------------------------------------------------------ Gaussians at float32's limits
# Residuals |x - mu| from 0 to 1e37 (the square overflows float32 above 1.8e19) and logvars
# up to +-170 (exp(-logvar) over- or underflows float32 beyond +-88, exp(-logvar / 2) does
# not): float32 results and gradients equal a float64 evaluation of the textbook formula on
# the same inputs, rounded to float32 -- NaN nowhere, the same infinities (where the float64
# value is beyond float32's range), finite values to rtol 1e-5. The upstream gradient cycles
# through 1, 0, -2.5, 0: a zero one gives zero gradients even where an intermediate
# overflowed (0 * a finite float64 number). The old form (x - mu)^2 * exp(-logvar) gave NaN
# (inf * 0) or a spurious inf here.
EXTREME_RESIDUALS = [s * v for v in (0.0, 1e-30, 1e-3, 1.0, 3e9, 1.8e19, 1e20, 1e25, 1e30, 1e37) for s in (1, -1)]
EXTREME_LOGVARS = [-170.0, -100.0, -60.0, -10.0, 0.0, 10.0, 60.0, 100.0, 170.0]
KL_LOGVAR_GAPS = [-100.0, -30.0, 0.0, 30.0, 80.0, 100.0]   # lq - lp: exp overflows beyond 88.7


def gaussian_extreme_case(op, device="cpu"):
    """``(args, grad_out, expected)`` for ``op`` in float32: args require grad; ``expected`` =
    ``(out, grads, out_scale, grad_scales)``, the float64 values and the magnitudes of the
    terms they sum (for a relative tolerance)."""
    combos = [(d, lv, gap) for d in EXTREME_RESIDUALS for lv in EXTREME_LOGVARS
              for gap in (KL_LOGVAR_GAPS if op == "gaussian_kl" else (0.0,))]
    d, lv, gap = (torch.tensor(c, dtype=torch.float64).view(-1, 2) for c in zip(*combos))
    if op == "gaussian_nll":
        args = [d / 2, -d / 2, lv]                       # x - mu = d exactly in float32
    else:
        args = [d / 2, lv + gap, -d / 2, lv]             # mu_q, logvar_q, mu_p, logvar_p
    args32 = [a.float().to(device).requires_grad_() for a in args]
    a64 = [a.detach().double().cpu().requires_grad_() for a in args32]
    # period 4, coprime to the 3 KL rows per (residual, logvar): every row kind meets every g
    g = torch.tensor([1.0, 0.0, -2.5, 0.0]).repeat(d.shape[0] // 4 + 1)[: d.shape[0]].double()
    if op == "gaussian_nll":
        x, mu, lv = a64
        q = (x - mu) ** 2 * torch.exp(-lv)
        out = (0.5 * (math.log(2 * math.pi) + lv + q)).sum(-1)
        scale = (0.5 * (math.log(2 * math.pi) + lv.abs() + q)).sum(-1)
        dscale = g.abs()[:, None] * (x - mu).abs() * torch.exp(-lv)
        gscales = [dscale, dscale, 0.5 * g.abs()[:, None] * (1 + q)]
    else:
        mq, lq, mp, lp = a64
        q, ratio = (mq - mp) ** 2 * torch.exp(-lp), torch.exp(lq - lp)
        out = (0.5 * (lp - lq + ratio + q - 1)).sum(-1)
        scale = (0.5 * (lp.abs() + lq.abs() + ratio + q + 1)).sum(-1)
        dscale = g.abs()[:, None] * (mq - mp).abs() * torch.exp(-lp)
        ga = 0.5 * g.abs()[:, None]
        gscales = [dscale, ga * (ratio + 1), dscale, ga * (1 + ratio + q)]
    grads = torch.autograd.grad(out, a64, g)
    return args32, g.float().to(device), (out.detach(), grads, scale.detach(), [s.detach() for s in gscales])


def assert_like_float64(got, want, scale, rtol, what):
    """``got`` (float32) equals the float64 ``want`` rounded to float32: NaN and infinities at
    the same places (same signs), finite values within ``rtol * scale`` (+1e-37 absolute for
    results in float32's subnormal range)."""
    exp, got = want.float().double(), got.detach().double().cpu()
    assert not exp.isnan().any(), f"{what}: the float64 reference itself is NaN"
    bad = got.isnan() | (exp.isinf() != got.isinf()) | (exp.isinf() & (exp != got))
    fin = exp.isfinite() & got.isfinite()
    bad |= fin & ((got - exp).abs() > rtol * scale.double() + 1e-37)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} differ from float64, e.g. "
                           f"got {got[bad][:6].tolist()}, expected {exp[bad][:6].tolist()}")


@pytest.mark.parametrize("op", ["gaussian_nll", "gaussian_kl"])
def test_gaussian_ops_at_float32_limits_match_float64(op):
    args, g, (out64, grads64, scale, gscales) = gaussian_extreme_case(op)
    out = getattr(ops, op)(*args, backend="torch")
    assert out.dtype == torch.float32
    assert_like_float64(out, out64, scale, 1e-5, f"{op} value")
    for i, (a, w, s) in enumerate(zip(torch.autograd.grad(out, args, g), grads64, gscales)):
        assert_like_float64(a, w, s, 1e-5, f"{op} gradient {i}")


def test_gaussian_reference_double_backward():
    """The references' custom backward (naive._ScaledSquare, naive._Exp) is differentiable."""
    mq, lq, mp, lp = _normal_params((2, 3))
    assert torch.autograd.gradgradcheck(ops.gaussian_kl, (mq, lq, mp, lp))
    assert torch.autograd.gradgradcheck(ops.gaussian_nll, (mq, mp, lp))
