"""ZForcing against an independent, authors-style per-step implementation; hand-checkable
loss terms; masks; the auxiliary cost's detach and z_force; IWAE; sampling; bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from _helpers import check_sampling_with_prefix
from zf_kernels import ZForcing, training_loss

LOG2PI = math.log(2 * math.pi)


def act(x):
    return torch.clamp(F.leaky_relu(x, 1 / 3), -3, 3)


def gauss_nll(x, mu, lv):
    return (0.5 * (LOG2PI + lv + (x - mu) ** 2 / lv.exp())).sum(-1)


def authors_style_terms(m: ZForcing, y, eps):
    """A deliberately plain re-implementation after the authors' per-step code: everything
    inside one loop over t, concatenated inputs, no hoisting, no fused ops (no mask)."""
    T, B, _ = y.shape
    H = m.rnn_dim
    u = torch.cat([torch.zeros_like(y[:1]), y[:-1]])
    # backward LSTM over reversed targets, one step at a time
    bw = m.bwd_lstm
    hb, cb = y.new_zeros(B, H), y.new_zeros(B, H)
    b = [None] * T
    for t in reversed(range(T)):
        g = m.emb(y[t]) @ bw.weight_ih_l0.t() + bw.bias_ih_l0 + hb @ bw.weight_hh_l0.t() + bw.bias_hh_l0
        i, f, gg, o = g.chunk(4, -1)
        cb = f.sigmoid() * cb + i.sigmoid() * gg.tanh()
        hb = o.sigmoid() * cb.tanh()
        b[t] = hb
    h, c = y.new_zeros(B, H), y.new_zeros(B, H)
    nll = kl = aux = bwd = 0
    for t in range(T):
        pri = torch.clamp(m.prior.fc2(act(m.prior.fc1(h))), -8, 8)
        mp, lp = pri.chunk(2, -1)
        inf = torch.clamp(m.posterior.fc2(act(m.posterior.fc1(torch.cat([h, b[t]], -1)))), -8, 8)
        mq, lq = inf.chunk(2, -1)
        kl = kl + (0.5 * (lp - lq + (lq - lp).exp() + (mq - mp) ** 2 / lp.exp() - 1)).sum(-1)
        z = mq + (0.5 * lq).exp() * eps[t]
        h_aux = h * 0 if m.z_force else h
        ap = torch.clamp(m.aux.fc2(act(m.aux.fc1(torch.cat([h_aux, z], -1)))), -8, 8)
        ma, la = ap.chunk(2, -1)
        if m.aux_cost == "l2":   # the authors' use_l2 variant
            aux = aux + ((b[t].detach() - ma.tanh()) ** 2).sum(-1)
        else:
            aux = aux + gauss_nll(b[t].detach(), ma.tanh(), la)
        inp = torch.cat([m.gen(z), m.emb(u[t])], -1)
        g = inp @ m.fwd_weight_ih.t() + m.fwd_bias_ih + h @ m.fwd_weight_hh.t() + m.fwd_bias_hh
        i, f, gg, o = g.chunk(4, -1)
        c = f.sigmoid() * c + i.sigmoid() * gg.tanh()
        h = o.sigmoid() * c.tanh()
        om, ol = torch.clamp(m.out(h), -8, 8).chunk(2, -1)
        nll = nll + gauss_nll(y[t], om, ol)
        bm, bl = torch.clamp(m.bwd_out(b[t]), -8, 8).chunk(2, -1)
        bwd = bwd + gauss_nll(u[t], bm, bl)
    return nll, kl, aux, bwd


def small_model(**kw):
    torch.manual_seed(0)
    args = dict(input_dim=3, output_type="gaussian", emb_dim=5, rnn_dim=7, z_dim=4, mlp_dim=6)
    args.update(kw)
    return ZForcing(**args).double()


@pytest.mark.parametrize("z_force, aux_cost", [(False, "gaussian"), (True, "gaussian"), (False, "l2"), (True, "l2")])
def test_matches_authors_style_loop_values_and_grads(z_force, aux_cost):
    m = small_model(z_force=z_force, aux_cost=aux_cost)
    T, B = 6, 3
    y = torch.randn(T, B, 3, dtype=torch.float64)
    eps = torch.randn(T, B, 4, dtype=torch.float64)
    terms = m(y, eps=eps)
    ref = authors_style_terms(m, y, eps)
    for ours, theirs in zip((terms.nll, terms.kl, terms.aux, terms.bwd_nll), ref):
        torch.testing.assert_close(ours, theirs)
    w = (0.3, 0.7, 1.3)
    params = [p for p in m.parameters()]
    g_ours = torch.autograd.grad(training_loss(terms, *w), params, allow_unused=True)
    nll, kl, aux, bwd = ref
    g_ref = torch.autograd.grad((nll + w[0] * kl + w[1] * aux + w[2] * bwd).mean(), params, allow_unused=True)
    for (name, _), a, r in zip(m.named_parameters(), g_ours, g_ref):
        if r is None:
            assert a is None or torch.all(a == 0), name
        else:
            torch.testing.assert_close(a, r, msg=name)


def _unfolded(self, x, weight, bias=None):
    return self._embed(x), weight, bias


@pytest.mark.parametrize("kw", [{}, dict(cond_ln=True), dict(output_type="bernoulli", input_dim=1, z_force=True)],
                         ids=["gaussian", "cond_ln", "bernoulli-D1"])
def test_embedding_folded_into_the_input_projections_changes_nothing_but_rounding(kw, monkeypatch):
    """The Linear embedding folded into both LSTMs' input projections (W (W_e x + b_e) =
    (W W_e) x + W b_e, where that costs fewer multiply-adds): the same loss terms and every
    parameter's gradient as projecting emb(x), in float64."""
    m = small_model(**kw)
    T, B, D = 9, 4, m.input_dim
    y = torch.randn(T, B, D, dtype=torch.float64)
    if m.output_type == "bernoulli":
        y = (y > 0).double()
    x, w, _ = m._embedded_projection(y, m.bwd_lstm.weight_ih_l0, m.bwd_lstm.bias_ih_l0)
    assert x is y and w.shape == (4 * m.rnn_dim, D)       # folded at these sizes
    eps = torch.randn(T, B, m.z_dim, dtype=torch.float64)

    def loss_and_grads():
        loss = training_loss(m(y, eps=eps), 0.3, 0.7, 1.3)
        return [loss, *torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)]
    folded = loss_and_grads()
    monkeypatch.setattr(ZForcing, "_embedded_projection", _unfolded)
    for (name, _), a, b in zip([("loss", None), *m.named_parameters()], folded, loss_and_grads()):
        if b is None:
            assert a is None or torch.all(a == 0), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_embedding_is_folded_only_where_it_saves_work():
    # 4H = 28 rows, E = 5: one row of D = 3 features costs more folded (28 x 5 x 3 for W W_e)
    m = small_model()
    w = m.bwd_lstm.weight_ih_l0
    one = torch.randn(1, 1, 3, dtype=torch.float64)
    assert m._embedded_projection(one, w)[0] is not one
    many = torch.randn(40, 32, 3, dtype=torch.float64)
    assert m._embedded_projection(many, w)[0] is many
    wide = small_model(input_dim=8)                       # D > E: never
    x = torch.randn(40, 32, 8, dtype=torch.float64)
    assert wide._embedded_projection(x, wide.bwd_lstm.weight_ih_l0)[0] is not x


