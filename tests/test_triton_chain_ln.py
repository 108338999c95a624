"""The cond_ln chain (``ops.zforcing_chain_ln``): its reference against an independent
per-step loop written here, its argument checks, dispatch and autocast behaviour.

Only the torch implementation exists so far (no fused Triton kernel yet): the tests that
compare a fused version with the reference will go here when there is one.
"""
import pytest
import torch
import torch.nn.functional as F

import zf_kernels.ops as ops
from zf_kernels.ops.recurrence.naive import zforcing_chain_ln_ref

NAMES = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
         "weight_g1", "bias_g1", "weight_g2", "bias_g2", "weight_hh")
OUT_NAMES = ("h", "c", "z", "mu_q", "logvar_q")


def make_inputs(T, B, H, M, Z, G, dtype=torch.float64, seed=0, scale=1.0):
    """Random inputs; at scale=1 the posterior pre-activations cross the MLP clamp, its
    outputs cross +-8, and the gen MLP's outputs cross +-3, so every clamp is exercised."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * sc
        return x.to(dtype=dtype).requires_grad_()

    k = scale
    return [
        r(T, B, 4 * H), r(T, B, M, sc=4.0 * k), r(T, B, Z), r(B, H, sc=0.5), r(B, H),
        r(M, H, sc=2.0 * k / H ** 0.5), r(2 * Z, M, sc=6.0 * k / M ** 0.5), r(2 * Z, sc=2.0 * k),
        r(G, Z, sc=2.0 * k / Z ** 0.5), r(G, sc=k), r(8 * H, G, sc=4.0 * k / G ** 0.5), r(8 * H, sc=k),
        r(4 * H, H, sc=1.0 / H ** 0.5),
    ]


def loop_ref(gates_x, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_g1, b_g1, w_g2, b_g2, w_hh):
    """The cond_ln chain written out independently of zf_kernels (nn.functional only)."""
    def act(x):
        return torch.clamp(F.leaky_relu(x, 1.0 / 3.0), -3.0, 3.0)

    H = h0.shape[1]
    h, c = h0, c0
    out = {k: [] for k in OUT_NAMES}
    for t in range(gates_x.shape[0]):
        a = act(F.linear(h, w_qh) + post_x[t])
        p = torch.clamp(F.linear(a, w_q2, b_q2), -8.0, 8.0)
        mu, lv = p[:, : p.shape[1] // 2], p[:, p.shape[1] // 2:]
        z = mu + torch.exp(lv / 2) * eps[t]
        gb = torch.clamp(F.linear(act(F.linear(z, w_g1, b_g1)), w_g2, b_g2), -3.0, 3.0)
        gain, bias = gb[:, : 4 * H], gb[:, 4 * H:]
        n = F.layer_norm(F.linear(h, w_hh), (4 * H,), eps=1e-5)
        gates = gates_x[t] + n * (1 + gain) + bias
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        for k, v in zip(OUT_NAMES, (h, c, z, mu, lv)):
            out[k].append(v)
    return [torch.stack(out[k]) for k in OUT_NAMES]


def clamp_activity(args):
    """Fractions of pre-clamp gen outputs beyond +-3 and posterior parameters beyond +-8."""
    with torch.no_grad():
        _, post_x, eps, h0, _, w_qh, w_q2, b_q2, w_g1, b_g1, w_g2, b_g2, _ = args
        a = torch.clamp(F.leaky_relu(h0 @ w_qh.t() + post_x[0], 1 / 3), -3, 3)
        p = a @ w_q2.t() + b_q2
        mu, lv = torch.clamp(p, -8, 8).chunk(2, -1)
        z = mu + torch.exp(lv / 2) * eps[0]
        gb = torch.clamp(F.leaky_relu(z @ w_g1.t() + b_g1, 1 / 3), -3, 3) @ w_g2.t() + b_g2
    return (p.abs() > 8).double().mean().item(), (gb.abs() > 3).double().mean().item()


SHAPES = [  # (T, B, H, M, Z, G)
    (1, 1, 3, 5, 2, 4),
    (4, 3, 19, 7, 3, 6),
    (6, 2, 5, 9, 4, 3),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_an_independent_loop_values_and_gradients(shape):
    args = make_inputs(*shape, seed=sum(shape))
    p_out, gb_out = clamp_activity(args)
    if shape[1] * shape[4] >= 6:   # enough entries to expect both clamps to bite
        assert 0 < p_out < 1 and 0 < gb_out < 1, (p_out, gb_out)
    ref = zforcing_chain_ln_ref(*args)
    loop = loop_ref(*args)
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(o.shape, generator=g, dtype=o.dtype) * (1 + k) for k, o in enumerate(loop)]
    g_ref = torch.autograd.grad(ref, args, grads_out)
    g_loop = torch.autograd.grad(loop, args, grads_out)
    for name, a, b in zip(OUT_NAMES, ref, loop):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    for name, a, b in zip(NAMES, g_ref, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
        assert torch.any(a != 0), name   # every input reaches some output


def test_op_torch_backend_is_the_reference_and_gradchecks():
    args = make_inputs(3, 2, 3, 4, 2, 3, scale=0.5, seed=3)
    out = ops.zforcing_chain_ln(*args, backend="torch")
    for name, a, b in zip(OUT_NAMES, out, zforcing_chain_ln_ref(*args)):
        assert torch.equal(a, b), name
    assert isinstance(out, ops.ChainOutput)
    assert torch.autograd.gradcheck(lambda *a: tuple(ops.zforcing_chain_ln(*a, backend="torch")),
                                    tuple(args), fast_mode=True)


def test_the_gain_and_bias_and_the_layer_norm_matter():
    """Guards against a reference that drops g(z) or the layer norm: changing the gain's
    bias, the bias's bias or scaling W_hh (LN is scale-invariant, the raw projection is not)."""
    args = make_inputs(3, 2, 5, 4, 3, 6, scale=0.3, seed=5)
    base = zforcing_chain_ln_ref(*args).h
    H = 5
    for sl in (slice(0, 4 * H), slice(4 * H, 8 * H)):
        moved = [a.detach().clone() for a in args]
        moved[11][sl] += 0.5
        assert not torch.allclose(zforcing_chain_ln_ref(*moved).h, base)
    scaled = [a.detach().clone() for a in args]
    scaled[12] *= 7.0
    # LN(7 x) = LN(x) up to the eps term: tiny differences only
    torch.testing.assert_close(zforcing_chain_ln_ref(*scaled).h, base.detach(), rtol=1e-4, atol=1e-4)


