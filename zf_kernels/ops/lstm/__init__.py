"""LSTM ops: ``lstm`` over a whole sequence and ``lstm_cell`` for one step."""
from __future__ import annotations

from .. import _autocast, _dispatch
from .._checks import check_same, check_shape, check_tensor
from .naive import lstm_cell_ref, lstm_ref

__all__ = ["lstm", "lstm_cell"]

# "torch": torch's own LSTM op where it is known to agree with lstm_ref, else lstm_ref (native.py)
_dispatch.register("lstm", "torch", f"{__name__}.native:lstm")
_dispatch.register("lstm", "triton", f"{__name__}.triton:lstm", traced_form=f"{__name__}.triton_op:lstm")
# The CUDA kernels have only run in their CPU emulation: "auto" takes them once a GPU run has
# verified them (then drop not_auto).
_dispatch.register("lstm", "cuda", f"{__name__}.cuda:lstm", traced_form=f"{__name__}.cuda_op:lstm",
                   not_auto="the CUDA lstm has not been verified on a GPU yet; pass backend='cuda' to use it")
# one GEMM and elementwise gates, called once per time step: under torch.compile "auto" leaves it
# to inductor, which fuses the gates with the ops around them (see _dispatch); the Triton step's
# custom ops (no graph break either) are for backend="triton". Which is faster on a GPU: unmeasured
_dispatch.register("lstm_cell", "torch", f"{__name__}.naive:lstm_cell_ref", compile_traced=True)
_dispatch.register("lstm_cell", "triton", f"{__name__}.triton:lstm_cell",
                   traced_form=f"{__name__}.triton_op:lstm_cell")


def _check_weight_hh(weight_hh):
    check_tensor("weight_hh", weight_hh, ndim=2)
    four_h, H = weight_hh.shape
    if four_h != 4 * H:
        raise ValueError(f"weight_hh must have shape (4H, H), got {tuple(weight_hh.shape)}")
    return H


@_autocast.lower_precision
def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False,
         backend: str = "auto"):
    """Single-layer LSTM, time-major; the same numbers as ``torch.nn.LSTM``.

    Args:
        x: ``(T, B, I)``. weight_ih: ``(4H, I)``. weight_hh: ``(4H, H)``.
        bias_ih, bias_hh: ``(4H,)`` or None. h0, c0: ``(B, H)`` or None (zeros).
        reverse: read x from t=T-1 down to 0; ``out`` stays in the original time order.
    Returns:
        ``(out (T, B, H), (h_T, c_T))``.

    >>> out, (h, c) = lstm(torch.randn(5, 2, 3), torch.randn(16, 3), torch.randn(16, 4))
    """
    check_tensor("x", x, ndim=3)
    H = _check_weight_hh(weight_hh)
    T, B, I = x.shape
    check_tensor("weight_ih", weight_ih, ndim=2)
    check_shape("weight_ih", weight_ih, (4 * H, I))
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None:
            check_tensor(name, b, ndim=1)
            check_shape(name, b, (4 * H,))
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            check_tensor(name, s, ndim=2)
            check_shape(name, s, (B, H))
    check_same([("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih),
                ("bias_hh", bias_hh), ("h0", h0), ("c0", c0)])
    if not isinstance(reverse, (bool, int)) or reverse not in (0, 1):    # bool("no") was True
        raise TypeError(f"reverse must be a bool, got {reverse!r}")
    fn = _dispatch.resolve("lstm", backend, x, weight_ih, weight_hh)
    return fn(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(reverse))


@_autocast.lower_precision
def lstm_cell(gates_x, h, c, weight_hh, bias=None, backend: str = "auto"):
    """One LSTM step from a precomputed input projection ``gates_x (B, 4H)``.

    Returns ``(h_new, c_new)``, each ``(B, H)``.
    """
    H = _check_weight_hh(weight_hh)
    check_tensor("gates_x", gates_x, ndim=2)
    B = gates_x.shape[0]
    check_shape("gates_x", gates_x, (B, 4 * H))
    check_tensor("h", h, ndim=2)
    check_shape("h", h, (B, H))
    check_tensor("c", c, ndim=2)
    check_shape("c", c, (B, H))
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_shape("bias", bias, (4 * H,))
    check_same([("gates_x", gates_x), ("h", h), ("c", c), ("weight_hh", weight_hh), ("bias", bias)])
    fn = _dispatch.resolve("lstm_cell", backend, gates_x, h, c, weight_hh)
    return fn(gates_x, h, c, weight_hh, bias)