def test_backward_lstm_weights_are_nn_lstm_s():
    """The backward network's parameters (``LSTMWeights``: no nn.LSTM module, which dynamo
    refuses to trace) carry nn.LSTM's names, shapes and initial values under one seed, so state
    dicts load either way."""
    from zf_kernels.model import LSTMWeights
    torch.manual_seed(5)
    ours = LSTMWeights(7, 5)
    torch.manual_seed(5)
    theirs = torch.nn.LSTM(7, 5)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    torch.nn.LSTM(7, 5).load_state_dict(a)
    ours.load_state_dict(torch.nn.LSTM(7, 5).state_dict())
    assert isinstance(ZForcing(3, emb_dim=7, rnn_dim=5, z_dim=2, mlp_dim=4).bwd_lstm, LSTMWeights)


def test_hand_checkable_terms_with_zero_weights():
    """All weights zero: h = b = 0, prior = N(0, 1); a posterior mean of 1 gives KL 1/2 per dim."""
    m = small_model()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.posterior.fc2.bias[:4] = 1.0        # mu_q = 1, logvar_q = 0
    T, B, D, H, Z = 4, 2, 3, 7, 4
    y = torch.randn(T, B, D, dtype=torch.float64)
    terms = m(y, eps=torch.zeros(T, B, Z, dtype=torch.float64))
    u = torch.cat([torch.zeros_like(y[:1]), y[:-1]])
    torch.testing.assert_close(terms.kl, torch.full((B,), 0.5 * Z * T, dtype=torch.float64))
    torch.testing.assert_close(terms.nll, (0.5 * (LOG2PI + y ** 2)).sum((0, 2)))
    torch.testing.assert_close(terms.bwd_nll, (0.5 * (LOG2PI + u ** 2)).sum((0, 2)))
    torch.testing.assert_close(terms.aux, torch.full((B,), 0.5 * LOG2PI * H * T, dtype=torch.float64))
    loss = training_loss(terms, 0.5, 0.0, 10.0)   # aux_w = 0: neither aux nor bwd counts
    torch.testing.assert_close(loss, (terms.nll + 0.5 * terms.kl).mean())


