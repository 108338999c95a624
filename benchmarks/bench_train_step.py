"""Benchmark one full Z-Forcing training step: forward + backward + gradient clipping + Adam.

    python benchmarks/bench_train_step.py                        # GPU: TIMIT T40 and SeqMNIST T784
    python benchmarks/bench_train_step.py --cases timit --providers torch,triton+graph
    python benchmarks/bench_train_step.py --models auto          # + the sequence VAEs of python/
    python benchmarks/bench_train_step.py --smoke --providers torch   # CPU: tiny model, checks it runs

Cases (DESIGN sections 1-2):
  timit     input 200 (gaussian), emb 512, rnn 1024, z 256, mlp 512; B=32, T=40 (19.6 M parameters)
  seqmnist  input 1 (bernoulli), emb 512, rnn 1024, z 128, mlp 512, z_force; B=32, T=784

Providers:
  torch          the hoisted eager reference (``backend="torch"``): only the chain loops in Python
  torch+graph    the whole reference step captured once in a CUDA graph (static inputs, warm-up
                 on a side stream, ``Adam(capturable=True)``) and replayed
  cudnn, cudnn+graph
                 the same reference with its backward LSTM on torch's LSTM op (what
                 ``nn.LSTM`` runs: cuDNN on a GPU, which may use TF32 under torch's defaults)
                 instead of the reference's Python loop: the strongest eager baseline (ZForcing only)
  torch+compile  ``torch.compile(model)`` (default mode) of the reference; backward through
                 AOTAutograd, clipping and Adam eager. Skipped at T=784 unless ``--compile all``
                 (it unrolls the 784-step loops: minutes of compilation)
  triton+compile ``torch.compile(model)`` (default mode) of the Triton step: the recurrences
                 traced as custom ops (no loop to unroll, so T=784 too), the sampling and
                 likelihood ops too (one graph), the rest of the step (MLPs, heads, the batched
                 projections) compiled by inductor
  auto+compile, cuda+compile
                 the same with ``backend="auto"`` (cuda: with ZF_AUTO_UNVERIFIED=1): under
                 torch.compile "auto" keeps only the recurrences fused and leaves the
                 elementwise and likelihood ops to inductor as traced references
                 (``ops.explain(..., compiling=True)``): one graph each, the recurrences traced
                 as custom ops (Triton's; cuda+compile: the CUDA extension's)
  triton         the Triton backend (``backend="triton"``), eager launches
  triton+graph   the Triton step captured in a CUDA graph, as torch+graph
  triton-stepwise, triton-stepwise+graph
                 the same with the LSTM and the chain forced to launch per step
                 (ZF_LSTM_SCHEDULE / ZF_CHAIN_SCHEDULE=stepwise): what the persistent
                 kernels of "triton" save
  cuda, cuda+graph
                 ``backend="auto"`` with ZF_AUTO_UNVERIFIED=1: the backward LSTM and the chain
                 on the CUDA extension (csrc/, not yet verified on a GPU, so "auto" does not
                 take it by default), the other ops on Triton; a row is 'unavailable' with
                 ``ops.explain``'s reason where "auto" would not pick the CUDA lstm and chain

Every provider starts from the same initial weights and the same batch; ``rel_err`` is
|loss_0 - loss_0(torch)| / |loss_0(torch)| of the first step, a check that the providers
compute the same thing (where the torch provider is not among those run, its loss_0 comes from
one untimed forward of the reference). Loss weights kl = aux = bwd = 1 (every term and its backward runs),
fused Adam(lr 1e-3, eps 1e-5) and clip 100, as the trainer. The posterior noise ``eps`` is a fixed
input tensor (drawing it is one ``randn``), and the model's input validation (host syncs)
runs once before timing, not inside the timed step (``--keep-checks`` keeps it in for the
eager providers). ``peak_mb``: the provider's own peak: its parameters, gradients and Adam
state plus the rise of ``max_memory_allocated`` over one step above what was allocated before
it (for graph providers: its parameters plus the rise over warm-up + capture + first replay),
so that tensors left by providers run earlier in the process do not count; the note gives
the process-wide peak.
``--count-kernels`` (a separate run, suite "kernels"): instead of timing, the GPU kernels of one
eager step, counted by the profiler (``kernels``; copies and memsets left out).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO, Budget, DTYPES, Results, classify_error, free_memory  # noqa: E402

import torch  # noqa: E402

from zf_kernels import ZForcing, ops, training_loss  # noqa: E402
from zf_kernels.sequences import check_batch  # noqa: E402
from zf_kernels.model import LossTerms  # noqa: E402
from zf_kernels.ops._dispatch import AUTO_UNVERIFIED_ENV  # noqa: E402
from zf_kernels.ops.lstm import native as native_lstm  # noqa: E402

PROVIDERS = ("torch", "torch+graph", "cudnn", "cudnn+graph", "triton", "triton+graph", "triton-stepwise", "triton-stepwise+graph",
             "cuda", "cuda+graph", "torch+compile", "triton+compile", "auto+compile", "cuda+compile")   # run in this order
STEPWISE_ENV = ("ZF_LSTM_SCHEDULE", "ZF_CHAIN_SCHEDULE")
CASES = {
    "timit": dict(label="TIMIT T40 B32", T=40, B=32, long=False,
                  model=dict(input_dim=200, output_type="gaussian", emb_dim=512, rnn_dim=1024,
                             z_dim=256, mlp_dim=512, z_force=False)),
    "seqmnist": dict(label="SeqMNIST T784 B32", T=784, B=32, long=True,
                     model=dict(input_dim=1, output_type="bernoulli", emb_dim=512, rnn_dim=1024,
                                z_dim=128, mlp_dim=512, z_force=True)),
}
SMOKE_CASES = {
    "timit": dict(label="tiny-gaussian T5 B3", T=5, B=3, long=False,
                  model=dict(input_dim=6, output_type="gaussian", emb_dim=8, rnn_dim=16, z_dim=4,
                             mlp_dim=8, z_force=False)),
    "seqmnist": dict(label="tiny-bernoulli T12 B3", T=12, B=3, long=True,
                     model=dict(input_dim=1, output_type="bernoulli", emb_dim=8, rnn_dim=16, z_dim=4,
                                mlp_dim=8, z_force=True)),
}
OTHER_MODELS = ("vrnn", "srnn", "storn")
WARM_ITERS = 2          # eager steps on a side stream before capture (Adam state gets created)


class Skip(Exception):
    """This provider cannot run here (recorded as a 'skipped' row)."""


# --------------------------------------------------------------------------- models
def build_zforcing(cfg):
    torch.manual_seed(0)
    return ZForcing(**cfg["model"], backend="torch")


def zforcing_loss(model, y, eps, weights):
    return training_loss(model(y, eps=eps), *weights)


def load_other_model(name: str, cfg):
    """``python/<name>.py`` of this repository, imported defensively. Looks for a factory
    ``build_model`` / ``make_model`` / ``build`` or a class named like the file, and calls it
    with the keyword arguments it accepts among ZForcing's size arguments and ``backend``."""
    path = REPO / "python" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_zf_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(path.parent))           # its own `common` (python/common.py) first
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    factory = next((getattr(mod, n) for n in ("build_model", "make_model", "build")
                    if callable(getattr(mod, n, None))), None)
    if factory is None:
        factory = next((v for k, v in vars(mod).items()
                        if isinstance(v, type) and issubclass(v, torch.nn.Module) and k.lower() == name.lower()), None)
    if factory is None:
        raise AttributeError(f"{path}: no build_model/make_model/build function or class {name.upper()}")
    want = dict(cfg["model"], backend="torch")
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        want = {k: v for k, v in want.items() if k in params}
    torch.manual_seed(0)
    return factory(**want)


