"""Generate sequences from a trained model's prior: ``python -m zf_kernels.sample CHECKPOINT``.

    python -m zf_kernels.sample runs/seqmnist --num 64 --out samples/     # a digit grid
    python -m zf_kernels.sample runs/timit --num 4 --temperature 0.8       # WAV files

CHECKPOINT is a ``best.pt`` / ``last.pt`` the trainer wrote, or a run directory (its ``best.pt``,
else ``last.pt``). The files are those the trainer writes at the end of a run, for the data set's
kind (an image grid of the means, WAV files with the normalisation undone, token ids, or a line
plot), plus ``samples.npy``: the sampled sequences, batch-major ``(num, steps, ...)``. With the
defaults (``--num``: the run's ``--num-samples``, ``--steps``: its training sequence length,
``--seed``: the one its final samples used) the samples are the run's own. Prints the paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .trained import load_trained
from .training import report


def sample_checkpoint(path, *, out=None, num: int | None = None, steps: int | None = None,
                      temperature: float = 1.0, seed: int | None = None, data: str | None = None,
                      device: str = "auto", backend: str = "auto", models: dict | None = None) -> list[str]:
    """Sample from checkpoint ``path``'s prior and write the files into ``out`` (default: a
    ``samples`` folder beside the checkpoint); returns their paths."""
    for name, value in (("--num", num), ("--steps", steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    run = load_trained(path, data=data, device=device, backend=backend, models=models)
    num = num or run.cfg.num_samples or 16
    steps = steps or run.data.train.y.shape[1]
    out = Path(out) if out is not None else run.checkpoint.parent / "samples"
    out.mkdir(parents=True, exist_ok=True)
    # the trainer's final samples use seed + 2 (train.Run.write_samples)
    gen = torch.Generator(device=run.device).manual_seed(run.cfg.seed + 2 if seed is None else seed)
    with torch.no_grad(), run.autocast():
        samples, means = run.model.sample(steps, num, temperature=temperature, generator=gen)
    paths = report.write_samples(samples, means, run.data.meta, out)
    array = samples.transpose(0, 1).cpu()
    if array.dtype in (torch.bfloat16, torch.float16):   # numpy has no bfloat16
        array = array.float()
    np.save(out / "samples.npy", array.numpy())
    return paths + [str(out / "samples.npy")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zf_kernels.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run directory (its best.pt, "
                                      "else last.pt)")
    p.add_argument("--out", default=None, help="folder for the files (default: samples/ beside the checkpoint)")
    p.add_argument("--num", type=int, default=None, help="sequences to generate (default: the run's --num-samples, or 16)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per sequence (default: the run's training sequence length)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scales the prior's and the output's noise (default: 1)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the noise (default: the seed of the run's own final samples)")
    p.add_argument("--data", default=None, help="where the run's data set is now (default: the run's --data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--backend", default="auto", help="the fused ops' backend (default: auto)")
    return p


def main(argv=None, models: dict | None = None) -> int:
    from .ops import BackendUnavailableError
    from .training.checkpoint import CheckpointError
    args = build_parser().parse_args(argv)
    try:
        paths = sample_checkpoint(args.checkpoint, out=args.out, num=args.num, steps=args.steps,
                                  temperature=args.temperature, seed=args.seed, data=args.data,
                                  device=args.device, backend=args.backend, models=models)
    except (ValueError, CheckpointError, FileNotFoundError, BackendUnavailableError) as exc:
        print(f"zf_kernels.sample: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
