"""Benchmark every public op of zf_kernels.ops: forward and forward+backward, per provider.

    python benchmarks/bench_ops.py                       # GPU: all ops, float32 + bfloat16
    python benchmarks/bench_ops.py --ops lstm --dtypes float32 --providers cudnn,triton
    python benchmarks/bench_ops.py --smoke --providers torch   # CPU: tiny sizes, checks it runs

Providers:
  torch    the eager reference through the public API, ``backend="torch"``
  compile  ``torch.compile`` (default mode) of the reference function (``*_ref`` in naive.py);
           it unrolls the recurrences' time loops (the 784-step ones only with --compile all)
  compile-step  ``lstm``, ``zforcing_chain``, ``zforcing_chain_ln`` only: the reference's time
           loop in Python around ``torch.compile`` of its one-step function (``lstm_cell_ref``,
           ``*_step_ref``), how a long recurrence is compiled without unrolling it: seconds
           of compilation at any T
  triton   the Triton kernels through the public API, ``backend="triton"`` (``lstm`` and
           ``zforcing_chain``: their "auto" schedule, persistent where the grid fits; the row's
           note says which)
  triton-stepwise  ``lstm``, ``zforcing_chain``, ``zforcing_chain_ln`` only: forced to launch per step
  cudnn    ``torch.nn.LSTM`` (cuDNN on a GPU) with the same weights; ``lstm`` only
  cuda     the CUDA extension (csrc/: one cooperative launch per direction), ``backend="cuda"``;
           ``lstm`` and ``zforcing_chain`` only. The first call loads or JIT-builds
           ``zf_kernels._C``; a build that fails, or a shape that cannot be resident, is a failed
           row with the reason

Modes: ``fwd`` is the forward pass as in training (inputs require grad, so autograd saves what
backward needs); ``fwd+bwd`` adds one ``torch.autograd.backward`` with fixed random upstream
gradients (never ones, never zeros). Columns per row: median ms (20th / 80th percentiles),
peak memory of one call, and ``rel_err``: max over outputs (and, for fwd+bwd, over the input
gradients) of ||x - ref|| / ||ref||, against the reference run in float64 on the same inputs.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root
from benchmarks import common  # noqa: E402
from benchmarks.common import Budget, DTYPES, Results, classify_error, free_memory  # noqa: E402

import torch  # noqa: E402

from zf_kernels import ops  # noqa: E402
from zf_kernels.ops.activations import naive as act_naive  # noqa: E402
from zf_kernels.ops.distributions import naive as dist_naive  # noqa: E402
from zf_kernels.ops.lstm import naive as lstm_naive  # noqa: E402
from zf_kernels.ops.recurrence import naive as chain_naive  # noqa: E402

PROVIDERS = ("torch", "compile", "compile-step", "triton", "triton-stepwise", "cudnn", "cuda")
MODES = ("fwd", "fwd+bwd")
SCHEDULED = ("lstm", "zforcing_chain", "zforcing_chain_ln")   # persistent and stepwise Triton schedules
OPS = ("lstm", "lstm_cell", "zforcing_chain", "zforcing_chain_ln", "reparameterize", "gaussian_kl",
       "gaussian_nll", "bernoulli_nll", "categorical_nll", "leaky_clamp")
REFS = {
    "lstm": lstm_naive.lstm_ref, "lstm_cell": lstm_naive.lstm_cell_ref,
    "zforcing_chain": chain_naive.zforcing_chain_ref, "zforcing_chain_ln": chain_naive.zforcing_chain_ln_ref,
    "reparameterize": dist_naive.reparameterize_ref, "gaussian_kl": dist_naive.gaussian_kl_ref,
    "gaussian_nll": dist_naive.gaussian_nll_ref, "bernoulli_nll": dist_naive.bernoulli_nll_ref,
    "categorical_nll": dist_naive.categorical_nll_ref, "leaky_clamp": act_naive.leaky_clamp_ref,
}
# compile-step: (the reference's time loop, its one-step function)
STEP_REFS = {
    "lstm": (lstm_naive.lstm_loop_ref, lstm_naive.lstm_cell_ref),
    "zforcing_chain": (chain_naive.chain_loop_ref, chain_naive.zforcing_chain_step_ref),
    "zforcing_chain_ln": (chain_naive.chain_loop_ref, chain_naive.zforcing_chain_ln_step_ref),
}


@dataclass
class Case:
    op: str
    label: str                  # e.g. "T40 B32 I512 H1024"
    dims: dict
    long: bool = False          # a 784-step loop: torch.compile unrolls it (skipped unless --compile all)
    compile_rank: int = 0       # order of the compile pass: cheap compilations first


@dataclass
class Inputs:
    args: tuple                 # positional arguments of the op (and of its reference)
    leaves: list                # tensors that require grad, in a fixed order
    grad_idx: tuple             # which flat outputs receive upstream gradients
    grads: list                 # those gradients
    module: object = None       # nn.LSTM for the cudnn provider
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- cases
def cases(smoke: bool) -> list[Case]:
    """In priority order: what DESIGN section 2 targets first, so a time budget drops the rest."""
    if smoke:
        return [
            Case("lstm", "T5 B3 I7 H8", dict(T=5, B=3, I=7, H=8)),
            Case("zforcing_chain", "T4 B3 H8 M6 Z4 G5", dict(T=4, B=3, H=8, M=6, Z=4, G=5)),
            Case("zforcing_chain_ln", "T4 B3 H8 M6 Z4 G5", dict(T=4, B=3, H=8, M=6, Z=4, G=5)),
            Case("lstm_cell", "B3 H8", dict(B=3, H=8)),
            Case("reparameterize", "4x3x5", dict(shape=(4, 3, 5))),
            Case("gaussian_kl", "4x3x5", dict(shape=(4, 3, 5))),
            Case("gaussian_nll", "4x3x5", dict(shape=(4, 3, 5))),
            Case("bernoulli_nll", "4x3x1", dict(shape=(4, 3, 1))),
            Case("categorical_nll", "4x3x11", dict(shape=(4, 3, 11))),
            Case("leaky_clamp", "4x3x5", dict(shape=(4, 3, 5))),
        ]
    return [
        # DESIGN section 2: ops.lstm vs cuDNN at these two sizes
        Case("lstm", "T40 B32 I512 H1024", dict(T=40, B=32, I=512, H=1024), compile_rank=2),
        Case("lstm", "T784 B32 I64 H512", dict(T=784, B=32, I=64, H=512), long=True),
        # the chain at the TIMIT and Sequential-MNIST model sizes
        Case("zforcing_chain", "T40 B32 H1024 M512 Z256 G512",
             dict(T=40, B=32, H=1024, M=512, Z=256, G=512), compile_rank=3),
        Case("zforcing_chain", "T784 B32 H1024 M512 Z128 G512",
             dict(T=784, B=32, H=1024, M=512, Z=128, G=512), long=True),
        Case("lstm_cell", "B32 H1024", dict(B=32, H=1024), compile_rank=1),
        # the cond_ln chain (layer-normalised recurrent projection, g(z) an MLP) at the TIMIT size
        Case("zforcing_chain_ln", "T40 B32 H1024 M512 Z256 G512",
             dict(T=40, B=32, H=1024, M=512, Z=256, G=512), compile_rank=4),
        # sampling / likelihood ops at the shapes the model uses (z, aux head, outputs)
        Case("reparameterize", "40x32x256", dict(shape=(40, 32, 256))),
        Case("gaussian_kl", "40x32x256", dict(shape=(40, 32, 256))),
        Case("gaussian_nll", "40x32x1024", dict(shape=(40, 32, 1024))),
        Case("bernoulli_nll", "784x32x1", dict(shape=(784, 32, 1))),
        Case("categorical_nll", "40x32x1024", dict(shape=(40, 32, 1024))),
        Case("reparameterize", "784x32x128", dict(shape=(784, 32, 128))),
        Case("gaussian_kl", "784x32x128", dict(shape=(784, 32, 128))),
        Case("gaussian_nll", "784x32x1024", dict(shape=(784, 32, 1024))),
        Case("bernoulli_nll", "256x32x1024", dict(shape=(256, 32, 1024))),
        Case("categorical_nll", "64x32x10000", dict(shape=(64, 32, 10000))),
        # the MLPs' activation at the TIMIT model's hidden size (the parameter clamp is the same op)
        Case("leaky_clamp", "40x32x512", dict(shape=(40, 32, 512))),
    ]


def make_inputs(case: Case, dtype, device, seed=0) -> Inputs:
    """Random inputs (never zeros), weights scaled 1/sqrt(fan_in), fixed upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    d = case.dims

    def r(*shape, scale=1.0, grad=True):
        t = (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    def w(rows, cols):
        return r(rows, cols, scale=1.0 / math.sqrt(cols))

    def grads_for(*shapes):
        return [torch.randn(*s, generator=g).to(device=device, dtype=dtype) for s in shapes]

    op = case.op
    if op == "lstm":
        T, B, I, H = d["T"], d["B"], d["I"], d["H"]
        mod = torch.nn.LSTM(I, H).to(device=device, dtype=dtype)
        with torch.no_grad():
            for p in mod.parameters():
                p.copy_(torch.randn(p.shape, generator=g).to(p) / math.sqrt(H))
        x = r(T, B, I)
        params = [mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0]
        return Inputs((x, *params), [x, *params], (0,), grads_for((T, B, H)), module=mod)
    if op == "lstm_cell":
        B, H = d["B"], d["H"]
        gx, h, c = r(B, 4 * H), r(B, H, scale=0.5), r(B, H, scale=0.5)
        w_hh, bias = w(4 * H, H), r(4 * H, scale=0.1)
        return Inputs((gx, h, c, w_hh, bias), [gx, h, c, w_hh, bias], (0, 1), grads_for((B, H), (B, H)))
    if op == "zforcing_chain":
        T, B, H, M, Z, G = (d[k] for k in ("T", "B", "H", "M", "Z", "G"))
        gates_x, post_x = r(T, B, 4 * H), r(T, B, M)
        eps = r(T, B, Z, grad=False)
        h0, c0 = r(B, H, scale=0.1), r(B, H, scale=0.1)
        w_qh, w_q2, b_q2 = w(M, H), w(2 * Z, M), r(2 * Z, scale=0.1)
        w_gz, b_gz, w_iz, w_hh = w(G, Z), r(G, scale=0.1), w(4 * H, G), w(4 * H, H)
        args = (gates_x, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_gz, b_gz, w_iz, w_hh)
        leaves = [a for a in args if a.requires_grad]
        # ChainOutput(h, c, z, mu_q, logvar_q): the model uses h, z, mu_q, logvar_q
        return Inputs(args, leaves, (0, 2, 3, 4), grads_for((T, B, H), (T, B, Z), (T, B, Z), (T, B, Z)))
    if op == "zforcing_chain_ln":
        T, B, H, M, Z, G = (d[k] for k in ("T", "B", "H", "M", "Z", "G"))
        gates_x, post_x = r(T, B, 4 * H), r(T, B, M)
        eps = r(T, B, Z, grad=False)
        h0, c0 = r(B, H, scale=0.1), r(B, H, scale=0.1)
        w_qh, w_q2, b_q2 = w(M, H), w(2 * Z, M), r(2 * Z, scale=0.1)
        w_g1, b_g1, w_g2, b_g2 = w(G, Z), r(G, scale=0.1), w(8 * H, G), r(8 * H, scale=0.1)
        args = (gates_x, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_g1, b_g1, w_g2, b_g2, w(4 * H, H))
        leaves = [a for a in args if a.requires_grad]
        return Inputs(args, leaves, (0, 2, 3, 4), grads_for((T, B, H), (T, B, Z), (T, B, Z), (T, B, Z)))
    shape = tuple(d["shape"])
    lead = shape[:-1]
    if op == "reparameterize":
        mu, lv, eps = r(*shape), r(*shape, scale=0.5), r(*shape, grad=False)
        return Inputs((mu, lv, eps), [mu, lv], (0,), grads_for(shape))
    if op == "gaussian_kl":
        a = [r(*shape), r(*shape, scale=0.5), r(*shape), r(*shape, scale=0.5)]
        return Inputs(tuple(a), list(a), (0,), grads_for(lead))
    if op == "gaussian_nll":
        x, mu, lv = r(*shape, grad=False), r(*shape), r(*shape, scale=0.5)
        return Inputs((x, mu, lv), [mu, lv], (0,), grads_for(lead))
    if op == "bernoulli_nll":
        x = (torch.rand(*shape, generator=g) < 0.3).to(device=device, dtype=dtype)
        logits = r(*shape, scale=2.0)
        return Inputs((x, logits), [logits], (0,), grads_for(lead))
    if op == "categorical_nll":
        targets = torch.randint(0, shape[-1], lead, generator=g).to(device)
        logits = r(*shape, scale=2.0)
        return Inputs((targets, logits), [logits], (0,), grads_for(lead))
    if op == "leaky_clamp":       # both sides of both kinks: values out to +-4 bound / slope
        x = r(*shape, scale=4.0)
        return Inputs((x, 1 / 3, 3.0), [x], (0,), grads_for(shape))
    raise ValueError(op)


def flat(op: str, out, provider: str) -> list:
    """Every output of one call as a flat list (cuDNN's (1, B, H) states squeezed)."""
    if op == "lstm":
        o, (h, c) = out
        if provider == "cudnn":
            h, c = h[0], c[0]
        return [o, h, c]
    if op == "lstm_cell":
        return list(out)
    if op in ("zforcing_chain", "zforcing_chain_ln"):
        return list(out)
    return [out]


def caller(op: str, provider: str, inp: Inputs) -> Callable:
    args = inp.args
    if provider == "cudnn":
        mod, x = inp.module, args[0]
        return lambda: mod(x)
    if provider == "compile":
        torch._dynamo.reset()
        fn = torch.compile(REFS[op])
        return lambda: fn(*args)
    if provider == "compile-step":
        torch._dynamo.reset()
        loop, step = STEP_REFS[op]
        compiled_step = torch.compile(step)
        return lambda: loop(compiled_step, *args)
    if provider == "triton-stepwise":
        from zf_kernels.ops.lstm import triton as lstm_triton
        from zf_kernels.ops.recurrence import triton as chain_triton
        from zf_kernels.ops.recurrence import triton_ln as chain_ln_triton
        fn = {"lstm": lstm_triton.lstm, "zforcing_chain": chain_triton.zforcing_chain,
              "zforcing_chain_ln": chain_ln_triton.zforcing_chain_ln}[op]
        return lambda: fn(*args, schedule="stepwise")
    pub = getattr(ops, op)

    def call():   # the value checks (host syncs: categorical / bernoulli ranges) off, as in trusted steps
        with ops.assume_valid_inputs():
            return pub(*args, backend=provider)
    return call


def reference(case: Case, inp: Inputs):
    """Outputs and input gradients of the float64 reference on the same inputs."""
    args64 = [a.detach().double().requires_grad_(a.requires_grad)
              if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in inp.args]
    outs = flat(case.op, REFS[case.op](*args64), "torch")
    leaves64 = [args64[next(i for i, a in enumerate(inp.args) if a is lf)] for lf in inp.leaves]
    grads = torch.autograd.grad([outs[i] for i in inp.grad_idx], leaves64,
                                [gr.double() for gr in inp.grads], allow_unused=True)
    return [o.detach() for o in outs], [None if gr is None else gr.detach() for gr in grads]


def observe(case: Case, inp: Inputs, provider: str, call):
    """One call of the provider: its outputs and the input gradients (for rel_err)."""
    for t in inp.leaves:
        t.grad = None
    outs = flat(case.op, call(), provider)
    torch.autograd.backward([outs[i] for i in inp.grad_idx], inp.grads)
    grads = [None if t.grad is None else t.grad.detach().clone() for t in inp.leaves]
    for t in inp.leaves:
        t.grad = None
    return [o.detach() for o in outs], grads


# --------------------------------------------------------------------------- main
def run(args) -> int:
    device = common.pick_device(args.device)
    common.setup_torch(device)
    providers = common.parse_list(args.providers, PROVIDERS, PROVIDERS)
    dtypes = common.parse_list(args.dtypes, DTYPES, ["float32"] if args.smoke else ["float32", "bfloat16"])
    modes = common.parse_list(args.modes, MODES, MODES)
    op_names = common.parse_list(args.ops, OPS, OPS)
    env = common.environment(device, args.smoke)
    res = Results(common.out_dir(args, device), args.name, env, "ops", fresh=args.fresh, quiet=args.quiet)
    budget = Budget(args.budget_s)
    timing = dict(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, min_reps=args.min_reps,
                  host_reps=1 if args.smoke else 3)
    # (torch._dynamo is imported on first touch: ~2 s per process that compiles nothing)
    if any(p.startswith("compile") for p in providers) and hasattr(torch, "_dynamo"):
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 256))
    print(f"# bench_ops on {env['gpu']} ({device}), torch {env['torch']}, triton {env['triton']}, "
          f"-> {res.csv_path}", flush=True)

    all_cases = [c for c in cases(args.smoke) if c.op in op_names]
    # pass 1: everything but torch.compile, in priority order (per dtype, every case's baselines and
    # default Triton schedule before any stepwise row: a budget that runs out cuts the comparisons
    # last); pass 2: compile, cheapest first (the recurrences' compiled steps, seconds each, before
    # their unrolled loops)
    plan = []
    for dt in dtypes:
        for group in (("cudnn", "torch", "triton", "cuda"), ("triton-stepwise",)):
            for c in all_cases:
                plan += [(c, dt, p) for p in group
                         if p in providers and (p in ("torch", "triton") or c.op == "lstm"
                                                or (p == "cuda" and c.op == "zforcing_chain")
                                                or (p == "triton-stepwise" and c.op in SCHEDULED))]
    compile_plan = [(c, p) for c in all_cases for p in ("compile", "compile-step")
                    if p in providers and (p == "compile" or c.op in SCHEDULED)]
    # compile-step rows after the cheapest compiles, the T40 ones (every recurrence's first
    # torch.compile row) before the T784 ones
    def compile_order(cp):
        return (cp[0].compile_rank, False) if cp[1] == "compile" else (1.5, cp[0].long)
    for dt in dtypes:
        for c, p in sorted(compile_plan, key=compile_order):
            plan.append((c, dt, p))

    ref_cache: dict = {}
    for case, dt_name, provider in plan:
        base = dict(case=f"{case.op} {case.label}", op=case.op, shape=case.label, dtype=dt_name,
                    provider=provider)
        if provider.startswith("compile") and args.compile == "none":
            continue
        if provider == "compile" and case.op in SCHEDULED and args.compile == "step":
            continue   # the recurrences' unrolled loops: left to another run (device_check's ops-compile-loops)
        if budget.exhausted():
            for m in modes:
                res.add(**base, mode=m, status="skipped", note="time budget (--budget-s) used up")
            continue
        if provider == "compile" and case.long and args.compile != "all":
            for m in modes:
                res.add(**base, mode=m, status="skipped",
                        note="torch.compile unrolls the 784-step loop (minutes of compilation); use --compile all")
            continue
        if not common.cuda_healthy(device):
            res.add(**base, mode=modes[0], status="error", note="CUDA context lost after an earlier error; stopping")
            return 2
        with common.matmul_precision(dt_name):
            run_provider(case, DTYPES[dt_name], provider, modes, base, res, device, timing, ref_cache, args)
        free_memory(device, collect=provider.startswith("compile"))
    print(f"# wrote {res.csv_path} and {res.json_path}", flush=True)
    return 0


