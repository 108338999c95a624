"""Sampling and likelihood ops: reparameterize, gaussian_kl, gaussian_nll, bernoulli_nll,
categorical_nll. All accept any leading dims and an optional ``mask`` that broadcasts to
them; results sum over the last dim (categorical: over the class dim)."""
from __future__ import annotations

import torch

from .. import _autocast, _dispatch
from .._checks import check_mask, check_same, check_shape, check_tensor, values_readable
from .naive import (bernoulli_nll_ref, categorical_nll_ref, gaussian_kl_ref, gaussian_nll_ref,
                    reparameterize_ref)

__all__ = ["reparameterize", "gaussian_kl", "gaussian_nll", "bernoulli_nll", "categorical_nll"]

_OPS = {
    "reparameterize": "reparameterize_ref",
    "gaussian_kl": "gaussian_kl_ref",
    "gaussian_nll": "gaussian_nll_ref",
    "bernoulli_nll": "bernoulli_nll_ref",
    "categorical_nll": "categorical_nll_ref",
}
for _op, _ref in _OPS.items():
    _dispatch.register(_op, "torch", f"{__name__}.naive:{_ref}", compile_traced=True)
    # traced_form: the same kernels as torch.library custom ops, traced under torch.compile
    _dispatch.register(_op, "triton", f"{__name__}.triton:{_op}",
                       traced_form=f"{__name__}.triton_op:{_op}")


def _same_shape(names, tensors):
    for name, t in zip(names, tensors):
        check_tensor(name, t, min_ndim=1)
    for name, t in zip(names[1:], tensors[1:]):
        check_shape(name, t, tensors[0].shape)
    check_same(list(zip(names, tensors)))


@_autocast.float32
def reparameterize(mu, logvar, eps, backend: str = "auto"):
    """``mu + exp(0.5 * logvar) * eps``; all three of one shape (eps drawn by the caller).

    >>> z = reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    """
    _same_shape(("mu", "logvar", "eps"), (mu, logvar, eps))
    return _dispatch.resolve("reparameterize", backend, mu, logvar, eps)(mu, logvar, eps)


@_autocast.float32
def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, mask=None, backend: str = "auto"):
    """KL(q || p) between diagonal Gaussians, summed over the last dim -> shape ``mu_q.shape[:-1]``."""
    _same_shape(("mu_q", "logvar_q", "mu_p", "logvar_p"), (mu_q, logvar_q, mu_p, logvar_p))
    mask = check_mask(mask, mu_q.shape[:-1], mu_q)
    fn = _dispatch.resolve("gaussian_kl", backend, mu_q, logvar_q, mu_p, logvar_p)
    return fn(mu_q, logvar_q, mu_p, logvar_p, mask)


@_autocast.float32
def gaussian_nll(x, mu, logvar, mask=None, backend: str = "auto"):
    """-log N(x; mu, exp(logvar)), summed over the last dim -> shape ``x.shape[:-1]``."""
    _same_shape(("x", "mu", "logvar"), (x, mu, logvar))
    mask = check_mask(mask, x.shape[:-1], x)
    return _dispatch.resolve("gaussian_nll", backend, x, mu, logvar)(x, mu, logvar, mask)


@_autocast.float32
def bernoulli_nll(x, logits, mask=None, backend: str = "auto"):
    """-log Bernoulli(x; sigmoid(logits)) summed over the last dim; ``x`` in [0, 1]."""
    _same_shape(("x", "logits"), (x, logits))
    if values_readable(x) and x.numel():   # outside [0, 1] the "likelihood" can be > 1: a negative NLL
        lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()   # one host sync, not two
        if not (0 <= lo and hi <= 1):
            raise ValueError(f"x must lie in [0, 1] (Bernoulli data), got values in [{lo:g}, {hi:g}]")
    mask = check_mask(mask, x.shape[:-1], x)
    return _dispatch.resolve("bernoulli_nll", backend, x, logits)(x, logits, mask)


@_autocast.float32
def categorical_nll(targets, logits, mask=None, backend: str = "auto"):
    """-log softmax(logits)[targets] -> shape ``targets.shape`` (= ``logits.shape[:-1]``)."""
    check_tensor("logits", logits, min_ndim=1)
    check_tensor("targets", targets, floating=False)
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"targets must be an integer tensor of class indices, got {targets.dtype}")
    check_shape("targets", targets, logits.shape[:-1])
    check_same([("logits", logits), ("targets", targets)], dtype=False)
    n_classes = logits.shape[-1]
    if values_readable(targets) and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise ValueError(f"targets must lie in [0, {n_classes - 1}] (logits has {n_classes} classes), "
                         f"got values in [{int(targets.min())}, {int(targets.max())}]")
    mask = check_mask(mask, logits.shape[:-1], logits)
    return _dispatch.resolve("categorical_nll", backend, logits, targets)(targets, logits, mask)
