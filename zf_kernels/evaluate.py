"""Evaluation of a trained model on a data split: the -ELBO and the importance-weighted bound.

From the command line, a checkpoint the trainer wrote (``best.pt`` / ``last.pt``, or its run
directory) on a split of the data it was trained on::

    python -m zf_kernels.evaluate runs/seqmnist --split test --iwae-k 1000

The model, its data set and its precision come from the checkpoint's configuration; the flags
override what may change at evaluation time. With the defaults (the run's seed, batch size and
k) the numbers are those of the run's ``results.json``. Prints one JSON object (``--json PATH``
also writes it). ``--window 40`` scores in the authors' TIMIT protocol (40-step windows, each
from zero states, summed per sequence; the ``timit`` preset's default, ``--eval-window``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .data import iterate_batches
from .trained import load_trained


def _to(batch, device, dtype):
    def mv(x):
        if x is None:
            return None
        return x.to(device=device, dtype=dtype if x.dtype.is_floating_point else x.dtype)
    return mv(batch.y), mv(batch.u), mv(batch.mask)


def _windows_as_batch(y, u, mask, window):
    """A time-major batch's ``window``-step slices side by side, as one batch of independent
    sequences ``(window, n_windows * B, ...)`` (the last slice padded and masked), slices past
    their sequence's end left out: one model call scores them all, each from zero states. The
    batch as it is when ``window`` is None or covers it."""
    T, B = y.shape[:2]
    if window is None or window >= T:
        return y, u, mask
    n = -(-T // window)
    pad = n * window - T
    if mask is None and pad:
        mask = y.new_ones(T, B, dtype=torch.float32)   # the model casts it to its dtype

    def side_by_side(x):   # (T, B, ...) -> (window, n * B, ...): column w * B + b is slice w of sequence b
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x
        return x.reshape(n, window, *x.shape[1:]).transpose(0, 1).reshape(window, n * B, *x.shape[2:])
    y, u = side_by_side(y), side_by_side(u)
    if mask is None:
        return y, u, None
    mask = side_by_side(mask)
    keep = mask.any(0)            # slices with a valid step
    if not bool(keep.all()):
        y, u, mask = y[:, keep], u[:, keep], mask[:, keep]
    return y, u, mask


def check_window(window, name: str = "window"):
    """``window`` as an int >= 1, or None; ValueError naming ``name`` otherwise."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{name} must be an integer >= 1 (steps per scored window) or None, got {window!r}")
    return window