def run_provider(case, dtype, provider, modes, base, res, device, timing, ref_cache, args):
    rows = {m: res.begin(**base, mode=m) for m in modes}
    try:
        inp = make_inputs(case, dtype, device)
        key = (case.op, case.label, str(dtype))
        if args.check and key not in ref_cache:
            ref_cache.clear()
            ref_cache[key] = reference(case, inp)
        call = caller(case.op, provider, inp)
        counters_before = common.dynamo_counters() if provider.startswith("compile") else None
        got_out, got_grad = observe(case, inp, provider, call)          # first call: compiles / autotunes
        note = ""
        if provider.startswith("compile"):
            note = common.compile_note(counters_before)
            if provider == "compile-step":
                note = f"compiled step, Python time loop; {note}"
        if provider == "cudnn":
            note = _rnn_kernel(inp.module, inp.args[0])
        if provider == "cuda":
            note = ops.explain(case.op, *inp.args, backend="cuda")[1].removeprefix("requested; ")
        if provider.startswith("triton") and case.op in SCHEDULED:
            note = ops.explain(case.op, *inp.args, backend="triton")[1].removeprefix("requested; ")
            if provider == "triton-stepwise":
                note = "schedule stepwise (forced)"
        ref = ref_cache.get(key)
        for mode in modes:
            row = rows[mode]
            err = None
            if ref is not None:
                err = common.case_rel_err(got_out, ref[0], *((got_grad, ref[1]) if mode == "fwd+bwd" else ()))
            fn = call if mode == "fwd" else fwd_bwd(case, inp, provider, call)
            t = common.time_fn(fn, device, grad_to_none=inp.leaves, **timing)
            peak, extra = common.peak_memory(fn, device, grad_to_none=inp.leaves)
            status, why = common.accuracy_status(row["dtype"], err)
            res.end(row, ms=t.ms, ms_p20=t.p20, ms_p80=t.p80, n=t.n, method=t.method, peak_mb=peak,
                    extra_mb=extra, rel_err=err, status=status, note="; ".join(x for x in (why, note) if x))
    except Exception as exc:  # noqa: BLE001 - one failure is one row, never the end of the run
        status, note = classify_error(exc)
        for row in rows.values():
            if row["status"] == "incomplete":
                res.end(row, status=status, note=note)
    finally:
        if provider.startswith("compile"):
            torch._dynamo.reset()


