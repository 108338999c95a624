"""The trainer: learning on synthetic data, exact resume, the CLI, schedules, plateau
halving, checkpoints, skipping non-finite batches."""
import csv
import dataclasses
import json
import os
import types

import pytest
import torch

from _helpers import quiet, read_metrics, without_timing
from zf_kernels import train as train_mod
from zf_kernels.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from zf_kernels.training.presets import make_config
from zf_kernels.training.schedules import LossWeights, PlateauHalving

SMALL = dict(emb_dim=16, rnn_dim=24, z_dim=4, mlp_dim=16, batch_size=16, train_limit=160,
             eval_limit=32, iwae_k=4, num_samples=4, progress=False, log_every=5,
             checkpoint_every=7, time_budget=None)


def cfg_for(tmp_path, name="run", **kw):
    return make_config("synthetic", out=str(tmp_path / name), **(SMALL | kw))


def test_training_reduces_the_loss_on_synthetic_data(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=120, epochs=100, eval_every=40)
    results = train_mod.train(cfg, log=quiet)
    rec = read_metrics(tmp_path / "run")
    train_nll = [r["nll"] for r in rec if r["kind"] == "train"]
    assert train_nll[-1] < 0.8 * train_nll[0]
    valid = [r["neg_elbo"] for r in rec if r["kind"] == "valid"]
    assert valid[-1] < valid[0]
    assert results["test"]["iwae"] <= results["test"]["neg_elbo"] + 1.0
    for name in ("best.pt", "last.pt", "curves.png", "samples_plot.png", "results.json", "config.json"):
        assert (tmp_path / "run" / name).exists(), name


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    # 25 steps straight vs 11 steps, stop, resume to 25: same parameters, same metrics.
    # 11 and 25 are off the checkpoint grid (every 7) and the log grid (every 5); the
    # 10-batch epochs put an epoch boundary (and a validation) inside both halves.
    full = cfg_for(tmp_path, "full", max_steps=25, epochs=50)
    train_mod.train(full, log=quiet)
    part = cfg_for(tmp_path, "part", max_steps=11, epochs=50)
    train_mod.train(part, log=quiet)
    resumed = cfg_for(tmp_path, "part", max_steps=25, epochs=50, resume=True)
    train_mod.train(resumed, log=quiet)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma = [r for r in read_metrics(tmp_path / "full") if r["kind"] != "test"]
    mb = [r for r in read_metrics(tmp_path / "part") if r["kind"] != "test"]
    assert without_timing(ma) == without_timing(mb)
    # the interrupted run's final test line goes: one test line, the resumed run's, at its end
    tests = {d: [r["step"] for r in read_metrics(tmp_path / d) if r["kind"] == "test"] for d in ("full", "part")}
    assert tests == {"full": [25], "part": [25]}