@torch.no_grad()
def evaluate(model, split, *, batch_size: int = 256, iwae_k: int | None = None, seed: int = 0,
             max_sequences: int | None = None, window: int | None = None) -> dict:
    """Mean per-sequence ``-ELBO``, ``nll``, ``kl`` (nats; and ``iwae`` with ``iwae_k`` samples),
    plus ``neg_elbo_per_step`` (nats per valid step; ``iwae_per_step`` too). For a categorical
    model (tokens) also ``perplexity``: exp of the bound per token, the IWAE one where computed
    (the tighter: an upper bound on the true perplexity), else the -ELBO's. Deterministic given
    ``seed``.

    ``window``: score each sequence in slices of ``window`` steps, each from zero states (the
    backward network sees only its slice's future; a batch's slices go through the model side
    by side, as one batch), and sum the slices: the protocol of the
    authors' ``eval_timit.py`` (40-step windows over whole test utterances), whose numbers
    are a bound of that windowed model, not of the whole-sequence one. A slice's first input is
    the frame before it (the split's ``u``, else the model's ``shift_inputs`` of the whole
    sequence). Where the split knows the recording each sequence was cut from
    (``split.recording``, WAV folders) the result also holds ``recordings`` and the bounds per
    recording (``neg_elbo_per_recording``, ``iwae_per_recording``): the unit of the published
    TIMIT result (a ``max_sequences`` limit may cut the last recording short)."""
    window = check_window(window)
    if max_sequences is not None and (isinstance(max_sequences, bool) or not isinstance(max_sequences, int)
                                      or max_sequences < 1):
        raise ValueError(f"max_sequences must be an integer >= 1 or None, got {max_sequences!r}")
    model_was_training = model.training
    model.eval()
    p = next(model.parameters())
    gen = torch.Generator(device=p.device).manual_seed(seed)
    sums = {"neg_elbo": 0.0, "nll": 0.0, "kl": 0.0, "iwae": 0.0}
    n_seq, n_steps = 0, 0
    recordings = set()
    try:
        for batch in iterate_batches(split, batch_size, shuffle=False, seed=seed, epoch=0):
            y, u, mask = _to(batch, p.device, p.dtype)
            index = batch.index
            if max_sequences is not None:
                if n_seq >= max_sequences:
                    break
                keep = max_sequences - n_seq   # the last batch cut to the limit
                y, index = y[:, :keep], index[:keep]
                u = None if u is None else u[:, :keep]
                mask = None if mask is None else mask[:, :keep]
            if window is not None and u is None:
                u = model.shift_inputs(y)   # of the whole sequence: a slice starts from the frame before it
            # per-sequence sums over the windows: summed over the sequences anyway
            y_w, u_w, mask_w = _windows_as_batch(y, u, mask, window)
            terms = model(y_w, u_w, mask_w, generator=gen)
            sums["neg_elbo"] += float(terms.neg_elbo.double().sum())
            sums["nll"] += float(terms.nll.double().sum())
            sums["kl"] += float(terms.kl.double().sum())
            if iwae_k:
                # samples at once: keep k * B * T * rnn_dim (one activation tensor) <= ~5e7
                width = y_w.shape[0] * y_w.shape[1] * getattr(model, "rnn_dim", 256)
                chunk = max(1, min(iwae_k, int(5e7 // width)))
                sums["iwae"] += float(model.iwae_bound(y_w, u_w, mask_w, k=iwae_k, generator=gen,
                                                       chunk=chunk).double().sum())
            n_seq += y.shape[1]
            # counted, not summed: the mask is in the model's dtype, and a bfloat16 sum of a
            # batch's 6,130 steps came back as 6,144
            n_steps += int((mask != 0).sum()) if mask is not None else y.shape[0] * y.shape[1]
            if split.recording is not None:
                recordings.update(split.recording[index].tolist())
    finally:
        model.train(model_was_training)
    if n_seq == 0:
        raise ValueError("cannot evaluate on an empty split")
    out = {k: v / n_seq for k, v in sums.items() if k != "iwae" or iwae_k}
    out["neg_elbo_per_step"] = sums["neg_elbo"] / n_steps
    if iwae_k:
        out["iwae_per_step"] = sums["iwae"] / n_steps
    if recordings:
        out["recordings"] = len(recordings)
        for k in ("neg_elbo", "iwae") if iwae_k else ("neg_elbo",):
            out[f"{k}_per_recording"] = sums[k] / len(recordings)
    if getattr(model, "output_type", None) == "categorical":
        out["perplexity"] = math.exp(min(out.get("iwae_per_step", out["neg_elbo_per_step"]), 700.0))
    out["sequences"] = n_seq
    if not all(math.isfinite(v) for v in out.values()):
        out["non_finite"] = True
    return out


# ------------------------------------------------------------------------ CLI
SPLITS = ("test", "valid", "train")


def evaluate_checkpoint(path, *, split: str = "test", iwae_k: int | None = None, batch_size: int | None = None,
                        limit: int | None = None, seed: int | None = None, data: str | None = None,
                        device: str = "auto", backend: str = "auto", models: dict | None = None,
                        window: int | None = None) -> dict:
    """Load a trainer checkpoint (:func:`zf_kernels.trained.load_trained`) and evaluate it on
    ``split`` of its data set (None: the run's setting, as its results.json (IWAE on test only);
    ``iwae_k=0``: no IWAE; ``window=0``: whole sequences)."""
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    for name, value in (("--iwae-k", iwae_k), ("--batch-size", batch_size), ("--limit", limit),
                        ("--window", window)):
        zero_ok = name in ("--iwae-k", "--window")
        if value is not None and (value < 0 or (value == 0 and not zero_ok)):
            raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value}")
    limits = {} if limit is None else {"train_limit" if split == "train" else "eval_limit": limit}
    run = load_trained(path, data=data, device=device, backend=backend, models=models, **limits)
    # by default as the run's results.json: IWAE on test only (on valid, its draws would also move
    # the -ELBO's noise of the batches after the first away from the run's numbers)
    k = (run.cfg.iwae_k if split == "test" else 0) if iwae_k is None else iwae_k
    window = run.cfg.scoring_window if window is None else (window or None)
    with run.autocast():
        result = evaluate(run.model, getattr(run.data, split), batch_size=batch_size or run.cfg.eval_batch_size,
                          iwae_k=k or None, seed=run.cfg.seed if seed is None else seed, window=window)
    return {"checkpoint": str(run.checkpoint), "step": run.step, "split": split, "data": run.data.name,
            "iwae_k": k, "window": window, "device": str(run.device), "dtype": run.cfg.dtype, **result}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zf_kernels.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run directory (its best.pt, "
                                      "else last.pt)")
    p.add_argument("--split", default="test", choices=SPLITS, help="the split to evaluate (default: test)")
    p.add_argument("--iwae-k", type=int, default=None,
                   help="samples of the importance-weighted bound; 0: none (default: as the run's results.json: "
                        "the run's --iwae-k on test, none on valid and train)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per batch (default: the run's --eval-batch-size)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N sequences of the split (default: the run's --eval-limit, or "
                        "--train-limit for train)")
    p.add_argument("--seed", type=int, default=None, help="seeds the posterior noise (default: the run's)")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="score each sequence in N-step windows, each from zero states, summed per sequence "
                        "(the authors' TIMIT protocol: 40); 0: whole sequences (default: the run's --eval-window)")
    p.add_argument("--data", default=None, help="where the run's data set is now (default: the run's --data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--backend", default="auto", help="the fused ops' backend (default: auto)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results to this file")
    return p


def main(argv=None, models: dict | None = None) -> int:
    from .ops import BackendUnavailableError
    from .training.checkpoint import CheckpointError
    args = build_parser().parse_args(argv)
    try:
        results = evaluate_checkpoint(args.checkpoint, split=args.split, iwae_k=args.iwae_k,
                                      batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                                      data=args.data, device=args.device, backend=args.backend, models=models,
                                      window=args.window)
    except (ValueError, CheckpointError, FileNotFoundError, BackendUnavailableError) as exc:
        print(f"zf_kernels.evaluate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
