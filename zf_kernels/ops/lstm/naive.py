"""Plain-PyTorch references for the LSTM ops (gate order i, f, g, o, as in torch.nn.LSTM)."""
from __future__ import annotations

import torch


def lstm_cell_ref(gates_x, h, c, weight_hh, bias=None):
    """One step: ``gates = gates_x + h @ weight_hh.T + bias``; returns ``(h_new, c_new)``."""
    gates = torch.addmm(gates_x, h, weight_hh.t())
    if bias is not None:
        gates = gates + bias
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def lstm_ref(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """Single-layer LSTM over time-major ``x (T, B, I)``; the input projection is hoisted out
    of the time loop. ``reverse=True`` reads x[T-1] .. x[0] and returns ``out`` in the
    original order (``out[t]`` summarises ``x[t:]``)."""
    return lstm_loop_ref(lstm_cell_ref, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)


def lstm_loop_ref(cell, x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """``lstm_ref`` with ``cell`` (``lstm_cell_ref``'s signature) as its step: the benchmark's
    ``compile-step`` row passes ``torch.compile(lstm_cell_ref)``, the way a long recurrence is
    compiled without unrolling its loop."""
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    gates_x = torch.matmul(x, weight_ih.t())
    bias = None
    if bias_ih is not None:
        bias = bias_ih
    if bias_hh is not None:
        bias = bias_hh if bias is None else bias + bias_hh
    if bias is not None:
        gates_x = gates_x + bias
    h = x.new_zeros(B, H) if h0 is None else h0
    c = x.new_zeros(B, H) if c0 is None else c0
    if T == 0:
        return x.new_zeros(0, B, H), (h, c)
    # unbind, not gates_x[t]: each indexing op's backward would allocate a full (T, B, 4H)
    # gradient, making the backward pass O(T^2)
    steps = gates_x.unbind(0)
    out = []
    for g in (reversed(steps) if reverse else steps):
        h, c = cell(g, h, c, weight_hh)
        out.append(h)
    if reverse:
        out.reverse()
    return torch.stack(out, 0), (h, c)
