"""VRNN (Chung et al., "A Recurrent Latent Variable Model for Sequential Data", NIPS 2015)
built from ``zf_kernels.ops``.

The network reads ``u_t = y_{t-1}``, so its state ``d_t`` plays the paper's ``h_{t-1}`` (it has
seen ``y_{<t}`` and ``z_{<t}``):

    d_t            = LSTM([phi_x(u_t), phi_z(z_{t-1})], d_{t-1})           z_0 = 0, d_0 = 0
    p(z_t | d_t)   = N(MLP_p(d_t))                                          prior
    q(z_t | y_t, d_t) = N(MLP_q([phi_x(y_t), d_t]))                         posterior
    p(y_t | z_t, d_t) = head(MLP_dec([phi_z(z_t), d_t]))

The state depends on the sample, and the loop "posterior on d_t -> z_t -> phi_z(z_t) -> LSTM
step to d_{t+1}" is exactly the fused Z-forcing recurrence ``ops.zforcing_chain`` (posterior
MLP on the state plus a precomputed half, the sample with a given eps, a linear g(z), the LSTM
cell): after one ``ops.lstm_cell`` for d_1 (from z_0 = 0), chain step t reads d_t and
``gates_x[t+1]``. The input projections, the posterior's ``phi_x(y_t)`` half, the prior, the
decoder and every KL / NLL are batched over all steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import MLP, SequenceVAE, split_gaussian
from zf_kernels import ops
from zf_kernels.sequences import forced_input


class VRNN(SequenceVAE):
    name = "vrnn"

    def __init__(self, input_dim: int, output_type: str = "gaussian", emb_dim: int = 64,
                 rnn_dim: int = 128, z_dim: int = 16, mlp_dim: int = 64, backend: str = "auto"):
        super().__init__(input_dim, output_type, emb_dim, rnn_dim, z_dim, mlp_dim, backend)
        E, H, Z, M = emb_dim, rnn_dim, z_dim, mlp_dim
        self.phi_z = nn.Linear(Z, M)
        self.rnn = nn.LSTMCell(E + M, H)            # weights only; input [phi_x(u_t), phi_z(z_{t-1})]
        nn.init.orthogonal_(self.rnn.weight_hh)
        self.prior = MLP(H, M, 2 * Z)
        self.posterior = MLP(E + H, M, 2 * Z)       # on [phi_x(y_t), d_t]
        self.decoder = MLP(M + H, M, self.out_dim)  # on [phi_z(z_t), d_t]

    def _input_gates(self, e_u):
        """The part of the LSTM gates that depends on neither the state nor z, plus both biases."""
        return F.linear(e_u, self.rnn.weight_ih[:, : self.emb_dim], self.rnn.bias_ih + self.rnn.bias_hh)

    def _z_gates(self, z):
        return F.linear(self.phi_z(z), self.rnn.weight_ih[:, self.emb_dim:])

    def terms(self, y, u, mask, eps):
        B, E, H = y.shape[1], self.emb_dim, self.rnn_dim
        gates_x = self._input_gates(self.embed(u))                          # (T, B, 4H)
        w_q = self.posterior.fc1.weight
        post_y = F.linear(self.embed(y), w_q[:, :E], self.posterior.fc1.bias)   # (T, B, M)
        zero = gates_x.new_zeros(B, H)
        d1, c1 = ops.lstm_cell(gates_x[0] + self._z_gates(gates_x.new_zeros(B, self.z_dim)), zero, zero,
                               self.rnn.weight_hh, backend=self._be("lstm_cell"))
        # chain step t: posterior on d_t (+ phi_x(y_t)'s half) -> z_t -> the LSTM step that makes
        # d_{t+1} from gates_x[t+1] + phi_z(z_t) W; the step after the last one is unused
        next_gates = torch.cat([gates_x[1:], gates_x.new_zeros(1, B, 4 * H)], 0)
        chain = ops.zforcing_chain(next_gates, post_y, eps, d1, c1, w_q[:, E:], self.posterior.fc2.weight,
                                   self.posterior.fc2.bias, self.phi_z.weight, self.phi_z.bias,
                                   self.rnn.weight_ih[:, E:], self.rnn.weight_hh, backend=self._be("zforcing_chain"))
        d = torch.cat([d1.unsqueeze(0).to(chain.h.dtype), chain.h[:-1]], 0)   # d_1 .. d_T
        z, mu_q, lv_q = chain.z, chain.mu_q, chain.logvar_q
        mu_p, lv_p = split_gaussian(self.prior(d, self._be("leaky_clamp")), self._be("leaky_clamp"))
        kl = ops.gaussian_kl(mu_q, lv_q, mu_p, lv_p, mask, backend=self._be("gaussian_kl")).sum(0)
        nll = self.head_nll(y, self.decoder(torch.cat([self.phi_z(z), d], -1), self._be("leaky_clamp")), mask).sum(0)
        return nll, kl, dict(z=z, mu_q=mu_q, logvar_q=lv_q, mu_p=mu_p, logvar_p=lv_p, h=d)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int, temperature: float = 1.0, generator=None, prefix=None):
        """Generate from the prior -> ``(samples, means)``, each ``(steps, batch_size, ...)``;
        ``prefix``: :meth:`common.SequenceVAE.check_sample_args`."""
        prefix = self.check_sample_args(steps, batch_size, prefix, temperature)
        u = self.start_input(batch_size)
        d = self._like.new_zeros(batch_size, self.rnn_dim)
        c, z = torch.zeros_like(d), self._like.new_zeros(batch_size, self.z_dim)
        samples, means = [], []
        for t in range(steps):
            gates = self._input_gates(self.embed(u)) + self._z_gates(z)
            d, c = ops.lstm_cell(gates, d, c, self.rnn.weight_hh, backend=self._be("lstm_cell"))
            mu_p, lv_p = split_gaussian(self.prior(d, self._be("leaky_clamp")), self._be("leaky_clamp"))
            z = ops.reparameterize(mu_p, lv_p, self.prior_noise(batch_size, temperature, generator),
                                   backend=self._be("reparameterize"))
            params = self.decoder(torch.cat([self.phi_z(z), d], -1), self._be("leaky_clamp"))
            u, mean = self.head_sample(params, temperature, generator)
            u = forced_input(u, prefix, t)
            samples.append(u), means.append(mean)
        return torch.stack(samples, 0), torch.stack(means, 0)
