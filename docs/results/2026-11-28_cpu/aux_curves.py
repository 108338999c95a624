"""The curves of this folder's SeqMNIST runs: ``collect`` reads the runs' metrics.jsonl into one
compact CSV (committed: seqmnist_aux_curves.csv), ``plot`` draws seqmnist_aux_weight.png from it.

    python aux_curves.py collect LABEL=RUN_DIR ... > seqmnist_aux_curves.csv
    python aux_curves.py plot seqmnist_aux_curves.csv seqmnist_aux_weight.png
"""
import csv
import json
import sys
from collections import defaultdict

FIELDS = ("run", "kind", "step", "nll", "kl", "aux_weight")


def collect(pairs):
    out = csv.DictWriter(sys.stdout, FIELDS, lineterminator="\n")
    out.writeheader()
    for pair in pairs:
        label, run_dir = pair.split("=", 1)
        with open(f"{run_dir}/metrics.jsonl") as f:
            for line in f:
                r = json.loads(line)
                if r["kind"] in ("train", "valid"):
                    out.writerow({"run": label, "kind": r["kind"], "step": r["step"], "nll": f"{r['nll']:.2f}",
                                  "kl": f"{r['kl']:.2f}", "aux_weight": r.get("aux_weight", "")})


def plot(csv_path, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = defaultdict(lambda: {"train": [], "valid": []})
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            runs[r["run"]][r["kind"]].append((int(r["step"]), float(r["nll"]), float(r["kl"])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, rows in runs.items():
        steps, nll, kl = zip(*rows["train"])
        line, = axes[0].plot(steps, [a + b for a, b in zip(nll, kl)], label=label, lw=1)
        if rows["valid"]:
            v_steps, v_nll, v_kl = zip(*rows["valid"])
            axes[0].scatter(v_steps, [a + b for a, b in zip(v_nll, v_kl)], s=12, color=line.get_color())
        axes[1].plot(steps, kl, label=label, lw=1)
    axes[0].set(xlabel="step", ylabel="nll + kl (nats / image)", yscale="log",
                title="-ELBO terms (train; dots: valid -ELBO)")
    axes[1].set(xlabel="step", ylabel="KL (nats / image)", yscale="log", title="KL(q || p)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "collect":
        collect(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "plot":
        plot(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
