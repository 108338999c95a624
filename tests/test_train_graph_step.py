"""The trainer's CUDA-graph step (``--cuda-graph``, zf_kernels.training.graph_step).

On the CPU the step runs without capture (the same function a graph records): it must give
the eager trainer's run bit for bit: parameters, Adam state, logged metrics, skip counts,
checkpoints and resume. On a GPU the captured graph is compared with the eager trainer.
"""

import pytest
import torch

from _helpers import quiet, read_metrics, without_timing
from zf_kernels import train as train_mod
from zf_kernels.model import LossTerms, training_loss
from zf_kernels.data.synthetic import make_synthetic
from zf_kernels.training import graph_step
from zf_kernels.training.checkpoint import load_checkpoint
from zf_kernels.training.presets import make_config

# aux_step 0.2 from 0: the first step runs without the aux terms, later ones with them (two
# static configurations); log / checkpoint grids (5 / 7) off each other and off max_steps; a bwd
# weight of 0.5, not 1 (the static step's buffer filled with 1 passed as the flag's value)
SMALL = dict(emb_dim=16, rnn_dim=24, z_dim=4, mlp_dim=16, batch_size=16, train_limit=96,
             eval_limit=32, iwae_k=4, num_samples=2, progress=False, log_every=5, checkpoint_every=7,
             time_budget=None, aux_start=0.0, aux_end=0.6, aux_step=0.2, bwd=0.5, epochs=50)


def cfg_for(tmp_path, name, **kw):
    return make_config("synthetic", out=str(tmp_path / name), **(SMALL | kw))


@pytest.fixture
def uncaptured(monkeypatch):
    """--cuda-graph on the CPU: the static step, run without capture."""
    monkeypatch.setattr(train_mod, "StaticStep", lambda run, capture, **kw: graph_step.StaticStep(run, capture=False, **kw))


def assert_same_runs(a_dir, b_dir):
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k].cpu(), sb[i][k].cpu()), (i, k)
    for k in ("step", "skipped", "window", "weights"):
        assert a[k] == b[k], k
    ma = [r for r in read_metrics(a_dir) if r["kind"] != "test"]
    mb = [r for r in read_metrics(b_dir) if r["kind"] != "test"]
    assert without_timing(ma) == without_timing(mb)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_static_step_gives_the_eager_run_bit_for_bit(tmp_path, monkeypatch, dtype):
    train_mod.train(cfg_for(tmp_path, "eager", max_steps=13, dtype=dtype), log=quiet)
    monkeypatch.setattr(train_mod, "StaticStep", lambda run, capture, **kw: graph_step.StaticStep(run, capture=False, **kw))
    train_mod.train(cfg_for(tmp_path, "static", max_steps=13, dtype=dtype, cuda_graph=True), log=quiet)
    assert_same_runs(tmp_path / "eager", tmp_path / "static")
    # the run really took the static path: a run with a broken static step differs
    body = graph_step.StaticStep._body

    def broken(self, b, aux_on, warmup=False):
        b.kl_w.mul_(0.5)        # a wrong KL weight
        return body(self, b, aux_on, warmup)

    monkeypatch.setattr(graph_step.StaticStep, "_body", broken)
    train_mod.train(cfg_for(tmp_path, "broken", max_steps=13, dtype=dtype, cuda_graph=True), log=quiet)
    with pytest.raises(AssertionError):
        assert_same_runs(tmp_path / "eager", tmp_path / "broken")


