"""Evaluation of a trained model on a data split: the -ELBO and the importance-weighted bound."""
from __future__ import annotations

import math

import torch

from .data import iterate_batches


def _to(batch, device, dtype):
    def mv(x):
        if x is None:
            return None
        return x.to(device=device, dtype=dtype if x.dtype.is_floating_point else x.dtype)
    return mv(batch.y), mv(batch.u), mv(batch.mask)


@torch.no_grad()
def evaluate(model, split, *, batch_size: int = 256, iwae_k: int | None = None, seed: int = 0,
             max_sequences: int | None = None) -> dict:
    """Mean per-sequence ``-ELBO``, ``nll``, ``kl`` (nats; and ``iwae`` with ``iwae_k`` samples),
    plus ``neg_elbo_per_step`` (nats per valid step). Deterministic given ``seed``."""
    model_was_training = model.training
    model.eval()
    p = next(model.parameters())
    gen = torch.Generator(device=p.device).manual_seed(seed)
    sums = {"neg_elbo": 0.0, "nll": 0.0, "kl": 0.0, "iwae": 0.0}
    n_seq, n_steps = 0, 0
    try:
        for batch in iterate_batches(split, batch_size, shuffle=False, seed=seed, epoch=0):
            y, u, mask = _to(batch, p.device, p.dtype)
            if max_sequences is not None and n_seq >= max_sequences:
                break
            terms = model(y, u, mask, generator=gen)
            sums["neg_elbo"] += float(terms.neg_elbo.double().sum())
            sums["nll"] += float(terms.nll.double().sum())
            sums["kl"] += float(terms.kl.double().sum())
            if iwae_k:
                # samples at once: keep k * B * T * rnn_dim (one activation tensor) <= ~5e7
                width = y.shape[0] * y.shape[1] * getattr(model, "rnn_dim", 256)
                chunk = max(1, min(iwae_k, int(5e7 // width)))
                sums["iwae"] += float(model.iwae_bound(y, u, mask, k=iwae_k, generator=gen,
                                                       chunk=chunk).double().sum())
            n_seq += y.shape[1]
            n_steps += int(mask.sum()) if mask is not None else y.shape[0] * y.shape[1]
    finally:
        model.train(model_was_training)
    if n_seq == 0:
        raise ValueError("cannot evaluate on an empty split")
    out = {k: v / n_seq for k, v in sums.items() if k != "iwae" or iwae_k}
    out["neg_elbo_per_step"] = sums["neg_elbo"] / n_steps
    out["sequences"] = n_seq
    if not all(math.isfinite(v) for v in out.values()):
        out["non_finite"] = True
    return out
