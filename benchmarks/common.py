"""Shared machinery of the benchmark scripts: timing, peak memory, the environment record and
the result files.

Timing (CUDA): one call to warm up (compilation, autotuning, handle creation), one timed call
as an estimate, then ``triton.testing.do_bench`` (median with the 20th / 80th percentiles;
warm-up and repetition given in milliseconds; the L2 cache flushed before every repetition).
A function too slow to give ``min_reps`` repetitions inside ``rep_ms`` (a 784-step eager
training step takes ~1.5 s) is timed instead with CUDA events around each of ``min_reps``
calls; the same event loop is the fallback when Triton is not importable. The ``method``
column says which one gave the number.

On a CPU (``--smoke``, or no CUDA) the scripts still run, with tiny sizes and a couple of
repetitions timed by ``time.perf_counter``: that only checks that they do not rot. Such
numbers are never results; the writer refuses to put them under ``benchmarks/results/``.

Result files: ``<out>/<name>.json`` (``{"environment": ..., "runs": [...], "rows": [...]}``)
and ``<out>/<name>.csv`` (one line per row, columns ``FIELDS``), rewritten after every row so
that a run killed by a timeout keeps what it measured. A row is written with status
``incomplete`` before it is measured and completed afterwards: an ``incomplete`` row in a file
means that measurement was cut off (timeout or crash). Default name: ``<gpu>_<date>``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:        # run as `python benchmarks/x.py` without `pip install -e .`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
FIELDS = ["suite", "case", "op", "shape", "dtype", "mode", "provider", "ms", "ms_p20", "ms_p80",
          "n", "method", "peak_mb", "extra_mb", "rel_err", "status", "note", "gpu", "device",
          "smoke", "time"]
MB = float(2 ** 20)


# --------------------------------------------------------------------------- setup
def setup_torch(device: torch.device) -> None:
    """One intra-op thread on a CPU (shared 2-core machines); nothing changed on a GPU
    (TF32 and cuDNN flags stay at torch's defaults and are recorded in the environment)."""
    if device.type != "cuda":
        torch.set_num_threads(1)


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device, collect: bool = False) -> None:
    """Return cached blocks to the driver between rows; ``collect`` also runs the cycle
    collector (~0.3 s with torch loaded, so only where cycles are likely: models, compile)."""
    if collect:
        gc.collect()
    if device.type == "cuda" and cuda_healthy(device):   # a broken context: the next row's check says so
        torch.cuda.empty_cache()


