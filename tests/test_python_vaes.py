"""The example sequence VAEs in python/ (VRNN, SRNN, STORN): each against a plain per-step
re-implementation written here with torch.distributions (values, log-weights and parameter
gradients in float64); every op called with the model's backend; masks; the IWAE bound;
learning through zf_kernels' trainer; python/train.py's registration."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from _helpers import check_sampling_with_prefix
from zf_kernels import training_loss
from zf_kernels import train as train_mod
from zf_kernels.ops import _dispatch
from zf_kernels.training.presets import make_config

PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"
sys.path.insert(0, str(PYTHON_DIR))
from srnn import SRNN    # noqa: E402
from storn import STORN  # noqa: E402
from vrnn import VRNN    # noqa: E402

D, E, H, Z, M = 3, 5, 7, 4, 6
MODELS = {"vrnn": (VRNN, {}), "srnn": (SRNN, {}), "srnn-resq": (SRNN, {"resq": True}), "storn": (STORN, {})}


def make(name, output_type="gaussian", input_dim=D, backend="auto"):
    cls, kw = MODELS[name]
    torch.manual_seed(0)
    return cls(input_dim, output_type, E, H, Z, M, backend=backend, **kw).double()


def data(m, T, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    if m.output_type == "categorical":
        return torch.randint(0, m.input_dim, (T, B), generator=g)
    if m.output_type == "bernoulli":
        return torch.bernoulli(torch.full((T, B, m.input_dim), 0.3, dtype=torch.float64), generator=g)
    return torch.randn(T, B, m.input_dim, generator=g, dtype=torch.float64)


# ------------------------------------------------ the plain re-implementations
def lin(layer, x):
    return F.linear(x, layer.weight, layer.bias)


def mlp(net, x):
    return lin(net.fc2, torch.clamp(F.leaky_relu(lin(net.fc1, x), 1 / 3), -3, 3))


def normal(params):
    mu, lv = torch.clamp(params, -8, 8).chunk(2, -1)
    return Normal(mu, torch.exp(0.5 * lv))


def cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_params(rnn):
    return (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)


def embed(m, x):
    return F.embedding(x, m.emb.weight) if m.output_type == "categorical" else lin(m.emb, x)


def shifted(m, y):
    start = torch.full_like(y[:1], m.input_dim) if m.output_type == "categorical" else torch.zeros_like(y[:1])
    return torch.cat([start, y[:-1]])


def out_logp(m, y_t, params):
    if m.output_type == "gaussian":
        return normal(params).log_prob(y_t).sum(-1)
    if m.output_type == "bernoulli":
        return Bernoulli(logits=params).log_prob(y_t).sum(-1)
    return Categorical(logits=params).log_prob(y_t)


def accumulate(acc, y_t_logp, q, p, z):
    acc["nll"] = acc["nll"] - y_t_logp
    acc["kl"] = acc["kl"] + kl_divergence(q, p).sum(-1)
    acc["logw"] = acc["logw"] + y_t_logp + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)


def ref_vrnn(m, y, eps):
    """Chung et al.: everything of step t inside one loop, concatenated inputs."""
    T, B = y.shape[:2]
    u = shifted(m, y)
    d, c, z = eps.new_zeros(B, H), eps.new_zeros(B, H), eps.new_zeros(B, Z)
    acc = dict(nll=0, kl=0, logw=0)
    r = m.rnn
    for t in range(T):
        d, c = cell(torch.cat([embed(m, u[t]), lin(m.phi_z, z)], -1), d, c,
                    r.weight_ih, r.weight_hh, r.bias_ih, r.bias_hh)
        p = normal(mlp(m.prior, d))
        q = normal(mlp(m.posterior, torch.cat([embed(m, y[t]), d], -1)))
        z = q.mean + q.stddev * eps[t]
        accumulate(acc, out_logp(m, y[t], mlp(m.decoder, torch.cat([lin(m.phi_z, z), d], -1))), q, p, z)
    return acc


def ref_srnn(m, y, eps):
    """Fraccaro et al.: forward LSTM, backward LSTM over [d_t, x_t], then the z chain."""
    T, B = y.shape[:2]
    u = shifted(m, y)
    zeros = lambda n: eps.new_zeros(B, n)  # noqa: E731
    h, c, d = zeros(H), zeros(H), []
    for t in range(T):
        h, c = cell(embed(m, u[t]), h, c, *lstm_params(m.fwd_rnn))
        d.append(h)
    h, c, a = zeros(H), zeros(H), [None] * T
    for t in reversed(range(T)):
        h, c = cell(torch.cat([d[t], embed(m, y[t])], -1), h, c, *lstm_params(m.bwd_rnn))
        a[t] = h
    z = zeros(Z)
    acc = dict(nll=0, kl=0, logw=0)
    for t in range(T):
        p = normal(mlp(m.prior, torch.cat([z, d[t]], -1)))
        mu_q, lv_q = torch.clamp(mlp(m.posterior, torch.cat([z, a[t]], -1)), -8, 8).chunk(2, -1)
        if m.resq:
            mu_q = mu_q + p.mean
        q = Normal(mu_q, torch.exp(0.5 * lv_q))
        z = mu_q + q.stddev * eps[t]
        accumulate(acc, out_logp(m, y[t], mlp(m.decoder, torch.cat([z, d[t]], -1))), q, p, z)
    return acc


def ref_storn(m, y, eps):
    """Bayer & Osendorfer: recognition LSTM -> q(z_t | x_1..t), N(0, I) prior, generative LSTM."""
    T, B = y.shape[:2]
    u = shifted(m, y)
    zeros = lambda n: eps.new_zeros(B, n)  # noqa: E731
    r, cr, h, ch = zeros(H), zeros(H), zeros(H), zeros(H)
    acc = dict(nll=0, kl=0, logw=0)
    for t in range(T):
        r, cr = cell(embed(m, y[t]), r, cr, *lstm_params(m.inf_rnn))
        q = normal(mlp(m.posterior, r))
        p = Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean))
        z = q.mean + q.stddev * eps[t]
        h, ch = cell(torch.cat([embed(m, u[t]), z], -1), h, ch, *lstm_params(m.gen_rnn))
        accumulate(acc, out_logp(m, y[t], lin(m.out, h)), q, p, z)
    return acc


def ref_generate(m, name, steps, B, prior_noise=None):
    """Generation with y_t = the output mean (token ids: the likeliest token, from the start
    token ``input_dim``) and z_t = the prior mean, or with ``prior_noise`` (steps, B, Z) the
    prior's draw mean + std * prior_noise[t], step by step -> (samples, means)."""
    zeros = lambda n: torch.zeros(B, n, dtype=torch.float64)  # noqa: E731
    noise = torch.zeros(steps, B, Z, dtype=torch.float64) if prior_noise is None else prior_noise
    draw = lambda prior, t: prior.mean + prior.stddev * noise[t]  # noqa: E731
    tokens = m.output_type == "categorical"
    u = torch.full((B,), m.input_dim) if tokens else zeros(m.input_dim)
    z, h, c, samples, means = zeros(Z), zeros(H), zeros(H), [], []
    for t in range(steps):
        if name == "vrnn":
            r = m.rnn
            h, c = cell(torch.cat([embed(m, u), lin(m.phi_z, z)], -1), h, c,
                        r.weight_ih, r.weight_hh, r.bias_ih, r.bias_hh)
            z = draw(normal(mlp(m.prior, h)), t)
            params = mlp(m.decoder, torch.cat([lin(m.phi_z, z), h], -1))
        elif name.startswith("srnn"):
            h, c = cell(embed(m, u), h, c, *lstm_params(m.fwd_rnn))
            z = draw(normal(mlp(m.prior, torch.cat([z, h], -1))), t)
            params = mlp(m.decoder, torch.cat([z, h], -1))
        else:   # STORN's prior is N(0, I)
            h, c = cell(torch.cat([embed(m, u), noise[t]], -1), h, c, *lstm_params(m.gen_rnn))
            params = lin(m.out, h)
        if tokens:   # softmax(logits / 0): all mass on the likeliest token
            u = params.argmax(-1)
            means.append(F.one_hot(u, m.input_dim).double())
        else:
            u = normal(params).mean
            means.append(u)
        samples.append(u)
    return torch.stack(samples), torch.stack(means)


