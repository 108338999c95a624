"""Short text summary of a results file: the DESIGN section 2 targets (how far from each),
the baselines next to DESIGN's H200 numbers, the training-step table and a compact op table.
device_check.sh prints it last (the device tool returns only the end of the output).

    python benchmarks/summarize.py results.json [--tests-log tests.log] [--all]
        [--ab BASE.json VARIANT.json...]   # the same measurements of several builds, side by side
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.plot import _providers, latest, load_rows  # noqa: E402

LSTM_T40, LSTM_T784 = "lstm T40 B32 I512 H1024", "lstm T784 B32 I64 H512"
TIMIT, MNIST = "TIMIT T40 B32", "SeqMNIST T784 B32"
# DESIGN section 2, measured on an H200 (fp32): (suite, case, mode, provider) -> ms
DESIGN_H200 = {
    ("train", TIMIT, "step", "torch"): 87.0,
    ("train", TIMIT, "step", "torch+compile"): 71.0,
    ("train", TIMIT, "step", "torch+graph"): 16.9,
    ("train", MNIST, "step", "torch"): 1531.0,
    ("train", MNIST, "step", "torch+graph"): 601.0,
    ("ops", LSTM_T40, "fwd+bwd", "cudnn"): 3.5,
    ("ops", LSTM_T40, "fwd", "cudnn"): 1.28,
    ("ops", LSTM_T784, "fwd+bwd", "cudnn"): 35.0,
}


SHORT = {"unavailable": "unavail", "incomplete": "cut-off", "skipped": "skipped", "error": "error",
         "oom": "oom", "mismatch": "WRONG"}


def _get(rows, suite, case, mode, provider, dtype="float32"):
    """The measurement's successful row (the last, as ``_latest``), or None."""
    r = _latest([r for r in rows if (r.get("suite"), r.get("case"), r.get("mode"), r.get("provider"),
                                     r.get("dtype")) == (suite, case, mode, provider, dtype)])
    return r if r is not None and r.get("status") == "ok" and r.get("ms") else None


def _latest(rows):
    """Of the rows of one measurement (a second device call may repeat a stage the first one
    cut short), the last that succeeded, else the last one (``plot.latest``'s rule); None if
    there are none."""
    return (latest(rows) or [None])[0]


def _ms(r):
    return "-" if r is None else f"{r['ms']:.3f}"


# our training-step providers: the best one is measured against the targets
OURS_TRAIN = ["triton", "triton+graph", "triton-stepwise", "triton-stepwise+graph", "cuda", "cuda+graph",
              "triton+compile", "auto+compile", "cuda+compile"]
# our ops.lstm providers (cuda: csrc/'s kernels, IEEE float32 FMAs whatever the mode)
OURS_LSTM = ["triton", "triton-stepwise", "cuda"]
# the baselines of the same step: the best one is what ours must beat
BASELINE_TRAIN = ["torch", "torch+graph", "cudnn", "cudnn+graph", "torch+compile"]
# DESIGN's "hoisted eager" may have run its backward LSTM on cuDNN: our cudnn rows are
# compared with the same DESIGN numbers
DESIGN_ALSO = {"cudnn": "torch", "cudnn+graph": "torch+graph"}


def _best(rows, suite, case, mode, providers, dtypes=("float32",)):
    found = [r for p in providers for d in dtypes if (r := _get(rows, suite, case, mode, p, d))]
    return min(found, key=lambda r: r["ms"]) if found else None


# benchmarks/step_flops.py: 129.9 and 2,032.8 GFLOP per step over 67 TFLOP/s (H100 / H200 SXM)
IEEE_FLOOR_MS = {TIMIT: 1.94, MNIST: 30.3}


