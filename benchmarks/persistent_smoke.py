"""GPU smoke test of the persistent Triton LSTM, run first by device_check.sh.

Runs ``lstm`` with schedule="persistent" and "stepwise" at the two benchmark shapes, both
directions, forward + backward, and compares them (and a float64 reference). Exit status 0 if
they agree, 1 if not (device_check.sh then runs the benchmarks with ZF_LSTM_SCHEDULE=stepwise,
so one broken kernel does not cost the whole GPU session's numbers). Prints one line per case.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from zf_kernels.ops.lstm import naive  # noqa: E402
from zf_kernels.ops.lstm import triton as lt  # noqa: E402

CASES = [(40, 32, 512, 1024, True), (784, 32, 64, 512, False), (9, 100, 33, 1500, True)]
# --tiny: a CPU check of this script itself, under TRITON_INTERPRET=1 (tests/test_benchmarks_smoke.py)
TINY_CASES = [(3, 2, 5, 7, True), (4, 70, 3, 5, False)]


def run(schedule, args, grads, reverse):
    fn = naive.lstm_ref if schedule == "reference" else (lambda *a, **k: lt.lstm(*a, **k, schedule=schedule))
    out, (h, c) = fn(*args, reverse=reverse)
    gr = torch.autograd.grad([out, h, c], args, grads)
    return [out, h, c, *gr]


def main(argv=None) -> int:
    tiny = "--tiny" in (sys.argv[1:] if argv is None else argv)
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        print("persistent_smoke: no CUDA device")
        return 1
    ok = True
    for T, B, I, H, reverse in TINY_CASES if tiny else CASES:
        g = torch.Generator(device=device).manual_seed(0)
        shapes = [(T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,), (B, H), (B, H)]
        scales = [1.0, H ** -0.5, H ** -0.5, 0.1, 0.1, 1.0, 1.0]
        args = [(s * torch.randn(*sh, device=device, generator=g)).requires_grad_() for sh, s in zip(shapes, scales)]
        grads = [torch.randn(T, B, H, device=device, generator=g), torch.randn(B, H, device=device, generator=g),
                 torch.randn(B, H, device=device, generator=g)]
        t0 = time.perf_counter()
        try:
            per = run("persistent", args, grads, reverse)
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:   # noqa: BLE001 - a device-side assert lands here
            print(f"T{T} B{B} I{I} H{H}: persistent FAILED: {type(exc).__name__}: {exc}")
            return 1
        step = run("stepwise", args, grads, reverse)
        ref = run("reference", [a.detach().double().requires_grad_() for a in args], [x.double() for x in grads], reverse)
        worst = max(((a.double() - r).norm() / r.norm().clamp_min(1e-30)).item() for a, r in zip(per, ref))
        vs_step = max(((a - s).norm() / s.norm().clamp_min(1e-30)).item() for a, s in zip(per, step))
        good = worst < 1e-4 and all(torch.isfinite(a).all() for a in per)
        ok &= good
        print(f"T{T} B{B} I{I} H{H} reverse={reverse}: {lt.explain_schedule(args[0], args[2])}; "
              f"max rel err vs float64 {worst:.2e}, vs stepwise {vs_step:.2e}, "
              f"{time.perf_counter() - t0:.1f}s incl. compile: {'ok' if good else 'MISMATCH'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