def generic_loss(model, y, eps, weights):
    fwd = model.forward if not hasattr(model, "_orig_mod") else model._orig_mod.forward
    kw = {"eps": eps} if "eps" in inspect.signature(fwd).parameters else {}
    out = model(y, **kw)
    if isinstance(out, LossTerms) or all(hasattr(out, k) for k in ("nll", "kl", "aux", "bwd_nll")):
        return training_loss(out, *weights)
    if hasattr(out, "nll") and hasattr(out, "kl"):
        return (out.nll + weights[0] * out.kl).mean()
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        out = out[0]
    if torch.is_tensor(out):
        return out.float().mean()
    raise TypeError(f"cannot make a loss from {type(out).__name__}")


def make_batch(cfg, device, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    T, B, m = cfg["T"], cfg["B"], cfg["model"]
    D, Z = m["input_dim"], m["z_dim"]
    if m["output_type"] == "bernoulli":
        y = (torch.rand(T, B, D, generator=g) < 0.3).float()
    else:
        y = torch.randn(T, B, D, generator=g)
    eps = torch.randn(T, B, Z, generator=g)
    return y.to(device=device, dtype=dtype), eps.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- one provider
def prepare(master, provider, device, dtype, args):
    backend, _, variant = provider.partition("+")
    if variant == "graph" and device.type != "cuda":
        raise Skip("CUDA graphs need a CUDA device")
    model = copy.deepcopy(master).to(device=device, dtype=dtype)
    undo_env = lambda: None  # noqa: E731
    if backend == "triton-stepwise":
        # the schedule variables are read at every op call
        backend, undo_env = "triton", common.set_env({k: "stepwise" for k in STEPWISE_ENV})
    if backend == "cuda":
        # "auto" may take the CUDA lstm / chain
        backend, undo_env = "auto", common.set_env({AUTO_UNVERIFIED_ENV: "1"})
    if backend == "cudnn":
        backend = "torch"
        use_cudnn_backward_lstm(model)
    if hasattr(model, "backend"):
        model.backend = backend
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-5, fused=True, capturable=(variant == "graph"))
    fwd = torch.compile(model) if variant == "compile" else model
    # the value checks (host syncs: a CUDA graph cannot capture them) run once, outside the
    # timed step (run_provider), unless --keep-checks asks for them in the eager steps
    trusted = not (args.keep_checks and variant == "")
    return model, fwd, opt, variant, undo_env, trusted