def targets(rows, gpu: str) -> list[str]:
    card = "" if "H200" in gpu.upper() else f" (targets are for an H200; this is {gpu})"
    out = [f"## Targets (DESIGN section 2){card}", "",
           "| target | measured | how far from target |", "|---|---|---|"]
    for case, limit in ((TIMIT, 2.0), (MNIST, 40.0)):
        b = _best(rows, "train", case, "step", OURS_TRAIN, ("float32", "tf32", "tf32x3"))
        far = "not measured" if b is None else (
            f"{b['ms'] / limit:.2f}x the target ({b['provider']}, {b['dtype']})" + (" - met" if b["ms"] <= limit else ""))
        out.append(f"| train step {case} <= {limit:g} ms | {_ms(b)} ms | {far} |")
        bf = _best(rows, "train", case, "step", OURS_TRAIN, ("bfloat16",))
        if bf is not None:
            out.append(f"| train step {case} <= {limit:g} ms, bfloat16 model | {_ms(bf)} ms | "
                       f"{bf['ms'] / limit:.2f}x ({bf['provider']}) |")
        base = _best(rows, "train", case, "step", BASELINE_TRAIN, ("float32", "tf32"))
        if b is not None and base is not None:
            sp = base["ms"] / b["ms"]
            out.append(f"| train step {case} vs the strongest baseline | {_ms(b)} / {_ms(base)} ms "
                       f"({base['provider']}, {base['dtype']}) | {sp:.2f}x its speed"
                       + (" - faster" if sp > 1 else "") + " |")
    out.append(f"| (floor: the step's matrix products at the FP32 peak, benchmarks/step_flops.py) | "
               f"{TIMIT} {IEEE_FLOOR_MS[TIMIT]} ms, {MNIST} {IEEE_FLOOR_MS[MNIST]} ms | "
               "an IEEE float32 row would need 97% (TIMIT) / 76% of the FP32 peak; TF32 / bfloat16 rows far less |")
    for case in (LSTM_T40, LSTM_T784):
        # the same float32 mode on both sides (tf32x3: ours against IEEE cuDNN, the float32
        # row); float32 rows before 2026-11-27's changes let cuDNN use TF32 (torch's default);
        # bfloat16 against cuDNN in bfloat16
        for dt in ("float32", "tf32", "tf32x3", "bfloat16"):
            t = _best(rows, "ops", case, "fwd+bwd", OURS_LSTM, (dt,))
            c = _get(rows, "ops", case, "fwd+bwd", "cudnn", "float32" if dt == "tf32x3" else dt)
            if dt != "float32" and not t:
                continue
            if t and c:
                sp = c["ms"] / t["ms"]
                far = f"{sp:.2f}x cuDNN's speed (need >= 1, aim 2)" + (" - met" if sp >= 1 else "")
            else:
                far = "not measured"
            ours = "ours" if t is None else t["provider"]
            out.append(f"| ops.lstm fwd+bwd {case[5:]} {dt} >= cuDNN | {ours} {_ms(t)} / cuDNN {_ms(c)} ms | {far} |")
    for case in (TIMIT, MNIST):
        base = _get(rows, "train", case, "step", "torch")
        for p in ("triton", "triton+graph", "cuda", "cuda+graph"):
            r = _get(rows, "train", case, "step", p)
            if r is None and p.startswith("cuda"):
                continue
            if base and r and base.get("peak_mb") and r.get("peak_mb"):
                ratio = r["peak_mb"] / base["peak_mb"]
                far = f"{ratio:.2f}x eager's peak" + (" - met" if ratio <= 1 else "")
                meas = f"{r['peak_mb']:.0f} / {base['peak_mb']:.0f} MB"
            else:
                far, meas = "not measured", "-"
            out.append(f"| peak memory {case} {p} <= eager torch | {meas} | {far} |")
    out += ["", "## Baselines vs DESIGN (H200, fp32)", "",
            "(since 2026-11-27 the model folds its embedding into the LSTMs' input projections: 13% fewer "
            "FLOPs per TIMIT step, 24% at SeqMNIST; DESIGN timed the unfolded model)", "",
            "| baseline | DESIGN H200 ms | measured ms | ratio |", "|---|---|---|---|"]
    for (suite, case, mode, prov), ref in DESIGN_H200.items():
        for p in (prov, *(k for k, v in DESIGN_ALSO.items() if v == prov and suite == "train")):
            r = _get(rows, suite, case, mode, p)
            if r is None and p != prov:
                continue
            ratio = "-" if r is None else f"{r['ms'] / ref:.2f}"
            label = prov if p == prov else f"{p} (vs DESIGN's {prov})"
            out.append(f"| {suite} {case} {mode} {label} | {ref:g} | {_ms(r)} | {ratio} |")
    return out


