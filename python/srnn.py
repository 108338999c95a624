"""SRNN (Fraccaro, Sønderby, Paquet, Winther, "Sequential Neural Models with Stochastic
Layers", NIPS 2016) built from ``zf_kernels.ops``.

A deterministic forward LSTM over the inputs ``u_t = y_{t-1}``, a state-space model on top, and
a smoothing posterior from a backward LSTM over ``[d_t, y_t]``:

    d_t = LSTM_fwd(phi_x(u_t), d_{t-1})              a_t = LSTM_bwd([d_t, phi_x(y_t)], a_{t+1})
    p(z_t | z_{t-1}, d_t) = N(MLP_p([z_{t-1}, d_t]))                                z_0 = 0
    q(z_t | z_{t-1}, a_t) = N(MLP_q([z_{t-1}, a_t]))    resq: mu_q = mu_p + mu_q~ (residual mean)
    p(y_t | z_t, d_t)     = head(MLP_dec([z_t, d_t]))

Neither LSTM depends on z, so both run as whole sequences through ``ops.lstm`` (the backward
one padding-aware). Only the z-chain is a loop: the posterior's ``z_{t-1}`` half (and the
prior's, with resq) and ``ops.reparameterize``; the ``d_t`` / ``a_t`` halves, the prior (without
resq), the decoder and every KL / NLL are batched over all steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import MLP, SequenceVAE, reverse_lstm, split_gaussian
from zf_kernels import LSTMWeights, ops
from zf_kernels.sequences import forced_input


class SRNN(SequenceVAE):
    name = "srnn"

    def __init__(self, input_dim: int, output_type: str = "gaussian", emb_dim: int = 64,
                 rnn_dim: int = 128, z_dim: int = 16, mlp_dim: int = 64, backend: str = "auto",
                 resq: bool = False):
        super().__init__(input_dim, output_type, emb_dim, rnn_dim, z_dim, mlp_dim, backend)
        E, H, Z, M = emb_dim, rnn_dim, z_dim, mlp_dim
        self.resq = bool(resq)
        self.config["resq"] = self.resq
        self.fwd_rnn = LSTMWeights(E, H)            # d_t
        self.bwd_rnn = LSTMWeights(H + E, H)        # a_t, on [d_t, phi_x(y_t)]
        for rnn in (self.fwd_rnn, self.bwd_rnn):
            nn.init.orthogonal_(rnn.weight_hh_l0)
        self.prior = MLP(Z + H, M, 2 * Z)           # on [z_{t-1}, d_t]
        self.posterior = MLP(Z + H, M, 2 * Z)       # on [z_{t-1}, a_t]
        self.decoder = MLP(Z + H, M, self.out_dim)  # on [z_t, d_t]

    def _forward_states(self, u):
        w = self.fwd_rnn
        return ops.lstm(self.embed(u), w.weight_ih_l0, w.weight_hh_l0, w.bias_ih_l0, w.bias_hh_l0,
                        backend=self._be("lstm"))[0]

    def _hoisted(self, mlp, x):
        """First layer of an MLP on ``[z, x]``: the ``x`` half for all steps, the ``z`` weight."""
        w = mlp.fc1.weight
        return F.linear(x, w[:, self.z_dim:], mlp.fc1.bias), w[:, : self.z_dim]

    def terms(self, y, u, mask, eps):
        B = y.shape[1]
        d = self._forward_states(u)                                          # (T, B, H)
        a = reverse_lstm(torch.cat([d, self.embed(y)], -1), self.bwd_rnn, mask, self._be("lstm"))
        post_a, w_qz = self._hoisted(self.posterior, a)                      # (T, B, M)
        prior_d, w_pz = self._hoisted(self.prior, d)
        z = d.new_zeros(B, self.z_dim)
        zs, mus, lvs, mps, lps = [], [], [], [], []
        # unbind, not x[t], as in vrnn.py (the backward of T selects costs O(T^2))
        for qa_t, pd_t, eps_t in zip(post_a.unbind(0), prior_d.unbind(0), eps.unbind(0)):
            mu_q, lv_q = self.gaussian_after(self.posterior, qa_t + F.linear(z, w_qz))
            if self.resq:   # the posterior mean is a correction of the prior's
                mu_p, lv_p = self.gaussian_after(self.prior, pd_t + F.linear(z, w_pz))
                mu_q = mu_p + mu_q
                mps.append(mu_p), lps.append(lv_p)
            z = ops.reparameterize(mu_q, lv_q, eps_t, backend=self._be("reparameterize"))
            zs.append(z), mus.append(mu_q), lvs.append(lv_q)
        z, mu_q, lv_q = (torch.stack(x, 0) for x in (zs, mus, lvs))
        if self.resq:
            mu_p, lv_p = torch.stack(mps, 0), torch.stack(lps, 0)
        else:           # the prior on z_{t-1}, batched after the loop
            z_prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]], 0)
            mu_p, lv_p = self.gaussian_after(self.prior, prior_d + F.linear(z_prev, w_pz))
        kl = ops.gaussian_kl(mu_q, lv_q, mu_p, lv_p, mask, backend=self._be("gaussian_kl")).sum(0)
        nll = self.head_nll(y, self.decoder(torch.cat([z, d], -1), self._be("leaky_clamp")), mask).sum(0)
        return nll, kl, dict(z=z, mu_q=mu_q, logvar_q=lv_q, mu_p=mu_p, logvar_p=lv_p, h=d)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int, temperature: float = 1.0, generator=None, prefix=None):
        """Generate from the prior -> ``(samples, means)``, each ``(steps, batch_size, ...)``;
        ``prefix``: :meth:`common.SequenceVAE.check_sample_args`."""
        prefix = self.check_sample_args(steps, batch_size, prefix, temperature)
        w = self.fwd_rnn
        u = self.start_input(batch_size)
        d = self._like.new_zeros(batch_size, self.rnn_dim)
        c, z = torch.zeros_like(d), self._like.new_zeros(batch_size, self.z_dim)
        samples, means = [], []
        for t in range(steps):
            gates = F.linear(self.embed(u), w.weight_ih_l0, w.bias_ih_l0 + w.bias_hh_l0)
            d, c = ops.lstm_cell(gates, d, c, w.weight_hh_l0, backend=self._be("lstm_cell"))
            act = self._be("leaky_clamp")
            mu_p, lv_p = split_gaussian(self.prior(torch.cat([z, d], -1), act), act)
            z = ops.reparameterize(mu_p, lv_p, self.prior_noise(batch_size, temperature, generator),
                                   backend=self._be("reparameterize"))
            u, mean = self.head_sample(self.decoder(torch.cat([z, d], -1), act), temperature, generator)
            u = forced_input(u, prefix, t)
            samples.append(u), means.append(mean)
        return torch.stack(samples, 0), torch.stack(means, 0)