@pytest.mark.parametrize("name", ["vrnn", "srnn", "storn"])
def test_static_step_runs_the_python_models_bit_for_bit(tmp_path, monkeypatch, name):
    # the sequence VAEs of python/ take eps too, so the trainer's --cuda-graph serves them
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "python" / "train.py"
    spec = importlib.util.spec_from_file_location("python_vaes_train_graph", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(train_mod, "MODELS", script.register(dict(train_mod.MODELS)))
    train_mod.train(cfg_for(tmp_path, "eager", model=name, max_steps=6), log=quiet)
    monkeypatch.setattr(train_mod, "StaticStep", lambda run, capture, **kw: graph_step.StaticStep(run, capture=False, **kw))
    train_mod.train(cfg_for(tmp_path, "static", model=name, max_steps=6, cuda_graph=True), log=quiet)
    assert_same_runs(tmp_path / "eager", tmp_path / "static")


def test_static_step_on_padded_batches(tmp_path, monkeypatch):
    # variable-length sequences: the batch's mask goes into the graph only when it pads
    data = make_synthetic(n_train=96, n_valid=32, n_test=32, T=12, variable_length=True, seed=5)
    monkeypatch.setattr(train_mod, "load_dataset", lambda *a, **k: data)
    train_mod.train(cfg_for(tmp_path, "eager", max_steps=9), log=quiet)
    monkeypatch.setattr(train_mod, "StaticStep", lambda run, capture, **kw: graph_step.StaticStep(run, capture=False, **kw))
    train_mod.train(cfg_for(tmp_path, "static", max_steps=9, cuda_graph=True), log=quiet)
    assert_same_runs(tmp_path / "eager", tmp_path / "static")


def _eager_and_static_runs(tmp_path, monkeypatch, broken_loss, max_steps):
    """The eager run and the (uncaptured) static run with ``broken_loss(loss, terms, n)`` in
    place of the loss of the n-th step (counted in each run), compared step for step."""
    real = train_mod.training_loss

    def counted():
        calls = {"n": 0}

        def loss_fn(*a, **k):
            calls["n"] += 1
            return broken_loss(real(*a, **k), a[0], calls["n"])
        return loss_fn
    monkeypatch.setattr(train_mod, "training_loss", counted())
    eager = train_mod.train(cfg_for(tmp_path, "eager", max_steps=max_steps), log=quiet)
    monkeypatch.setattr(graph_step, "training_loss", counted())
    monkeypatch.setattr(train_mod, "StaticStep", lambda run, capture, **kw: graph_step.StaticStep(run, capture=False, **kw))
    static = train_mod.train(cfg_for(tmp_path, "static", max_steps=max_steps, cuda_graph=True), log=quiet)
    assert_same_runs(tmp_path / "eager", tmp_path / "static")
    return eager["skipped_batches"], static["skipped_batches"]


def test_static_step_skips_and_counts_non_finite_steps_like_the_eager_step(tmp_path, monkeypatch):
    eager, static = _eager_and_static_runs(
        tmp_path, monkeypatch, lambda loss, terms, n: loss * float("nan") if n in (2, 5) else loss, 8)
    assert eager == static == {"non_finite_loss": 2, "non_finite_grad": 0}


def test_static_step_skips_a_finite_loss_with_a_non_finite_gradient_like_the_eager_step(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (sqrt at 0): the static step's on-device skip needs
    the gradient norm's check too, not only the loss's (the NaN update was applied)."""
    eager, static = _eager_and_static_runs(
        tmp_path, monkeypatch,
        lambda loss, terms, n: loss + torch.sqrt(terms.nll.sum() * 0.0) if n in (3, 4) else loss, 6)
    assert eager == static == {"non_finite_loss": 0, "non_finite_grad": 2}


def test_resume_across_eager_and_static_steps(tmp_path, uncaptured):
    # 11 steps with the static step, resumed eagerly to 25 (and the reverse) == 25 eager steps
    full = tmp_path / "full"
    train_mod.train(cfg_for(tmp_path, "full", max_steps=25, cuda_graph=False), log=quiet)
    for first, second, name in ((True, False, "a"), (False, True, "b")):
        train_mod.train(cfg_for(tmp_path, name, max_steps=11, cuda_graph=first), log=quiet)
        train_mod.train(cfg_for(tmp_path, name, max_steps=25, cuda_graph=second, resume=True), log=quiet)
        assert_same_runs(full, tmp_path / name)


@pytest.mark.parametrize("kw, message", [
    (dict(device="cpu"), "--cuda-graph needs a CUDA device"),
])
def test_cuda_graph_needs_what_it_needs(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        train_mod.train(cfg_for(tmp_path, "bad", max_steps=1, cuda_graph=True, **kw), log=quiet)


@pytest.mark.parametrize("dtype", ["float16"])
def test_static_step_rejects_loss_scaling(tmp_path, dtype):
    cfg = cfg_for(tmp_path, "bad", max_steps=1, dtype=dtype)
    run = train_mod.Run(cfg, log=quiet)
    with pytest.raises(ValueError, match="float16"):
        graph_step.StaticStep(run, capture=False)


def test_cli_reports_cuda_graph_errors(tmp_path, capsys):
    rc = train_mod.main(["--cuda-graph", "--device", "cpu", "--max-steps", "1", "--out", str(tmp_path / "cli"),
                         "--no-progress"])
    assert rc == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------ GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpu_cuda_graph_run_matches_the_eager_run(tmp_path, backend):
    kw = dict(max_steps=13, device="cuda", backend=backend)
    train_mod.train(cfg_for(tmp_path, "eager", **kw), log=quiet)
    train_mod.train(cfg_for(tmp_path, "graph", cuda_graph=True, **kw), log=quiet)
    a, b = load_checkpoint(tmp_path / "eager" / "last.pt"), load_checkpoint(tmp_path / "graph" / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    assert a["skipped"] == b["skipped"] and a["step"] == b["step"]
    for ra, rb in zip(read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "graph")):
        if ra["kind"] == "train":
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-3)


@cuda
def test_gpu_cuda_graph_recaptures_after_a_learning_rate_change(tmp_path):
    cfg = cfg_for(tmp_path, "graph", max_steps=6, device="cuda", backend="torch", cuda_graph=True)
    run = train_mod.Run(cfg, log=quiet)
    batches = list(train_mod.iterate_batches(run.data.train, cfg.batch_size, shuffle=True, seed=1, epoch=0,
                                             drop_last=True))
    eager_cfg = cfg_for(tmp_path, "eager", max_steps=6, device="cuda", backend="torch")
    eager = train_mod.Run(eager_cfg, log=quiet)
    for i, batch in enumerate(batches[:4]):
        if i == 3:   # as PlateauHalving does
            for r in (run, eager):
                r.opt.param_groups[0]["lr"] *= 0.5
        run.train_step(batch)
        eager.train_step(batch)
    # aux off (step 1), aux on (2, 3), aux on at the new lr (4)
    assert run.static_step.captures == 3
    for (name, p), q in zip(run.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_device_scalar_loss_weights_round_like_python_floats(dtype):
    """The CUDA graph step reads the loss weights from float64 device scalars; a CUDA kernel
    casts such a scalar to the terms' dtype before multiplying (a Python float's product is
    computed in float32): training_loss must give the eager step's loss bit for bit in every
    dtype. One-sequence terms over 200 steps of the KL schedule: with the weight cast to
    bfloat16 first, about a quarter of the losses differ (emulated on the CPU)."""
    g = torch.Generator().manual_seed(0)
    zero = torch.zeros(1, device="cuda", dtype=dtype)
    for i in range(200):
        kl, aux = 0.2 + i * 5e-5, 0.01 + i * 5e-5
        t = torch.randn(2, generator=g).mul(300).to("cuda", dtype)
        terms = LossTerms(nll=zero, kl=t[:1], aux=t[1:], bwd_nll=zero)
        eager = training_loss(terms, kl, aux, 1.0)
        on_device = [torch.tensor(w, device="cuda", dtype=torch.float64) for w in (kl, aux, 1.0)]
        assert torch.equal(training_loss(terms, *on_device, aux_on=True), eager), (dtype, i)


def test_compiled_step_trains_like_the_eager_run(tmp_path):
    """--compile aot_eager (dynamo + AOTAutograd, the same ops regrouped: seconds on the CPU;
    inductor is what a user asks for, ~2 min to compile here): the static step with its forward
    and loss compiled, over the aux terms switching on (a recompile), gives the eager run's
    losses -- equal up to rounding until Adam's normalised updates amplify that rounding (a
    gradient element near zero moves its parameter by up to lr either way) -- and it did compile."""
    from torch._dynamo.utils import counters
    kw = dict(max_steps=13, log_every=1)
    train_mod.train(cfg_for(tmp_path, "eager", **kw), log=quiet)
    torch._dynamo.reset()
    counters.clear()
    train_mod.train(cfg_for(tmp_path, "compiled", compile="aot_eager", **kw), log=quiet)
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])   # aux off, then on
    a, b = load_checkpoint(tmp_path / "eager" / "last.pt"), load_checkpoint(tmp_path / "compiled" / "last.pt")
    assert a["step"] == b["step"] == 13 and a["skipped"] == b["skipped"]
    la = [r["loss"] for r in read_metrics(tmp_path / "eager") if r["kind"] == "train"]
    lb = [r["loss"] for r in read_metrics(tmp_path / "compiled") if r["kind"] == "train"]
    assert len(la) == len(lb) == 13
    assert lb[:2] == pytest.approx(la[:2], rel=1e-6)      # one update in: the same up to rounding
    assert lb == pytest.approx(la, rel=1e-2)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=13 * 1e-3, msg=k)


@pytest.mark.parametrize("kw,match", [
    (dict(compile="aot_eager", cuda_graph=True), "--compile and --cuda-graph"),
    (dict(compile="no-such-backend"), "--compile must be none or a torch.compile backend"),
])
def test_compile_flag_rejects_what_it_cannot_do(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg_for(tmp_path, "x", **kw)


def test_compile_refuses_float16(tmp_path):
    with pytest.raises(ValueError, match="--compile does not support --dtype float16"):
        train_mod.train(cfg_for(tmp_path, "x", max_steps=2, compile="aot_eager", dtype="float16"), log=quiet)
