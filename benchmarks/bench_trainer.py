"""The trainer's own step, as ``python -m zf_kernels.train`` runs it: ``Run.train_step`` on
real batches (host batch checks, the posterior noise, the loss-weight schedules, the skip
checks, the metric window), timed as the trainer times it (wall clock around the step plus a
CUDA synchronisation), eager versus ``--cuda-graph`` versus ``--compile``, with the torch,
Triton and auto backends.

    python benchmarks/bench_trainer.py --cases timit --providers torch,triton+cuda-graph
    python benchmarks/bench_trainer.py --device cpu --cases synthetic --providers torch,torch+compile

Providers:
  torch, triton, auto              the eager trainer step (--backend torch / triton / auto)
  torch+cuda-graph, triton+cuda-graph   the same run with --cuda-graph
  torch+compile, triton+compile, auto+compile
                                   the same run with --compile inductor (``--compile-backend``):
                                   compilation happens in the warm-up steps

bench_train_step.py times the bare step (forward, backward, Adam on fixed tensors); this
script measures what a user of the trainer gets, so the difference between the two is the
trainer's own overhead. Sizes: the authors' TIMIT settings (T40 B32, frames of 200, emb 512,
rnn 1024, z 256, mlp 512) on synthetic data of that shape, and the Sequential MNIST shape
(T784, one binary pixel per step, z 128). ``ms`` is the median over the timed steps (after
``--warmup-steps``, which include the graph captures); ``peak_mb`` the peak allocation over
the timed steps. ``rel_err`` compares the mean training loss over the timed steps with the
eager torch row of the same case (same data, same noise: the modes should agree to rounding).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root
from benchmarks import common  # noqa: E402
from benchmarks.common import Budget, Results, classify_error, free_memory  # noqa: E402

import torch  # noqa: E402

from zf_kernels import train as train_mod  # noqa: E402
from zf_kernels.data import DataBundle, SequenceSplit  # noqa: E402
from zf_kernels.training.presets import make_config  # noqa: E402

PROVIDERS = ("torch", "torch+cuda-graph", "triton", "triton+cuda-graph", "auto",
             "torch+compile", "triton+compile", "auto+compile")
CASES = {
    "timit": dict(label="trainer TIMIT T40 B32", T=40, D=200, output="gaussian",
                  size=dict(emb_dim=512, rnn_dim=1024, z_dim=256, mlp_dim=512, batch_size=32, z_force=False),
                  long=False),
    "seqmnist": dict(label="trainer SeqMNIST T784 B32", T=784, D=1, output="bernoulli",
                     size=dict(emb_dim=512, rnn_dim=1024, z_dim=128, mlp_dim=512, batch_size=32, z_force=True),
                     long=True),
    # the default main job's model and data shape (preset synthetic): a CPU-sized case
    "synthetic": dict(label="trainer synthetic T32 B32", T=32, D=4, output="gaussian",
                      size=dict(emb_dim=32, rnn_dim=64, z_dim=8, mlp_dim=32, batch_size=32, z_force=True),
                      long=False),
}
SMOKE_CASES = {
    "timit": dict(label="trainer tiny-gaussian T5 B3", T=5, D=6, output="gaussian",
                  size=dict(emb_dim=8, rnn_dim=16, z_dim=4, mlp_dim=8, batch_size=3, z_force=False), long=False),
    "seqmnist": dict(label="trainer tiny-bernoulli T12 B3", T=12, D=1, output="bernoulli",
                     size=dict(emb_dim=8, rnn_dim=16, z_dim=4, mlp_dim=8, batch_size=3, z_force=True), long=True),
}


def make_data(case, n_batches: int, seed: int = 0) -> DataBundle:
    """Random sequences of the case's shape (the timing does not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * case["size"]["batch_size"]
    shape = (n, case["T"], case["D"])
    if case["output"] == "bernoulli":
        y = (torch.rand(shape, generator=g) < 0.3).float()
    else:
        y = torch.randn(shape, generator=g)
    split = lambda t: SequenceSplit(t, None, None)  # noqa: E731
    return DataBundle(name=f"bench-{case['output']}", train=split(y), valid=split(y[:8]), test=split(y[:8]),
                      output_type=case["output"], input_dim=case["D"])