def use_cudnn_backward_lstm(model):
    """Run ``model``'s backward network through torch's LSTM op (``torch._VF.lstm``, what
    ``nn.LSTM`` calls: cuDNN on a GPU): the same weights, input projection (the embedding folded
    into it where the model folds it: ``ZForcing._embedded_projection``) and numbers as
    ``ops.lstm(..., reverse=True)`` up to cuDNN's rounding. Called directly, not through an
    ``nn.LSTM`` module: the folded input weight is computed every step (no parameter of any
    module), and a module's ``flatten_parameters`` would ``set_()`` the model's own W_hh and
    b_hh onto a new buffer each call (under a CUDA graph, a replay would then read a stale one).
    cuDNN copies the weights into its flat buffer each call (its warning about that silenced)."""
    if not isinstance(model, ZForcing):
        raise Skip("the cudnn provider swaps ZForcing's backward LSTM for cuDNN's; not this model")
    lstm = model.bwd_lstm      # nn.LSTM's parameters (zf_kernels.model.LSTMWeights)

    def backward_states(y, mask=None):
        if mask is not None:
            raise ValueError("the cudnn provider handles unpadded batches only")
        x, w_ih, b_ih = model._embedded_projection(y, lstm.weight_ih_l0, lstm.bias_ih_l0)
        out, _ = native_lstm.torch_lstm(x, w_ih, lstm.weight_hh_l0, b_ih, lstm.bias_hh_l0, reverse=True)
        return out
    model.backward_states = backward_states