def test_cli_resume_continues_the_run_as_configured_and_refuses_other_settings(tmp_path, capsys):
    """--out DIR --resume alone continues the run with its own settings (the README's command);
    a flag that would change what the run is (learning rate, schedules, data) is refused by
    name, and config.json keeps saying what ran; a flag of how it runs or when it stops applies."""
    out = tmp_path / "cli"
    first = ["--out", str(out), "--no-progress", "--train-limit", "64", "--eval-limit", "16", "--iwae-k", "2",
             "--rnn-dim", "16", "--z-dim", "3", "--num-samples", "0", "--kl-step", "0.01", "--seed", "3"]
    assert train_mod.main(first + ["--max-steps", "3"]) == 0
    saved = json.loads((out / "config.json").read_text())
    for flags, named in ((["--lr", "0.05"], "--lr 0.05 (the checkpoint's run: 0.001)"),
                         (["--kl-step", "0.1"], "--kl-step 0.1 (the checkpoint's run: 0.01)"),
                         (["--preset", "seqmnist"], "--preset seqmnist (the checkpoint's run: synthetic)"),
                         # validation's noise is drawn per batch: the size changes what the plateau rule sees
                         (["--eval-batch-size", "5"], "--eval-batch-size 5 (the checkpoint's run: ")):
        capsys.readouterr()
        assert train_mod.main(["--out", str(out), "--resume", "--max-steps", "6"] + flags) == 2, flags
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
        assert json.loads((out / "config.json").read_text()) == saved
    assert train_mod.main(["--out", str(out), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 6
    now = json.loads((out / "config.json").read_text())
    assert {k for k in now if now[k] != saved[k]} == {"max_steps", "resume"} and now["rnn_dim"] == 16
    # the Python API alike: a configuration that differs from the checkpoint's is refused
    with pytest.raises(CheckpointError, match=r"--kl-step 0.5 \(the checkpoint's run: 0.01\)"):
        train_mod.train(dataclasses.replace(make_config("synthetic", **{k: v for k, v in now.items() if k != "preset"}),
                                            kl_step=0.5, max_steps=9), log=quiet)


def test_cli_smoke_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = train_mod.main(["--max-steps", "6", "--out", str(out), "--no-progress", "--train-limit", "64",
                         "--eval-limit", "16", "--iwae-k", "2", "--rnn-dim", "16", "--num-samples", "2",
                         "--metrics-format", "csv", "--seed", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "done: 6 steps" in text and str(out) in text
    # what the two recurrences run on, and why (ZForcing.explain_backends), before training
    for op in ("lstm", "zforcing_chain"):
        assert f"\n  {op}: torch (tensors are not on CUDA" in text, text[:2000]
    assert (out / "metrics.csv").exists() and (out / "last.pt").exists()
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    with open(out / "metrics.csv", newline="") as f:     # --metrics-format csv: a CSV table, not JSON lines
        rows = list(csv.DictReader(f))
    # 2-step epochs: no 10-step log line; the 3rd epoch ends with the step budget and is validated too
    assert [r["kind"] for r in rows] == ["valid", "valid", "valid", "test"], rows
    assert {"step", "neg_elbo", "nll", "kl", "lr", "new_best"} <= set(rows[0]) and rows[0]["step"] == "2"


def test_cli_rejects_bad_flags(tmp_path, capsys):
    assert train_mod.main(["--lr", "-1", "--out", str(tmp_path)]) == 2
    assert "--lr must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_mod.main(["--preset", "nope"])
    # the data flags by their names (the loaders' own errors named "path" and "T")
    for flags, message in ((["--preset", "npz"], "--data is required with --preset npz"),
                           (["--preset", "npz", "--data", str(tmp_path)], f"--data: path {tmp_path} does not exist or is not a file"),
                           (["--seq-len", "1"], "--seq-len must be >= 2 for synthetic data, got 1")):
        assert train_mod.main(flags + ["--out", str(tmp_path / "d")]) == 2
        assert message in capsys.readouterr().err, flags
    for device in ("gpu", "meta", "cuda:x"):   # torch.device's own error was a traceback
        assert train_mod.main(["--device", device, "--out", str(tmp_path)]) == 2
        assert f"--device must be auto, cpu, cuda or cuda:N, got {device!r}" in capsys.readouterr().err
    # zero is not a size, a rate or a count; a decay of 0 would zero the learning rate, 1 keeps it
    for flag in ("batch_size", "lr", "clip", "checkpoint_every", "max_steps", "time_budget"):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be a finite number > 0, got 0"):
            make_config("synthetic", **{flag: 0})
    # NaN passes a "<= 0" test: each float flag refuses it and infinities by name
    for flag, v in (("lr", "nan"), ("lr", "inf"), ("clip", "nan"), ("time_budget", "nan"), ("adam_eps", "inf")):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be a finite number > 0, got {v}"):
            make_config("synthetic", **{flag: float(v)})
    for flag, v in (("kl_start", -1.0), ("kl_step", -1.0), ("bwd", -1.0), ("aux_end", float("nan")),
                    ("aux_step", float("inf")), ("lr_min", -1e-4)):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be a finite number >= 0, got {v}"):
            make_config("synthetic", **{flag: v})
    with pytest.raises(ValueError, match=r"--lr-decay must be in \(0, 1\], got nan"):
        make_config("synthetic", lr_decay=float("nan"))
    # a learning rate under --lr-min: the plateau rule would have raised it to --lr-min
    with pytest.raises(ValueError, match=r"--lr-min \(0.0001\) must be <= --lr \(1e-05\)"):
        make_config("synthetic", lr=1e-5)
    assert make_config("synthetic", lr=1e-5, lr_min=1e-6).lr == 1e-5
    with pytest.raises(ValueError, match=r"--lr-decay must be in \(0, 1\], got 0"):
        make_config("synthetic", lr_decay=0)
    assert make_config("synthetic", lr_decay=1).lr_decay == 1
    with pytest.raises(ValueError, match="--num-samples must be >= 0, got -1"):
        make_config("synthetic", num_samples=-1)
    # numpy's "expected non-negative integer" and torch's "Overflow when unpacking long long"
    # (after training, at the samples' seed + 2) named no flag
    for seed in (-1, 2 ** 64 - 2):
        assert train_mod.main(["--seed", str(seed), "--out", str(tmp_path / "s")]) == 2
        assert f"--seed must be an integer in [0, 2**63), got {seed}" in capsys.readouterr().err


def test_presets_carry_the_authors_settings():
    """The README: timit and blizzard carry the authors' settings (Adam eps 1e-5, clip 100, the KL
    weight from 0.2 up by 5e-5 per step), with their model sizes, batch and learning rate."""
    for name, sizes in (("timit", (512, 1024, 256, 512, 32, 1e-3)), ("blizzard", (1024, 2048, 256, 1024, 128, 3e-4))):
        cfg = make_config(name)
        assert (cfg.emb_dim, cfg.rnn_dim, cfg.z_dim, cfg.mlp_dim, cfg.batch_size, cfg.lr) == sizes, name
        assert (cfg.adam_eps, cfg.clip, cfg.kl_start, cfg.kl_step) == (1e-5, 100.0, 0.2, 5e-5), name
        assert (cfg.aux_end, cfg.bwd, cfg.z_force) == (0.0, 0.0, False), name


def test_eval_window_flag_and_the_timit_presets_protocol(tmp_path, capsys):
    """--eval-window: the timit preset scores in the authors' 40-step windows, 0 asks for whole
    sequences, a negative count is refused by name."""
    assert make_config("timit").eval_window == 40 and make_config("synthetic").eval_window is None
    assert make_config("timit", eval_window=0).eval_window == 0
    assert train_mod.main(["--eval-window", "-2", "--out", str(tmp_path)]) == 2
    assert "--eval-window must be >= 0 (0: whole sequences), got -2" in capsys.readouterr().err


def test_every_flag_says_what_it_does_and_what_the_presets_set(capsys):
    """--help: each TrainConfig field has a text of its own, followed by its default and the
    presets that change it (read from PRESETS, so the help cannot drift from them)."""
    from zf_kernels.training.presets import PRESETS, config_fields
    with pytest.raises(SystemExit):
        train_mod.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    texts = [f.metadata.get("help", "") for f in config_fields()]
    assert all(texts) and len(set(texts)) == len(texts)
    for f in config_fields():
        if f.name != "preset":
            assert f"--{f.name.replace('_', '-')}" in text and " ".join(f.metadata["help"].split()) in text, f.name
    assert "inflate the KL (see the README's CPU results) (default: 0.0; presets: " \
           f"synthetic {PRESETS['synthetic']['aux_end']}, seqmnist 1.0," in text
    assert "--max-steps MAX_STEPS stop after this many training steps (unset: no limit) --" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cli_backend_that_cannot_run_here_is_a_clean_error(tmp_path, capsys):
    """--backend cuda on a CPU: exit status 2 and the op's reason on one line, no traceback."""
    assert train_mod.main(["--preset", "synthetic", "--backend", "cuda", "--max-steps", "1",
                           "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "zf_kernels.train: error: backend='cuda' cannot run lstm: the CUDA extension needs CUDA tensors" in err
    assert "Traceback" not in err


def test_kl_and_aux_schedules():
    cfg = make_config("synthetic", kl_start=0.2, kl_step=0.3, aux_start=0.0, aux_end=0.5, aux_step=0.2)
    w = LossWeights.from_config(cfg)
    seen = []
    for _ in range(5):
        seen.append((round(w.kl, 6), round(w.aux, 6)))
        w.advance()
    assert seen == [(0.2, 0.0), (0.5, 0.2), (0.8, 0.4), (1.0, 0.5), (1.0, 0.5)]
    # aux_start above aux_end: the weight falls by aux_step a step and stops at aux_end
    down = LossWeights(kl=1.0, aux=1.0, kl_step=0.0, aux_step=0.4, aux_end=0.1)
    falling = []
    for _ in range(4):
        falling.append(round(down.aux, 6))
        down.advance()
    assert falling == [1.0, 0.6, 0.2, 0.1] and down.aux == 0.1


def test_plateau_halving_fires_and_respects_the_floor():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    rule = PlateauHalving(decay=0.5, lr_min=3e-4, patience=1)
    assert rule.update(10.0, opt) == (True, False)
    assert rule.update(11.0, opt) == (False, True) and opt.param_groups[0]["lr"] == 5e-4
    assert rule.update(9.0, opt) == (True, False)
    assert rule.update(9.5, opt) == (False, True) and opt.param_groups[0]["lr"] == 3e-4
    assert rule.update(9.5, opt) == (False, False) and opt.param_groups[0]["lr"] == 3e-4
    # a rate already under the floor stays where it is (max(lr * decay, lr_min) raised it)
    opt.param_groups[0]["lr"] = 1e-5
    assert rule.update(9.5, opt) == (False, False) and opt.param_groups[0]["lr"] == 1e-5


def test_corrupt_or_foreign_checkpoint_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"x": torch.ones(3)}, good)
    assert torch.equal(load_checkpoint(good)["x"], torch.ones(3))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a zf_kernels checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    real = train_mod.training_loss
    calls = {"n": 0}

    def sometimes_nan(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] in (2, 5) else loss

    monkeypatch.setattr(train_mod, "training_loss", sometimes_nan)
    results = train_mod.train(cfg_for(tmp_path, max_steps=8, epochs=10), log=quiet)
    assert results["skipped_batches"]["non_finite_loss"] == 2
    params = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in params.values())


def test_non_finite_gradients_of_a_finite_loss_are_skipped_and_counted(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (sqrt at 0: an infinite slope times 0) skips the
    update and counts it; the parameters stay finite."""
    real = train_mod.training_loss
    calls = {"n": 0}

    def sometimes_nan_grad(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        if calls["n"] in (3, 4, 6):
            loss = loss + torch.sqrt(a[0].nll.sum() * 0.0)
        return loss

    monkeypatch.setattr(train_mod, "training_loss", sometimes_nan_grad)
    results = train_mod.train(cfg_for(tmp_path, max_steps=8, epochs=10), log=quiet)
    assert results["skipped_batches"] == {"non_finite_loss": 0, "non_finite_grad": 3}
    params = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in params.values())


def test_gradients_are_clipped_to_the_clip_flag(tmp_path, monkeypatch):
    """--clip is the max norm of every update's gradient (clip_grad_norm_, measured after it)."""
    real_clip, seen = torch.nn.utils.clip_grad_norm_, []

    def spy(parameters, max_norm, *a, **k):
        parameters = list(parameters)
        before = real_clip(parameters, max_norm, *a, **k)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        seen.append((max_norm, float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train_mod.train(cfg_for(tmp_path, max_steps=4, epochs=10, clip=0.05), log=quiet)
    assert len(seen) == 4 and all(m == 0.05 for m, _, _ in seen)
    assert all(b > 0.05 and a <= 0.05 * (1 + 1e-5) for _, b, a in seen), seen


def test_fp32_dot_flag_sets_the_kernels_rule(tmp_path, monkeypatch):
    """--fp32-dot: the fused kernels' float32 products for the whole process (ZF_FP32_DOT, which the
    Triton and CUDA kernels read); "auto" leaves the environment alone; a bad value names the flag."""
    from zf_kernels.ops._precision import FP32_DOT_ENV
    monkeypatch.setenv(FP32_DOT_ENV, "ieee")
    train_mod.train(cfg_for(tmp_path, "auto", max_steps=1, epochs=1), log=quiet)
    assert os.environ[FP32_DOT_ENV] == "ieee"
    train_mod.train(cfg_for(tmp_path, "x3", max_steps=1, epochs=1, fp32_dot="tf32x3"), log=quiet)
    assert os.environ[FP32_DOT_ENV] == "tf32x3"
    with pytest.raises(ValueError, match="--fp32-dot must be one of auto, ieee, tf32, tf32x3, got 'fast'"):
        cfg_for(tmp_path, "bad", fp32_dot="fast")
    assert train_mod.main(["--fp32-dot", "fast", "--max-steps", "1"]) == 2


def test_aux_cost_flag_reaches_the_model_and_its_checkpoint(tmp_path):
    """--aux-cost l2 builds the model with the L2 auxiliary cost, and the run's checkpoint loads
    back as such; a bad value names the flag."""
    from zf_kernels.trained import load_trained
    train_mod.train(cfg_for(tmp_path, max_steps=2, epochs=1, aux_cost="l2"), log=quiet)
    trained = load_trained(tmp_path / "run")
    assert trained.model.aux_cost == "l2" and trained.model.config["aux_cost"] == "l2"
    with pytest.raises(ValueError, match="--aux-cost must be one of gaussian, l2, got 'l1'"):
        cfg_for(tmp_path, "bad", aux_cost="l1")


def test_tf32_flag_sets_torch_switches_the_kernels_follow(tmp_path):
    from zf_kernels.ops._precision import dot_precision
    # saved and restored by hand: torch.backends' flag objects are not plain attributes
    # (pytest's monkeypatch deletes them on undo with some pytest versions)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        train_mod.train(cfg_for(tmp_path, "off", max_steps=1, epochs=1), log=quiet)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        train_mod.train(cfg_for(tmp_path, "on", max_steps=1, epochs=1, tf32=True), log=quiet)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    # the Triton kernels' float32 dots follow the matmul switch (CUDA tensors only)
    assert dot_precision(torch.zeros(1)) == "ieee" and dot_precision(torch.zeros(1, dtype=torch.float64)) == "ieee"


def test_time_budget_counts_training_seconds(tmp_path, monkeypatch):
    """--time-budget stops after that many seconds of training steps (a fake clock: 0.5 s a step)."""
    clock = iter(0.5 * i for i in range(10 ** 6))
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    results = train_mod.train(cfg_for(tmp_path, epochs=2, time_budget=2.0, iwae_k=1, num_samples=0), log=quiet)
    assert results["steps"] == 4 and results["train_seconds"] == 2.0


def test_checkpoint_and_evaluation_cadences(tmp_path, monkeypatch):
    """last.pt every --checkpoint-every steps (an epoch's last batch saves after its validation),
    at each epoch end and at the end; a validation every --eval-every steps, counted over the run
    (not within the epoch), and at each epoch end."""
    saves, real_save = [], train_mod.Run.save

    def spy(self, name="last.pt"):
        saves.append((name, self.step))
        return real_save(self, name)
    monkeypatch.setattr(train_mod.Run, "save", spy)
    # 160 sequences in batches of 16: 10 steps an epoch
    train_mod.train(cfg_for(tmp_path, max_steps=14, epochs=50, checkpoint_every=3, eval_every=4, iwae_k=1,
                            num_samples=0), log=quiet)
    assert [s for n, s in saves if n == "last.pt"] == [3, 6, 9, 10, 12, 14]
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "valid"] == [4, 8, 10, 12]


def test_an_epoch_end_on_the_eval_grid_validates_once(tmp_path):
    """With --eval-every dividing the epoch (10 steps), the epoch-end validation and the
    periodic one fall on the same step: one validation there, not two (the second scored the
    same weights, did not improve on the first and halved the learning rate)."""
    train_mod.train(cfg_for(tmp_path, max_steps=20, epochs=50, eval_every=5, iwae_k=1, num_samples=0,
                            patience=1), log=quiet)
    valid = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [5, 10, 15, 20]
    lrs = [r["lr"] for r in valid]
    assert all(b == a or not r["new_best"] for a, b, r in zip(lrs, lrs[1:], valid[1:])), valid


def test_best_checkpoint_is_the_lowest_validation_bound_and_the_final_evaluation_uses_it(tmp_path, monkeypatch):
    """best.pt is written at each new lowest validation -ELBO (not the nll, not every validation),
    and the final evaluation scores its weights, not the last ones."""
    real, script, final = train_mod.evaluate, iter([5.0, 3.0, 2.0, 4.0]), []

    def scripted(model, split, **kw):
        res = real(model, split, **kw)
        bound = next(script, None)
        if bound is None:       # finish: the weights it scores
            final.append({k: v.clone() for k, v in model.state_dict().items()})
        else:
            res["neg_elbo"] = bound
        return res
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    results = train_mod.train(cfg_for(tmp_path, max_steps=9, epochs=50, eval_every=2, iwae_k=1, num_samples=0),
                              log=quiet)
    valid = [(r["step"], r["new_best"]) for r in read_metrics(tmp_path / "run") if r["kind"] == "valid"]
    assert valid == [(2, True), (4, True), (6, True), (8, False)]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["step"] == 6 and last["step"] == 9 and results["checkpoint"].endswith("best.pt")
    assert len(final) == 2 and all(torch.equal(w[k], best["model"][k]) for w in final for k in w)
    assert not all(torch.equal(last["model"][k], best["model"][k]) for k in last["model"])


def test_logged_terms_average_the_updates_of_the_window(tmp_path, monkeypatch):
    """A metrics line averages the steps of its window that updated the weights: a skipped
    (non-finite) batch is counted in "skipped", not averaged in as a zero."""
    real, losses = train_mod.training_loss, []

    def second_is_nan(*a, **k):
        loss = real(*a, **k)
        losses.append(float("nan") if len(losses) == 1 else float(loss.detach()))
        return loss * float("nan") if len(losses) == 2 else loss
    monkeypatch.setattr(train_mod, "training_loss", second_is_nan)
    train_mod.train(cfg_for(tmp_path, max_steps=5, epochs=10, iwae_k=1, num_samples=0), log=quiet)
    (rec,) = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    finite = [v for v in losses if v == v]
    assert rec["step"] == 5 and rec["skipped"] == 1 and len(finite) == 4
    assert rec["loss"] == pytest.approx(sum(finite) / 4, rel=1e-12)


def test_a_window_of_skipped_steps_has_no_averages_and_weights_are_the_steps_own(tmp_path, monkeypatch):
    """Every step of the first window skipped: its line has no averages (None; it logged a
    measured-looking 0.0); the kl / aux weights of a line are those its last step used (the
    next step's before: kl_start + 5 * kl_step at step 5)."""
    real = train_mod.training_loss
    calls = []

    def first_five_nan(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) <= 5 else loss
    monkeypatch.setattr(train_mod, "training_loss", first_five_nan)
    train_mod.train(cfg_for(tmp_path, max_steps=10, epochs=10, iwae_k=1, num_samples=0, kl_start=0.2, kl_step=0.01,
                            aux_start=0.0, aux_end=1.0, aux_step=0.1), log=quiet)
    first, second = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert first["skipped"] == 5 and all(first[k] is None for k in ("loss", "nll", "kl", "grad_norm")), first
    assert second["loss"] is not None and second["grad_norm"] > 0
    assert first["kl_weight"] == pytest.approx(0.24) and first["aux_weight"] == pytest.approx(0.4)
    assert second["kl_weight"] == pytest.approx(0.29) and second["aux_weight"] == pytest.approx(0.9)


def test_a_new_run_in_an_old_runs_folder_does_not_use_its_checkpoints(tmp_path):
    """Without --resume the earlier run's best.pt / last.pt go: a new run that stops before its
    first validation is evaluated on its own weights, not the old best.pt."""
    train_mod.train(cfg_for(tmp_path, max_steps=12, epochs=10, iwae_k=1, num_samples=0), log=quiet)
    assert (tmp_path / "run" / "best.pt").exists()
    results = train_mod.train(cfg_for(tmp_path, max_steps=2, epochs=10, iwae_k=1, num_samples=0, rnn_dim=20),
                              log=quiet)
    assert results["checkpoint"].endswith("last.pt") and not (tmp_path / "run" / "best.pt").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


def test_a_stop_at_an_epochs_end_validates_it_and_resumes_exactly(tmp_path):
    """--max-steps on an epoch's last batch (10-step epochs) ends that epoch: its validation and
    a checkpoint at the next epoch's start (it skipped both); stopping there and resuming, with
    --eval-every on the same step, reproduces the uninterrupted run (no second validation)."""
    kw = dict(epochs=50, eval_every=10, patience=1, iwae_k=1, num_samples=0)
    train_mod.train(cfg_for(tmp_path, "full", max_steps=30, **kw), log=quiet)
    train_mod.train(cfg_for(tmp_path, "part", max_steps=10, **kw), log=quiet)
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["next_batch"], state["validated_step"]) == (1, 0, 10)
    train_mod.train(cfg_for(tmp_path, "part", max_steps=30, resume=True, **kw), log=quiet)
    ma = [r for r in read_metrics(tmp_path / "full") if r["kind"] != "test"]
    mb = [r for r in read_metrics(tmp_path / "part") if r["kind"] != "test"]
    assert without_timing(ma) == without_timing(mb)
    assert [r["step"] for r in ma if r["kind"] == "valid"] == [10, 20, 30]


def test_resumed_configuration_comes_from_rank_0(tmp_path):
    """Under torchrun only rank 0 reads last.pt: another rank builds the resumed configuration
    from the broadcast one, with no file of its own (it read its own copy, or the defaults)."""
    saved = make_config("synthetic", rnn_dim=12, lr=5e-4, out=str(tmp_path / "elsewhere")).to_dict()
    rank1 = types.SimpleNamespace(is_main=False, broadcast_object=lambda payload: ("ok", saved))
    flags = {"resume": True, "max_steps": 9, "out": str(tmp_path / "missing")}
    cfg = train_mod._resumed_config(make_config("synthetic", **flags), flags, rank1)
    assert (cfg.rnn_dim, cfg.lr, cfg.max_steps, cfg.out) == (12, 5e-4, 9, str(tmp_path / "missing"))
    failing = types.SimpleNamespace(is_main=False, broadcast_object=lambda payload: ("error", "rank 0 says no"))
    with pytest.raises(CheckpointError, match="rank 0 says no"):
        train_mod._resumed_config(make_config("synthetic", **flags), flags, failing)


def _npz_run(tmp_path, scale, out="npzrun", **flags):
    import numpy as np
    x = np.random.default_rng(0).normal(size=(48, 6, 2)).astype(np.float32) * scale
    np.savez(tmp_path / "g.npz", x=x)
    cfg = make_config("npz", data=str(tmp_path / "g.npz"), out=str(tmp_path / out),
                      **(SMALL | dict(train_limit=None, eval_limit=None, num_samples=0) | flags))
    return cfg


def test_resume_and_evaluate_refuse_other_data_with_the_same_description(tmp_path):
    """A generic .npz has no description (meta) to compare: the checkpoint records a fingerprint
    of the data (train.load_data), and resuming or evaluating on a rewritten file is refused,
    naming it (a resumed run trained on, and its results.json scored, the new file before)."""
    from zf_kernels import evaluate as evaluate_mod
    train_mod.train(_npz_run(tmp_path, 1.0, max_steps=2), log=quiet)
    assert len(load_checkpoint(tmp_path / "npzrun" / "last.pt")["data_meta"]["fingerprint"]) == 16
    evaluate_mod.evaluate_checkpoint(tmp_path / "npzrun")          # the same data: accepted
    resumed = dataclasses.replace(_npz_run(tmp_path, 100.0, max_steps=4), resume=True)
    with pytest.raises(CheckpointError, match=r"the data set differs .* \(its fingerprint\)"):
        train_mod.train(resumed, log=quiet)
    with pytest.raises(ValueError, match=r"the data set differs .* \(its fingerprint\)"):
        evaluate_mod.evaluate_checkpoint(tmp_path / "npzrun")
    # a checkpoint from before fingerprints (none in its data_meta) still loads
    _npz_run(tmp_path, 1.0)
    state = load_checkpoint(tmp_path / "npzrun" / "last.pt")
    del state["data_meta"]["fingerprint"]
    save_checkpoint(state, tmp_path / "npzrun" / "last.pt")
    evaluate_mod.evaluate_checkpoint(tmp_path / "npzrun" / "last.pt")


def test_resume_reads_the_noise_generator_whatever_the_checkpoint_was_loaded_onto(tmp_path, monkeypatch):
    """On a GPU the checkpoint is loaded onto the run's device, which moved the posterior noise
    generator's byte state there, and set_state takes CPU bytes only: every single-process
    resume on CUDA failed ("does not hold a complete training state"). Here the load onto the
    stand-in for a CUDA tensor (_OnTheGpu) plays the load onto the GPU. A state of another kind of generator (a CUDA run's, 16 bytes)
    is refused naming --device."""
    from zf_kernels.training import checkpoint as ckpt_mod
    real_load = ckpt_mod.load_checkpoint
    train_mod.train(cfg_for(tmp_path, max_steps=3, epochs=50), log=quiet)

    def load_moving_the_generator(path, map_location=None):
        state = real_load(path, map_location=map_location)
        state["eps_generator"] = _OnTheGpu(state["eps_generator"])
        return state
    monkeypatch.setattr(train_mod, "load_checkpoint", load_moving_the_generator)
    train_mod.train(cfg_for(tmp_path, max_steps=5, epochs=50, resume=True), log=quiet)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5
    monkeypatch.setattr(train_mod, "load_checkpoint", real_load)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["eps_generator"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(state, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match=r"written on another kind of device than --device cpu"):
        train_mod.train(cfg_for(tmp_path, max_steps=7, epochs=50, resume=True), log=quiet)


class _OnTheGpu:
    """A generator state as a load onto a GPU leaves it: set_state refuses it, .cpu() gives it."""
    def __init__(self, state):
        self._state = state

    def cpu(self):
        return self._state
