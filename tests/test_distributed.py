"""Data-parallel training on the CPU (gloo, 2 processes), in one torchrun launch: the real
CLI, then several runs in one process group (resume across process counts, agreed skips
and time-budget stops, rank 0 alone writing files)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from _helpers import cli_flags, quiet, read_metrics, without_timing
from zf_kernels import train as train_mod
from zf_kernels.training import distributed
from zf_kernels.training.checkpoint import load_checkpoint
from zf_kernels.training.presets import make_config

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ROOT = Path(__file__).resolve().parents[1]
# 63 training sequences in global batches of 7 -> 9 batches per epoch (an epoch end and its
# validation inside every run); 7 = 4 + 3 sequences on 2 ranks: an unequal split.
BASE = dict(emb_dim=8, rnn_dim=16, z_dim=4, mlp_dim=8, batch_size=7, train_limit=63, eval_limit=16,
            iwae_k=2, num_samples=2, progress=False, log_every=2, checkpoint_every=3, time_budget=None,
            epochs=50, device="cpu", seed=5)
K, K1 = 12, 5                       # total steps; where the interrupted runs stop
EXPECTED_FILES = {"config.json", "metrics.jsonl", "last.pt", "best.pt", "results.json", "curves.png",
                  "samples_plot.png"}


def cfg(out, **kw):
    return make_config("synthetic", out=str(out), **(BASE | kw))


def flags(**kw):
    return cli_flags(BASE | kw)


def params(run_dir):
    return load_checkpoint(Path(run_dir) / "last.pt")["model"]


def assert_params(a, b, exact):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:   # different process counts: the gradient reductions round differently
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------- the 2-process driver
def _driver(root: Path, port2: int):
    """What each of the 2 torchrun workers runs (``python -m torch.distributed.run
    --nproc_per_node 2 tests/test_distributed.py --driver ROOT PORT2``).

    1. The CLI, exactly as a user runs it (``main(flags)``): the trainer initialises the
       process group from the torchrun environment and destroys it at the end.
    2. Then a process group that the driver owns (on a second port) for several trainings.
    Each rank works in its own directory (``--out`` is relative), so any file that a rank
    other than 0 wrote would show up in ``root/rank1``."""
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    cwd = root / f"rank{rank}"
    cwd.mkdir(exist_ok=True)
    os.chdir(cwd)
    out = {"cli_rc": train_mod.main(flags(max_steps=K, out="two"))}
    assert not dist.is_initialized()
    # an explicit store: under torchrun, init_method="tcp://..." would only connect as a client
    # to the agent's store
    store = dist.TCPStore("127.0.0.1", port2, 2, is_master=rank == 0, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    small = dict(num_samples=0, iwae_k=1)
    # 2 processes stopped at K1; a copy resumed with 2 processes (the original is resumed
    # with 1 process by the test)
    out["d2"] = train_mod.train(cfg("d2", max_steps=K1, **small), log=quiet)
    dist.barrier()
    if rank == 0:
        shutil.copytree("d2", "d2b")
    dist.barrier()
    out["d2b"] = train_mod.train(cfg("d2b", max_steps=K, resume=True, **small), log=quiet)
    # a 1-process checkpoint (made by the test) resumed with 2 processes
    out["p1"] = train_mod.train(cfg("p1", max_steps=K, resume=True, **small), log=quiet)

    # rank 1 alone sees a non-finite loss at its 3rd step: both ranks must skip it
    real, calls = train_mod.training_loss, {"n": 0}

    def nan_on_rank1(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if rank == 1 and calls["n"] == 3 else loss

    train_mod.training_loss = nan_on_rank1
    out["nan"] = train_mod.train(cfg("nan", max_steps=6, **small), log=quiet)

    # rank 1 is slow: the time budget must stop both ranks after the same step
    def slow_on_rank1(*a, **k):
        if rank == 1:
            time.sleep(0.04)
        return real(*a, **k)

    train_mod.training_loss = slow_on_rank1
    out["budget"] = train_mod.train(cfg("budget", max_steps=200, time_budget=0.25, **small), log=quiet)
    train_mod.training_loss = real
    (root / f"results{rank}.json").write_text(json.dumps(out, default=str))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-process references (in this process) and one torchrun launch of the driver."""
    root = tmp_path_factory.mktemp("ddp")
    work = root / "rank0"
    work.mkdir()
    train_mod.train(cfg(root / "one", max_steps=K), log=quiet)
    train_mod.train(cfg(work / "p1", max_steps=K1, num_samples=0, iwae_k=1), log=quiet)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           __file__, "--driver", str(root), str(free_port())]
    t0 = time.time()
    # its own session, so that a hang kills the launcher and both workers
    popen = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        stdout, stderr = popen.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        pytest.fail("the 2-process run hung:\n" + stdout[-3000:] + stderr[-5000:])
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = [json.loads((root / f"results{r}.json").read_text()) for r in (0, 1)]
    return dict(root=root, one=root / "one", work=work, two=work / "two", proc=proc, res=res,
                seconds=time.time() - t0)


