"""Faults: the trainer SIGKILLed at random moments (and inside checkpoint writes) resumes to
exactly the uninterrupted result; corrupt or truncated checkpoints give a CheckpointError
(and exit code 2 with one line from the CLI); crash-safe metrics; the epoch-end
validation / checkpoint order."""
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import cli_flags, quiet, read_metrics, without_timing
from zf_kernels import train as train_mod
from zf_kernels.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from zf_kernels.training.presets import make_config
from zf_kernels.training.report import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
# 48 sequences in batches of 8: 6 batches per epoch, an epoch end (validation, best.pt)
# every 6 steps; a checkpoint after every step.
TINY = dict(emb_dim=8, rnn_dim=16, z_dim=4, mlp_dim=8, batch_size=8, train_limit=48, eval_limit=16,
            iwae_k=1, num_samples=0, log_every=3, checkpoint_every=1, time_budget=None, epochs=100,
            device="cpu", seed=11, progress=False)
STEPS = 40


def cfg(out, **kw):
    return make_config("synthetic", out=str(out), **(TINY | kw))


def flags(**kw):
    return cli_flags(TINY | kw)


def checkpoint_step(path):
    """The step in ``path`` (None when absent); fails the test if it is not loadable."""
    if not path.exists():
        return None
    return load_checkpoint(path)["step"]


