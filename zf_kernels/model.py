"""The Z-Forcing model (Goyal et al., NIPS 2017): DESIGN section 1.

Time-major throughout: ``y (T, B, D)`` (or ``(T, B)`` token ids). The forward network reads
``u_t = y_{t-1}`` (``u_1`` = zeros, or a start token) and predicts ``y_t``.

Only the recurrent chain (posterior on h, sample, g(z), LSTM cell) runs step by step, through
``ops.zforcing_chain``; the embedding, the whole backward LSTM, the input projections, the
prior, the auxiliary MLP, the output heads and every loss reduction are batched over time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .ops import _autocast
from .bounds import BoundsMixin
from .sequences import (check_batch, check_sample_args, forced_input, gather_time, has_padding, padded_flip_index,
                        shift_inputs)
from .ops.activations.naive import clamp_ref
from .ops.recurrence.naive import ACT_CLAMP, COND_CLAMP, LEAKY_SLOPE, LN_EPS, PARAM_CLAMP, ChainOutput

OUTPUT_TYPES = ("gaussian", "bernoulli", "categorical")
# the auxiliary cost: "gaussian" -log N(sg(b_t); tanh(mu_a), exp(logvar_a)) (the paper's, and the
# default), "l2" sum_d (sg(b_t) - tanh(mu_a))^2 (the authors' code's use_l2 variant: bounded below
# by 0, where the Gaussian's sum over rnn_dim elements can reach -3.1 nats each)
AUX_COSTS = ("gaussian", "l2")
# cond_ln: the gain and bias that g(z) gives the recurrent projection are clamped to
# [-COND_CLAMP, COND_CLAMP] (defined beside the chain's reference, which applies it too).


def mlp_act(x, backend="auto"):
    """LeakyReLU(1/3) clamped to [-3, 3], the MLPs' activation (``ops.leaky_clamp``)."""
    return ops.leaky_clamp(x, LEAKY_SLOPE, ACT_CLAMP, backend=backend)