def train_table(rows) -> list[str]:
    tr = [r for r in rows if r.get("suite") in ("train", "trainer")]
    if not tr:
        return []
    out = ["", "## Training step (forward + backward + clip + Adam; 'trainer' rows: the CLI trainer's "
           "whole step, bench_trainer.py)", "",
           f"{'case':30} {'dtype':8} {'provider':21} {'ms':>10} {'p20-p80':>19} {'peak MB':>9} {'rel':>8}  status"]
    for r in tr:
        spread = "-" if r.get("ms_p20") is None else f"{r['ms_p20']:.3f}-{r['ms_p80']:.3f}"
        peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        rel = "-" if r.get("rel_err") is None else f"{r['rel_err']:.1e}"
        note = "" if r.get("status") == "ok" else f" {(r.get('note') or '')[:90]}"
        out.append(f"{r['case'][:30]:30} {str(r.get('dtype')):8} {r['provider']:21} {_ms(r) if r.get('ms') else '-':>10} {spread:>19} "
                   f"{peak:>9} {rel:>8}  {r.get('status')}{note}")
    return out


def ops_table(rows, modes) -> list[str]:
    ops_rows = [r for r in rows if r.get("suite") == "ops" and r.get("mode") in modes]
    if not ops_rows:
        return []
    provs = _providers(ops_rows)
    out = ["", f"## Ops, median ms ({', '.join(modes)}); rel = triton's rel_err vs float64", "",
           f"{'case':38} {'dtype':8} {'mode':7} " + " ".join(f"{p:>9}" for p in provs) + "  triton rel"]
    keys = list(dict.fromkeys((r["case"], r["dtype"], r["mode"]) for r in ops_rows))
    for case, dtype, mode in keys:
        cells = []
        rel = "-"
        for p in provs:
            r = _latest([r for r in ops_rows if (r["case"], r["dtype"], r["mode"], r["provider"]) == (case, dtype, mode, p)])
            if r is None:
                cells.append(f"{'':>9}")
            elif r.get("status") == "ok" and r.get("ms"):
                cells.append(f"{r['ms']:9.3f}")
            else:
                cells.append(f"{SHORT.get(r.get('status'), str(r.get('status'))[:9]):>9}")
            if p == "triton" and r is not None and r.get("rel_err") is not None:
                rel = f"{r['rel_err']:.1e}"
        out.append(f"{case[:38]:38} {dtype:8} {mode:7} " + " ".join(cells) + f"  {rel}")
    return out


def kernels_table(rows) -> list[str]:
    """bench_train_step.py --count-kernels: GPU kernels per training step, per provider."""
    kr = [r for r in rows if r.get("suite") == "kernels"]
    if not kr:
        return []
    out = ["", "## GPU kernels per training step (profiler; eager providers)", ""]
    for case in dict.fromkeys(r["case"] for r in kr):
        cells = [f"{r['provider']} {r['kernels']}" if r.get("kernels") not in (None, "") else
                 f"{r['provider']} {SHORT.get(r.get('status'), r.get('status'))}"
                 for r in kr if r["case"] == case]
        out.append(f"- {case}: " + "; ".join(cells))
        for r in kr:   # where the GPU time of our steps goes (the note's "GPU time: ..." part)
            if r["case"] == case and r["provider"].startswith("triton") and "GPU time: " in (r.get("note") or ""):
                out.append(f"  - {r['provider']}: " + r["note"].split("GPU time: ", 1)[1])
    return out


def tune_table(rows) -> list[str]:
    """tune_tiles.py: each case and dtype, its tiles side by side, the fastest marked."""
    tr = [r for r in rows if r.get("suite") == "tune"]
    if not tr:
        return []
    out = ["", "## Persistent tiles (tune_tiles.py, fwd+bwd ms; rel = max rel_err vs float64)", ""]
    for case, dtype in dict.fromkeys((r["case"], r["dtype"]) for r in tr):
        mine = [r for r in tr if (r["case"], r["dtype"]) == (case, dtype)]
        ok = [r for r in mine if r.get("status") == "ok" and r.get("ms")]
        best = min(ok, key=lambda r: r["ms"])["provider"] if ok else None
        cells = [f"{r['provider']} {r['ms']:.3f}{' *' if r['provider'] == best else ''} (rel {r['rel_err']:.0e})"
                 if r in ok else f"{r['provider']} {SHORT.get(r.get('status'), r.get('status'))}" for r in mine]
        out.append(f"- {case} {dtype}: " + "; ".join(cells))
    return out