def check_cuda_recurrences(model, y):
    """The "cuda" providers measure the CUDA recurrences or nothing: raise
    BackendUnavailableError with ``ops.explain``'s reason where "auto" would pick something
    else for this model's backward LSTM or chain (a dtype, a shape or a failed build)."""
    if not isinstance(model, ZForcing):
        raise Skip("the cuda providers put ZForcing's backward LSTM and chain on csrc/; not this model")
    for op, (backend, why) in model.explain_backends(*y.shape[:2]).items():
        if backend != "cuda" and ops.op_backend(op, "cuda") == "cuda":   # (no CUDA zforcing_chain_ln)
            raise ops.BackendUnavailableError(f"'auto' picks {backend} for {op}, not cuda: {why}")


def make_body(model, fwd, opt, loss_fn, y, eps, weights, clip, trusted):
    params = [p for p in model.parameters() if p.requires_grad]
    checks = ops.assume_valid_inputs if trusted else contextlib.nullcontext

    def body():
        with checks():
            loss = loss_fn(fwd, y, eps, weights)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return loss.detach()
    return body


def tensors_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / common.MB


def own_state_mb(model, opt) -> float:
    """This provider's own training state between steps, MB: parameters, their gradients and
    the optimizer's state tensors."""
    params = [p for p in model.parameters()]
    grads = [p for p in params if p.requires_grad]          # same size as their gradients
    return tensors_mb(params) + tensors_mb(grads) + tensors_mb(
        v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))


