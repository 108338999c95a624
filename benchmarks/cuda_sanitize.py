"""compute-sanitizer over csrc/'s kernels on tiny shapes: what the CPU emulation cannot show.

The emulation (tests/test_cuda_emulation*.py) runs the kernels' indexing and barriers on the CPU,
but not the GPU's memory checks: an out-of-bounds global or shared access that lands in padding
there, a shared-memory race that std::barrier (a full fence) hides, a __syncthreads a block does
not reach uniformly. device_check.sh runs this after tests/test_cuda_{lstm,chain}.py fail (or when
named in ZF_STAGES): each tool in its own compute-sanitizer process over this script's --child
part, which runs ops.lstm and ops.zforcing_chain with backend="cuda", forward and backward, in
float32 (IEEE and TF32 tiles) and bfloat16, on shapes that reach the vector staging, its edge
path and the element-wise one. Exit status 0 when every tool reports no error.

    python benchmarks/cuda_sanitize.py                          # GPU machine with compute-sanitizer
    python benchmarks/cuda_sanitize.py --child                  # the shapes alone, no sanitizer
    python benchmarks/cuda_sanitize.py --smoke --device cpu     # CPU: arguments and cases only
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOOLS = ("memcheck", "racecheck", "synccheck")
# (T, B, I, H): B = 5 (a partial batch tile), 16 (whole bf16 vectors of h) and 19 (edge path)
LSTM_SHAPES = [(3, 5, 4, 13), (2, 16, 8, 24), (2, 19, 3, 21)]
# (T, B, H, M, Z, G)
CHAIN_SHAPES = [(3, 5, 13, 7, 5, 6), (2, 16, 24, 16, 8, 8), (2, 19, 21, 9, 7, 5)]
# (label, dtype name, TF32 matmuls allowed): the three kinds of block product
MODES = [("float32 IEEE", "float32", False), ("float32 TF32", "float32", True), ("bfloat16", "bfloat16", False)]


def cases() -> list[str]:
    return ([f"lstm T{T} B{B} I{I} H{H} {m[0]}" for T, B, I, H in LSTM_SHAPES for m in MODES]
            + [f"zforcing_chain T{T} B{B} H{H} M{M} Z{Z} G{G} {m[0]}" for T, B, H, M, Z, G in CHAIN_SHAPES
               for m in MODES])


def run_child(device: str = "cuda", backend: str = "cuda") -> int:
    """Every case forward + backward on the GPU, synchronised after each (an error names its case);
    tests/test_benchmarks_smoke.py runs them on the CPU with backend "torch" (valid calls)."""
    import torch

    from zf_kernels import ops
    g = torch.Generator().manual_seed(0)

    def leaves(shapes, dtype):
        return [torch.randn(*s, generator=g).mul(0.3).to(device, dtype).requires_grad_() for s in shapes]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for label, dtype_name, tf32 in MODES:
        dtype = getattr(torch, dtype_name)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for T, B, I, H in LSTM_SHAPES:
            args = leaves([(T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,), (B, H), (B, H)], dtype)
            out, (h, c) = ops.lstm(*args, backend=backend)
            torch.autograd.grad((out.sum() + h.sum() + c.sum(),), args)
            sync()
            print(f"ok lstm T{T} B{B} I{I} H{H} {label}", flush=True)
        for T, B, H, M, Z, G in CHAIN_SHAPES:
            args = leaves([(T, B, 4 * H), (T, B, M), (T, B, Z), (B, H), (B, H), (M, H), (2 * Z, M), (2 * Z,),
                           (G, Z), (G,), (4 * H, G), (4 * H, H)], dtype)
            out = ops.zforcing_chain(*args, backend=backend)
            torch.autograd.grad((sum(o.float().sum() for o in out),), args)
            sync()
            print(f"ok zforcing_chain T{T} B{B} H{H} M{M} Z{Z} G{G} {label}", flush=True)
    return 0


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "compute-sanitizer").is_file():
            return str(Path(root) / "bin" / "compute-sanitizer")
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {','.join(TOOLS)}")
    ap.add_argument("--child", action="store_true", help="run the cases (what each sanitizer process runs)")
    ap.add_argument("--smoke", action="store_true", help="list the cases and commands, run nothing")
    ap.add_argument("--device", default="cuda", help="cuda (cpu only with --smoke)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("ZF_BUDGET_S", 80)),
                    help="seconds for all tools together (default $ZF_BUDGET_S or 80)")
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        ap.error(f"--tools: expected names from {','.join(TOOLS)}, got {args.tools!r}")
    if args.device != "cuda" and not args.smoke:
        ap.error(f"--device: compute-sanitizer needs the GPU ('cuda'), got {args.device!r}")
    if args.child:
        return run_child()
    found = sanitizer()
    commands = [[found or "compute-sanitizer", f"--tool={t}", "--error-exitcode=3", "--print-limit=20", sys.executable, __file__, "--child"]
                for t in tools]
    if args.smoke:
        print(f"{len(cases())} cases: " + "; ".join(cases()))
        for cmd in commands:
            print("would run:", " ".join(cmd))
        return 0
    if found is None:
        print("compute-sanitizer: not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin")
        return 2
    failed = 0
    start = time.monotonic()
    for tool, cmd in zip(tools, commands):
        left = args.budget_s - (time.monotonic() - start)
        if left < 10:
            print(f"== {tool}: skipped (budget used up)", flush=True)
            failed = 1
            continue
        print(f"== {tool}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, timeout=left).returncode
        except subprocess.TimeoutExpired:
            rc = "timed out"
        print(f"== {tool}: rc={rc} ({time.monotonic() - t0:.0f}s)", flush=True)
        failed |= rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