@pytest.mark.parametrize("aux_cost", ["gaussian", "l2"])
def test_mask_equals_truncated_sequences(aux_cost):
    m = small_model(aux_cost=aux_cost)
    T, B = 7, 3
    y = torch.randn(T, B, 3, dtype=torch.float64)
    eps = torch.randn(T, B, 4, dtype=torch.float64)
    lengths = [7, 4, 1]
    mask = torch.zeros(T, B, dtype=torch.float64)
    for j, n in enumerate(lengths):
        mask[:n, j] = 1
    y_padded = y.clone()
    y_padded[mask == 0] = 123.0      # garbage in the padding must not leak
    terms = m(y_padded, mask=mask, eps=eps)
    for j, n in enumerate(lengths):
        alone = m(y[:n, j:j + 1], eps=eps[:n, j:j + 1])
        for k in ("nll", "kl", "aux", "bwd_nll"):
            torch.testing.assert_close(getattr(terms, k)[j], getattr(alone, k)[0], msg=f"{k} seq {j}")


@pytest.mark.parametrize("aux_cost", ["gaussian", "l2"])
def test_aux_target_is_detached_and_z_force_ignores_h(aux_cost):
    """b_t enters the aux cost only as a detached target (it still reaches the backward LSTM
    through the posterior's input, as in the authors' code): with the posterior blind to b,
    the aux cost gives the backward LSTM no gradient at all."""
    m = small_model(z_force=True, aux_cost=aux_cost)
    with torch.no_grad():
        m.posterior.fc1.weight[:, m.rnn_dim:] = 0
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = torch.autograd.grad(m(y).aux.sum(), list(m.bwd_lstm.parameters()), allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)
    # z_force: the aux MLP's h columns get no gradient, its z columns do
    g_aux_w = torch.autograd.grad(m(y).aux.sum(), m.aux.fc1.weight)[0]
    assert torch.all(g_aux_w[:, :m.rnn_dim] == 0) and torch.any(g_aux_w[:, m.rnn_dim:] != 0)
    m.z_force = False
    g_aux_w = torch.autograd.grad(m(y).aux.sum(), m.aux.fc1.weight)[0]
    assert torch.any(g_aux_w[:, :m.rnn_dim] != 0)