REFERENCES = {"vrnn": ref_vrnn, "srnn": ref_srnn, "srnn-resq": ref_srnn, "storn": ref_storn}
OUTPUTS = [("gaussian", D), ("bernoulli", D), ("categorical", 9)]


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("output_type,input_dim", OUTPUTS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_plain_per_step_model_values_log_weights_and_grads(name, output_type, input_dim):
    m = make(name, output_type, input_dim)
    T, B = 6, 3
    y = data(m, T, B)
    eps = torch.randn(T, B, Z, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    terms = m(y, eps=eps)
    ref = REFERENCES[name](m, y, eps)
    torch.testing.assert_close(terms.nll, ref["nll"])
    torch.testing.assert_close(terms.kl, ref["kl"])
    assert torch.all(terms.aux == 0) and torch.all(terms.bwd_nll == 0)
    assert terms.kl.abs().min() > 1e-3   # the KL is not trivially zero
    # log p(y, z) - log q(z | y) with the same noise: log_weights draws eps from its generator
    logw = m.log_weights(y, k=1, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(logw, ref["logw"].detach().unsqueeze(0))
    # parameter gradients of a weighted loss (grad_output != 1, different weights per term)
    params = list(m.parameters())
    ours = torch.autograd.grad(training_loss(terms, 0.7, 0.0, 0.0) * 1.9, params, allow_unused=True)
    theirs = torch.autograd.grad((ref["nll"] + 0.7 * ref["kl"]).mean() * 1.9, params, allow_unused=True)
    for (pname, _), a, r in zip(m.named_parameters(), ours, theirs):
        assert r is not None, pname           # every parameter takes part in the loss
        torch.testing.assert_close(a, r, msg=pname)


EXPECTED_OPS = {"vrnn": {"lstm_cell", "zforcing_chain", "reparameterize", "gaussian_kl", "gaussian_nll"},
                "srnn": {"lstm", "reparameterize", "gaussian_kl", "gaussian_nll"},
                "srnn-resq": {"lstm", "reparameterize", "gaussian_kl", "gaussian_nll"},
                "storn": {"lstm", "reparameterize", "gaussian_kl", "gaussian_nll"}}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_op_call_goes_through_zf_kernels_ops_with_the_models_backend(name, monkeypatch):
    seen = []
    real = _dispatch.resolve

    def spy(op, backend, *tensors):
        seen.append((op, backend))
        return real(op, "torch", *tensors)
    monkeypatch.setattr(_dispatch, "resolve", spy)
    m = make(name, backend="triton")
    y = data(m, 4, 2)
    mask = torch.ones(4, 2, dtype=torch.float64)
    mask[3:, 1] = 0
    m(y, mask=mask).neg_elbo.sum().backward()
    m.iwae_bound(y, mask=mask, k=2)
    m.sample(3, 2)
    assert {b for _, b in seen} == {"triton"}
    assert EXPECTED_OPS[name] <= {op for op, _ in seen}
    # backend "cuda": the recurrences with CUDA kernels get "cuda", every other op "auto"
    bern = make(name, "bernoulli", backend="cuda")
    seen.clear()
    bern(data(bern, 3, 2))
    on_cuda = {op for op, b in seen if b == "cuda"}
    assert on_cuda and on_cuda <= {"lstm", "zforcing_chain"}, seen
    assert ("bernoulli_nll", "auto") in seen and {b for op, b in seen if op not in on_cuda} == {"auto"}, seen


_TRITON_IN_INTERPRETER = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or torch.cuda.is_available(),
    reason="the Triton backend in the interpreter (CPU tensors)")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=_TRITON_IN_INTERPRETER)])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_compiles_into_one_graph(name, backend):
    """backend="torch" with the value checks off: torch.compile(fullgraph=True) traces the whole
    forward (their LSTM weights are ``LSTMWeights``, not nn.LSTM modules, which dynamo refuses),
    and the compiled terms are the eager ones; backend="triton" too (every Triton op a
    torch.library custom op: per-step cells, samples and likelihoods alike)."""
    from zf_kernels.ops import assume_valid_inputs
    m = make(name, backend=backend)
    y = data(m, 4, 2)
    eps = torch.randn(4, 2, Z, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch._dynamo.reset()
    with assume_valid_inputs():
        got = torch.compile(lambda y, eps: m(y, eps=eps).nll, backend="aot_eager", fullgraph=True)(y, eps)
        torch.testing.assert_close(got, m(y, eps=eps).nll)


@pytest.mark.parametrize("name", list(MODELS))
def test_padded_batch_equals_the_truncated_sequences(name):
    m = make(name)
    T, B = 7, 3
    y = data(m, T, B)
    eps = torch.randn(T, B, Z, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lengths = [7, 4, 1]
    mask = torch.zeros(T, B, dtype=torch.float64)
    for j, n in enumerate(lengths):
        mask[:n, j] = 1
    padded = y.clone()
    padded[mask == 0] = 123.0              # garbage in the padding must not leak
    terms = m(padded, mask=mask, eps=eps)
    for j, n in enumerate(lengths):
        alone = m(y[:n, j:j + 1], eps=eps[:n, j:j + 1])
        torch.testing.assert_close(terms.nll[j], alone.nll[0], msg=f"nll of sequence {j}")
        torch.testing.assert_close(terms.kl[j], alone.kl[0], msg=f"kl of sequence {j}")
    # the importance weights ignore the padding too (same noise, different garbage)
    other = y.clone()
    other[mask == 0] = -7.0
    lw = lambda x, mk: m.log_weights(x, mask=mk, k=3, generator=torch.Generator().manual_seed(4))  # noqa: E731
    torch.testing.assert_close(lw(padded, mask), lw(other, mask))
    assert not torch.allclose(lw(padded, None), lw(other, None))


@pytest.mark.parametrize("name", list(MODELS))
def test_iwae_bound_is_below_the_elbo_and_log_weights_average_to_it(name):
    m = make(name)
    y = data(m, 5, 64)
    gen = torch.Generator().manual_seed(0)
    elbo = torch.stack([m.neg_elbo(y, generator=gen) for _ in range(8)]).mean()
    iw = {k: m.iwae_bound(y, k=k, generator=gen).mean() for k in (1, 64)}
    assert iw[64] < elbo - 0.05 and iw[64] < iw[1]
    # E[-log w] is the -ELBO: the Monte Carlo KL inside log w averages to the analytic KL
    mc = -m.log_weights(y, k=64, generator=gen).mean()
    assert abs(mc - elbo) < 0.01 * abs(elbo)
    # the bound is -log mean_k w_k of exactly those weights, also when evaluated in chunks
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    logw = m.log_weights(y[:, :4], k=6, generator=g())
    expected = -(torch.logsumexp(logw, 0) - math.log(6))
    torch.testing.assert_close(m.iwae_bound(y[:, :4], k=6, generator=g()), expected)
    torch.testing.assert_close(m.iwae_bound(y[:, :4], k=6, generator=g(), chunk=6), expected)


@pytest.mark.parametrize("output_type,input_dim", [("gaussian", D), ("categorical", 9)])
@pytest.mark.parametrize("name", list(MODELS))
def test_generation_follows_the_prior_and_feeds_back_its_outputs(name, output_type, input_dim):
    m = make(name, output_type, input_dim)
    with torch.no_grad():
        samples, means = m.sample(6, 3, temperature=0.0)
        want_samples, want_means = ref_generate(m, name, 6, 3)
    torch.testing.assert_close(means, want_means)
    torch.testing.assert_close(samples, want_samples)   # at temperature 0: the mean, or the likeliest token


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_generation_draws_z_from_the_prior_with_its_spread(name, temperature):
    """z_t = prior mean + prior std * temperature * noise (the model's own noise draws,
    recorded), the outputs at their means: the prior's variance in generation, which the
    temperature-0 test cannot see."""
    m = make(name)
    drawn, real_noise, real_head = [], m.prior_noise, m.head_sample

    def recorded_noise(batch_size, temp, generator):
        drawn.append(real_noise(batch_size, temp, generator))
        return drawn[-1]
    m.prior_noise = recorded_noise
    m.head_sample = lambda params, temp=1.0, generator=None: real_head(params, 0.0, generator)
    with torch.no_grad():
        samples, means = m.sample(6, 3, temperature=temperature, generator=torch.Generator().manual_seed(2))
        noise = torch.stack(drawn)
        want_samples, want_means = ref_generate(m, name, 6, 3, prior_noise=noise)
    assert noise.shape == (6, 3, Z) and noise.std() == pytest.approx(temperature, rel=0.3)
    torch.testing.assert_close(means, want_means)
    torch.testing.assert_close(samples, want_samples)


@pytest.mark.parametrize("name", list(MODELS))
def test_sampling_shapes_and_reproducibility(name):
    for output_type, input_dim in OUTPUTS:
        m = make(name, output_type, input_dim)
        s1, mu1 = m.sample(5, 2, generator=torch.Generator().manual_seed(3))
        s2, mu2 = m.sample(5, 2, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2) and torch.equal(mu1, mu2)
        assert s1.shape[:2] == (5, 2) and mu1.shape == (5, 2, input_dim)
        if output_type == "bernoulli":
            assert set(s1.unique().tolist()) <= {0.0, 1.0}
        if output_type == "categorical":
            torch.testing.assert_close(mu1.sum(-1), torch.ones(5, 2, dtype=torch.float64))
        s3, _ = m.sample(5, 2, generator=torch.Generator().manual_seed(4))
        assert not torch.equal(s1, s3)
        json.dumps(m.config)
    with pytest.raises(ValueError, match="steps and batch_size"):
        m.sample(0, 2)


@pytest.mark.parametrize("name", list(MODELS))
def test_sampling_completes_a_prefix(name):
    for output_type, input_dim in OUTPUTS:
        check_sampling_with_prefix(make(name, output_type, input_dim))
    with pytest.raises(ValueError, match="prefix must hold batch_size = 2 sequences"):
        make(name).sample(5, 2, prefix=torch.zeros(3, 4, D, dtype=torch.float64))


def test_gaussian_output_draws_have_the_heads_spread_scaled_by_temperature():
    m = make("storn")
    n = 20000
    params = torch.cat([torch.full((n, D), 1.0), torch.full((n, D), math.log(4.0))], -1).double()
    for temperature, std in ((1.0, 2.0), (0.5, 1.0)):
        s, mean = m.head_sample(params, temperature, torch.Generator().manual_seed(0))
        assert torch.all(mean == 1.0)
        assert abs(float(s.mean()) - 1.0) < 0.03 and abs(float(s.std()) - std) < 0.03 * std


def test_bernoulli_and_categorical_draws_follow_the_heads_probabilities():
    """Draws, not the likeliest value: pixels at p = 0.3 are 1 three times in ten; tokens come
    at softmax(logits / T)'s frequencies."""
    n = 20000
    s, mean = make("storn", "bernoulli").head_sample(torch.full((n, D), math.log(0.3 / 0.7), dtype=torch.float64),
                                                     1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, torch.full((n, D), 0.3, dtype=torch.float64))
    assert abs(float(s.mean()) - 0.3) < 0.01 and set(s.unique().tolist()) == {0.0, 1.0}
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)).expand(n, 3)
    for temperature in (1.0, 0.5):
        s, mean = make("storn", "categorical", 3).head_sample(logits, temperature, torch.Generator().manual_seed(1))
        p = torch.softmax(logits[0] / temperature, -1)
        torch.testing.assert_close(mean[0], p)
        torch.testing.assert_close(torch.bincount(s, minlength=3).double() / n, p, rtol=0, atol=0.015)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="output_type"):
        VRNN(3, "poisson")
    with pytest.raises(ValueError, match="z_dim"):
        SRNN(3, "gaussian", z_dim=0)
    with pytest.raises(ValueError, match="rnn_dim must be a positive int, got True"):
        SRNN(3, "gaussian", rnn_dim=True)
    m = make("storn")
    with pytest.raises(ValueError, match="eps must have shape"):
        m(torch.randn(4, 2, D, dtype=torch.float64), eps=torch.randn(4, 2, Z + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y must have shape \(T, B, 3\)"):
        m(torch.randn(4, 2, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="right-padded"):
        m(torch.randn(3, 1, D, dtype=torch.float64), mask=torch.tensor([[0.0], [1.0], [1.0]]))
    for name in ("vrnn", "srnn", "storn"):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got -1.0"):
            make(name).sample(4, 2, temperature=-1.0)


def load_train_script():
    spec = importlib.util.spec_from_file_location("python_vaes_train", PYTHON_DIR / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SMALL = dict(emb_dim=16, rnn_dim=24, z_dim=4, mlp_dim=16, batch_size=16, train_limit=160, eval_limit=32,
             iwae_k=4, num_samples=2, progress=False, log_every=5, checkpoint_every=1000, time_budget=None)


@pytest.mark.parametrize("name", ["vrnn", "srnn-resq", "storn"])
def test_training_with_the_zf_kernels_trainer_reduces_the_loss(name, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "MODELS", dict(train_mod.MODELS))
    load_train_script().register()
    # 160 sequences in batches of 16: an epoch (and a validation) every 10 steps
    cfg = make_config("synthetic", model=name, out=str(tmp_path / name), max_steps=60, epochs=100, lr=3e-3,
                      **SMALL)
    results = train_mod.train(cfg, log=lambda *_: None)
    rec = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    train_nll = [r["nll"] for r in rec if r["kind"] == "train"]
    assert train_nll[-1] < 0.8 * train_nll[0]
    # no aux term: the preset's aux schedule (0 -> 0.01) is not applied, nor logged
    assert cfg.aux_end > 0 and all(r["aux_weight"] == 0 for r in rec if r["kind"] == "train")
    valid = [r["neg_elbo"] for r in rec if r["kind"] == "valid"]
    assert len(valid) >= 4 and valid[-1] < valid[0] - 10
    assert results["model"]["model"] == name.split("-")[0]
    assert results["test"]["iwae"] <= results["test"]["neg_elbo"] + 0.5


def test_train_script_registers_the_models_and_runs_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "MODELS", dict(train_mod.MODELS))
    mod = load_train_script()
    assert "vrnn" not in train_mod.MODELS
    out = tmp_path / "cli"
    rc = mod.main(["--model", "srnn", "--max-steps", "3", "--out", str(out), "--no-progress",
                   "--train-limit", "32", "--eval-limit", "8", "--iwae-k", "2", "--rnn-dim", "8",
                   "--num-samples", "2"])
    assert rc == 0
    assert {"zforcing", "vrnn", "srnn", "srnn-resq", "storn"} <= set(train_mod.MODELS)
    assert "model 'srnn'" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 and results["model"]["model"] == "srnn" and results["model"]["rnn_dim"] == 8
    assert math.isfinite(results["test"]["iwae"])
    assert mod.main(["--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--model must be one of" in capsys.readouterr().err
    # what python/evaluate.py and python/sample.py run: the checkpoint commands with these models
    from zf_kernels import evaluate, sample
    assert evaluate.main([str(out)], models=mod.all_models()) == 0
    got = json.loads(capsys.readouterr().out)
    assert {k: got[k] for k in ("neg_elbo", "iwae", "sequences")} == \
        {k: results["test"][k] for k in ("neg_elbo", "iwae", "sequences")}
    assert sample.main([str(out), "--num", "2", "--out", str(tmp_path / "s")], models=mod.all_models()) == 0
    assert (tmp_path / "s" / "samples.npy").exists()
    assert sample.main([str(out), "--num", "2", "--prefix", "3", "--out", str(tmp_path / "c")],
                       models=mod.all_models()) == 0                   # an SRNN completing test sequences
    completed = np.load(tmp_path / "c" / "samples.npy")
    test_y = train_mod.load_data(make_config("synthetic", train_limit=32, eval_limit=8)).test.y
    np.testing.assert_array_equal(completed[:, :3], test_y[:2, :3].numpy())
    for script in ("evaluate.py", "sample.py"):      # the scripts themselves, in a fresh process
        run = subprocess.run([sys.executable, str(PYTHON_DIR / script), str(out), "--help"], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "checkpoint" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("name", list(MODELS))
def test_triton_backend_matches_torch_backend(name):
    """Every op of the model on Triton (the interpreter on a CPU) at once, against the torch
    backend: loss terms and all parameter gradients, with a mask. (VRNN's recurrence is the
    fused ops.zforcing_chain.)"""
    pytest.importorskip("triton")
    ref, fused = make(name, backend="torch"), make(name, backend="triton")
    fused.load_state_dict(ref.state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref, fused = ref.to(device), fused.to(device)
    y = data(ref, 5, 3).to(device)
    mask = torch.ones(5, 3, dtype=torch.float64, device=device)
    mask[3:, 1] = 0
    eps = torch.randn(5, 3, Z, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    out = []
    for m in (ref, fused):
        terms = m(y, mask=mask, eps=eps)
        grads = torch.autograd.grad(training_loss(terms, 0.7, 0.0, 0.0), list(m.parameters()), allow_unused=True)
        out.append((terms, grads))
    (t_ref, g_ref), (t_fused, g_fused) = out
    for k in ("nll", "kl"):
        torch.testing.assert_close(getattr(t_fused, k), getattr(t_ref, k), rtol=1e-9, atol=1e-9)
    for (pname, _), a, b in zip(ref.named_parameters(), g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=pname)
