"""Bar chart of benchmark results: ms per provider per case, log scale, one panel per
(suite, mode, dtype). Writes ``<stem>.png`` next to the input.

    python benchmarks/plot.py benchmarks/results/nvidia-h100-80gb-hbm3_2026-12-01.json
    python benchmarks/plot.py results.csv --out chart.png
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

PROVIDER_ORDER = ["torch", "compile", "compile-step", "torch+compile", "torch+graph", "cudnn", "triton-stepwise",
                  "triton-stepwise+graph", "triton", "triton+graph"]


def load_rows(path: Path):
    """``(rows, environment)`` from a results .json or .csv (numbers as floats)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        rows, env = data.get("rows", []), data.get("environment", {})
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        env = {"gpu": rows[0].get("gpu") if rows else "?"}
    for r in rows:
        for k in ("ms", "ms_p20", "ms_p80", "peak_mb", "extra_mb", "rel_err"):
            v = r.get(k)
            try:
                r[k] = None if v in (None, "") else float(v)
            except ValueError:
                r[k] = None
    return rows, env


def latest(rows):
    """The last row per (suite, case, dtype, mode, provider): a rerun supersedes earlier rows,
    except that a row that did not succeed (skipped, cut off, failed) never hides an earlier one
    that did (a later stage repeating a measurement on a short budget, e.g. ops-cuda's cudnn rows)."""
    out = {}
    for r in rows:
        key = (r.get("suite"), r.get("case"), r.get("dtype"), r.get("mode"), r.get("provider"))
        if key not in out or _ok(r) or not _ok(out[key]):
            out[key] = r
    return list(out.values())


def _ok(r):
    return r.get("status") == "ok" and bool(r.get("ms"))


def _providers(rows):
    seen = {r["provider"] for r in rows}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


def plot(path: Path, out: Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, env = load_rows(path)
    rows = latest(rows)
    groups = {}
    for r in rows:
        groups.setdefault((r.get("suite"), r.get("mode"), r.get("dtype")), []).append(r)
    order = sorted(groups, key=lambda k: (k[0] != "train", k[1] != "fwd+bwd", str(k[2]), str(k[1])))
    out = out or path.with_suffix(".png")
    if not order:
        raise SystemExit(f"{path}: no rows to plot")
    fig, axes = plt.subplots(len(order), 1, figsize=(14, 3.8 * len(order)), squeeze=False)
    for ax, key in zip(axes[:, 0], order):
        grp = groups[key]
        cases = list(dict.fromkeys(r["case"] for r in grp))
        provs = _providers(grp)
        width = 0.8 / max(len(provs), 1)
        for j, p in enumerate(provs):
            xs, ys, errs = [], [], [[], []]
            for i, c in enumerate(cases):
                r = next((r for r in grp if r["case"] == c and r["provider"] == p), None)
                if r is None:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                if r.get("status") == "ok" and r.get("ms"):
                    xs.append(x)
                    ys.append(r["ms"])
                    lo, hi = r.get("ms_p20") or r["ms"], r.get("ms_p80") or r["ms"]
                    errs[0].append(max(r["ms"] - lo, 0))
                    errs[1].append(max(hi - r["ms"], 0))
                else:
                    ax.text(x, 0.01, "x", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                            fontsize=7, color="gray")
            if xs:
                ax.bar(xs, ys, width, label=p, yerr=errs, capsize=1.5, error_kw={"elinewidth": 0.6})
                for x, y in zip(xs, ys):
                    ax.text(x, y, f"{y:.3g}", ha="center", va="bottom", fontsize=5.5, rotation=90)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=7)
        suite, mode, dtype = key
        ax.set_title(f"{suite}: {mode}, {dtype}  (x = failed / skipped)", fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:   # a panel whose rows all failed has no bars
            ax.legend(fontsize=7, ncol=len(provs), loc="upper left")
    fig.suptitle(f"zf_kernels benchmarks on {env.get('gpu', '?')}, {str(env.get('date', ''))[:10]}, "
                 f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results .json or .csv")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the input)")
    a = p.parse_args(argv)
    print(f"wrote {plot(a.results, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
