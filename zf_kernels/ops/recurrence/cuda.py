"""CUDA Z-forcing chain (``backend="cuda"``): the persistent kernels of csrc/chain_kernels.cu
through the extension ``zf_kernels._C``. Importing this module loads (or JIT-builds) the
extension and raises ImportError with the reason where it cannot.

One cooperative launch per direction, three grid syncs per step; each block keeps its slice of
W_hh and of the folded W_iz W_gz (and of W_qh, W_q2 where they fit) in shared memory for all T
steps (csrc/README.md). The autograd glue, what is saved and what is recomputed:
:mod:`._cuda_function`. The four float32 recurrent products run as TF32 tensor-core tiles or
IEEE FMAs by the rule of the Triton kernels (:func:`zf_kernels.ops._precision.tf32_passes`);
in bfloat16 as bfloat16 tensor-core tiles (float32 accumulation, cell state and arithmetic).

Status: compiled for sm_90a and checked on the CPU in an emulation of the same kernel source
(tests/test_cuda_emulation_chain.py); **not yet run on a GPU**, hence not eligible for
``backend="auto"`` (see ``zf_kernels/ops/recurrence/__init__.py``).
"""
from __future__ import annotations

import torch

from .. import _cuda_ext
from .._precision import products as products_label, tf32_passes
from ._cuda_function import run_chain, why_unsupported
from .naive import ChainOutput

_C = _cuda_ext.load()

__all__ = ["zforcing_chain", "plan"]


class _ExtensionKernels:
    """The two chain kernels of ``zf_kernels._C`` on the tensors' device and stream; the precision
    is fixed at construction (the forward's), so the backward rounds alike."""

    def __init__(self, units_per_block: int = 0, threads: int = 0, tf32: int = 0):
        self.units_per_block, self.threads, self.tf32 = units_per_block, threads, tf32

    def forward(self, *tensors):
        with torch.cuda.device(tensors[0].device):
            _C.chain_forward(*tensors, self.units_per_block, self.threads, self.tf32,
                             torch.cuda.current_stream().cuda_stream)

    def backward(self, *tensors):
        with torch.cuda.device(tensors[0].device):
            _C.chain_backward(*tensors, self.units_per_block, self.threads, self.tf32,
                              torch.cuda.current_stream().cuda_stream)


def zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz, weight_iz,
                   weight_hh, *, units_per_block: int = 0, threads: int = 0) -> ChainOutput:
    """The Z-forcing chain with the persistent CUDA kernels.

    Same contract as :func:`zf_kernels.ops.recurrence.naive.zforcing_chain_ref` (arguments are
    checked by :func:`zf_kernels.ops.zforcing_chain`); float32 / float64 / bfloat16 CUDA tensors.
    ``units_per_block`` / ``threads`` (0 = automatic: ceil(H / SMs) units, 256 threads) override
    the partition, for tests. A shape that cannot run as one cooperative launch raises
    ValueError naming B, H, M, Z and the bytes.
    """
    why = why_unsupported(gates_x)
    if why is not None:
        raise ValueError(why)
    kernels = _ExtensionKernels(units_per_block, threads, tf32_passes(gates_x))
    return ChainOutput(*run_chain(kernels, gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz,
                                  bias_gz, weight_iz, weight_hh))


def plan(gates_x, post_x, eps, units_per_block: int = 0, threads: int = 0) -> tuple[dict, dict]:
    """``(forward, backward)`` launch plans on ``gates_x``'s device (ValueError where one cannot run)."""
    B, H, M, Z = gates_x.shape[1], gates_x.shape[2] // 4, post_x.shape[-1], eps.shape[-1]
    es = gates_x.element_size()
    with torch.cuda.device(gates_x.device):
        return tuple(_C.chain_plan(bwd, B, H, M, Z, es, units_per_block, threads, tf32_passes(gates_x))
                     for bwd in (False, True))


_SLICES = (("W_hh", "W_comb", "W_qh", "W_q2"), ("W_hh^T", "W_qh^T", "W_comb^T", "W_q2^T"))


def _explain(gates_x, post_x, eps, *rest) -> str:
    fwd, bwd = plan(gates_x, post_x, eps)

    def res(p, names):
        return "+".join(n for i, n in enumerate(names) if p["resident"] >> i & 1)
    products = products_label(gates_x, fwd["tf32"])
    return (f"one cooperative launch per direction, 3 grid syncs per step: {fwd['blocks']} blocks x "
            f"{fwd['threads']} threads, {products}, {fwd['units_per_block']} hidden units per block; resident in shared memory: "
            f"{res(fwd, _SLICES[0])} forward ({fwd['smem_bytes'] // 1024} KB), {res(bwd, _SLICES[1])} backward "
            f"({bwd['smem_bytes'] // 1024} KB)")


# what ``ops.explain("zforcing_chain", ...)`` appends / checks for this backend (see _dispatch)
zforcing_chain.explain = _explain
zforcing_chain.unsupported = why_unsupported
