"""Generate sequences from a trained model's prior: ``python -m zf_kernels.sample CHECKPOINT``.

    python -m zf_kernels.sample runs/seqmnist --num 64 --out samples/     # a digit grid
    python -m zf_kernels.sample runs/timit --num 4 --temperature 0.8       # WAV files
    python -m zf_kernels.sample runs/seqmnist --prefix 392 --num 16        # complete test digits
    python -m zf_kernels.sample runs/imdb --prompt "the movie was" --num 5  # continue a text

CHECKPOINT is a ``best.pt`` / ``last.pt`` the trainer wrote, or a run directory (its ``best.pt``,
else ``last.pt``). The files are those the trainer writes at the end of a run, for the data set's
kind (an image grid of the means, WAV files with the normalisation undone, token ids, or a line
plot), plus ``samples.npy``: the sampled sequences, batch-major ``(num, steps, ...)``. With the
defaults (``--num``: the run's ``--num-samples``, ``--steps``: its training sequence length,
``--seed``: the one its final samples used) the samples are the run's own. Prints the paths.

``--prefix K`` completes sequences of the data instead (``--split``, default test: its first
``--num`` sequences at least K steps long; where the split holds pixel intensities, one Bernoulli
draw of them seeded by ``--seed``): the model reads their first K steps and generates the rest
(``model.sample(..., prefix=...)``); the files show the given K steps as they are (an image's
given rows are the data's pixels) and the model's completion after them. ``--prompt TEXT`` (a
text run) continues TEXT's words, the same prompt for every one of the ``--num`` sequences.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .data import SequenceSplit, iterate_batches
from .data.text import encode_words
from .evaluate import SPLITS
from .trained import load_trained
from .training import report


def sample_checkpoint(path, *, out=None, num: int | None = None, steps: int | None = None,
                      temperature: float = 1.0, seed: int | None = None, data: str | None = None,
                      device: str = "auto", backend: str = "auto", models: dict | None = None,
                      prefix: int | None = None, split: str = "test", prompt: str | None = None) -> list[str]:
    """Sample from checkpoint ``path``'s prior (with ``prefix``: complete the first ``num``
    sequences of ``split`` given their first ``prefix`` steps; with ``prompt``: continue that
    text) and write the files into ``out`` (default: a ``samples`` folder beside the checkpoint,
    ``completions`` with a prefix or a prompt); returns their paths."""
    if prefix is not None and prompt is not None:
        raise ValueError("--prefix and --prompt do not combine (the data's sequences, or your text)")
    for name, value in (("--num", num), ("--steps", steps), ("--prefix", prefix)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = load_trained(path, data=data, device=device, backend=backend, models=models)
    num = num or run.cfg.num_samples or 16
    steps = steps or run.data.train.y.shape[1]
    given = None if prefix is None else _prefix_of(getattr(run.data, split), split, prefix, num, steps,
                                                     run.cfg.seed if seed is None else seed)
    if prompt is not None:
        given = _prompt_of(prompt, run.data.meta, run.data.name, num, steps)
    out = Path(out) if out is not None else run.checkpoint.parent / ("samples" if given is None else "completions")
    report.output_dir(out)
    # the trainer's final samples use seed + 2 (train.Run.write_samples)
    gen = torch.Generator(device=run.device).manual_seed(run.cfg.seed + 2 if seed is None else seed)
    with torch.no_grad(), run.autocast():
        samples, means = run.model.sample(steps, num, temperature=temperature, generator=gen,
                                          prefix=None if given is None else given.to(run.device))
    if given is not None and means.shape == samples.shape:
        # the pictures show the given steps as they are (means: the model's predictions there)
        k = given.shape[0]
        means = torch.cat([samples[:k].to(means.dtype), means[k:]], 0)
    paths = report.write_samples(samples, means, run.data.meta, out)
    array = samples.transpose(0, 1).cpu()
    if array.dtype in (torch.bfloat16, torch.float16):   # numpy has no bfloat16
        array = array.float()
    np.save(out / "samples.npy", array.numpy())
    return paths + [str(out / "samples.npy")]


def _prefix_of(split: SequenceSplit, split_name: str, prefix: int, num: int, steps: int, seed: int):
    """The first ``prefix`` steps of the first ``num`` sequences of ``split`` at least that long,
    time-major; a split binarised per epoch (intensities) gives one draw, seeded by ``seed``."""
    if prefix > steps:
        raise ValueError(f"--prefix must be at most --steps ({steps}), got {prefix}")
    if prefix > split.y.shape[1]:
        raise ValueError(f"--prefix must be at most the {split_name} split's length ({split.y.shape[1]} steps), "
                         f"got {prefix}")
    long_enough = (torch.ones(len(split), dtype=torch.bool) if split.mask is None
                   else (split.mask[:, :prefix] != 0).all(1))
    rows = long_enough.nonzero().flatten()[:num]
    if len(rows) < num:
        raise ValueError(f"the {split_name} split has {len(rows)} sequence(s) of at least {prefix} steps; "
                         f"ask for --num <= {len(rows)} or a shorter --prefix")
    chosen = SequenceSplit(y=split.y[rows, :prefix], binarize=split.binarize)
    (batch,) = iterate_batches(chosen, num, shuffle=False, seed=seed, epoch=0)
    return batch.y


def _prompt_of(prompt: str, meta: dict, data_name: str, num: int, steps: int):
    """``prompt``'s token ids, time-major, for each of ``num`` sequences."""
    vocab = meta.get("vocab")
    if vocab is None:
        raise ValueError(f"--prompt needs a text run (a vocabulary); this run's data set is {data_name!r}: "
                         f"use --prefix to complete its sequences")
    ids = encode_words(prompt, vocab)
    if not ids:
        raise ValueError("--prompt holds no words")
    if len(ids) >= steps:
        raise ValueError(f"--prompt has {len(ids)} words: --steps ({steps}) must be more, to leave some to generate")
    return torch.tensor(ids, dtype=torch.long).unsqueeze(1).expand(len(ids), num).contiguous()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zf_kernels.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run directory (its best.pt, "
                                      "else last.pt)")
    p.add_argument("--out", default=None, help="folder for the files (default: samples/ beside the checkpoint; completions/ "
                                                   "with --prefix or --prompt)")
    p.add_argument("--num", type=int, default=None, help="sequences to generate (default: the run's --num-samples, or 16)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per sequence (default: the run's training sequence length)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scales the prior's noise, a Gaussian output's noise and a categorical output's "
                        "logits (divided by it); binary pixels are drawn as they are (default: 1)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the noise (default: the seed of the run's own final samples)")
    p.add_argument("--prefix", type=int, default=None,
                   help="complete data sequences given their first PREFIX steps instead of sampling from "
                        "scratch (default: from scratch)")
    p.add_argument("--prompt", default=None,
                   help="with a text run: continue this text (its words, unknown ones as <unk>) instead of "
                        "sampling from scratch")
    p.add_argument("--split", default="test", help=f"with --prefix: the split whose sequences are completed "
                                                   f"({', '.join(SPLITS)}; default: test)")
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
                                  device=args.device, backend=args.backend, models=models,
                                  prefix=args.prefix, split=args.split, prompt=args.prompt)
    except (ValueError, CheckpointError, FileNotFoundError, BackendUnavailableError) as exc:
        print(f"zf_kernels.sample: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
