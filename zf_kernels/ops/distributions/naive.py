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


class _ScaledSquare(torch.autograd.Function):
    """``(d * exp(-lv / 2)) ** 2``, the Gaussians' scaled squared residual, without ever
    forming ``d ** 2`` or ``exp(-lv)``: those overflow (or underflow) in float32 for
    ``|d| > 1.8e19`` or ``|lv| > 88`` where the result itself is finite, and then give
    ``inf * 0 = NaN`` or a spurious inf. Autograd through the plain expression has the same
    problem (``grad_r * d`` is ``d ** 2 * exp(-lv / 2)``), so the backward is written out:
    ``dq/dd = 2 r s`` as ``2 ((g d) s) s`` and ``dq/dlv = -r ** 2`` as ``-(g r) r``, with
    ``r = d s``, ``s = exp(-lv / 2)``; a zero ``g r`` gives a zero gradient even where ``r``
    overflowed (the true product ``0 * r ** 2`` is 0). The backward is made of differentiable
    ops, so double backward works; vmap too (generated rule). Forward-mode AD: the subclass
    with a ``jvp`` (_ScaledSquareJvp), which torch.compile cannot trace (_stable picks)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(d, lv):
        return (d * torch.exp(-0.5 * lv)) ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, g):
        d, lv = ctx.saved_tensors
        s = torch.exp(-0.5 * lv)
        gr = g * d * s  # g * r; exactly 0 where g is (finite d and s)
        g_q = torch.where(gr == 0, gr, gr * (d * s))  # g * r ** 2
        return 2.0 * gr * s, -g_q


class _Exp(torch.autograd.Function):
    """``exp(a)`` whose gradient is 0 where the upstream gradient is 0 and ``a < inf``
    (float32 overflows exp(a) for a > 88.7, but ``0 * exp(a)`` is 0 there); vmap alike, and
    forward-mode AD in _ExpJvp."""
    generate_vmap_rule = True

    @staticmethod
    def forward(a):
        return torch.exp(a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return torch.where((g == 0) & (a < math.inf), torch.zeros_like(g), g * torch.exp(a))


class _ScaledSquareJvp(_ScaledSquare):
    @staticmethod
    def jvp(ctx, d_t, lv_t):
        d, lv = ctx.saved_tensors
        s = torch.exp(-0.5 * lv)
        r = d * s
        return 2.0 * (d_t * r) * s - (lv_t * r) * r


class _ExpJvp(_Exp):
    @staticmethod
    def jvp(ctx, a_t):
        (a,) = ctx.saved_tensors
        return torch.where((a_t == 0) & (a < math.inf), torch.zeros_like(a_t), a_t * torch.exp(a))


def _stable():
    """``(exp, scaled_square)``: with ``jvp`` (forward-mode AD) in eager mode; without it while
    dynamo traces, which refuses autograd.Functions that define one (a graph break each)."""
    if torch.compiler.is_compiling():
        return _Exp.apply, _ScaledSquare.apply
    return _ExpJvp.apply, _ScaledSquareJvp.apply


def gaussian_kl_ref(mu_q, logvar_q, mu_p, logvar_p, mask=None):
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), summed over the last dim.

    The quadratic term ``(mu_q - mu_p)^2 e^-logvar_p`` is ``((mu_q - mu_p) e^(-logvar_p/2))^2``
    (``_ScaledSquare``), finite wherever the result is."""
    mq, lq, mp, lp = _up(mu_q, logvar_q, mu_p, logvar_p)
    exp, scaled_square = _stable()
    kl = 0.5 * (lp - lq + exp(lq - lp) + scaled_square(mq - mp, lp) - 1.0)
    return _finish(kl.sum(-1), mask, mu_q.dtype)


def gaussian_nll_ref(x, mu, logvar, mask=None):
    """-log N(x; mu, e^logvar), summed over the last dim.

    The quadratic term ``(x - mu)^2 e^-logvar`` is ``((x - mu) e^(-logvar/2))^2``
    (``_ScaledSquare``), finite wherever the result is."""
    x_, m, lv = _up(x, mu, logvar)
    nll = 0.5 * (LOG_2PI + lv + _stable()[1](x_ - m, lv))
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