def build_run(case, provider, device, data, out, compile_backend="inductor"):
    backend, _, variant = provider.partition("+")
    cfg = make_config("synthetic", out=str(out), device=str(device), backend=backend,
                      cuda_graph=variant == "cuda-graph", progress=False, time_budget=None,
                      compile=compile_backend if variant == "compile" else "none",
                      aux_start=0.5, aux_end=1.0, aux_step=1e-4, bwd=1.0, kl_start=0.2, kl_step=5e-5,
                      **case["size"])   # z_force per case: bench_train_step's models (TIMIT without it)
    return train_mod.Run(cfg, log=lambda *a, **k: None, data=data)


def run_provider(res, base, case, provider, device, args, data, ref):
    row = res.begin(**base, provider=provider)
    run = None
    try:
        if provider.endswith("cuda-graph") and device.type != "cuda":
            res.end(row, status="skipped", note="--cuda-graph needs a CUDA device")
            return
        with tempfile.TemporaryDirectory() as out:
            run = build_run(case, provider, device, data, out, args.compile_backend)
            batches = list(train_mod.iterate_batches(data.train, run.cfg.batch_size, shuffle=False, seed=0,
                                                     epoch=0, drop_last=True))
            n_warm, n_time = args.warmup_steps, args.steps
            times, warm = [], []
            torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
            for i in range(n_warm + n_time):
                if i == n_warm and device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                run.train_step(batches[i % len(batches)])
                common.sync(device)
                (times if i >= n_warm else warm).append((time.perf_counter() - t0) * 1e3)
                if i == n_warm - 1:
                    run.flush_window()            # the timed steps' losses only
            run.flush_window()
            records = run.metrics.read()
            loss = records[-1]["loss"] if records else float("nan")
        peak = torch.cuda.max_memory_allocated(device) / common.MB if device.type == "cuda" else None
        q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
        err = None
        if provider == "torch":
            ref["loss"], err = loss, 0.0
        elif ref.get("loss") is not None:
            err = abs(loss - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
        note = (f"{n_time} timed steps after {n_warm} (captures: "
                f"{run.static_step.captures if run.static_step else 0}; first step {warm[0] / 1e3:.1f} s); "
                f"mean loss {loss:.6g}")
        status, why = common.accuracy_status(base["dtype"], err)   # a wrong mean loss: not a speed
        res.end(row, ms=statistics.median(times), ms_p20=q[0], ms_p80=q[3], n=len(times), method="wall+sync",
                peak_mb=peak, rel_err=err, status=status, note="; ".join(n for n in (why, note) if n))
    except Exception as exc:  # noqa: BLE001 - one failure is one row
        status, note = classify_error(exc)
        res.end(row, status=status, note=note)
    finally:
        del run


def run(args) -> int:
    device, providers, table, case_names = common.start_cases(args, PROVIDERS, CASES, SMOKE_CASES)
    env = common.environment(device, args.smoke)
    res = Results(common.out_dir(args, device), args.name, env, "trainer", fresh=args.fresh, quiet=args.quiet)
    budget = Budget(args.budget_s)
    print(f"# bench_trainer on {env['gpu']} ({device}), torch {env['torch']} -> {res.csv_path}", flush=True)
    for c in case_names:
        case = table[c]
        n_batches = max(1, min(args.warmup_steps + args.steps, 16))
        data = make_data(case, n_batches)
        ref = {}
        for provider in providers:
            base = dict(case=case["label"], op="trainer", shape=case["label"], dtype="float32", mode="step")
            if budget.exhausted():
                res.add(**base, provider=provider, status="skipped", note="time budget (--budget-s) used up")
                continue
            if not common.cuda_healthy(device):
                res.add(**base, provider=provider, status="error", note="CUDA context lost after an earlier error")
                return 2
            run_provider(res, base, case, provider, device, args, data, ref)
            free_memory(device, collect=device.type == "cuda")
    print(f"# wrote {res.csv_path} and {res.json_path}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--cases", default=None, help="comma-separated: timit, seqmnist (default both)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row (default 20)")
    p.add_argument("--compile-backend", default="inductor",
                   help="the *+compile providers' torch.compile backend (default inductor)")
    p.add_argument("--warmup-steps", type=int, default=5,
                   help="untimed steps first (compilation, graph captures); default 5")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        p.error("--steps and --warmup-steps must be >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
