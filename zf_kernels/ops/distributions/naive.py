"""Plain-PyTorch references for the sampling and likelihood ops.

Half-precision inputs are computed in float32 and cast back at the end; results are
per position (the last dim summed), multiplied by ``mask`` when one is given.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def _up(*ts):
    """Upcast half/bfloat16 to float32 (float32/float64 stay as they are)."""
    return [t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t for t in ts]


def _finish(per_pos: torch.Tensor, mask, out_dtype) -> torch.Tensor:
    if mask is not None:
        per_pos = per_pos * mask.to(per_pos.dtype)
    return per_pos.to(out_dtype)


def reparameterize_ref(mu, logvar, eps):
    m, lv, e = _up(mu, logvar, eps)
    return (m + torch.exp(0.5 * lv) * e).to(mu.dtype)


def gaussian_kl_ref(mu_q, logvar_q, mu_p, logvar_p, mask=None):
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), summed over the last dim."""
    mq, lq, mp, lp = _up(mu_q, logvar_q, mu_p, logvar_p)
    kl = 0.5 * (lp - lq + torch.exp(lq - lp) + (mq - mp) ** 2 * torch.exp(-lp) - 1.0)
    return _finish(kl.sum(-1), mask, mu_q.dtype)


def gaussian_nll_ref(x, mu, logvar, mask=None):
    """-log N(x; mu, e^logvar), summed over the last dim."""
    x_, m, lv = _up(x, mu, logvar)
    nll = 0.5 * (LOG_2PI + lv + (x_ - m) ** 2 * torch.exp(-lv))
    return _finish(nll.sum(-1), mask, mu.dtype)


def bernoulli_nll_ref(x, logits, mask=None):
    """-log Bernoulli(x; sigmoid(logits)), summed over the last dim; stable for any logits."""
    x_, lg = _up(x, logits)
    nll = F.binary_cross_entropy_with_logits(lg, x_.to(lg.dtype), reduction="none")
    return _finish(nll.sum(-1), mask, logits.dtype)


def categorical_nll_ref(targets, logits, mask=None):
    """-log softmax(logits)[targets]; ``targets`` has the shape of ``logits`` without its last dim."""
    (lg,) = _up(logits)
    logp = torch.log_softmax(lg, dim=-1)
    nll = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return _finish(nll, mask, logits.dtype)
