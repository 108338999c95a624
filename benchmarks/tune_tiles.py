"""Which tile should the persistent Triton kernels use? A measurement for the next choice of
``PERSISTENT_TILES`` (zf_kernels/ops/lstm/triton.py, zf_kernels/ops/recurrence/triton.py).

At B=32, H=1024 the persistent LSTM runs 32 x 16 tiles (a 1 x 64 grid: 64 of the 132 SMs of
an H200 busy, each program doing all 32 rows) by default; 16 x 16 tiles give a 2 x 64 grid
(128 programs, half the rows each, the W_hh slice read twice from L2). Which is faster is a
GPU question: this script times ``ops.lstm`` and ``ops.zforcing_chain`` forward + backward
with each candidate tile forced (the module's tile table patched for the run), next to the
stepwise schedule, at the DESIGN shapes, and checks each against float64 (``rel_err``).

    python benchmarks/tune_tiles.py --out OUT --name results        # GPU; rows in suite "tune"
    python benchmarks/tune_tiles.py --smoke                          # CPU: checks it runs

The persistent kernels' float32 K loop loads one chunk at a time (``PERSISTENT_FP32_STAGES = 1``:
no register spills), and on the H200 (2026-11-27) they ran 5-12% slower than the stepwise
kernels, which pipeline 3 chunks: "-s2" / "-s3" rows force 2 / 3 stages in float32 and tf32
(the chain spills 16-48 bytes with them: benchmarks/compile_check.py --fp32-stages 3).

"-k128" / "-k64" rows widen the persistent kernels' float32 K chunk from 32
(``PERSISTENT_FP32_BLOCK_K``): with one chunk in flight, 4x / 2x fewer load waits per step (the
chain's forward gate stage stays at 32: wider spills; compile_check.py --fp32-block-k N).

The IEEE float32 forwards also run reading transposed weights ("-wt", ``FWD_W_TRANSPOSED`` of
each module): on the H200 the LSTM's forward was 4.4x slower than in TF32 (the chain's 3.1x)
while the backwards, whose weight tiles lie the other way, were 1.4x (1.35x) slower.

Rows: case = "<op> <shape>", provider = "persistent-<B>x<H>[-s<stages>][-k<K>][-wt]" or
"stepwise[-wt]", mode "fwd+bwd". Order (``plan``): the first three providers of every case
and dtype (TIMIT shapes first, float32 before tf32), then the rest: a time budget drops the tail.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root
from benchmarks import bench_ops, common  # noqa: E402
from benchmarks.common import DTYPES, Budget, Results, classify_error, free_memory  # noqa: E402

import torch  # noqa: E402

from zf_kernels.ops.lstm import triton as lstm_triton  # noqa: E402
from zf_kernels.ops.recurrence import triton as chain_triton  # noqa: E402

# op -> (module whose PERSISTENT_TILES / PERSISTENT_FP32_STAGES are patched, the candidate
# tiles (BLOCK_B, BLOCK_H))
CANDIDATES = {
    "lstm": (lstm_triton, ((32, 16), (16, 16))),
    "zforcing_chain": (chain_triton, ((32, 16), (16, 16))),
}
def providers_for(op: str, dt_name: str) -> list[str]:
    """Every provider of ``op`` in ``dt_name``, most informative first: today's tile, with 3
    float32 stages, with 128- and 64-wide K chunks, (IEEE float32: the forward reading transposed
    weights, "-wt", alone and with the others), stepwise, the 2 x 64 grid (and with 3 stages),
    then 2 stages."""
    first, second = (f"persistent-{b}x{h}" for b, h in CANDIDATES[op][1])
    if dt_name not in ("float32", "tf32"):
        return [first, second, "stepwise"]
    wt = dt_name == "float32"      # FWD_W_TRANSPOSED applies to IEEE dots only
    return [first, f"{first}-s3", f"{first}-k128", f"{first}-k64",
            *([f"{first}-wt", f"{first}-k128-wt", f"{first}-s3-wt"] if wt else []),
            "stepwise", *(["stepwise-wt"] if wt else []), second, f"{second}-s3", f"{first}-s2", f"{second}-s2"]


# rows every (case, dtype) gets before any gets the rest: a time budget drops the tail
FIRST_ROUND = 3


def plan(cases, dtypes) -> list[tuple]:
    """``(case, dtype, provider)`` in running order: the first FIRST_ROUND providers of every
    case and dtype (the TIMIT shapes first, float32 before tf32), then the rest of each."""
    pairs = [(case, dt) for case in cases for dt in dtypes]
    head = [(c, dt, p) for c, dt in pairs for p in providers_for(c.op, dt)[:FIRST_ROUND]]
    tail = [(c, dt, p) for c, dt in pairs for p in providers_for(c.op, dt)[FIRST_ROUND:]]
    return head + tail


def parse_provider(provider: str) -> tuple[tuple[int, int] | None, int | None, int | None, bool]:
    """"persistent-32x16-s3-k128-wt" -> ((32, 16), 3, 128, True); "stepwise-wt" -> (None, None,
    None, True); no "-s<n>" / "-k<n>": None (the module's stages / K chunk); no "-wt": False."""
    name, *flags = provider.split("-")
    if name == "persistent":
        tile, flags = tuple(int(v) for v in flags[0].split("x")), flags[1:]
    else:
        tile = None
    stages = next((int(f[1:]) for f in flags if f.startswith("s")), None)
    block_k = next((int(f[1:]) for f in flags if f.startswith("k")), None)
    return tile, stages, block_k, "wt" in flags


FUNCTIONS = {"lstm": lstm_triton.lstm, "zforcing_chain": chain_triton.zforcing_chain}
# the TIMIT sizes first: a time budget drops the tail
CASES = [bench_ops.Case("lstm", "T40 B32 I512 H1024", dict(T=40, B=32, I=512, H=1024)),
         bench_ops.Case("zforcing_chain", "T40 B32 H1024 M512 Z256 G512",
                        dict(T=40, B=32, H=1024, M=512, Z=256, G=512)),
         bench_ops.Case("lstm", "T784 B32 I64 H512", dict(T=784, B=32, I=64, H=512))]
SMOKE_CASES = [bench_ops.Case("lstm", "T5 B3 I7 H8", dict(T=5, B=3, I=7, H=8)),
               bench_ops.Case("zforcing_chain", "T3 B3 H8 M6 Z4 G5", dict(T=3, B=3, H=8, M=6, Z=4, G=5))]


def tile_table(tile, current):
    """A PERSISTENT_TILES that makes every batch size use ``tile``, in the shape the module
    expects (the LSTM indexes [0] for B <= 16 and [1] above; the chain walks the tuple)."""
    return (tile,) * max(len(current), 2)


def run_one(res, case, dt_name, provider, device, timing, ref):
    base = dict(case=f"{case.op} {case.label}", op=case.op, shape=case.label, dtype=dt_name, mode="fwd+bwd",
                provider=provider)
    row = res.begin(**base)
    module, _ = CANDIDATES[case.op]
    saved, saved_stages = module.PERSISTENT_TILES, module.PERSISTENT_FP32_STAGES
    saved_k, saved_wt = module.PERSISTENT_FP32_BLOCK_K, module.FWD_W_TRANSPOSED
    try:
        inp = bench_ops.make_inputs(case, DTYPES[dt_name], device)
        fn = FUNCTIONS[case.op]
        tile, stages, block_k, wt = parse_provider(provider)
        module.FWD_W_TRANSPOSED = wt
        if tile is None:
            call = lambda: fn(*inp.args, schedule="stepwise")  # noqa: E731
        else:
            module.PERSISTENT_TILES = tile_table(tile, saved)
            if stages is not None:
                module.PERSISTENT_FP32_STAGES = stages
            if block_k is not None:
                module.PERSISTENT_FP32_BLOCK_K = block_k
            call = lambda: fn(*inp.args, schedule="persistent")  # noqa: E731
        got_out, got_grad = bench_ops.observe(case, inp, provider, call)
        if case.op not in ref:
            ref.clear()
            ref[case.op] = bench_ops.reference(case, inp)
        ref_out, ref_grad = ref[case.op]
        # over whole tensors, as bench_ops: rel_err of two tensors zipped over their first dim (a
        # bias gradient's elements one by one: 1.2 for TF32 rounding near zero-valued elements)
        err = common.case_rel_err(got_out, ref_out, got_grad, ref_grad)

        def step():
            outs = bench_ops.flat(case.op, call(), provider)
            torch.autograd.backward([outs[i] for i in inp.grad_idx], inp.grads)

        t = common.time_fn(step, device, grad_to_none=inp.leaves, **timing)
        schedule = "stepwise" if tile is None else "persistent"
        note = lstm_triton.explain_schedule(inp.args[0], inp.args[2], schedule) if case.op == "lstm" else ""
        status, why = common.accuracy_status(dt_name, err)
        res.end(row, ms=t.ms, ms_p20=t.p20, ms_p80=t.p80, n=t.n, method=t.method, rel_err=err, status=status,
                note="; ".join(x for x in (why, note) if x))
    except Exception as exc:  # noqa: BLE001 - one failure is one row
        status, note = classify_error(exc)
        res.end(row, status=status, note=note)
    finally:
        module.PERSISTENT_TILES, module.PERSISTENT_FP32_STAGES = saved, saved_stages
        module.PERSISTENT_FP32_BLOCK_K, module.FWD_W_TRANSPOSED = saved_k, saved_wt


def run(args) -> int:
    device = common.pick_device(args.device)
    common.setup_torch(device)
    dtypes = common.parse_list(args.dtypes, DTYPES, ["float32"] if args.smoke else ["float32", "tf32", "bfloat16"])
    env = common.environment(device, args.smoke)
    res = Results(common.out_dir(args, device), args.name, env, "tune", fresh=args.fresh, quiet=args.quiet)
    budget = Budget(args.budget_s)
    timing = dict(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, min_reps=args.min_reps,
                  host_reps=1 if args.smoke else 3)
    print(f"# tune_tiles on {env['gpu']} ({device}) -> {res.csv_path}", flush=True)
    refs: dict = {}      # (case, dtype) -> {op: float64 reference of the inputs in that dtype}
    for case, dt_name, provider in plan(SMOKE_CASES if args.smoke else CASES, dtypes):
        if budget.exhausted():
            res.add(case=f"{case.op} {case.label}", op=case.op, shape=case.label, dtype=dt_name,
                    mode="fwd+bwd", provider=provider, status="skipped", note="time budget used up")
            continue
        if not common.cuda_healthy(device):
            return 2
        with common.matmul_precision(dt_name):
            run_one(res, case, dt_name, provider, device, timing, refs.setdefault((case.label, dt_name), {}))
        free_memory(device)
    print(f"# wrote {res.csv_path} and {res.json_path}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--dtypes", default=None, help="comma-separated: float32, tf32, bfloat16 (default all three)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
