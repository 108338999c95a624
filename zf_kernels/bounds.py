"""Evaluation bounds shared by every sequence VAE of the package (ZForcing and the models in
python/): the -ELBO and the importance-weighted bound (IWAE); and the per-op backend rule
(``_be``) those models share."""
from __future__ import annotations

import math

import torch

from . import ops


class BoundsMixin:
    """For an ``nn.Module`` whose ``forward(y, u, mask, generator=, return_latents=True)``
    returns ``(LossTerms, latents)`` with per-step ``z, mu_q, logvar_q, mu_p, logvar_p`` and
    which has a ``backend`` attribute."""

    def _be(self, op: str) -> str:
        """The backend this model passes to ``op`` (``ops.op_backend``: with "cuda", "cuda"
        only for the ops that have CUDA kernels, "auto" for the rest)."""
        return ops.op_backend(op, self.backend)

    @torch.no_grad()
    def neg_elbo(self, y, u=None, mask=None, generator=None):
        """-ELBO = nll + KL per sequence (nats), one posterior sample, analytic KL."""
        return self(y, u, mask, generator=generator).neg_elbo

    @torch.no_grad()
    def log_weights(self, y, u=None, mask=None, k: int = 1, generator=None):
        """``log p(y, z) - log q(z | y)`` for ``k`` posterior samples -> ``(k, B)``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        B = y.shape[1]
        rep = lambda x: None if x is None else x.repeat_interleave(k, dim=1)  # noqa: E731
        terms, lat = self(rep(y), rep(u), rep(mask), generator=generator, return_latents=True)
        # at least float32: in a 16-bit model each log-density, summed over T x z_dim terms
        # (thousands of nats), rounded to +-16 nats in bfloat16, independently per sample, where
        # the weights differ by a few: logsumexp picked the upward errors and the "bound" fell
        # below -log p(y), the further the larger k (28 nats at k = 1024 on a test model)
        wide = torch.promote_types(lat["z"].dtype, torch.float32)
        z, mu_p, lv_p, mu_q, lv_q = (lat[n].to(wide) for n in ("z", "mu_p", "logvar_p", "mu_q", "logvar_q"))
        m = None if mask is None else rep(mask).to(wide)
        be = self._be("gaussian_nll")
        log_pz = -ops.gaussian_nll(z, mu_p, lv_p, m, backend=be).sum(0)
        log_qz = -ops.gaussian_nll(z, mu_q, lv_q, m, backend=be).sum(0)
        return (-terms.nll.to(wide) + log_pz - log_qz).view(B, k).t()

    @torch.no_grad()
    def iwae_bound(self, y, u=None, mask=None, k: int = 16, generator=None, chunk: int | None = None):
        """Importance-weighted bound with ``k`` samples, as a negative log-likelihood per
        sequence (nats): ``-log mean_k w_k`` >= -log p(y); never above the -ELBO in expectation.
        ``chunk`` bounds how many samples run at once (memory)."""
        for name, v in (("k", k), ("chunk", chunk)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        chunk = chunk or k
        logw = torch.cat([self.log_weights(y, u, mask, min(chunk, k - i), generator)
                          for i in range(0, k, chunk)], 0)
        return -(torch.logsumexp(logw.double(), 0) - math.log(k)).to(logw.dtype)
