"""CUDA LSTM (``backend="cuda"``): the persistent kernels of csrc/lstm_kernels.cu through the
extension ``zf_kernels._C``. Importing this module loads (or JIT-builds) the extension and
raises ImportError with the reason where it cannot.

One cooperative launch per direction: each block keeps its slice of W_hh in shared memory for
all T steps and the grid meets at one grid sync per step (csrc/README.md). The autograd glue,
what is saved and what is recomputed: :mod:`._cuda_function`.

Precision of the float32 recurrent products: the rule of the Triton kernels
(:func:`zf_kernels.ops._precision.tf32_passes`): TF32 tensor-core tiles (mma.sync m16n8k8,
float32 accumulation) when torch allows TF32 for its matmuls or ``ZF_FP32_DOT=tf32``, 3xTF32
tiles (near-IEEE) with ``ZF_FP32_DOT=tf32x3``, IEEE FMAs otherwise. float64: IEEE. bfloat16:
W_hh, h and the gates stored in bfloat16, products on bfloat16 tensor-core tiles (mma.sync
m16n8k16, float32 accumulation), cell states and the cell update in float32 (as the Triton LSTM).

Status: compiled for sm_90a and checked on the CPU in an emulation of the same kernel source
(tests/test_cuda_emulation.py); **not yet run on a GPU**, hence not eligible for
``backend="auto"`` (see ``zf_kernels/ops/lstm/__init__.py``).
"""
from __future__ import annotations

import torch

from .. import _cuda_ext
from .._precision import products as products_label, tf32_passes
from ._cuda_function import run_lstm, why_unsupported

_C = _cuda_ext.load()

__all__ = ["lstm", "plan"]


class _ExtensionKernels:
    """The two recurrence kernels of ``zf_kernels._C`` on the tensors' device and stream; the
    precision is fixed at construction (the forward's), so the backward of a step rounds alike."""

    def __init__(self, units_per_block: int = 0, threads: int = 0, tf32: int = 0):
        self.units_per_block, self.threads, self.tf32 = units_per_block, threads, tf32

    def forward(self, gates, h0, w_hh, out, c_all, reverse):
        with torch.cuda.device(gates.device):
            _C.lstm_forward(gates, h0, w_hh, out, c_all, reverse, self.units_per_block, self.threads, self.tf32,
                            torch.cuda.current_stream().cuda_stream)

    def backward(self, d_out, d_hT, w_hh, gates, c_all, dc, reverse):
        with torch.cuda.device(gates.device):
            _C.lstm_backward(d_out, d_hT, w_hh, gates, c_all, dc, reverse, self.units_per_block, self.threads,
                             self.tf32, torch.cuda.current_stream().cuda_stream)

    def check_backward(self, x, w_hh):
        """ValueError (the planner's) where the backward cannot run on these sizes."""
        with torch.cuda.device(x.device):
            _C.lstm_plan(True, x.shape[1], w_hh.shape[1], x.element_size(), self.units_per_block, self.threads,
                         self.tf32)


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False, *,
         units_per_block: int = 0, threads: int = 0):
    """Single-layer LSTM over time-major ``x (T, B, I)`` with the persistent CUDA kernels.

    Same contract as :func:`zf_kernels.ops.lstm.naive.lstm_ref` (arguments are checked by
    :func:`zf_kernels.ops.lstm`); float32 / float64 / bfloat16 CUDA tensors. ``units_per_block`` /
    ``threads`` (0 = automatic: ceil(H / SMs) units, 256 threads) override the partition,
    for tests. A shape whose blocks cannot all be resident raises ValueError naming it.
    """
    why = why_unsupported(x)
    if why is not None:
        raise ValueError(why)
    return run_lstm(_ExtensionKernels(units_per_block, threads, tf32_passes(x)), x, weight_ih, weight_hh, bias_ih,
                    bias_hh, h0, c0, reverse)


def plan(x, weight_hh, units_per_block: int = 0, threads: int = 0) -> tuple[dict, dict]:
    """``(forward, backward)`` launch plans on ``x``'s device (ValueError where one cannot run)."""
    B, H = x.shape[1], weight_hh.shape[1]
    es = x.element_size()
    with torch.cuda.device(x.device):
        return tuple(_C.lstm_plan(bwd, B, H, es, units_per_block, threads, tf32_passes(x)) for bwd in (False, True))


def _explain(x, weight_ih, weight_hh, *rest) -> str:
    fwd, bwd = plan(x, weight_hh)
    products = products_label(x, fwd["tf32"])
    return (f"one cooperative launch per direction: {fwd['blocks']} blocks x {fwd['threads']} threads, {products}, "
            f"{fwd['units_per_block']} hidden units and {fwd['w_bytes'] // 1024} KB of W_hh resident per block "
            f"(shared memory {fwd['smem_bytes'] // 1024} KB forward, {bwd['smem_bytes'] // 1024} KB backward)")


# what ``ops.explain("lstm", ...)`` appends / checks for this backend (see _dispatch)
lstm.explain = _explain
lstm.unsupported = why_unsupported
