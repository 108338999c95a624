"""The CUDA kernels' staging of activations (zf_persistent.h: stage_chunk) in 16-byte vectors
gives the same shared-memory contents as its element-wise loop: both emulation builds (default,
and -DZF_STAGE_VECTORS=0) run the same LSTM and chain steps, and every output and gradient must
agree bit for bit. The shapes are chosen so that every staged operand qualifies for the vector
path (widths multiples of 4, padded strides multiples of the vector), which the tests assert from
the plans: otherwise they could not fail."""
import pytest
import torch

import _cuda_emulation as emu
import test_cuda_emulation_bf16 as emu_bf16
import test_cuda_emulation_chain as emu_chain
from test_cuda_emulation import _Directions
from zf_kernels.ops.lstm._cuda_function import run_lstm
from zf_kernels.ops.recurrence._cuda_function import run_chain

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

SCALAR = ("-DZF_STAGE_VECTORS=0",)


def _vector_width(dtype):
    return 16 // torch.tensor([], dtype=dtype).element_size()


@pytest.mark.parametrize("dtype,tf32,chunked", [(torch.float32, 1, False), (torch.float32, 1, True),
                                                (torch.float32, 3, True), (torch.float64, 0, False)],
                         ids=["tf32", "tf32 32-wide chunks", "3xtf32 32-wide chunks", "f64"])
def test_lstm_vector_staging_matches_elementwise(dtype, tf32, chunked):
    T, B, I, H, units, threads = 3, 5, 3, 36, 8, 64
    V, es = _vector_width(dtype), torch.tensor([], dtype=dtype).element_size()
    limits = (0, 0)
    if chunked:
        limits = emu.chunked_limits(emu.library(), B, H, units, threads, es, tf32, es * (64 + 4))
    for bwd, lim in zip((False, True), limits):
        p = emu.plan(emu.library(), bwd, B, H, es, emu.ZfLstmLaunch(threads, units, lim, 0, tf32))
        assert p.a_stride % V == 0 and p.k % V == 0 and p.kc % V == 0, "the vector path would not run"
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
            for s in ((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,), (B, H), (B, H))]
    grads = [torch.randn(T, B, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype),
             torch.randn(B, H, generator=g, dtype=dtype)]
    results = []
    for flags in ((), SCALAR):
        lib = emu.library(flags)
        kernels = _Directions(*(emu.EmulatedKernels(lib, threads, units, lim, tf32=tf32) for lim in limits))
        out, (h, c) = run_lstm(kernels, *args, reverse=False)
        results.append([out, h, c, *torch.autograd.grad([out, h, c], args, grads)])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"output/grad {i} differs between vector and element-wise staging"


def test_lstm_bf16_vector_staging_matches_elementwise():
    T, B, H, units, threads = 3, 5, 24, 8, 64
    for bwd in (False, True):
        p = emu.plan(emu.library(), bwd, B, H, 2, emu.ZfLstmLaunch(threads, units, 0, 0, 0))
        assert p.a_stride % 8 == 0 and p.k % 8 == 0, "the vector path would not run"
    results = []
    for flags in ((), SCALAR):
        k = emu.EmulatedKernels(emu.library(flags), threads, units)
        results.append(emu_bf16.run_kernels(k, k, T, B, H, reverse=True)[1:])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"buffer {i} differs between vector and element-wise staging"


@pytest.mark.parametrize("dtype,tf32", [(torch.float32, 0), (torch.float32, 1), (torch.float64, 0)],
                         ids=["f32", "tf32", "f64"])
def test_chain_vector_staging_matches_elementwise(dtype, tf32):
    """H, M, Z multiples of 4: h, s, z (forward), ds, dgates, dparams (backward) all qualify."""
    shape, units, threads = (3, 5, 12, 8, 4, 6), 4, 64
    T, B, H, M, Z, G = shape
    es = torch.tensor([], dtype=dtype).element_size()
    for bwd in (False, True):
        p = emu.chain_plan(emu.chain_library(), bwd, B, H, M, Z, es, emu.ZfChainLaunch(threads, units, 0, 0, tf32))
        assert p.a_stride % _vector_width(dtype) == 0, "the vector path would not run"
    args = [a.detach().to(dtype).requires_grad_() for a in emu_chain.make_inputs(*shape)]
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(T, B, n, generator=g, dtype=dtype) for n in (H, H, Z, Z, Z)]
    results = []
    for flags in ((), SCALAR):
        lib = emu.chain_library(flags)
        kernels = emu_chain._Directions(emu.EmulatedChainKernels(lib, threads, units, tf32=tf32),
                                        emu.EmulatedChainKernels(lib, threads, units, tf32=tf32))
        outs = run_chain(kernels, *args)
        results.append([*outs, *torch.autograd.grad(outs, args, grads)])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"output/grad {i} differs between vector and element-wise staging"


def test_chain_bf16_vector_staging_matches_elementwise():
    """H, M, Z multiples of 8: every staged bf16 operand qualifies for 8-element vectors."""
    T, B, H, M, Z, units, threads = 3, 5, 16, 8, 8, 4, 64
    for bwd in (False, True):
        p = emu.chain_plan(emu.chain_library(), bwd, B, H, M, Z, 2, emu.ZfChainLaunch(threads, units, 0, 0, 0))
        assert p.a_stride % 8 == 0, "the vector path would not run"
    results = []
    for flags in ((), SCALAR):
        k = emu.EmulatedChainKernels(emu.chain_library(flags), threads, units)
        _, f, b = emu_bf16.run_chain_kernels(k, k, T, B, H, M, Z)
        results.append([*f.values(), *b.values()])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"buffer {i} differs between vector and element-wise staging"