def _forked_trainer(argv, save_delay):
    """A forked copy of this process (torch already imported: no start-up cost) that runs the
    CLI; its output goes to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["ZF_KERNELS_TEST_SAVE_DELAY"] = save_delay
    os._exit(train_mod.main(argv))


class Launch:
    """The trainer in a child process: the first launch is the real ``python -m
    zf_kernels.train``; later ones are forks of the test process running the same CLI."""

    def __init__(self, argv, save_delay, real):
        self.real = real
        if real:
            env = dict(os.environ, OMP_NUM_THREADS="1", ZF_KERNELS_TEST_SAVE_DELAY=save_delay,
                       PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            self.proc = subprocess.Popen([sys.executable, "-m", "zf_kernels.train", *argv], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.proc = multiprocessing.get_context("fork").Process(
                target=_forked_trainer, args=(argv, save_delay), daemon=True)
            self.proc.start()

    def running(self):
        return self.proc.poll() is None if self.real else self.proc.is_alive()

    def sigkill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout=None):
        if self.real:
            return self.proc.wait(timeout)
        self.proc.join(timeout)
        return self.proc.exitcode


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    ref = tmp_path / "ref"
    train_mod.train(cfg(ref, max_steps=STEPS), log=quiet)

    out = tmp_path / "killed"
    argv = flags(max_steps=STEPS, out=str(out))
    rng = random.Random(20240611)
    # "random": a random moment after the run made progress; "in-save": while save_checkpoint
    # sleeps between the complete temp file and its rename (the test hook)
    plan = ["random", "in-save"] * 4
    mid_write_kills, steps_at_kill = 0, []
    for i, mode in enumerate(plan):
        before = checkpoint_step(out / "last.pt")
        mtime = (out / "last.pt").stat().st_mtime_ns if before is not None else None
        stale = set(out.glob("last.pt.*.tmp"))   # left by an earlier kill (the trainer cleans them)
        run = Launch(argv + (["--resume"] if i else []), "0.3" if mode == "in-save" else "", real=i == 0)
        deadline = time.time() + 40
        saves_to_see, seen = rng.randint(1, 4), 0
        try:
            while run.running() and time.time() < deadline:
                if mode == "in-save" and set(out.glob("last.pt.*.tmp")) - stale:
                    break        # a save is between its temp file and the rename: kill now
                if mode == "random" and (out / "last.pt").exists() and \
                        (out / "last.pt").stat().st_mtime_ns != mtime:
                    mtime, seen = (out / "last.pt").stat().st_mtime_ns, seen + 1
                    if seen == saves_to_see:   # training runs: kill at a random moment of a step
                        time.sleep(rng.uniform(0.0, 0.03))
                        break
                time.sleep(0.002)
            finished = not run.running()
        finally:
            run.sigkill()
        assert not finished, f"launch {i} ended before it was killed"
        assert time.time() < deadline, f"launch {i} made no progress in 40 s"
        if mode == "in-save":
            mid_write_kills += bool(set(out.glob("last.pt.*.tmp")) - stale)
        # never half-written: absent or a complete checkpoint, and never going back
        step = checkpoint_step(out / "last.pt")
        assert before is None or (step is not None and step >= before)
        steps_at_kill.append(step)
    assert mid_write_kills == plan.count("in-save")
    assert steps_at_kill[-1] is not None and steps_at_kill[-1] < STEPS

    final = Launch(argv + ["--resume"], "", real=False)
    assert final.wait(120) == 0
    assert not list(out.glob("*.tmp")), "stale temp files of killed saves were not cleaned up"
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("weights", "plateau", "skipped", "epoch", "next_batch"):
        assert a[k] == b[k], k
    assert without_timing(read_metrics(ref)) == without_timing(read_metrics(out))
    print(f"\nkill-and-resume: {len(plan)} SIGKILLs ({plan.count('in-save')} inside checkpoint "
          f"writes), last.pt at steps {steps_at_kill} when killed; final parameters bit-identical "
          f"to the uninterrupted run")


def _same(a, b):
    """Deep equality of checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_corruption_or_truncation_is_a_checkpoint_error_never_a_silent_change(tmp_path):
    """Every truncation and single bit flip of a real checkpoint either raises CheckpointError
    or (a flip in zip metadata that no reader uses) loads exactly the original state."""
    run = train_mod.Run(cfg(tmp_path / "r", max_steps=1), log=quiet)
    run.fit()
    good = tmp_path / "good.pt"
    save_checkpoint(run.state_dict(), good)
    original = load_checkpoint(good)
    data = good.read_bytes()
    rng = random.Random(7)
    bad = tmp_path / "bad.pt"
    cases = [data[:n] for n in (0, 1, 4, 30, 100, len(data) // 2, len(data) - 23, len(data) - 1)]
    cases += [data[:n] for n in rng.sample(range(len(data)), 40)]
    flips = []
    for _ in range(300):   # single bit flips anywhere: headers, pickle, tensors, directory
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        flips.append(bytes(b))
    extra = [data + b"\0", b"garbage" * 10, b"PK\x03\x04" + b"\0" * 100]
    outcome = {"CheckpointError": 0, "identical": 0}
    for i, blob in enumerate(cases + flips + extra):
        bad.write_bytes(blob)
        try:
            state = load_checkpoint(bad)
        except CheckpointError as exc:
            assert "bad.pt" in str(exc) and ("truncated or corrupt" in str(exc) or "not a zf_kernels" in str(exc))
            outcome["CheckpointError"] += 1
            continue
        assert i >= len(cases), "a truncated checkpoint loaded"
        assert _same(state, original), "a corrupt checkpoint loaded different contents"
        outcome["identical"] += 1
    print(f"\ncorrupt checkpoints: {outcome}")
    assert outcome["CheckpointError"] >= len(cases) + 0.8 * len(flips)


def test_a_checkpoint_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "v2.pt"
    torch.save({"format_version": 2, "step": 1}, path)
    with pytest.raises(CheckpointError, match="v2.pt is not a zf_kernels checkpoint of format version 1"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)
    with pytest.raises(CheckpointError, match="not a zf_kernels checkpoint"):
        load_checkpoint(path)


def test_cli_resume_from_a_corrupt_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    args = ["--resume", "--out", str(out), *flags(max_steps=2)]
    save_checkpoint({"x": 1}, out / "last.pt")     # loadable, but not a training state
    assert train_mod.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not hold a complete training state" in err and "last.pt" in err
    (out / "last.pt").write_bytes(b"\x80\x04garbage")
    assert train_mod.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zf_kernels.train: error: checkpoint")
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_a_crash_between_the_epoch_end_validation_and_its_checkpoint(tmp_path, monkeypatch):
    """Killed right after the epoch-end validation wrote its record (and best.pt): the
    resumed run must not validate that step a second time."""
    train_mod.train(cfg(tmp_path / "ref", max_steps=8), log=quiet)

    class Crash(Exception):
        pass

    real = train_mod.Run.validate

    def validate_then_crash(self):
        real(self)
        raise Crash

    monkeypatch.setattr(train_mod.Run, "validate", validate_then_crash)
    with pytest.raises(Crash):
        train_mod.train(cfg(tmp_path / "crash", max_steps=8), log=quiet)
    monkeypatch.setattr(train_mod.Run, "validate", real)
    train_mod.train(cfg(tmp_path / "crash", max_steps=8, resume=True), log=quiet)
    assert without_timing(read_metrics(tmp_path / "ref")) == without_timing(read_metrics(tmp_path / "crash"))
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("ref", "crash"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_log_survives_a_cut_line_and_rewrites_atomically(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for s in (1, 2, 3):
        log.write({"kind": "train", "step": s})
    with open(log.path, "a") as f:
        f.write('{"kind": "train", "st')          # a record cut short by a crash
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [1, 2] and log.path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2"):
        log.read()
    csv_log = MetricsLog(tmp_path / "m.csv", "csv")
    csv_log.write({"step": 1, "a": 1.5})
    csv_log.write({"step": 2, "b": 2})
    assert csv_log.read() == [{"step": 1, "a": 1.5}, {"step": 2, "b": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.jsonl"]


def test_rare_huge_frames_are_skipped_counted_and_leave_parameters_finite(tmp_path):
    """Data with a few frames of 1e6 (finite loss: clamped log-variances and gradient
    clipping must cope) and of 1e20 (the Gaussian NLL overflows float32: those batches must be
    skipped). The metrics' cumulative "skipped" must count exactly the skipped batches."""
    from zf_kernels.data import iterate_batches, load_npz

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 2)).astype(np.float32)
    big, huge = [3, 17, 40], [9, 50]
    for i in big:
        x[i, 4] = 1e6
    for i in huge:
        x[i, 2, 1] = 1e20
    path = tmp_path / "spiky.npz"
    np.savez(path, x=x, x_valid=rng.standard_normal((8, 8, 2)).astype(np.float32),
             x_test=rng.standard_normal((8, 8, 2)).astype(np.float32))
    steps, bs, seed = 24, 8, 3
    out = tmp_path / "run"
    results = train_mod.train(make_config(
        "npz", data=str(path), out=str(out), emb_dim=8, rnn_dim=16, z_dim=4, mlp_dim=8, batch_size=bs,
        max_steps=steps, epochs=100, log_every=1, checkpoint_every=50, iwae_k=1, num_samples=0,
        progress=False, seed=seed, time_budget=None), log=quiet)

    # which steps saw a 1e20 frame (their loss is +inf) or only a 1e6 one
    train = load_npz(path).train
    per_epoch = len(train) // bs
    huge_steps, big_steps = [], []
    for step in range(1, steps + 1):
        epoch, k = divmod(step - 1, per_epoch)
        batch = list(iterate_batches(train, bs, shuffle=True, seed=seed, epoch=epoch, drop_last=True))[k]
        index = set(batch.index.tolist())
        if index & set(huge):
            huge_steps.append(step)
        elif index & set(big):
            big_steps.append(step)
    assert huge_steps and big_steps
    skipped = results["skipped_batches"]
    print(f"\nhuge-frame steps {huge_steps}, 1e6-frame steps {big_steps}, skipped {skipped}")
    assert skipped["non_finite_loss"] == len(huge_steps)
    assert skipped["non_finite_grad"] <= len(big_steps)
    records = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:   # cumulative, and exactly the loss skips so far (+ grad skips of 1e6 batches)
        lo = sum(s <= r["step"] for s in huge_steps)
        assert lo <= r["skipped"] <= lo + sum(s <= r["step"] for s in big_steps)
    assert records[-1]["skipped"] == sum(skipped.values())
    params = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in params.values())
    assert all(math.isfinite(results["test"][k]) for k in ("neg_elbo", "nll", "kl", "iwae"))


def test_a_checkpoint_keeps_its_crc_when_torchs_is_switched_off(tmp_path):
    """A user who turned torch.save's CRC-32 off (torch.serialization.set_crc32_options) still
    gets checkpoints with it, that load back (without it, this loader refused them as failing
    their CRC check), and finds the option as they left it."""
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch has no CRC-32 switch")
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint({"w": torch.arange(6.0)}, tmp_path / "c.pt")
        assert torch.serialization.get_crc32_options() is False
        assert torch.equal(load_checkpoint(tmp_path / "c.pt")["w"], torch.arange(6.0))
    finally:
        torch.serialization.set_crc32_options(True)


def test_checkpoints_and_metrics_are_readable_by_others_like_the_runs_other_files(tmp_path):
    """Both are written through a temporary file (mkstemp: mode 0600) renamed into place:
    checkpoints came out -rw------- beside -rw-r--r-- pictures and results."""
    import stat
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 1})
    log.truncate_after(1)
    for name in ("last.pt", "m.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