class MLP(nn.Module):
    """Linear -> LeakyReLU(1/3) clamped to [-3, 3] -> Linear, as in the authors' code."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x, backend: str = "auto"):
        return self.fc2(mlp_act(self.fc1(x), backend))


class LSTMWeights(nn.Module):
    """The parameters of a single-layer ``nn.LSTM(input_size, hidden_size)`` -- the same names
    (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, so checkpoints and
    state dicts are interchangeable), shapes and initialisation (uniform in +-1/sqrt(hidden),
    drawn in nn.LSTM's order) -- without the module: ``ops.lstm`` runs them. Dynamo refuses to
    trace an nn.LSTM (even reading its weights breaks the graph); this module it traces."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"


@dataclass
class LossTerms:
    """Per-sequence terms, each ``(B,)``, summed over the (masked) time steps."""
    nll: torch.Tensor       # -sum_t log p(y_t | h_t)
    kl: torch.Tensor        # sum_t KL(q_t || p_t)
    aux: torch.Tensor       # -sum_t log p_xi(sg(b_t) | z_t) (aux_cost="l2": sum_t |sg(b_t) - tanh(mu_a)|^2)
    bwd_nll: torch.Tensor   # -sum_t log p_bwd(u_t | b_t)

    @property
    def neg_elbo(self):
        return self.nll + self.kl


def training_loss(terms: LossTerms, kl_weight, aux_weight, bwd_weight, aux_on: bool | None = None):
    """``nll + kl_w kl + aux_w aux + bwd_w bwd_nll``, mean over the batch; the backward
    network's reverse-prediction cost counts only while ``aux_w > 0`` (as the authors).

    The weights are floats or 0-dim tensors (a CUDA graph reads them from the device); with
    tensor weights pass ``aux_on`` (whether ``aux_w > 0``) so that no value is read back.
    """
    if aux_on is None:
        aux_on = aux_weight > 0
    loss = terms.nll + _weighted(kl_weight, terms.kl)
    if aux_on:
        loss = loss + _weighted(aux_weight, terms.aux) + _weighted(bwd_weight, terms.bwd_nll)
    return loss.mean()


def _weighted(weight, term):
    """``weight * term`` with a tensor weight rounded as a Python float is: a float's product
    with 16-bit terms is computed in float32 and rounded once, but a CUDA kernel casts a 0-dim
    device tensor to the terms' dtype first (the KL weight 0.2 + k * 5e-5 in bfloat16 moves in
    steps of ~1e-3), so a CUDA graph's bfloat16-pure step drifted from the eager one."""
    if isinstance(weight, torch.Tensor) and term.dtype in (torch.bfloat16, torch.float16):
        return (weight.to(torch.float32) * term.to(torch.float32)).to(term.dtype)
    return weight * term


@_autocast.float32
def _squared_error(x, mean, mask=None):
    """``sum_d (x - mean)^2`` over the last dim, times ``mask``: the "l2" auxiliary cost per step.
    Like the likelihood ops: accumulated in float32 at least, returned in ``mean``'s dtype, in
    float32 under autocast."""
    acc = torch.promote_types(torch.promote_types(x.dtype, mean.dtype), torch.float32)
    sq = (x.to(acc) - mean.to(acc)).square().sum(-1)
    if mask is not None:
        sq = sq * mask.to(acc)
    return sq.to(mean.dtype)


def _split_gaussian(params, backend="auto"):
    """[mu, logvar] clamped to [-8, 8] (``ops.leaky_clamp`` with slope 1: a plain clamp)."""
    mu, logvar = ops.leaky_clamp(params, 1.0, PARAM_CLAMP, backend=backend).chunk(2, dim=-1)
    return mu, logvar


class ZForcing(BoundsMixin, nn.Module):
    """Z-Forcing stochastic recurrent network.

    Args:
        input_dim: features per step D (vocabulary size for ``output_type="categorical"``).
        output_type: "gaussian" (speech frames), "bernoulli" (binary pixels), "categorical" (tokens).
        emb_dim, rnn_dim, z_dim, mlp_dim: sizes (the authors' TIMIT setting is 512, 1024, 256, 512).
        cond_ln: condition the forward LSTM on z through a gain and bias of its layer-normalised
            recurrent projection instead of feeding g(z) as input.
        z_force: zero the h input of the auxiliary network, so b_t must be predicted from z_t.
        backend: backend of every fused op ("auto", "torch", "triton", "cuda"). "cuda" runs the
            recurrences the CUDA extension implements (``lstm``, ``zforcing_chain``) there (and
            raises where it cannot) and every other op as "auto" (``ops.op_backend``).
        aux_cost: "gaussian" (the paper's ``-log p_xi(b_t | z_t)``) or "l2" (the authors' code's
            variant ``sum_d (b_t - tanh(mu_a))^2``, bounded below by 0; ``logvar_a`` unused).

    Mixed precision: keep the parameters float32 and call the model under
    ``torch.autocast(device_type, dtype)``; the fused ops follow torch's autocast policy
    (recurrences in the autocast dtype, likelihoods in float32: ``zf_kernels.ops._autocast``),
    so the loss terms come out float32.
    """

    def __init__(self, input_dim: int, output_type: str = "gaussian", emb_dim: int = 512,
                 rnn_dim: int = 1024, z_dim: int = 256, mlp_dim: int = 512, cond_ln: bool = False,
                 z_force: bool = False, backend: str = "auto", aux_cost: str = "gaussian"):
        super().__init__()
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        for name, v in (("input_dim", input_dim), ("emb_dim", emb_dim), ("rnn_dim", rnn_dim),
                        ("z_dim", z_dim), ("mlp_dim", mlp_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        if aux_cost not in AUX_COSTS:
            raise ValueError(f"aux_cost must be one of {AUX_COSTS}, got {aux_cost!r}")
        self.config = dict(input_dim=input_dim, output_type=output_type, emb_dim=emb_dim,
                           rnn_dim=rnn_dim, z_dim=z_dim, mlp_dim=mlp_dim, cond_ln=cond_ln,
                           z_force=z_force)
        if aux_cost != "gaussian":   # only then: the checkpoints of earlier versions lack the key
            self.config["aux_cost"] = aux_cost
        self.aux_cost = aux_cost
        self.input_dim, self.output_type = input_dim, output_type
        self.rnn_dim, self.z_dim, self.mlp_dim = rnn_dim, z_dim, mlp_dim
        self.cond_ln, self.z_force, self.backend = cond_ln, z_force, backend
        H, E, M, Z = rnn_dim, emb_dim, mlp_dim, z_dim

        if output_type == "categorical":
            # one extra row: the start token read at t = 1
            self.emb = nn.Embedding(input_dim + 1, E)
            out_dim, bwd_out_dim = input_dim, input_dim + 1
        else:
            self.emb = nn.Linear(input_dim, E)
            out_dim = bwd_out_dim = 2 * input_dim if output_type == "gaussian" else input_dim

        self.bwd_lstm = LSTMWeights(E, H)
        self.bwd_out = nn.Linear(H, bwd_out_dim)
        self.prior = MLP(H, M, 2 * Z)
        self.posterior = MLP(2 * H, M, 2 * Z)     # on [h_{t-1}, b_t]
        self.aux = MLP(H + Z, M, 2 * H)           # on [h_{t-1} (zeroed by z_force), z_t]
        self.out = nn.Linear(H, out_dim)
        if cond_ln:
            self.gen = MLP(Z, M, 8 * H)           # -> gain and bias of LN(W_hh h)
            self.fwd_weight_ih = nn.Parameter(torch.empty(4 * H, E))
            self.ln_ih = nn.LayerNorm(4 * H)
        else:
            self.gen = nn.Linear(Z, M)            # g(z)
            # input of the forward LSTM is [g(z_t), e_t]
            self.fwd_weight_ih = nn.Parameter(torch.empty(4 * H, M + E))
            self.fwd_bias_ih = nn.Parameter(torch.zeros(4 * H))
            self.fwd_bias_hh = nn.Parameter(torch.zeros(4 * H))
        self.fwd_weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.reset_lstm_parameters()

    def reset_lstm_parameters(self):
        """The authors' initialisation: uniform input weights, orthogonal recurrent weights."""
        bound = 1.0 / math.sqrt(self.rnn_dim)
        nn.init.uniform_(self.fwd_weight_ih, -bound, bound)
        nn.init.orthogonal_(self.fwd_weight_hh)
        nn.init.orthogonal_(self.bwd_lstm.weight_hh_l0)

    # ----------------------------------------------------------------- pieces
    @property
    def _w_iz(self):
        return self.fwd_weight_ih[:, : self.mlp_dim]

    @property
    def _w_ie(self):
        return self.fwd_weight_ih if self.cond_ln else self.fwd_weight_ih[:, self.mlp_dim:]

    def _check_batch(self, y, u, mask):
        check_batch(y, u, mask, self.input_dim, self.output_type, like=self.fwd_weight_hh)

    def shift_inputs(self, y):
        """``u_t = y_{t-1}``, with a zero frame (or the start token) at t = 1."""
        return shift_inputs(y, self.input_dim if self.output_type == "categorical" else None)

    def _embed(self, x):
        return self.emb(x.long()) if self.output_type == "categorical" else self.emb(x)

    def _embedded_projection(self, x, weight, bias=None):
        """``(x', weight', bias')`` with ``F.linear(x', weight', bias') = F.linear(emb(x), weight,
        bias)``: the embedding is only ever projected linearly (both LSTMs' input projections),
        and a Linear embedding folds into the projection, ``W (W_e x + b_e) = (W W_e) x + W b_e``.
        Folded where it costs fewer multiply-adds: R E D for ``W W_e`` plus N R D for the
        projection, against N E D + N R E (N rows of x, D its features, E the embedding's width,
        R = 4H rows of W); at Sequential MNIST's D = 1 the projections shrink 512-fold (a quarter
        of the step's arithmetic), at TIMIT's D = 200 by 2.5x. The same function up to rounding,
        and the same parameters and gradients; a categorical model's lookup stays unfolded."""
        if not self._folds_embedding(x.numel() // self.input_dim, weight.shape[0]):
            return self._embed(x), weight, bias
        return x, weight @ self.emb.weight, F.linear(self.emb.bias, weight, bias)

    def _folds_embedding(self, rows: int, proj_rows: int) -> bool:
        """Whether :meth:`_embedded_projection` folds the embedding into a ``proj_rows``-row
        projection of ``rows`` data rows (fewer multiply-adds; never for a lookup)."""
        if self.output_type == "categorical":
            return False
        N, R, (E, D) = rows, proj_rows, self.emb.weight.shape
        return R * E * D + N * R * D < N * E * D + N * R * E

    def explain_backends(self, seq_len: int, batch_size: int,
                         dtype: torch.dtype | None = None) -> dict[str, tuple[str, str]]:
        """``{op: (backend, reason)}``: what :func:`ops.explain` says the model's two recurrences
        (the backward network's ``lstm``, the chain: ``zforcing_chain``, or ``zforcing_chain_ln``
        with cond_ln) run on for ``(seq_len, batch_size)`` batches in ``dtype`` (default: the
        weights'; under autocast pass its dtype). Nothing is computed: the choice depends on the
        batch size, the widths, the dtype and the device, so one-step stand-ins do."""
        new = lambda *shape: self.fwd_weight_hh.new_zeros(*shape, dtype=dtype or self.fwd_weight_hh.dtype)  # noqa: E731
        B, H = batch_size, self.rnn_dim
        width = self.input_dim if self._folds_embedding(seq_len * B, 4 * H) else self.bwd_lstm.weight_ih_l0.shape[1]
        chain = "zforcing_chain_ln" if self.cond_ln else "zforcing_chain"
        tensors = {"lstm": (new(1, B, width), new(4 * H, width), new(4 * H, H)),
                   chain: (new(1, B, 4 * H), new(1, B, self.mlp_dim), new(1, B, self.z_dim))}
        return {op: ops.explain(op, *t, backend=self._be(op)) for op, t in tensors.items()}

    def backward_states(self, y, mask=None):
        """``b_t = LSTM_bwd(emb(y_t), b_{t+1})``; with a padding mask each sequence is read
        from its own last valid step, so padding never leaks into b_t of valid steps."""
        w = self.bwd_lstm
        x, w_ih, b_ih = self._embedded_projection(y, w.weight_ih_l0, w.bias_ih_l0)
        args = (w_ih, w.weight_hh_l0, b_ih, w.bias_hh_l0)
        if not has_padding(mask):
            out, _ = ops.lstm(x, *args, reverse=True, backend=self._be("lstm"))
            return out
        flip = padded_flip_index(mask)
        out, _ = ops.lstm(gather_time(x, flip), *args, reverse=False, backend=self._be("lstm"))
        return gather_time(out, flip)

    def _head_nll(self, target, params, mask):
        """-log p(target | params) per step for this model's output type."""
        if self.output_type == "gaussian":
            mu, logvar = _split_gaussian(params, self._be("leaky_clamp"))
            return ops.gaussian_nll(target, mu, logvar, mask, backend=self._be("gaussian_nll"))
        if self.output_type == "bernoulli":
            return ops.bernoulli_nll(target, params, mask, backend=self._be("bernoulli_nll"))
        return ops.categorical_nll(target.long(), params, mask, backend=self._be("categorical_nll"))

    def _chain(self, gates_x, post_x, eps, h0, c0) -> ChainOutput:
        w_q1 = self.posterior.fc1.weight
        if not self.cond_ln:
            return ops.zforcing_chain(
                gates_x, post_x, eps, h0, c0, w_q1[:, : self.rnn_dim],
                self.posterior.fc2.weight, self.posterior.fc2.bias, self.gen.weight, self.gen.bias,
                self._w_iz, self.fwd_weight_hh, backend=self._be("zforcing_chain"))
        # cond_ln: g(z) (the gen MLP) gives the gain and bias of LN(W_hh h_{t-1}) inside the chain
        return ops.zforcing_chain_ln(
            gates_x, post_x, eps, h0, c0, w_q1[:, : self.rnn_dim],
            self.posterior.fc2.weight, self.posterior.fc2.bias, self.gen.fc1.weight,
            self.gen.fc1.bias, self.gen.fc2.weight, self.gen.fc2.bias, self.fwd_weight_hh,
            backend=self._be("zforcing_chain_ln"))

    def _cond_ln_cell(self, gates_x, h, c, z):
        gain, bias = clamp_ref(self.gen(z), COND_CLAMP).chunk(2, dim=-1)
        hh = F.layer_norm(F.linear(h, self.fwd_weight_hh), (4 * self.rnn_dim,), eps=LN_EPS)
        gates = gates_x + hh * (1.0 + gain) + bias
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _input_gates(self, u):
        """Everything of the forward LSTM's gates that does not depend on h or z: the projection
        of emb(u) (``_embedded_projection``), layer-normalised with cond_ln."""
        if self.cond_ln:
            return self.ln_ih(F.linear(*self._embedded_projection(u, self._w_ie)))
        return F.linear(*self._embedded_projection(u, self._w_ie, self.fwd_bias_ih + self.fwd_bias_hh))

    # ----------------------------------------------------------------- forward
    def forward(self, y, u=None, mask=None, eps=None, generator: torch.Generator | None = None,
                return_latents: bool = False):
        """Per-sequence loss terms for targets ``y`` (inputs ``u`` default to ``y`` shifted).

        ``eps (T, B, z_dim)`` is the posterior noise (drawn from ``generator`` when omitted).
        Returns ``LossTerms``; with ``return_latents`` also a dict of per-step tensors
        (z, mu_q, logvar_q, mu_p, logvar_p, h) for the importance-weighted bound and analysis.
        """
        self._check_batch(y, u, mask)
        T, B = y.shape[:2]
        if u is None:
            u = self.shift_inputs(y)
        if mask is not None:
            mask = mask.to(self.fwd_weight_hh.dtype)
        H, Z = self.rnn_dim, self.z_dim
        dtype, device = self.fwd_weight_hh.dtype, self.fwd_weight_hh.device
        if eps is None:
            eps = torch.randn(T, B, Z, generator=generator, device=device, dtype=dtype)
        elif tuple(eps.shape) != (T, B, Z):
            raise ValueError(f"eps must have shape (T, B, z_dim) = {(T, B, Z)}, got {tuple(eps.shape)}")

        b = self.backward_states(y, mask)                             # (T, B, H)
        bwd_nll = self._head_nll(u, self.bwd_out(b), mask).sum(0)

        gates_x = self._input_gates(u)                   # (T, B, 4H)
        w_q1 = self.posterior.fc1.weight
        post_x = F.linear(b, w_q1[:, H:], self.posterior.fc1.bias)    # (T, B, M)
        h0 = torch.zeros(B, H, device=device, dtype=dtype)
        chain = self._chain(gates_x, post_x, eps, h0, torch.zeros_like(h0))
        # h_0 .. h_{T-1}; under autocast the chain returns the autocast dtype while h0 (like
        # eps, drawn in the parameters' dtype, and cast by the op) is float32
        h_prev = torch.cat([h0.unsqueeze(0).to(chain.h.dtype), chain.h[:-1]], 0)

        mu_p, logvar_p = _split_gaussian(self.prior(h_prev, self._be("leaky_clamp")), self._be("leaky_clamp"))
        kl = ops.gaussian_kl(chain.mu_q, chain.logvar_q, mu_p, logvar_p, mask, backend=self._be("gaussian_kl")).sum(0)

        if self.z_force:   # the h half of the input is zero: only the z columns contribute
            a = F.linear(chain.z, self.aux.fc1.weight[:, H:], self.aux.fc1.bias)
        else:
            a = self.aux.fc1(torch.cat([h_prev, chain.z], -1))
        mu_a, logvar_a = _split_gaussian(self.aux.fc2(mlp_act(a, self._be("leaky_clamp"))), self._be("leaky_clamp"))
        aux = self._aux_cost(b.detach(), torch.tanh(mu_a), logvar_a, mask)

        nll = self._head_nll(y, self.out(chain.h), mask).sum(0)
        terms = LossTerms(nll=nll, kl=kl, aux=aux, bwd_nll=bwd_nll)
        if not return_latents:
            return terms
        return terms, dict(z=chain.z, mu_q=chain.mu_q, logvar_q=chain.logvar_q, mu_p=mu_p,
                           logvar_p=logvar_p, h=chain.h)

    def _aux_cost(self, b, mean_a, logvar_a, mask):
        """The auxiliary cost per sequence ``(B,)`` of the (detached) backward states ``b``."""
        if self.aux_cost == "gaussian":
            return ops.gaussian_nll(b, mean_a, logvar_a, mask, backend=self._be("gaussian_nll")).sum(0)
        return _squared_error(b, mean_a, mask).sum(0)

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, steps: int, batch_size: int, temperature: float = 1.0, generator=None, prefix=None):
        """Generate from the prior. Returns ``(samples, means)``: ``samples`` as data (binary
        pixels, frames, token ids) and ``means`` the output distribution's mean per step.
        ``prefix``: the first K steps to complete (:func:`zf_kernels.sequences.check_sample_args`); ``z``
        comes from the prior throughout (the posterior would need the sequence's future)."""
        prefix = check_sample_args(steps, batch_size, prefix, self.input_dim, self.output_type, self.fwd_weight_hh,
                                   temperature)
        H = self.rnn_dim
        dtype, device = self.fwd_weight_hh.dtype, self.fwd_weight_hh.device
        h = torch.zeros(batch_size, H, device=device, dtype=dtype)
        c = torch.zeros_like(h)
        if self.output_type == "categorical":
            u = torch.full((batch_size,), self.input_dim, device=device, dtype=torch.long)
        else:
            u = torch.zeros(batch_size, self.input_dim, device=device, dtype=dtype)
        randn = lambda *s: torch.randn(*s, generator=generator, device=device, dtype=dtype)  # noqa: E731
        samples, means = [], []
        for t in range(steps):
            mu_p, logvar_p = _split_gaussian(self.prior(h, self._be("leaky_clamp")), self._be("leaky_clamp"))
            z = mu_p + torch.exp(0.5 * logvar_p) * randn(batch_size, self.z_dim) * temperature
            gx = self._input_gates(u)
            if self.cond_ln:
                h, c = self._cond_ln_cell(gx, h, c, z)
            else:
                gx = gx + F.linear(self.gen(z), self._w_iz)
                h, c = ops.lstm_cell(gx, h, c, self.fwd_weight_hh, backend=self._be("lstm_cell"))
            params = self.out(h)
            if self.output_type == "gaussian":
                mu, logvar = _split_gaussian(params, self._be("leaky_clamp"))
                mean, u = mu, mu + torch.exp(0.5 * logvar) * randn(*mu.shape) * temperature
            elif self.output_type == "bernoulli":
                mean = torch.sigmoid(params)
                u = torch.bernoulli(mean, generator=generator)
            else:
                mean = torch.softmax(params / max(temperature, 1e-6), -1)
                u = torch.multinomial(mean, 1, generator=generator).squeeze(-1)
            u = forced_input(u, prefix, t)
            samples.append(u)
            means.append(mean)
        return torch.stack(samples, 0), torch.stack(means, 0)