def test_aux_cost_by_hand_with_a_silent_aux_network():
    """With the aux network's output zeroed (tanh(mu_a) = 0, logvar_a = 0) the two costs are
    hand-checkable from the backward states b: "gaussian" sum 0.5 (log 2 pi + b^2), "l2" sum b^2
    (0 where b = 0: bounded below by 0, unlike the Gaussian's); masked steps count nothing. The
    model config records aux_cost only when it is not the default (older checkpoints lack it)."""
    T, B = 6, 3
    y = torch.randn(T, B, 3, dtype=torch.float64)
    mask = torch.ones(T, B, dtype=torch.float64)
    mask[4:, 1] = 0
    for aux_cost in ("gaussian", "l2"):
        m = small_model(aux_cost=aux_cost)
        with torch.no_grad():
            m.aux.fc2.weight.zero_()
            m.aux.fc2.bias.zero_()
        b = m.backward_states(y, mask)
        per_step = (b ** 2).sum(-1) if aux_cost == "l2" else (0.5 * (LOG2PI + b ** 2)).sum(-1)
        torch.testing.assert_close(m(y, mask=mask).aux, (per_step * mask).sum(0))
    assert "aux_cost" not in small_model().config and small_model(aux_cost="l2").config["aux_cost"] == "l2"
    # a bfloat16 model (no autocast): every term in bfloat16, the L2 cost's too (accumulated in float32)
    m16 = small_model(aux_cost="l2").bfloat16()
    terms = m16(y.bfloat16(), mask=mask.bfloat16())
    assert {t.dtype for t in (terms.nll, terms.kl, terms.aux, terms.bwd_nll)} == {torch.bfloat16}
    with pytest.raises(ValueError, match="aux_cost must be one of .'gaussian', 'l2'., got 'l1'"):
        small_model(aux_cost="l1")


@pytest.mark.parametrize("kw", [dict(output_type="bernoulli"), dict(output_type="categorical", input_dim=9),
                                dict(cond_ln=True), dict(cond_ln=True, output_type="bernoulli")])