def test_torchrun_cli_two_processes_train_like_one(runs):
    two = runs["two"]
    assert [r["cli_rc"] for r in runs["res"]] == [0, 0]
    # only rank 0 logs and writes: one "done" line, nothing in rank 1's directory, no
    # duplicated records
    assert runs["proc"].stdout.count("done: 12 steps") == 1, runs["proc"].stdout
    assert runs["proc"].stdout.count("zf_kernels.train: model 'zforcing'") == 1, runs["proc"].stdout
    assert list((runs["root"] / "rank1").iterdir()) == [], "rank 1 wrote files"
    assert {p.name for p in two.iterdir()} == EXPECTED_FILES
    rec = read_metrics(two)
    assert [r["step"] for r in rec if r["kind"] == "train"] == list(range(2, K + 1, 2))
    assert [r["step"] for r in rec if r["kind"] == "valid"] == [9]
    # DDP kept the ranks bit-identical, and last.pt holds exactly that model
    res = json.loads((two / "results.json").read_text())
    assert res["world_size"] == 2 and len(res["rank_param_digests"]) == 2
    assert len(set(res["rank_param_digests"])) == 1
    assert res["rank_param_digests"][0] == distributed.param_digest(params(two))
    # the global batch and each sequence's noise do not depend on the process count: the
    # 2-process run follows the 1-process run up to rounding, metrics included
    assert_params(params(runs["one"]), params(two), exact=False)
    one_rec = [r for r in read_metrics(runs["one"]) if r["kind"] == "train"]
    for a, b in zip(one_rec, [r for r in rec if r["kind"] == "train"], strict=True):
        for key in ("loss", "nll", "kl", "aux", "bwd_nll", "grad_norm", "lr", "skipped"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_resume_across_process_counts(runs):
    work = runs["work"]
    r0, r1 = runs["res"]
    # 2 -> 2: bit-exact against the uninterrupted 2-process run, metrics included
    assert_params(params(runs["two"]), params(work / "d2b"), exact=True)
    no_test = lambda d: without_timing(r for r in read_metrics(d) if r["kind"] != "test")  # noqa: E731
    assert no_test(work / "d2b") == no_test(runs["two"])
    # 1 -> 2 and 2 -> 1: the single-process trajectory up to rounding
    assert_params(params(runs["one"]), params(work / "p1"), exact=False)
    train_mod.train(cfg(work / "d2", max_steps=K, resume=True, num_samples=0, iwae_k=1), log=quiet)
    assert_params(params(runs["one"]), params(work / "d2"), exact=False)
    for name in ("d2", "d2b", "p1"):
        assert r0[name]["rank_param_digests"] == [r1[name]["param_digest"]] * 2


def test_skips_and_time_budget_are_agreed_across_ranks(runs):
    r0, r1 = runs["res"]
    # the non-finite loss of rank 1 alone: skipped (and counted once) on both ranks
    assert r0["nan"]["skipped_batches"] == r1["nan"]["skipped_batches"] == \
        {"non_finite_loss": 1, "non_finite_grad": 0}
    assert len(set(r0["nan"]["rank_param_digests"])) == 1
    assert [r["skipped"] for r in read_metrics(runs["work"] / "nan") if r["kind"] == "train"] == [0, 1, 1]
    # the time budget stopped both ranks after the same step, well before max_steps
    assert r0["budget"]["steps"] == r1["budget"]["steps"] < 200
    assert len(set(r0["budget"]["rank_param_digests"])) == 1


def test_distributed_helpers_without_a_process_group(monkeypatch):
    ctx = distributed.DistContext(rank=1, world_size=3)
    assert [ctx.shard(7, r) for r in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [len(range(10)[ctx.shard(2, r)]) for r in range(3)] == [1, 1, 0]
    one = distributed.DistContext()
    assert not one.enabled and one.broadcast_object({"a": 1}) == {"a": 1}
    assert one.all_reduce([1.5, 2.0]).tolist() == [1.5, 2.0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.setup("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        distributed.env_world()
    torch.manual_seed(0)
    a = torch.nn.Linear(2, 2)
    torch.manual_seed(0)
    b = torch.nn.Linear(2, 2)
    assert distributed.param_digest(a) == distributed.param_digest(b.state_dict())
    with torch.no_grad():
        b.weight[0, 0] += 1e-7
    assert distributed.param_digest(a) != distributed.param_digest(b)


def test_a_rank_checks_the_split_and_seeds_its_own_noise_without_a_process_group(tmp_path):
    """What a Run of rank r of 2 settles before any collective: every global batch, the last
    one of a training split shorter than --batch-size included, must give each rank a sequence;
    a model whose forward takes no eps draws from a generator of its own per rank and step."""
    two = lambda r: distributed.DistContext(rank=r, world_size=2)  # noqa: E731
    with pytest.raises(ValueError, match=r"with 2 processes .* must be >= 2, got a batch of 1"):
        train_mod.Run(cfg(tmp_path / "a", batch_size=1), log=quiet, dist_ctx=two(0))
    with pytest.raises(ValueError, match=r"the training split, 1 sequences\) must be >= 2, got a batch of 1"):
        train_mod.Run(cfg(tmp_path / "b", train_limit=1), log=quiet, dist_ctx=two(0))
    ranks = [train_mod.Run(cfg(tmp_path / "c", train_limit=8), log=quiet, dist_ctx=two(r)) for r in (0, 1)]

    def noise(run, step):
        run.accepts_eps, run.step = False, step
        return torch.randn(5, generator=run._noise(4, 7, run.dist.shard(7))["generator"])

    first = noise(ranks[0], 3)
    assert torch.equal(first, noise(ranks[0], 3))
    assert not torch.equal(first, noise(ranks[1], 3)) and not torch.equal(first, noise(ranks[0], 4))


if __name__ == "__main__" and sys.argv[1:2] == ["--driver"]:
    _driver(Path(sys.argv[2]), int(sys.argv[3]))