# what issue 3's ops table needs of every op case (float32, forward + backward): an ok row of
# each kind, any provider of the kind (cuDNN only for the lstm cases)
COVERAGE = {"eager": ("torch",), "torch.compile": ("compile", "compile-step"),
            "triton": ("triton", "triton-stepwise")}
# every op of the table (bench_ops.OPS; a test keeps them equal): one that no stage wrote a row of
# (a stage skipped or crashed before its first row) is missing too, not absent from the check
COVERAGE_OPS = ("lstm", "lstm_cell", "zforcing_chain", "zforcing_chain_ln", "reparameterize", "gaussian_kl",
                "gaussian_nll", "bernoulli_nll", "categorical_nll", "leaky_clamp")


def ops_coverage(rows, ops=COVERAGE_OPS) -> list[str]:
    """Which float32 fwd+bwd op cases still lack an ok eager / torch.compile / Triton (/ cuDNN)
    row, and which of ``ops`` have no such row at all."""
    ops_rows = [r for r in rows if r.get("suite") == "ops" and r.get("mode") == "fwd+bwd"
                and r.get("dtype") == "float32"]
    if not ops_rows:
        return []
    ok = {(r["case"], r["provider"]) for r in ops_rows if r.get("status") == "ok" and r.get("ms")}
    seen = {r["case"].split()[0] for r in ops_rows}
    missing = [f"- {op}: no float32 fwd+bwd row at all" for op in ops if op not in seen]
    # every case bench_ops times (the smoke list where the rows are the smoke run's), not only
    # those with a row: a stage killed part-way writes none for the cases it did not reach
    from benchmarks import bench_ops
    planned = {smoke: [f"{c.op} {c.label}" for c in bench_ops.cases(smoke) if c.op in ops and c.op in seen]
               for smoke in (False, True)}
    smoke = len(set(planned[True]) & {r["case"] for r in ops_rows}) > len(set(planned[False]) & {r["case"] for r in ops_rows})
    for case in dict.fromkeys([r["case"] for r in ops_rows] + planned[smoke]):
        kinds = dict(COVERAGE, **({"cuDNN": ("cudnn",)} if case.startswith("lstm ") else {}))
        lacks = [k for k, provs in kinds.items() if not any((case, p) in ok for p in provs)]
        if lacks:
            missing.append(f"- {case}: no {', '.join(lacks)}")
    head = "## Ops table coverage (float32 fwd+bwd: eager, torch.compile, Triton, cuDNN for lstm)"
    return ["", head, ""] + (missing or ["- complete"])


def problems(rows, limit=8) -> list[str]:
    """Rows that failed or were cut off, grouped by (suite, provider, status, note)."""
    bad = [r for r in rows if r.get("status") not in ("ok", "skipped")]
    if not bad:
        return []
    groups = {}
    for r in bad:
        key = (r.get("suite"), r.get("provider"), r.get("status"), (r.get("note") or "")[:160])
        groups.setdefault(key, []).append(r)
    out = ["", f"## Failed / cut-off rows: {len(bad)} (full notes in the CSV)"]
    for (suite, prov, status, note), rs in list(groups.items())[:limit]:
        first = rs[0]
        where = f"{first.get('case')} {first.get('dtype')} {first.get('mode')}"
        more = f" (+{len(rs) - 1} more rows)" if len(rs) > 1 else ""
        out.append(f"- {suite} {prov} {status}: {where}{more}: {note}")
    if len(groups) > limit:
        out.append(f"- ... {len(groups) - limit} more groups")
    return out