def test_other_outputs_and_cond_ln_run_and_train(kw):
    m = small_model(**kw)
    T, B = 5, 4
    if m.output_type == "categorical":
        y = torch.randint(0, m.input_dim, (T, B))
    elif m.output_type == "bernoulli":
        y = torch.bernoulli(torch.full((T, B, 3), 0.3, dtype=torch.float64))
    else:
        y = torch.randn(T, B, 3, dtype=torch.float64)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        loss = training_loss(m(y, generator=gen), 1.0, 0.5, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first
    samples, means = m.sample(6, 2, generator=gen)
    assert samples.shape[:2] == (6, 2) and torch.isfinite(means).all()


def test_cond_ln_gain_and_bias_enter_the_recurrent_projection():
    m = small_model(cond_ln=True)
    y = torch.randn(4, 2, 3, dtype=torch.float64)
    eps = torch.randn(4, 2, 4, dtype=torch.float64)
    base = m(y, eps=eps).nll
    with torch.no_grad():
        m.gen.fc2.bias[: 4 * m.rnn_dim] += 0.5   # change the gain only
    assert not torch.allclose(base, m(y, eps=eps).nll)


def test_iwae_below_elbo_and_tightening_with_k():
    m = small_model()
    y = torch.randn(5, 64, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    # one-sample bound with a Monte Carlo KL equals the -ELBO in expectation; analytic KL
    # has lower variance. IWAE(k) falls with k on average.
    elbo = torch.stack([m.neg_elbo(y, generator=gen) for _ in range(8)]).mean()
    iw = {k: m.iwae_bound(y, k=k, generator=gen).mean() for k in (1, 8, 64)}
    assert iw[64] < iw[8] < iw[1] + 0.05
    assert iw[64] < elbo
    assert abs(iw[1] - elbo) < 0.05 * abs(elbo)
    # chunked evaluation gives the same bound for the same noise
    a = m.iwae_bound(y[:, :4], k=6, generator=torch.Generator().manual_seed(1), chunk=6)
    log_w = m.log_weights(y[:, :4], k=6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, -(torch.logsumexp(log_w, 0) - math.log(6)))


def test_bfloat16_log_weights_keep_the_nats_the_samples_differ_by():
    """With the posterior equal to the prior (both N(0, I)) and an output head that ignores h,
    every sample of a sequence has the same weight: log p(z) = log q(z) exactly. In a bfloat16
    model each log-density was summed in bfloat16 (~ -4,500 nats, held to +-16), so the weights
    of one sequence spread by tens of nats and IWAE fell below -log p(y) as k grew."""
    torch.manual_seed(0)
    m = ZForcing(3, "gaussian", emb_dim=8, rnn_dim=8, z_dim=32, mlp_dim=8).to(torch.bfloat16)
    with torch.no_grad():
        for layer in (m.prior.fc2, m.posterior.fc2, m.out):
            layer.weight.zero_()
            layer.bias.zero_()
    y = torch.randn(100, 4, 3).to(torch.bfloat16)
    lw = m.log_weights(y, k=16, generator=torch.Generator().manual_seed(1))
    assert lw.dtype == torch.float32
    assert (lw - lw[:1]).abs().max() == 0, (lw.max(0).values - lw.min(0).values)


def test_iwae_chunks_draw_exactly_k_samples_and_log_weights_keep_each_sequences_own():
    """k = 5 in chunks of 2: chunks of 2, 2 and 1 samples (not 2, 2, 2 over log 5); log_weights'
    column b holds sequence b's k samples (the batch repeats each sequence k times in a row)."""
    m = small_model()
    y = torch.randn(5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(1)
    logw = torch.cat([m.log_weights(y, k=n, generator=gen) for n in (2, 2, 1)])
    expected = -(torch.logsumexp(logw, 0) - math.log(5))
    torch.testing.assert_close(m.iwae_bound(y, k=5, chunk=2, generator=torch.Generator().manual_seed(1)), expected)
    # sequence 0 beside two others or beside copies of itself: the same noise, the same weights
    other = torch.cat([y[:, :1], y[:, :1] * 5, y[:, :1] - 3], 1)
    same = y[:, :1].expand(-1, 3, -1)
    lw = {n: m.log_weights(x, k=3, generator=torch.Generator().manual_seed(2)) for n, x in (("o", other), ("s", same))}
    torch.testing.assert_close(lw["o"][:, 0], lw["s"][:, 0])
    assert not torch.allclose(lw["o"][:, 1], lw["s"][:, 1])
    # k = 0 said "range() arg 3 must not be zero"
    for kw, name in (({"k": 0}, "k"), ({"k": 2.0}, "k"), ({"k": 4, "chunk": 0}, "chunk"), ({"k": 4, "chunk": -1}, "chunk")):
        with pytest.raises(ValueError, match=f"{name} must be a positive int, got {kw[name]!r}"):
            m.iwae_bound(y, **kw)


@pytest.mark.parametrize("output_type,cond_ln", [("gaussian", False), ("bernoulli", False),
                                                ("categorical", False), ("gaussian", True)])
def test_sampling_completes_a_prefix(output_type, cond_ln):
    check_sampling_with_prefix(small_model(output_type=output_type, cond_ln=cond_ln))


@pytest.mark.parametrize("prefix,match", [
    (torch.zeros(3, 2, 3, dtype=torch.float64), "prefix must hold batch_size = 3 sequences"),
    (torch.zeros(7, 3, 3, dtype=torch.float64), "prefix must have at most steps = 6 steps"),
    (torch.zeros(2, 3, 4, dtype=torch.float64), r"prefix must have shape \(T, B, 3\)"),
    (torch.full((2, 3, 3), float("nan"), dtype=torch.float64), "prefix contains NaN"),
    (torch.zeros(2, 3, dtype=torch.long), "prefix must have 3 dimensions"),
    (torch.zeros(0, 3, 3, dtype=torch.float64), "prefix must have at least one step"),
])
def test_sampling_refuses_a_bad_prefix_naming_it(prefix, match):
    with pytest.raises((ValueError, TypeError), match=match):
        small_model().sample(6, 3, prefix=prefix)


@pytest.mark.parametrize("temperature", [-1.0, -1e-9, float("nan"), float("inf"), "1"])
def test_sampling_refuses_a_temperature_that_is_negative_or_not_finite(temperature):
    """-1 flipped the noise's sign (a Gaussian model then sampled as at 1), NaN failed inside
    torch.multinomial: the CLI checked, the Python API did not."""
    with pytest.raises(ValueError, match=f"temperature must be a finite number >= 0, got {temperature!r}"):
        small_model(output_type="categorical").sample(6, 3, temperature=temperature)


def test_sampling_refuses_prefix_tokens_out_of_range():
    with pytest.raises(ValueError, match=r"prefix token ids must lie in \[0, 2\]"):
        small_model(output_type="categorical").sample(6, 3, prefix=torch.full((2, 3), 3))


def test_sampling_is_reproducible_with_a_generator():
    m = small_model(output_type="bernoulli")
    a, _ = m.sample(5, 3, generator=torch.Generator().manual_seed(3))
    b, _ = m.sample(5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_draws_as_written_step_by_hand(temperature):
    """Three steps of ``sample`` by hand (authors-style, with the generator's normal draws in
    order, two per step): z = mu_p + exp(logvar_p / 2) eps T from the prior at h_{t-1}, then the
    frame mu + exp(logvar / 2) eps' T from the output at h_t, fed back as the next input, h and
    c carried; exact, so a wrong scale or temperature in either draw, or a state not carried
    (step 1 alone passed with c dropped), shows (reproducibility alone cannot)."""
    m = small_model()
    B, steps = 4, 3
    got, means = m.sample(steps, B, temperature=temperature, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    h = c = torch.zeros(B, m.rnn_dim, dtype=torch.float64)
    u = torch.zeros(B, 3, dtype=torch.float64)
    for t in range(steps):
        mp, lp = torch.clamp(m.prior.fc2(act(m.prior.fc1(h))), -8, 8).chunk(2, -1)
        z = mp + (0.5 * lp).exp() * randn(B, m.z_dim) * temperature
        gates = (torch.cat([m.gen(z), m.emb(u)], -1) @ m.fwd_weight_ih.t() + m.fwd_bias_ih + h @ m.fwd_weight_hh.t()
                 + m.fwd_bias_hh)
        i, f, gg, o = gates.chunk(4, -1)
        c = f.sigmoid() * c + i.sigmoid() * gg.tanh()
        h = o.sigmoid() * c.tanh()
        om, ol = torch.clamp(m.out(h), -8, 8).chunk(2, -1)
        u = om + (0.5 * ol).exp() * randn(B, 3) * temperature
        with torch.no_grad():
            torch.testing.assert_close(means[t], om)
            torch.testing.assert_close(got[t], u)


@pytest.mark.parametrize("output_type,temperature", [("bernoulli", 1.0), ("categorical", 1.0), ("categorical", 0.5)])
def test_sampling_discrete_outputs_one_step_by_hand(output_type, temperature):
    """Step 1 of ``sample`` by hand for the discrete heads, with the generator's draws in order:
    z from the prior at h_0 = 0 (as above), the start input (zeros; for token ids the extra
    start token ``input_dim``, as ``shift_inputs`` gives the forward pass), the mean
    sigmoid(logits) or softmax(logits / T), then one Bernoulli or categorical draw from it."""
    m = small_model(output_type=output_type)
    B = 64
    got, means = m.sample(1, B, temperature=temperature, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    h = c = torch.zeros(B, m.rnn_dim, dtype=torch.float64)
    mp, lp = torch.clamp(m.prior.fc2(act(m.prior.fc1(h))), -8, 8).chunk(2, -1)
    z = mp + (0.5 * lp).exp() * torch.randn(B, m.z_dim, generator=g, dtype=torch.float64) * temperature
    if output_type == "categorical":
        e = m.emb(torch.full((B,), 3))
        assert torch.equal(m.shift_inputs(torch.zeros(2, B, dtype=torch.long))[0], torch.full((B,), 3))
    else:
        e = m.emb(torch.zeros(B, 3, dtype=torch.float64))
    gates = torch.cat([m.gen(z), e], -1) @ m.fwd_weight_ih.t() + m.fwd_bias_ih + m.fwd_bias_hh
    i, f, gg, o = gates.chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * gg.tanh()
    logits = m.out(o.sigmoid() * c.tanh())
    with torch.no_grad():
        if output_type == "bernoulli":
            mean = logits.sigmoid()
            draw = torch.bernoulli(mean, generator=g)
        else:
            mean = torch.softmax(logits / temperature, -1)
            draw = torch.multinomial(mean, 1, generator=g).squeeze(-1)
        torch.testing.assert_close(means[0], mean)
    assert torch.equal(got[0], draw) and draw.unique().numel() > 1


@pytest.mark.parametrize("make,match", [
    (lambda m: m(torch.full((3, 2, 3), float("nan"), dtype=torch.float64)), "NaN"),
    (lambda m: m(torch.zeros(3, 2, 4, dtype=torch.float64)), "y must have shape"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64), torch.full((3, 2, 3), float("inf"), dtype=torch.float64)),
     "u contains NaN or Inf"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64), mask=torch.tensor([[0, 1], [1, 1], [1, 1]])), "right-padded"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64), mask=torch.ones(3, 3)), "mask must have shape"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64), eps=torch.zeros(3, 2, 5)), "eps"),
    # the first kernel's check named its own arguments ("weight_ih ... but x ...")
    (lambda m: m(torch.zeros(3, 2, 3)), r"y has dtype torch.float32 but the model's parameters have torch.float64"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64), torch.zeros(3, 2, 3)), r"u has dtype torch.float32"),
    (lambda m: m(torch.zeros(3, 2, 3, dtype=torch.float64, device="meta")), "y is on meta but the model is on cpu"),
    (lambda m: ZForcing(3, "poisson"), "output_type"),
    (lambda m: ZForcing(0), "input_dim"),
    # a Bernoulli likelihood of 2 is above 1: a negative NLL, not an error, before
    (lambda m: ZForcing(3, "bernoulli", emb_dim=4, rnn_dim=6, z_dim=2, mlp_dim=4)(torch.full((3, 2, 3), 2.0)),
     r"y must lie in \[0, 1\] for Bernoulli output, got values in \[2, 2\]"),
])
def test_bad_input(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(small_model())


def test_assume_valid_inputs_skips_only_the_value_checks():
    """Inside ops.assume_valid_inputs() the checks that read values back (a GPU sync each) are
    skipped; shape checks stay; outside, the same inputs raise."""
    from zf_kernels import ops
    m = ZForcing(3, "gaussian", emb_dim=4, rnn_dim=6, z_dim=2, mlp_dim=4, backend="torch")
    y = torch.randn(4, 2, 3)
    y[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        m(y)
    with ops.assume_valid_inputs():
        m(y)                                            # no check: the NaN flows through
        with pytest.raises(ValueError, match=r"y must have shape \(T, B, 3\)"):
            m(torch.randn(4, 2, 5))                     # shapes are still checked
    targets, logits = torch.tensor([0, 7]), torch.randn(2, 4)
    with pytest.raises(ValueError, match="targets must lie in"):
        ops.categorical_nll(targets, logits, backend="torch")
    with ops.assume_valid_inputs():
        assert ops.categorical_nll(torch.tensor([0, 3]), logits, backend="torch").shape == (2,)
    with pytest.raises(ValueError, match="targets must lie in"):   # the context has ended
        ops.categorical_nll(targets, logits, backend="torch")