def cuda_healthy(device: torch.device) -> bool:
    """False once the CUDA context is broken (illegal address, device-side assert): every later
    launch would fail, so the scripts stop instead of writing a page of follow-on errors."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    ms: float
    p20: float
    p80: float
    n: int
    method: str


def _quantile(xs, q):
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _summary(times, method) -> Timing:
    return Timing(_quantile(times, 0.5), _quantile(times, 0.2), _quantile(times, 0.8), len(times), method)


def _clear_grads(tensors):
    for t in tensors:
        t.grad = None


_FLUSH = {}


def _flush_l2(device):
    """Overwrite a 256 MB buffer (as do_bench does) so each repetition starts with a cold L2."""
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.empty(64 * 2 ** 20, dtype=torch.int32, device=device)
    buf.zero_()


def _event_loop(fn, device, n_warmup, n_rep, grad_to_none):
    for _ in range(n_warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        _clear_grads(grad_to_none)
        _flush_l2(device)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _do_bench():
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001 - triton missing or broken: CUDA events instead
        return None
    return do_bench


def time_fn(fn, device: torch.device, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            min_reps: int = 3, host_reps: int = 2, grad_to_none=()) -> Timing:
    """Median time of ``fn()`` in ms (see the module docstring for the method)."""
    grad_to_none = [t for t in grad_to_none if t is not None]
    if device.type != "cuda":
        fn()                                   # warm-up
        times = []
        for _ in range(max(1, host_reps)):
            _clear_grads(grad_to_none)
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return _summary(times, "perf_counter")
    fn()
    torch.cuda.synchronize(device)
    _clear_grads(grad_to_none)
    est = _event_loop(fn, device, 0, 1, grad_to_none)[0]
    est = max(est, 1e-3)
    do_bench = _do_bench()
    if do_bench is not None and est * min_reps <= rep_ms:
        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none or None,
                                 quantiles=[0.5, 0.2, 0.8])
        return Timing(float(med), float(p20), float(p80), max(1, int(rep_ms / est)), "do_bench")
    slow = est * min_reps > rep_ms
    n_warmup = 0 if slow else min(int(warmup_ms / est), 100)
    n_rep = max(min_reps, min(int(rep_ms / est), 1000))
    return _summary(_event_loop(fn, device, n_warmup, n_rep, grad_to_none), "cuda_events")


def peak_memory(fn, device: torch.device, grad_to_none=(), with_result: bool = False):
    """``(peak_mb, extra_mb)`` of one call: ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats`` (everything allocated: weights, inputs, optimizer state), and
    the same minus what was allocated before the call. ``(None, None)`` on a CPU (fn not
    called). ``with_result``: also return what ``fn`` returned (None on a CPU)."""
    if device.type != "cuda":
        return (None, None, None) if with_result else (None, None)
    _clear_grads([t for t in grad_to_none if t is not None])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    if with_result:
        return peak / MB, (peak - base) / MB, result
    del result
    return peak / MB, (peak - base) / MB


def count_kernels(fn, device: torch.device, top: int = 6) -> tuple[int | None, str]:
    """``(kernels, where the time goes)``: how many GPU kernels one call of ``fn`` launches (the
    profiler's CUDA kernel events; copies and memsets left out) and the ``top`` kernel names by
    summed GPU time ("name ms (share), ..."). ``(None, why)`` on a CPU, or where the profiler
    records no GPU activity (CUPTI unavailable). One untimed call."""
    if device.type != "cuda":
        return None, "kernels are counted on a GPU only"
    try:
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        events = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
                  if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as exc:  # noqa: BLE001 - a profiler failure costs the count, not the row
        return None, f"kernels not counted ({type(exc).__name__}: {str(exc)[:80]})"
    kernels = [(n, us) for n, us in events if not n.startswith(("Memcpy", "Memset"))]
    if not kernels:
        return None, "kernels not counted (the profiler recorded no GPU kernel)"
    return len(kernels), kernel_time_breakdown(kernels, top)


def kernel_time_breakdown(kernels, top: int) -> str:
    """"name ms (share), ..." for the ``top`` names by summed time of (name, microseconds) pairs."""
    by_name: dict[str, float] = {}
    for name, us in kernels:
        by_name[name] = by_name.get(name, 0.0) + us
    total = sum(by_name.values()) or 1.0
    worst = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{n[:60]} {us / 1e3:.3f} ms ({us / total:.0%})" for n, us in worst)


# rel_err (against float64) above which a timed row is marked "mismatch": a wrong result is
# not a speed. Loose on purpose (a flag for a person, not a test): 40-784-step recurrences in
# TF32 or 16-bit drift far from float64 (the TIMIT chain in tf32: 1.1e-2 on the H200).
REL_ERR_BOUND = {"float32": 1e-2, "tf32x3": 1e-2, "tf32": 0.1, "bfloat16": 0.5, "float16": 0.5}


def accuracy_status(dtype_name: str, err) -> tuple[str, str]:
    """("ok", "") or ("mismatch", why) for a row's rel_err (None: not checked)."""
    bound = REL_ERR_BOUND.get(dtype_name)
    if err is None or bound is None or err <= bound:        # NaN fails the comparison
        return "ok", ""
    return "mismatch", f"rel_err {err:.1e} > {bound:g} for {dtype_name}: a wrong result, not a speed"


def case_rel_err(got_out, ref_out, got_grad=None, ref_grad=None) -> float:
    """A row's ``rel_err``: the worse of the outputs' and (where given) the gradients'
    :func:`rel_err`, each over whole tensors; NaN if either is (``max`` keeps a NaN only in first
    place: max([1e-4, nan]) is 1e-4, which a row would report as ok)."""
    errors = [rel_err(got_out, ref_out)] + ([] if ref_grad is None else [rel_err(got_grad, ref_grad)])
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)


def rel_err(got, ref) -> float:
    """max over pairs of ||a - b|| / ||b|| in float64 (NaN if anything is NaN)."""
    worst = 0.0
    for a, b in zip(got, ref):
        if a is None or b is None:
            continue
        a64, b64 = a.detach().double().to(b.device), b.detach().double()
        if a64.shape != b64.shape:
            return float("nan")
        num = torch.linalg.vector_norm(a64 - b64).item()
        den = torch.linalg.vector_norm(b64).item()
        e = num / den if den > 0 else num
        if math.isnan(e):
            return float("nan")
        worst = max(worst, e)
    return worst


# --------------------------------------------------------------------------- errors
def classify_error(exc: BaseException) -> tuple[str, str]:
    """``(status, note)`` for a failed measurement."""
    try:
        from zf_kernels.ops import BackendUnavailableError
    except Exception:  # noqa: BLE001
        BackendUnavailableError = ()  # noqa: N806
    msg = " ".join(str(exc).split())
    note = f"{type(exc).__name__}: {msg}"[:400]
    if BackendUnavailableError and isinstance(exc, BackendUnavailableError):
        return "unavailable", note
    if isinstance(exc, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else MemoryError):
        return "oom", note
    return "error", note