def capture(body, opt, device):
    """Warm up on a side stream, then capture one whole step; returns (graph, first loss, static loss)."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        first = None
        for _ in range(WARM_ITERS):
            opt.zero_grad(set_to_none=True)
            loss = body()
            first = loss.clone() if first is None else first
    torch.cuda.current_stream(device).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = body()
    graph.replay()
    torch.cuda.synchronize(device)
    return graph, first, static_loss


def run_provider(res, base, master, loss_fn, provider, cfg, device, dtype, timing, args, ref):
    row = res.begin(**base, provider=provider)
    graph, undo = None, None
    try:
        y, eps = make_batch(cfg, device, dtype)
        check_batch(y, None, None, master.input_dim, master.output_type)   # what the timed step leaves out
        model, fwd, opt, variant, undo, trusted = prepare(master, provider, device, dtype, args)
        if provider.startswith("cuda"):
            check_cuda_recurrences(model, y)
        if args.count_kernels and variant in ("graph", "compile"):
            raise Skip(f"kernels are counted for the eager providers ({variant}: the same step's kernels "
                       "replayed / fused)")
        body = make_body(model, fwd, opt, loss_fn, y, eps, args.loss_weights, args.clip, trusted)
        counters = common.dynamo_counters() if variant == "compile" else None
        note = []
        if variant == "graph":
            common.sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            graph, first, last = capture(body, opt, device)
            extra = (torch.cuda.max_memory_allocated(device) - before) / common.MB
            # the parameters existed before; their gradients, Adam's state, the activations and
            # the graph's pool were allocated inside the window
            peak = tensors_mb(model.parameters()) + extra
            fn = graph.replay
            note.append(f"graph peak over warm-up+capture; {WARM_ITERS} warm-up steps")
        else:
            def fn():
                opt.zero_grad(set_to_none=True)
                return body()
            first = fn()                                    # compiles / autotunes
            common.sync(device)
            last = None
        loss0 = float(first)
        if args.count_kernels:
            count_step_kernels(res, row, fn, device, cfg)
            return
        if counters is not None:
            note.append(common.compile_note(counters))
        t = common.time_fn(fn, device, **timing)
        if variant != "graph":
            process_peak, extra, last = common.peak_memory(fn, device, with_result=True)
            # this provider's state + the step's rise above what was allocated before it, so that
            # tensors left by the providers run before it in this process do not count (on the
            # H200, 2026-11-27, what was allocated before the step grew from 626 MB for the first
            # provider to 821 MB for triton, while the step itself took 157 vs 103 MB)
            peak = None if extra is None else own_state_mb(model, opt) + extra
            if process_peak is not None:
                note.append(f"process peak {process_peak:.0f} MB")
        if last is not None and not bool(torch.isfinite(last)):
            note.append("loss non-finite after the timed steps")
        if provider == "torch":
            ref["loss0"] = loss0
        elif ref.get("loss0") is None:
            ref["loss0"] = reference_loss0(master, loss_fn, y, eps, device, dtype, args)
        err = abs(loss0 - ref["loss0"]) / max(abs(ref["loss0"]), 1e-30)
        n_params = sum(p.numel() for p in model.parameters())
        note.append(f"{n_params / 1e6:.1f} M params; loss0 {loss0:.6g}")
        # a step whose first loss is off the reference's is a wrong result, not a speed (the
        # targets table skips it): e.g. a provider running other weights or another model
        status, why = common.accuracy_status(base["dtype"], err)
        res.end(row, ms=t.ms, ms_p20=t.p20, ms_p80=t.p80, n=t.n, method=t.method, peak_mb=peak,
                extra_mb=extra, rel_err=err, status=status, note="; ".join(n for n in [why] + note if n))
    except Skip as exc:
        res.end(row, status="skipped", note=str(exc))
    except Exception as exc:  # noqa: BLE001 - one failure is one row
        status, note = classify_error(exc)
        res.end(row, status=status, note=note)
    finally:
        del graph
        if undo is not None:
            undo()
        if provider.endswith("compile"):
            torch._dynamo.reset()


def reference_loss0(master, loss_fn, y, eps, device, dtype, args) -> float:
    """The torch provider's first loss without running that provider: one untimed forward of
    the reference (backend "torch") from the same weights and batch."""
    model = copy.deepcopy(master).to(device=device, dtype=dtype)
    if hasattr(model, "backend"):
        model.backend = "torch"
    with torch.no_grad():
        return float(loss_fn(model, y, eps, args.loss_weights))


def count_step_kernels(res, row, fn, device, cfg):
    """--count-kernels: one more eager step under the profiler instead of the timing (a
    separate run, so that a profiler failure cannot cost the timings)."""
    kernels, note = common.count_kernels(fn, device)
    if kernels is None:
        res.end(row, status="skipped", note=note)
    else:
        res.end(row, kernels=kernels,
                note=f"{kernels} kernels per step, {kernels / cfg['T']:.1f} per time step; GPU time: {note}")


# --------------------------------------------------------------------------- main
def run(args) -> int:
    device, providers, table, case_names = common.start_cases(args, PROVIDERS, CASES, SMOKE_CASES)
    dtype_name = args.dtype
    dtype = DTYPES[dtype_name]
    env = common.environment(device, args.smoke)
    suite = "kernels" if args.count_kernels else "train"
    res = Results(common.out_dir(args, device), args.name, env, suite, fresh=args.fresh, quiet=args.quiet)
    budget = Budget(args.budget_s)
    timing = dict(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, min_reps=args.min_reps,
                  host_reps=1 if args.smoke else 3)
    # (torch._dynamo is imported on first touch: ~2 s per process that compiles nothing)
    if any(p.endswith("compile") for p in providers) and hasattr(torch, "_dynamo"):
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 64))
        # ZForcing only reads its nn.LSTM's parameters (ops.lstm runs the recurrence); without
        # this dynamo breaks the graph at that module (one graph instead of four, measured)
        if hasattr(torch._dynamo.config, "allow_rnn"):
            torch._dynamo.config.allow_rnn = True
    print(f"# bench_train_step on {env['gpu']} ({device}), torch {env['torch']}, triton {env['triton']}, "
          f"-> {res.csv_path}", flush=True)

    names = model_names(args.models)
    models = [(n, build_zforcing, zforcing_loss) if n == "zforcing" else
              (n, (lambda cfg, n=n: load_other_model(n, cfg)), generic_loss) for n in names]
    if not models:
        print(f"# --models {args.models}: none of python/{{{','.join(OTHER_MODELS)}}}.py exists here; nothing to run")

    # ZForcing first, torch.compile (slow to build) after the other providers; other models last
    # (triton+graph after the rest: a failed capture is the likeliest to break the CUDA context)
    plan = []
    for name, _, _ in models:
        for group in (("torch", "torch+graph", "cudnn", "cudnn+graph", "triton", "triton-stepwise"), ("triton+graph", "triton-stepwise+graph"),
                      ("cuda", "cuda+graph"), ("triton+compile", "auto+compile", "cuda+compile", "torch+compile")):
            for c in case_names:
                plan += [(name, c, p) for p in providers if p in group]

    masters, refs = {}, {}
    for name, c, provider in plan:
        cfg = table[c]
        label = cfg["label"] if name == "zforcing" else f"{name} {cfg['label']}"
        base = dict(case=label, op=name, shape=cfg["label"], dtype=dtype_name, mode="step")
        if provider.endswith("compile") and args.compile == "none":
            continue
        if budget.exhausted():
            res.add(**base, provider=provider, status="skipped", note="time budget (--budget-s) used up")
            continue
        if provider == "torch+compile" and cfg["long"] and args.compile != "all":
            res.add(**base, provider=provider, status="skipped",
                    note="torch.compile unrolls the 784-step loops (minutes of compilation); use --compile all")
            continue
        if not common.cuda_healthy(device):
            res.add(**base, provider=provider, status="error",
                    note="CUDA context lost after an earlier error; stopping")
            return 2
        key = (name, c)
        if key not in masters:
            masters.clear()          # one master model (on the CPU) at a time
            try:
                builder = next(b for n, b, _ in models if n == name)
                masters[key] = builder(cfg)
            except Exception as exc:  # noqa: BLE001
                status, note = classify_error(exc)
                res.add(**base, provider=provider, status=status, note=f"building the model: {note}")
                continue
        loss_fn = next(f for n, _, f in models if n == name)
        with common.matmul_precision(dtype_name):
            run_provider(res, base, masters[key], loss_fn, provider, cfg, device, dtype, timing, args,
                         refs.setdefault(key, {}))
        free_memory(device, collect=device.type == "cuda")
    print(f"# wrote {res.csv_path} and {res.json_path}", flush=True)
    return 0


def model_names(spec: str) -> list[str]:
    """``--models``: 'zforcing', 'others' (those of python/{vrnn,srnn,storn}.py present),
    'auto' (both), or a comma-separated list of names."""
    present = [n for n in OTHER_MODELS if (REPO / "python" / f"{n}.py").exists()]
    names = []
    for item in (v.strip() for v in spec.split(",") if v.strip()):
        names += {"auto": ["zforcing", *present], "others": present}.get(item, [item])
    return list(dict.fromkeys(names))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--cases", default=None, help="comma-separated: timit, seqmnist (default both)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="model dtype (default float32; tf32 = float32 with TF32 matmuls allowed)")
    p.add_argument("--compile", choices=("none", "short", "all"), default="short",
                   help="the *+compile providers: skip them; torch+compile: skip T=784 (default), or all")
    p.add_argument("--models", default="zforcing",
                   help="zforcing (default); others: the sequence VAEs of python/<name>.py present "
                        f"among {', '.join(OTHER_MODELS)}; auto: both; or a comma-separated list of names")
    p.add_argument("--clip", type=float, default=100.0, help="gradient-norm clip (0: none); default 100")
    p.add_argument("--loss-weights", type=lambda s: tuple(float(v) for v in s.split(",")), default=(1.0, 1.0, 1.0),
                   help="kl,aux,bwd weights of training_loss (default 1,1,1)")
    p.add_argument("--keep-checks", action="store_true",
                   help="keep the model's input validation (host syncs) inside the eager timed steps")
    p.add_argument("--count-kernels", action="store_true",
                   help="instead of timing: the GPU kernels one step launches (profiler), suite 'kernels'")
    args = p.parse_args(argv)
    if len(args.loss_weights) != 3:
        p.error("--loss-weights needs three numbers: kl,aux,bwd")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
