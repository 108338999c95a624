"""The arithmetic floor of one Z-Forcing training step: its matrix-product FLOPs, counted.

    python benchmarks/step_flops.py                 # TIMIT T40 and SeqMNIST T784, B=32 (~40 s)
    python benchmarks/step_flops.py --cases timit   # ~4 s

One forward + backward of the reference model (``backend="torch"``) at bench_train_step.py's
settings runs on the ``meta`` device (shapes only, no numbers) under torch's FlopCounterMode,
which counts 2 x M x N x K per product (matmuls only: the elementwise work and Adam are bytes,
not FLOPs). The two recurrences (``ops.lstm``, the backward network; ``ops.zforcing_chain``) are
counted again on their own, from the arguments the model passed them, so the table splits the
step into them and the batched rest. Each count over the dense peaks of an H100 / H200 SXM
(datasheet: 67 TFLOP/s IEEE float32 on the CUDA cores, 495 TF32 and 989 bfloat16 on the tensor
cores) is the step's time floor in that precision at 100% of peak.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.bench_train_step import CASES, build_zforcing  # noqa: E402
from zf_kernels import ops, training_loss  # noqa: E402
from zf_kernels.ops import _dispatch  # noqa: E402

PEAK_TFLOPS = {"IEEE float32": 67.0, "TF32": 495.0, "bfloat16": 989.0}   # H100 / H200 SXM, dense
RECURRENCES = ("lstm", "zforcing_chain")


def _reference(op: str):
    """The reference implementation ``op``'s dispatch loads for backend "torch"."""
    return _dispatch._load(_dispatch._REGISTRY[op]["torch"])


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _recurrence_flops(op: str, args) -> int:
    """FLOPs of ``op``'s reference forward + backward on leaves shaped like ``args`` (requiring
    grad where the model's did), every output given a gradient."""
    leaves = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]

    def run():
        out = _reference(op)(*leaves)
        flat = [t for o in out for t in (o if isinstance(o, (tuple, list)) else [o])]
        flat = [t for t in flat if t.requires_grad]
        torch.autograd.backward(flat, [torch.ones_like(t) for t in flat])
    return _flops(run)


def step_flops(case: str) -> dict:
    """{"step", "fwd", "lstm", "zforcing_chain", "rest"}: FLOPs of one training step of ``case``."""
    cfg = CASES[case]
    with torch.device("meta"):
        model = build_zforcing(cfg)
        y = torch.randn(cfg["T"], cfg["B"], cfg["model"]["input_dim"])
        eps = torch.randn(cfg["T"], cfg["B"], cfg["model"]["z_dim"])
    calls = {}
    loaded = {op: _reference(op) for op in RECURRENCES}

    def recording(op):
        def fn(*args):
            calls[op] = args
            return loaded[op](*args)
        return fn
    saved = dict(_dispatch._LOADED)
    for op in RECURRENCES:   # the reference the model calls, recording its arguments
        _dispatch._LOADED[_dispatch._REGISTRY[op]["torch"]] = recording(op)
    try:
        with ops.assume_valid_inputs(), FlopCounterMode(display=False) as counter:
            loss = training_loss(model(y, eps=eps), 1.0, 1.0, 1.0)
            fwd = counter.get_total_flops()
            loss.backward()
    finally:
        _dispatch._LOADED.clear()
        _dispatch._LOADED.update(saved)
    out = {"step": counter.get_total_flops(), "fwd": fwd}
    for op in RECURRENCES:
        out[op] = _recurrence_flops(op, calls[op])
    out["rest"] = out["step"] - sum(out[op] for op in RECURRENCES)
    return out


def table(case: str, flops: dict) -> list[str]:
    label = CASES[case]["label"]
    lines = [f"## {label}: {flops['step'] / 1e9:.1f} GFLOP per training step "
             f"(forward {flops['fwd'] / 1e9:.1f})", "",
             "| part | GFLOP | " + " | ".join(f"floor {p} ({t:g} TFLOP/s)" for p, t in PEAK_TFLOPS.items()) + " |",
             "|---|---|" + "---|" * len(PEAK_TFLOPS)]
    for part in ("lstm", "zforcing_chain", "rest", "step"):
        name = {"lstm": "ops.lstm (backward network)", "zforcing_chain": "ops.zforcing_chain",
                "rest": "the rest (batched)", "step": "**whole step**"}[part]
        cells = " | ".join(f"{flops[part] / (t * 1e12) * 1e3:.2f} ms" for t in PEAK_TFLOPS.values())
        lines.append(f"| {name} | {flops[part] / 1e9:.1f} | {cells} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="timit,seqmnist", help=f"comma-separated, of {sorted(CASES)}")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown {unknown}; expected some of {sorted(CASES)}")
    for case in cases:
        print("\n".join(table(case, step_flops(case))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