# --------------------------------------------------------------------------- environment
def _run_cmd(args, timeout=10):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return r.stdout.strip() if r.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


def source_hash() -> str:
    """sha256 (12 hex) of the package's .py files: identifies uncommitted code on the device,
    where the working tree arrives without its .git."""
    h = hashlib.sha256()
    for p in sorted((REPO / "zf_kernels").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def environment(device: torch.device, smoke: bool) -> dict:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device.type,
        "smoke": bool(smoke),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "git_commit": _run_cmd(["git", "rev-parse", "HEAD"]) or os.environ.get("ZF_GIT_COMMIT", "unknown"),
        "git_dirty": None,
        "source_hash": source_hash(),
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    status = _run_cmd(["git", "status", "--porcelain", "--untracked-files=no"])
    if status is not None:
        env["git_dirty"] = bool(status)
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        env["triton"] = f"not importable ({type(exc).__name__})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                   gpu_memory_gb=round(p.total_memory / 2 ** 30, 1))
        q = _run_cmd(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit,"
                      "temperature.gpu,pstate", "--format=csv,noheader"])
        env["nvidia_smi"] = q
    else:
        env["gpu"] = "cpu"
    return env


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "unknown"


# --------------------------------------------------------------------------- results
class Results:
    """Rows of one benchmark run, merged into ``<out>/<name>.{json,csv}``."""

    def __init__(self, out_dir, name: str | None, env: dict, suite: str, fresh: bool = False,
                 quiet: bool = False):
        self.out = Path(out_dir).resolve()
        if (env["smoke"] or env["device"] != "cuda") and _inside(self.out, RESULTS_DIR):
            raise SystemExit(f"refusing to write CPU / --smoke timings under {RESULTS_DIR}: they are "
                             f"not results; pass --out elsewhere")
        self.out.mkdir(parents=True, exist_ok=True)
        name = name or f"{slug(env['gpu'])}_{env['date'][:10]}"
        self.json_path, self.csv_path = self.out / f"{name}.json", self.out / f"{name}.csv"
        self.env, self.suite, self.quiet = env, suite, quiet
        self.rows, self.runs = [], []
        if not fresh and self.json_path.exists():
            try:
                old = json.loads(self.json_path.read_text())
                self.rows, self.runs = list(old.get("rows", [])), list(old.get("runs", []))
            except (OSError, ValueError):
                pass
        self.runs.append({"suite": suite, "argv": sys.argv[1:], **env})
        self.flush()

    def begin(self, **row) -> dict:
        """Write ``row`` as ``incomplete`` (so a cut-off measurement shows) and return it."""
        full = {k: None for k in FIELDS}
        full.update(suite=self.suite, gpu=self.env["gpu"], device=self.env["device"],
                    smoke=self.env["smoke"], status="incomplete",
                    note="started; no result: cut off by a timeout or a crash",
                    time=_dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S"))
        full.update(row)
        self.rows.append(full)
        self.flush()
        return full

    def end(self, row: dict, **fields) -> dict:
        if fields.get("status", "ok") == "ok" and "note" not in fields:
            fields["note"] = ""
        row.update({"status": "ok", **fields})
        self.flush()
        if not self.quiet:
            print(format_row(row), flush=True)
        return row

    def add(self, **row) -> dict:
        """Begin and end a row in one go (skipped / error rows)."""
        fields = {"status": row.pop("status", "ok"), "note": row.pop("note", "")}
        return self.end(self.begin(**row), **fields)

    def flush(self) -> None:
        data = {"environment": self.env, "runs": self.runs, "rows": self.rows}
        _atomic_write(self.json_path, json.dumps(data, indent=1, default=str))
        extra = sorted({k for r in self.rows for k in r} - set(FIELDS))
        fields = FIELDS + extra
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _csv_value(r.get(k)) for k in fields})
        os.replace(tmp, self.csv_path)


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_row(r: dict) -> str:
    return (f"{r.get('suite') or '':6} {r.get('case') or '':36} {r.get('dtype') or '':8} "
            f"{r.get('mode') or '':7} {r.get('provider') or '':14} {_fmt(r.get('ms'), '10.4f')} ms "
            f"peak {_fmt(r.get('peak_mb'), '8.1f')} MB  err {_fmt(r.get('rel_err'), '.1e'):>7}  "
            f"{r.get('status')}  {(r.get('note') or '')[:160]}")


