"""The CUDA kernels' staging of activations (zf_persistent.h: stage_chunk) gives the same
shared-memory contents whichever of its paths runs: 16-byte vectors (ZF_STAGE_VECTORS=1, the
default) or one element at a time, each thread issuing ZF_STAGE_BATCH loads before its first
store (8 by default; 3 here too) or one (the plain loop). The builds run the same LSTM and chain
launches, and every output and gradient must agree bit for bit with the plain element-wise loop.
The emulation counts which paths ran (tests/_cuda_emulation.py: stage_counts): each test asserts
that its shapes reach whole batches of vectors inside A (straight-line loads, the GPU's common
case), batches at an edge (rows past B, columns past K) and, in the element-wise builds, the
element path; otherwise it could not fail."""
import pytest
import torch

import _cuda_emulation as emu
import test_cuda_emulation_bf16 as emu_bf16
import test_cuda_emulation_chain as emu_chain
from test_cuda_emulation import _Directions
from zf_kernels.ops.lstm._cuda_function import run_lstm
from zf_kernels.ops.recurrence._cuda_function import run_chain

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

PLAIN = ("-DZF_STAGE_VECTORS=0", "-DZF_STAGE_BATCH=1")  # the reference: one load, one store
VECTOR_BUILDS = {"vectors, batch 8": (), "vectors, batch 3": ("-DZF_STAGE_BATCH=3",)}
ELEMENT_BUILDS = {"elements, batch 8": ("-DZF_STAGE_VECTORS=0",)}


def _compare_builds(library, run, default_inside=True):
    """run(lib) -> tensors with the plain build and each other build: equal bit for bit; each
    build's staging took the paths its name says (batch 8 with whole vector batches inside A only
    where `default_inside`: the shape must give every thread 8 vectors within the first B rows)."""
    expected = run(library(PLAIN))
    for name, flags in {**VECTOR_BUILDS, **ELEMENT_BUILDS}.items():
        lib = library(flags)
        emu.stage_counts(lib)
        got = run(lib)
        counts = emu.stage_counts(lib)
        for i, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), f"{name}: output/grad/buffer {i} differs from the plain element-wise staging"
        if name in ELEMENT_BUILDS:
            assert counts["elements"] > 0 and counts["vectors inside"] == counts["vectors at an edge"] == 0, counts
            continue
        assert counts["elements"] == 0 and counts["vectors at an edge"] > 0, (name, counts)
        if default_inside or name != "vectors, batch 8":
            assert counts["vectors inside"] > 0, (name, counts)


# T, B, I, H, units, threads: at H = 48 and one warp per block the backward's 4H-wide dgates give
# each thread whole batches of 8 vectors inside A; the 32-wide chunks need B >= 13 for batches of 3
LSTM_SHAPE = (3, 5, 3, 48, 8, 32)
LSTM_CHUNKED_SHAPE = (3, 13, 3, 36, 8, 32)


@pytest.mark.parametrize("dtype,tf32,chunked", [(torch.float32, 1, False), (torch.float32, 1, True),
                                                (torch.float32, 3, True), (torch.float64, 0, False)],
                         ids=["tf32", "tf32 32-wide chunks", "3xtf32 32-wide chunks", "f64"])
def test_lstm_staging_paths_agree(dtype, tf32, chunked):
    T, B, I, H, units, threads = LSTM_CHUNKED_SHAPE if chunked else LSTM_SHAPE
    es = torch.tensor([], dtype=dtype).element_size()
    limits = (0, 0)
    if chunked:
        limits = emu.chunked_limits(emu.library(), B, H, units, threads, es, tf32, es * (64 + 4))
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
            for s in ((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,), (B, H), (B, H))]
    grads = [torch.randn(T, B, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype),
             torch.randn(B, H, generator=g, dtype=dtype)]

    def run(lib):
        kernels = _Directions(*(emu.EmulatedKernels(lib, threads, units, lim, tf32=tf32) for lim in limits))
        out, (h, c) = run_lstm(kernels, *args, reverse=False)
        return [out, h, c, *torch.autograd.grad([out, h, c], args, grads)]

    _compare_builds(emu.library, run, default_inside=not chunked)


def test_lstm_bf16_staging_paths_agree():
    T, B, H, units, threads = 3, 5, 96, 8, 32

    def run(lib):
        k = emu.EmulatedKernels(lib, threads, units)
        return emu_bf16.run_kernels(k, k, T, B, H, reverse=True)[1:]

    _compare_builds(emu.library, run)


@pytest.mark.parametrize("dtype,tf32", [(torch.float32, 0), (torch.float32, 1), (torch.float64, 0)],
                         ids=["f32", "tf32", "f64"])
def test_chain_staging_paths_agree(dtype, tf32):
    """h, s, z (forward), ds, dgates, dparams (backward) staged; H = 48, one warp per block."""
    shape, units, threads = (3, 5, 48, 24, 8, 6), 8, 32
    T, B, H, M, Z, G = shape
    args = [a.detach().to(dtype).requires_grad_() for a in emu_chain.make_inputs(*shape)]
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(T, B, n, generator=g, dtype=dtype) for n in (H, H, Z, Z, Z)]

    def run(lib):
        kernels = emu_chain._Directions(emu.EmulatedChainKernels(lib, threads, units, tf32=tf32),
                                        emu.EmulatedChainKernels(lib, threads, units, tf32=tf32))
        outs = run_chain(kernels, *args)
        return [*outs, *torch.autograd.grad(outs, args, grads)]

    _compare_builds(emu.chain_library, run)


def test_chain_bf16_staging_paths_agree():
    T, B, H, M, Z, units, threads = 3, 5, 96, 48, 16, 8, 32

    def run(lib):
        k = emu.EmulatedChainKernels(lib, threads, units)
        _, f, b = emu_bf16.run_chain_kernels(k, k, T, B, H, M, Z)
        return [*f.values(), *b.values()]

    _compare_builds(emu.chain_library, run)
