"""What VRNN, SRNN and STORN share: the embedding of the data, the output head, the
padding-aware backward LSTM, and the ZForcing interface the trainer relies on
(``forward -> LossTerms``, ``neg_elbo``, ``log_weights``, ``iwae_bound``, ``config``); batch
checks, the input shift and the padded flip come from ``zf_kernels.sequences``.

A subclass sets ``name`` and implements ``terms(y, u, mask, eps) -> (nll, kl, latents)``
(``latents``: per-step ``z, mu_q, logvar_q, mu_p, logvar_p``) and ``sample``.
Time-major throughout: ``y (T, B, D)``, or ``(T, B)`` token ids for categorical data.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from zf_kernels import ops
from zf_kernels.bounds import BoundsMixin
from zf_kernels.model import MLP, OUTPUT_TYPES, LossTerms, mlp_act
from zf_kernels.ops.recurrence.naive import PARAM_CLAMP
from zf_kernels.sequences import (check_batch, check_sample_args, gather_time, has_padding, padded_flip_index,
                                  shift_inputs)

__all__ = ["MLP", "LossTerms", "SequenceVAE", "mlp_act", "reverse_lstm", "split_gaussian"]


def split_gaussian(params, backend: str = "auto"):
    """``(mu, logvar)`` from the last dim's two halves, clamped to [-8, 8] as in ZForcing
    (``ops.leaky_clamp`` with slope 1)."""
    return ops.leaky_clamp(params, 1.0, PARAM_CLAMP, backend=backend).chunk(2, dim=-1)


def reverse_lstm(x, lstm, mask=None, backend: str = "auto"):
    """``out[t] = LSTM(x[t], out[t+1])``: ``out[t]`` summarises ``x[t:]`` of its own sequence;
    ``lstm`` holds nn.LSTM's parameters (``zf_kernels.LSTMWeights`` or an ``nn.LSTM``).

    With a right-padded ``mask (T, B)`` each sequence is read from its own last valid step, as
    ``ZForcing.backward_states`` does: ``padded_flip_index`` reverses every column's valid
    prefix in place, a forward ``ops.lstm`` runs, and the same (self-inverse) index puts the
    result back, so padding never leaks into the states of valid steps.
    """
    args = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    if not has_padding(mask):
        return ops.lstm(x, *args, reverse=True, backend=backend)[0]
    flip = padded_flip_index(mask)
    out, _ = ops.lstm(gather_time(x, flip), *args, backend=backend)
    return gather_time(out, flip)


class SequenceVAE(BoundsMixin, nn.Module):
    """Base class: data embedding ``emb`` (``phi_x``), output head, checks and the bounds.

    Args:
        input_dim: features per step D (the vocabulary size for ``output_type="categorical"``).
        output_type: "gaussian", "bernoulli" or "categorical".
        emb_dim, rnn_dim, z_dim, mlp_dim: sizes E, H, Z, M.
        backend: backend of every fused op ("auto", "torch", "triton", "cuda").
    """
    name = "sequence_vae"
    has_aux_terms = False     # no Z-forcing aux / reverse-prediction terms: the trainer keeps aux_w at 0

    def __init__(self, input_dim: int, output_type: str = "gaussian", emb_dim: int = 64,
                 rnn_dim: int = 128, z_dim: int = 16, mlp_dim: int = 64, backend: str = "auto"):
        super().__init__()
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        for arg, v in (("input_dim", input_dim), ("emb_dim", emb_dim), ("rnn_dim", rnn_dim),
                       ("z_dim", z_dim), ("mlp_dim", mlp_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.config = dict(model=self.name, input_dim=input_dim, output_type=output_type,
                           emb_dim=emb_dim, rnn_dim=rnn_dim, z_dim=z_dim, mlp_dim=mlp_dim)
        self.input_dim, self.output_type, self.backend = input_dim, output_type, backend
        self.emb_dim, self.rnn_dim, self.z_dim, self.mlp_dim = emb_dim, rnn_dim, z_dim, mlp_dim
        if output_type == "categorical":
            self.emb = nn.Embedding(input_dim + 1, emb_dim)   # + the start token read at t = 1
        else:
            self.emb = nn.Linear(input_dim, emb_dim)
        self.out_dim = 2 * input_dim if output_type == "gaussian" else input_dim

    # ------------------------------------------------------------- data side
    @property
    def _like(self):
        """A parameter: the model's dtype and device."""
        return next(self.parameters())

    def embed(self, x):
        return self.emb(x.long()) if self.output_type == "categorical" else self.emb(x)

    def shift_inputs(self, y):
        """``u_t = y_{t-1}``, with a zero frame (or the start token) at t = 1."""
        return shift_inputs(y, self.input_dim if self.output_type == "categorical" else None)

    def start_input(self, batch_size: int):
        p = self._like
        if self.output_type == "categorical":
            return torch.full((batch_size,), self.input_dim, device=p.device, dtype=torch.long)
        return torch.zeros(batch_size, self.input_dim, device=p.device, dtype=p.dtype)

    def gaussian_after(self, mlp, hidden_pre):
        """``(mu, logvar)`` of an MLP given its first layer's output (hoisted by the caller):
        the activation, the second layer and the clamp, on this model's backend."""
        return split_gaussian(mlp.fc2(mlp_act(hidden_pre, self._be("leaky_clamp"))), self._be("leaky_clamp"))

    def head_nll(self, y, params, mask=None):
        """``-log p(y_t | params_t)`` per step ``(T, B)``, times ``mask``."""
        if self.output_type == "gaussian":
            mu, logvar = split_gaussian(params, self._be("leaky_clamp"))
            return ops.gaussian_nll(y, mu, logvar, mask, backend=self._be("gaussian_nll"))
        if self.output_type == "bernoulli":
            return ops.bernoulli_nll(y, params, mask, backend=self._be("bernoulli_nll"))
        return ops.categorical_nll(y.long(), params, mask, backend=self._be("categorical_nll"))

    def head_sample(self, params, temperature: float = 1.0, generator=None):
        """One draw from the output distribution -> ``(sample, mean)``."""
        if self.output_type == "gaussian":
            mu, logvar = split_gaussian(params, self._be("leaky_clamp"))
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return ops.reparameterize(mu, logvar, noise * temperature, backend=self._be("reparameterize")), mu
        if self.output_type == "bernoulli":
            mean = torch.sigmoid(params)
            return torch.bernoulli(mean, generator=generator), mean
        mean = torch.softmax(params / max(temperature, 1e-6), -1)
        return torch.multinomial(mean, 1, generator=generator).squeeze(-1), mean

    def check_sample_args(self, steps: int, batch_size: int, prefix, temperature: float = 1.0):
        """A ``sample`` call's arguments (:func:`zf_kernels.sequences.check_sample_args`): its
        ``prefix`` on this model's device and dtype; ``z`` comes from the prior throughout."""
        return check_sample_args(steps, batch_size, prefix, self.input_dim, self.output_type, self._like,
                                 temperature)

    def prior_noise(self, batch_size: int, temperature: float, generator):
        p = self._like
        return temperature * torch.randn(batch_size, self.z_dim, generator=generator,
                                         device=p.device, dtype=p.dtype)

    # ---------------------------------------------------------- the interface
    def terms(self, y, u, mask, eps):
        """-> ``(nll (B,), kl (B,), latents)``; implemented by each model."""
        raise NotImplementedError

    def forward(self, y, u=None, mask=None, eps=None, generator: torch.Generator | None = None,
                return_latents: bool = False):
        """Per-sequence loss terms for targets ``y`` (inputs ``u`` default to ``y`` shifted).

        ``eps (T, B, z_dim)`` is the posterior noise (drawn from ``generator`` when omitted).
        Returns ``LossTerms`` (``aux`` and ``bwd_nll`` are zeros: these models have no such
        costs); with ``return_latents`` also the per-step ``z, mu_q, logvar_q, mu_p, logvar_p``.
        """
        check_batch(y, u, mask, self.input_dim, self.output_type, like=self._like)
        T, B = y.shape[:2]
        p = self._like
        if u is None:
            u = self.shift_inputs(y)
        if mask is not None:
            mask = mask.to(p.dtype)
        if eps is None:
            eps = torch.randn(T, B, self.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        elif tuple(eps.shape) != (T, B, self.z_dim):
            raise ValueError(f"eps must have shape (T, B, z_dim) = {(T, B, self.z_dim)}, got {tuple(eps.shape)}")
        nll, kl, latents = self.terms(y, u, mask, eps)
        zero = torch.zeros_like(nll)
        terms = LossTerms(nll=nll, kl=kl, aux=zero, bwd_nll=zero)
        return (terms, latents) if return_latents else terms