def test_zero_steps():
    args = make_inputs(0, 2, 3, 4, 2, 3)
    out = ops.zforcing_chain_ln(*args, backend="torch")
    assert [tuple(o.shape) for o in out] == [(0, 2, 3), (0, 2, 3), (0, 2, 2), (0, 2, 2), (0, 2, 2)]


@pytest.mark.parametrize("index,bad,match", [
    (0, torch.zeros(2, 2, 11), "gates_x must have last dim 4H = 12"),
    (1, torch.zeros(2, 2, 5), r"post_x must have shape \(2, 2, 4\)"),
    (2, torch.zeros(2, 3, 2), r"eps must have shape \(2, 2, 2\)"),
    (3, torch.zeros(2, 4), r"h0 must have shape \(2, 3\)"),
    (8, torch.zeros(3, 3), r"weight_g1 must have shape \(3, 2\)"),
    (9, torch.zeros(4), r"bias_g1 must have shape \(3,\)"),
    (10, torch.zeros(12, 3), r"weight_g2 must have shape \(24, 3\)"),
    (11, torch.zeros(12), r"bias_g2 must have shape \(24,\)"),
    (12, torch.zeros(13, 3), r"weight_hh must have shape \(12, 3\)"),
    (7, torch.zeros(4, dtype=torch.float32), "bias_q2 has dtype torch.float32"),
    (5, [[0.0]], "weight_qh must be a torch.Tensor"),
])
def test_argument_checks_name_the_argument(index, bad, match):
    args = [a.detach() for a in make_inputs(2, 2, 3, 4, 2, 3)]
    if isinstance(bad, torch.Tensor) and bad.dtype == torch.float32 and index != 7:
        bad = bad.double()
    args[index] = bad
    with pytest.raises((ValueError, TypeError), match=match):
        ops.zforcing_chain_ln(*args, backend="torch")


def test_no_fused_backend_yet_and_auto_runs_the_reference():
    args = [a.detach() for a in make_inputs(2, 2, 3, 4, 2, 3)]
    with pytest.raises(ops.BackendUnavailableError, match="no triton implementation"):
        ops.zforcing_chain_ln(*args, backend="triton")
    assert ops.explain("zforcing_chain_ln", *args)[0] == "torch"
    for a, b in zip(ops.zforcing_chain_ln(*args), zforcing_chain_ln_ref(*args)):
        assert torch.equal(a, b)


def test_autocast_runs_in_the_autocast_dtype_and_matches_cast_inputs():
    args = make_inputs(3, 2, 5, 4, 3, 6, dtype=torch.float32, scale=0.3)
    with torch.autocast("cpu", torch.bfloat16):
        out = ops.zforcing_chain_ln(*args, backend="torch")
    assert {o.dtype for o in out} == {torch.bfloat16}
    cast = zforcing_chain_ln_ref(*[a.detach().bfloat16() for a in args])
    for name, a, b in zip(OUT_NAMES, out, cast):
        assert torch.equal(a, b), name
    out.h.float().sum().backward()
    assert all(a.grad is not None and a.grad.dtype == torch.float32 for a in args)


def test_model_cond_ln_chain_matches_its_own_cell_loop():
    """ZForcing._chain (cond_ln) through the op equals a loop of the model's _cond_ln_cell
    (the cell sampling uses), so training and sampling share one definition."""
    from zf_kernels import ZForcing
    from zf_kernels.model import _split_gaussian
    from zf_kernels.ops.recurrence.naive import mlp_act

    torch.manual_seed(0)
    m = ZForcing(3, emb_dim=5, rnn_dim=7, z_dim=3, mlp_dim=6, cond_ln=True, backend="torch").double()
    T, B, H = 4, 2, 7
    gx = torch.randn(T, B, 4 * H, dtype=torch.float64)
    px = torch.randn(T, B, 6, dtype=torch.float64)
    eps = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    c0 = torch.randn(B, H, dtype=torch.float64)
    out = m._chain(gx, px, eps, h0, c0)
    h, c = h0, c0
    w_qh = m.posterior.fc1.weight[:, :H]
    for t in range(T):
        mu, lv = _split_gaussian(m.posterior.fc2(mlp_act(F.linear(h, w_qh) + px[t])))
        z = mu + torch.exp(0.5 * lv) * eps[t]
        h, c = m._cond_ln_cell(gx[t], h, c, z)
        torch.testing.assert_close(out.h[t], h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.c[t], c, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.z[t], z, rtol=1e-12, atol=1e-12)
