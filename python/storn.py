"""STORN (Bayer & Osendorfer, "Learning Stochastic Recurrent Networks", 2014) built from
``zf_kernels.ops``.

An inference (recognition) LSTM over the data gives a filtering posterior; the prior is a
standard normal at every step; the generative LSTM reads the previous frame and the sample:

    r_t = LSTM_inf(phi_x(y_t), r_{t-1})          q(z_t | y_{1:t}) = N(MLP_q(r_t))
    p(z_t) = N(0, I)
    h_t = LSTM_gen([phi_x(u_t), z_t], h_{t-1})   (u_t = y_{t-1})     p(y_t | h_t) = head(W h_t)

In training nothing recurrent depends on a state-dependent sample: the posterior is computed
from the inference LSTM alone, so every step's ``z_t`` is known before the generative LSTM runs.
Both LSTMs are whole-sequence ``ops.lstm`` calls and the model has no time loop at all; only
sampling from the prior steps ``ops.lstm_cell`` (it feeds back its own outputs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import MLP, SequenceVAE, split_gaussian
from zf_kernels import LSTMWeights, ops
from zf_kernels.sequences import forced_input


def _run(rnn: LSTMWeights, x, backend):
    return ops.lstm(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0,
                    backend=backend)[0]


class STORN(SequenceVAE):
    name = "storn"

    def __init__(self, input_dim: int, output_type: str = "gaussian", emb_dim: int = 64,
                 rnn_dim: int = 128, z_dim: int = 16, mlp_dim: int = 64, backend: str = "auto"):
        super().__init__(input_dim, output_type, emb_dim, rnn_dim, z_dim, mlp_dim, backend)
        E, H, Z, M = emb_dim, rnn_dim, z_dim, mlp_dim
        self.inf_rnn = LSTMWeights(E, H)            # r_t over phi_x(y_t)
        self.gen_rnn = LSTMWeights(E + Z, H)        # h_t over [phi_x(u_t), z_t]
        for rnn in (self.inf_rnn, self.gen_rnn):
            nn.init.orthogonal_(rnn.weight_hh_l0)
        self.posterior = MLP(H, M, 2 * Z)
        self.out = nn.Linear(H, self.out_dim)

    def terms(self, y, u, mask, eps):
        r = _run(self.inf_rnn, self.embed(y), self._be("lstm"))                 # (T, B, H)
        mu_q, lv_q = split_gaussian(self.posterior(r, self._be("leaky_clamp")), self._be("leaky_clamp"))
        z = ops.reparameterize(mu_q, lv_q, eps, backend=self._be("reparameterize"))      # all steps at once
        mu_p, lv_p = torch.zeros_like(mu_q), torch.zeros_like(lv_q)        # N(0, I)
        kl = ops.gaussian_kl(mu_q, lv_q, mu_p, lv_p, mask, backend=self._be("gaussian_kl")).sum(0)
        h = _run(self.gen_rnn, torch.cat([self.embed(u), z], -1), self._be("lstm"))
        nll = self.head_nll(y, self.out(h), mask).sum(0)
        return nll, kl, dict(z=z, mu_q=mu_q, logvar_q=lv_q, mu_p=mu_p, logvar_p=lv_p, h=h)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int, temperature: float = 1.0, generator=None, prefix=None):
        """Generate from the prior -> ``(samples, means)``, each ``(steps, batch_size, ...)``;
        ``prefix``: :meth:`common.SequenceVAE.check_sample_args`."""
        prefix = self.check_sample_args(steps, batch_size, prefix, temperature)
        w = self.gen_rnn
        u = self.start_input(batch_size)
        h = self._like.new_zeros(batch_size, self.rnn_dim)
        c = torch.zeros_like(h)
        samples, means = [], []
        for t in range(steps):
            z = self.prior_noise(batch_size, temperature, generator)         # z_t ~ N(0, T^2 I)
            gates = F.linear(torch.cat([self.embed(u), z], -1), w.weight_ih_l0, w.bias_ih_l0 + w.bias_hh_l0)
            h, c = ops.lstm_cell(gates, h, c, w.weight_hh_l0, backend=self._be("lstm_cell"))
            u, mean = self.head_sample(self.out(h), temperature, generator)
            u = forced_input(u, prefix, t)
            samples.append(u), means.append(mean)
        return torch.stack(samples, 0), torch.stack(means, 0)