def tests_summary(path: Path) -> list[str]:
    if not path or not path.exists():
        return [f"## Tests: no log at {path}"]
    lines = path.read_text(errors="replace").splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    final = [ln for ln in lines if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", ln)
             and ("==" in ln or re.match(r"^\d+ ", ln))]
    out = [f"## Tests ({path.name})"]
    out += [f"  {ln[:160]}" for ln in failed[:5]]
    if final:
        out.append(f"  {final[-1][:200]}")
    else:
        last = lines[-1][:150] if lines else "empty log"
        out.append(f"  no pytest summary line (timed out or crashed?): {last}")
        # pytest -v (device_check) prints each test's outcome as it ends: what had finished
        done = {k: sum(1 for ln in lines if re.search(rf"\b{k}\b", ln) and not ln.startswith(k))
                for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        if any(done.values()):
            out.append("  finished before that: " + ", ".join(f"{n} {k.lower()}" for k, n in done.items() if n))
    return out


def ab_table(base: Path, variants: list[Path]) -> list[str]:
    """Results files measuring the same rows with builds of the kernels (device_check's variant
    stages): each row's median in the base build and in each variant, and variant / base."""
    if not base.exists():
        return ["", f"## Variants: no {base}"]
    b_rows = latest(load_rows(base)[0])
    key = lambda r: (r.get("suite"), r.get("case"), r.get("dtype"), r.get("mode"), r.get("provider"))  # noqa: E731
    found = {v: {key(r): r for r in latest(load_rows(v)[0])} for v in variants if v.exists()}
    names = [v.stem.replace("results_variant_", "") for v in found]
    out = ["", f"## Variants, median ms and variant / {base.stem}"
               + (f" (missing: {', '.join(v.name for v in variants if not v.exists())})"
                  if len(found) < len(variants) else ""), "",
           f"{'case':38} {'dtype':8} {'mode':7} {'base':>9} " + " ".join(f"{n[:15]:>15}" for n in names)]

    def ok(r):
        return r is not None and r.get("status") == "ok" and r.get("ms")

    for r in b_rows:
        cells = []
        for rows in found.values():
            v = rows.get(key(r))
            if ok(v):
                ratio = f" ({v['ms'] / r['ms']:.2f})" if ok(r) else ""
                cells.append(f"{v['ms']:.3f}{ratio}".rjust(15))
            else:
                cells.append(f"{SHORT.get((v or {}).get('status'), '-'):>15}")
        base_cell = f"{r['ms']:9.3f}" if ok(r) else f"{SHORT.get(r.get('status'), '-'):>9}"
        out.append(f"{str(r.get('case'))[:38]:38} {str(r.get('dtype')):8} {str(r.get('mode')):7} {base_cell} "
                   + " ".join(cells))
    return out


def summarize(path: Path, tests_log=None, show_all: bool = False, ab=None) -> str:
    """``tests_log``: a pytest log path, or a list of them (each gets its summary lines)."""
    rows, env = load_rows(path)
    rows = latest(rows)
    head = (f"# {env.get('gpu', '?')} | torch {env.get('torch')} | triton {env.get('triton')} | CUDA "
            f"{env.get('cuda')} | cuDNN {env.get('cudnn')} | {env.get('date')} | commit "
            f"{str(env.get('git_commit'))[:12]} src {env.get('source_hash')}")
    parts = [head, ""]
    logs = [] if tests_log is None else [tests_log] if isinstance(tests_log, (str, Path)) else tests_log
    for log in logs:
        parts += tests_summary(Path(log)) + [""]
    parts += ops_table(rows, ("fwd", "fwd+bwd") if show_all else ("fwd+bwd",))
    parts += ops_coverage(rows)
    parts += train_table(rows)
    parts += kernels_table(rows)
    parts += tune_table(rows)
    parts += problems(rows)
    if ab:
        parts += ab_table(Path(ab[0]), [Path(v) for v in ab[1:]])
    parts += [""] + targets(rows, str(env.get("gpu", "?")))
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--tests-log", type=Path, action="append", default=None,
                   help="a pytest log to summarise (repeatable)")
    p.add_argument("--all", action="store_true", help="also the forward-only op rows")
    p.add_argument("--ab", nargs="+", type=Path, metavar="FILE", default=None,
                   help="BASE VARIANT...: results files of the same rows from builds of the kernels, side by side")
    a = p.parse_args(argv)
    print(summarize(a.results, a.tests_log, a.all, a.ab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