def _rnn_kernel(mod, x) -> str:
    """Which kernel nn.LSTM ran (the profiler's op names): cuDNN or a fallback."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            mod(x)
        names = {e.key for e in prof.key_averages()}
    except Exception as exc:  # noqa: BLE001
        return f"kernel unknown ({type(exc).__name__})"
    if any("cudnn_rnn" in n for n in names):
        return "aten::_cudnn_rnn (cuDNN)"
    rnn = sorted(n for n in names if "lstm" in n.lower() or "rnn" in n.lower())
    return "not cuDNN: " + ", ".join(rnn[:3])


def fwd_bwd(case, inp, provider, call):
    idx, grads = inp.grad_idx, inp.grads

    def fn():
        outs = flat(case.op, call(), provider)
        torch.autograd.backward([outs[i] for i in idx], grads)
    return fn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--ops", default=None, help=f"comma-separated subset of {', '.join(OPS)}")
    p.add_argument("--dtypes", default=None, help="comma-separated: float32, bfloat16, float16 "
                   "(default float32,bfloat16; float32 with --smoke)")
    p.add_argument("--modes", default=None, help="fwd, fwd+bwd (default both)")
    p.add_argument("--compile", choices=("none", "step", "short", "all"), default="short",
                   help="torch.compile providers: skip both; step: the recurrences only as compiled steps "
                        "(compile-step; no row for their unrolled loops); short: skip the unrolled 784-step loops "
                        "(default; compile-step runs at any T); or all")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the float64 reference run behind the rel_err column")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