# --------------------------------------------------------------------------- CLI
class Budget:
    """A soft time limit: rows that would start after it are recorded as skipped. It ends
    ``seconds`` after it is made, or at ``$ZF_BUDGET_END`` (epoch seconds) if that is sooner:
    device_check.sh sets both per stage, the end counted from the stage's start, so that the
    seconds a script spends importing and setting up before its Budget come off the budget
    rather than out of the stage's hard limit."""

    def __init__(self, seconds: float | None):
        self.t0, self.seconds = time.perf_counter(), seconds
        end = os.environ.get("ZF_BUDGET_END")
        self.end = float(end) if end and seconds is not None else None

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        left = self.seconds - (time.perf_counter() - self.t0)
        return left if self.end is None else min(left, self.end - time.time())

    def exhausted(self) -> bool:
        return self.left() <= 0


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, few repetitions (CPU-friendly): checks the script runs, measures nothing")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:1, cpu")
    p.add_argument("--out", default=None,
                   help=f"output folder (default {RESULTS_DIR.relative_to(REPO)} on a GPU; "
                        "a temp folder for CPU/smoke)")
    p.add_argument("--name", default=None, help="file stem of the results (default <gpu>_<date>)")
    p.add_argument("--fresh", action="store_true", help="overwrite <name>.json/csv instead of appending rows")
    p.add_argument("--providers", default=None, help="comma-separated subset of the providers")
    env_budget = os.environ.get("ZF_BUDGET_S")
    p.add_argument("--budget-s", type=float, default=float(env_budget) if env_budget else None,
                   help="soft time limit (s): rows that would start later are recorded as skipped "
                        "(default: $ZF_BUDGET_S if set, which device_check.sh sets per stage; else none)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up time (ms)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench repetition time (ms)")
    p.add_argument("--min-reps", type=int, default=3,
                   help="functions slower than rep-ms/min-reps are timed with CUDA events over this many calls")
    p.add_argument("--quiet", action="store_true", help="do not print a line per row")


def out_dir(args, device) -> Path:
    if args.out:
        return Path(args.out)
    if args.smoke or device.type != "cuda":
        return Path(tempfile.gettempdir()) / "zf_bench_smoke"
    return RESULTS_DIR


def start_cases(args, providers_all, cases, smoke_cases):
    """The common start of the step benchmarks: ``(device, providers, case table, case names)``
    from ``--device``, ``--providers``, ``--smoke`` and ``--cases``."""
    device = pick_device(args.device)
    setup_torch(device)
    providers = parse_list(args.providers, providers_all, providers_all)
    table = smoke_cases if args.smoke else cases
    return device, providers, table, parse_list(args.cases, table, table)


def parse_list(value: str | None, allowed, default):
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}; choose from {list(allowed)}")
    return items


# Float32 modes, each set for its rows by matmul_precision and restored afterwards:
#   "float32": IEEE float32 everywhere: torch's matmuls, cuDNN's nn.LSTM (whose default,
#              torch.backends.cudnn.allow_tf32=True, rounds operands to TF32) and our kernels.
#              (The first GPU run, 2026-11-27, kept cuDNN's default: its float32 cuDNN rows
#              may be TF32; results.json's environment says cudnn_allow_tf32.)
#   "tf32":    TF32 allowed everywhere (our kernels follow torch's switch:
#              zf_kernels.ops._triton_common.dot_precision).
#   "tf32x3":  torch and cuDNN IEEE as in "float32"; our kernels' tl.dot with tf32x3
#              (ZF_FP32_DOT=tf32x3): near-IEEE accuracy on the tensor cores. Only our rows
#              differ from "float32" rows, so only Triton providers are worth running.
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "tf32x3": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
_FP32_MODES = {"float32": (False, None), "tf32": (True, None), "tf32x3": (False, "tf32x3")}


def set_env(values: dict):
    """Set environment variables (a value None unsets one); returns the function that puts
    back what was there (the ops read these at every call: schedules, dot precision, ...)."""
    saved = {k: os.environ.get(k) for k in values}

    def put(items):
        for k, v in items:
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    put(values.items())
    return lambda: put(saved.items())


@contextlib.contextmanager
def matmul_precision(dtype_name: str):
    """The float32 mode of ``dtype_name`` (see DTYPES) for the rows inside; no-op for 16-bit."""
    if dtype_name not in _FP32_MODES:
        yield
        return
    allow_tf32, fp32_dot = _FP32_MODES[dtype_name]
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    restore_env = set_env({"ZF_FP32_DOT": fp32_dot})
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        restore_env()


def dynamo_counters():
    """torch.compile's counters, cleared (None where dynamo is unavailable)."""
    try:
        from torch._dynamo.utils import counters
        counters.clear()
        return counters
    except Exception:  # noqa: BLE001
        return None


def compile_note(counters) -> str:
    """How many graphs and graph breaks torch.compile made since ``dynamo_counters()``."""
    if counters is None:
        return ""
    graphs = counters["stats"].get("unique_graphs", 0)
    breaks = sum(counters["graph_break"].values())
    return f"dynamo: {graphs} graph(s), {breaks} graph break(s)"
