"""The CUDA LSTM kernels (csrc/lstm_kernels.cu) run on the CPU: the same source compiled by g++
with -DZF_CPU_EMULATION (blocks = groups of std::threads, __syncthreads / grid sync = std::barrier),
called through the real autograd glue (zf_kernels/ops/lstm/_cuda_function.py), against
``ops.lstm(backend="torch")``: outputs, h_T, c_T and every gradient, float32 and float64, both
directions, on odd shapes split over several blocks. A build without the grid sync must fail
these comparisons (the tests have teeth). Nothing here says anything about a GPU run."""
import ctypes
import math

import pytest
import torch

import _cuda_emulation as emu
from _helpers import NaNFilledLSTMKernels
from zf_kernels import ops
from zf_kernels.ops.lstm._cuda_function import run_lstm

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}

# (T, B, I, H, units per block, threads per block, K chunks forced, biases, h0/c0): what each exercises
CASES = {
    # 5 blocks (the last one has 1 of its 3 units), 2 threads per register tile splitting K
    "T5 B3 H13 5 blocks": (5, 3, 4, 13, 3, 8, False, True, True),
    # T=1, B=1 (3 of 4 tile rows padding), no biases, zero initial state
    "T1 B1 H5 3 blocks": (1, 1, 2, 5, 2, 4, False, False, False),
    # shared memory limited so h_{t-1} (forward) / dgates (backward) are staged in 32-wide chunks
    "T4 B5 H37 chunked": (4, 5, 3, 37, 8, 16, True, True, True),
    # more register tiles than threads: each thread loops over several
    "T3 B9 H11 tiles>threads": (3, 9, 2, 11, 4, 8, False, True, False),
    # the GPU's default launch at the TIMIT batch (256 threads, 8 units per block, B=32): 8 x 8
    # register tiles forward, 4 threads splitting K of each (16 backward), as at H=1024
    "T3 B32 H24 GPU launch": (3, 32, 5, 24, 8, 256, False, True, True),
}


def _inputs(T, B, I, H, biases, states, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()

    args = [r(T, B, I), r(4 * H, I, scale=0.5), r(4 * H, H, scale=1.0 / math.sqrt(H)),
            r(4 * H, scale=0.3) if biases else None, r(4 * H, scale=0.3) if biases else None,
            r(B, H, scale=0.5) if states else None, r(B, H, scale=0.5) if states else None]
    grads = [torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype),   # never ones
             torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype),
             torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)]
    return args, grads


def _kernels(lib, dtype, B, H, units, threads, chunked, backward_lib=None):
    es = torch.tensor([], dtype=dtype).element_size()
    limits = []
    for bwd in (False, True):
        p = emu.plan(lib, bwd, B, H, es, emu.ZfLstmLaunch(threads, units, 0, 0))
        assert p.blocks == math.ceil(H / units) >= 3 or H <= 2 * units
        if not chunked:
            limits.append(0)
            continue
        # just enough for one 32-wide chunk: the kernels loop over ceil(K / 32) chunks
        fixed = p.w_bytes + p.part_bytes + p.state_bytes
        bp = p.row_groups_b * 4
        limit = fixed + bp * es * (64 + (p.ksplit * p.row_groups_m) % 32) + 8
        q = emu.plan(lib, bwd, B, H, es, emu.ZfLstmLaunch(threads, units, limit, 0))
        assert q.kc == 32 < q.k, (q.kc, q.k)
        limits.append(limit)
    fwd = emu.EmulatedKernels(lib, threads, units, limits[0])
    bwd = emu.EmulatedKernels(backward_lib or lib, threads, units, limits[1])
    return _Directions(fwd, bwd)


class _Directions:
    """Forward from one kernels object, backward from another (their launch limits differ)."""

    def __init__(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd

    def forward(self, *args):
        self.fwd.forward(*args)

    def backward(self, *args):
        self.bwd.backward(*args)


def _run(kernels, args, grads, reverse):
    out, (h, c) = run_lstm(kernels, *args, reverse=reverse)
    leaves = [a for a in args if a is not None]
    got = torch.autograd.grad([out, h, c], leaves, grads)
    return [out.detach(), h.detach(), c.detach()], list(got)


def _reference(args, grads, reverse):
    out, (h, c) = ops.lstm(*args, reverse=reverse, backend="torch")
    leaves = [a for a in args if a is not None]
    return [out.detach(), h.detach(), c.detach()], list(torch.autograd.grad([out, h, c], leaves, grads))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_emulated_lstm_matches_torch(case, reverse, dtype):
    T, B, I, H, units, threads, chunked, biases, states = CASES[case]
    args, grads = _inputs(T, B, I, H, biases, states, dtype)
    kernels = NaNFilledLSTMKernels(_kernels(emu.library(), dtype, B, H, units, threads, chunked))
    got_out, got_grad = _run(kernels, args, grads, reverse)
    ref_out, ref_grad = _reference(args, grads, reverse)
    names = ["out", "h_T", "c_T"] + [n for n, a in zip(["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                          "h0", "c0"], args) if a is not None]
    for name, a, b in zip(names, got_out + got_grad, ref_out + ref_grad):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, n=name: f"{case}: {n}: {m}")


def test_cuda_emulated_lstm_second_backward_through_retained_graph():
    """The backward kernel overwrites the saved pre-activations: a second backward rebuilds them."""
    T, B, I, H, units, threads, chunked, biases, states = CASES["T5 B3 H13 5 blocks"]
    args, grads = _inputs(T, B, I, H, biases, states, torch.float64)
    kernels = _kernels(emu.library(), torch.float64, B, H, units, threads, chunked)
    out, (h, c) = run_lstm(kernels, *args)
    first = torch.autograd.grad([out, h, c], args, grads, retain_graph=True)
    second = torch.autograd.grad([out, h, c], args, grads)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_cuda_emulation_without_grid_sync_fails(direction):
    """Teeth: with the grid sync compiled out (blocks run one after another, each still syncing
    its own threads) the same comparison fails, in the forward and in the backward kernel."""
    T, B, I, H, units, threads, chunked, biases, states = CASES["T5 B3 H13 5 blocks"]
    dtype = torch.float64
    args, grads = _inputs(T, B, I, H, biases, states, dtype)
    good, broken = emu.library(), emu.library((emu.NO_GRID_SYNC,))
    if direction == "forward":
        kernels = _kernels(broken, dtype, B, H, units, threads, chunked)
    else:
        kernels = _kernels(good, dtype, B, H, units, threads, chunked, backward_lib=broken)
    got_out, got_grad = _run(NaNFilledLSTMKernels(kernels), args, grads, False)
    ref_out, ref_grad = _reference(args, grads, False)
    got, ref = (got_out, ref_out) if direction == "forward" else (got_grad, ref_grad)
    if direction == "backward":   # the forward was the good one
        for a, b in zip(got_out, ref_out):
            torch.testing.assert_close(a, b, **TOL[dtype])
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(got, ref))


# ------------------------------------------------------------------------ the launch plan
# H100 / H200: 132 SMs (H100 PCIe: 114), 227 KB of opt-in shared memory per block
SMEM_OPTIN = 232448


@pytest.mark.parametrize("sms", [132, 114])
@pytest.mark.parametrize("B,H", [(32, 1024), (32, 512)])
def test_cuda_plan_fits_the_design_targets_in_float32(B, H, sms):
    """T40 B32 I512 H1024 and T784 B32 I64 H512 (DESIGN s.2): one block per SM, W_hh resident."""
    lib = emu.library()
    for bwd in (False, True):
        p = emu.plan(lib, bwd, B, H, 4, emu.ZfLstmLaunch(256, 0, SMEM_OPTIN, sms))
        assert p.blocks <= sms and p.blocks * p.units_per_block >= H
        assert p.smem_bytes <= SMEM_OPTIN and p.w_bytes >= 4 * p.units_per_block * H * 4
        assert p.kc >= 32


@pytest.mark.parametrize("B,H,es,what", [(32, 4096, 4, "float32"), (32, 1024, 8, "float64"),
                                         (4096, 256, 4, "float32")])
def test_cuda_plan_names_the_shape_that_does_not_fit(B, H, es, what):
    lib = emu.library()
    with pytest.raises(emu.EmulationError) as info:
        emu.plan(lib, False, B, H, es, emu.ZfLstmLaunch(256, 0, SMEM_OPTIN, 132))
    assert info.value.code == 1
    msg = str(info.value)
    assert f"B={B}, H={H}" in msg and what in msg and "shared memory" in msg and "backend=" in msg


def test_emulation_fails_a_kernel_that_writes_outside_its_shared_memory():
    """Bytes of a known pattern guard both sides of each block's shared memory (zf_device.h): a
    kernel that writes past either end fails its launch, naming the block and the bytes, instead
    of corrupting the heap (which hung a test run once)."""
    lib = emu.library()
    err = ctypes.create_string_buffer(512)
    fn = lib.zf_emu_write_past_smem
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    assert fn(1000, 0, 8, err, 512) == 0 and err.value == b""          # the last 8 bytes: inside
    assert fn(1000, 3, 8, err, 512) == 1
    assert b"block 0 wrote 3 bytes outside its 1000 bytes of dynamic shared memory" in err.value
    assert fn(4, -2, 8, err, 512) == 1 and b"wrote 6 bytes outside" in err.value   # before its start


@pytest.mark.parametrize("T,B", [(0, 3), (4, 0)])
def test_cuda_lstm_glue_with_no_steps_or_sequences_gives_the_references_gradients(T, B):
    """Nothing to launch: the glue returns the reference's outputs, connected to the inputs
    (fresh zeros had no grad_fn: a backward through out and h_T failed where lstm_ref's runs)."""
    class NoKernels:
        def forward(self, *a):
            raise AssertionError("no launch for an empty input")
        backward = forward
    x, w_ih, w_hh, h0 = (torch.randn(*s, dtype=torch.float64, requires_grad=True)
                         for s in ((T, B, 3), (8, 3), (8, 2), (B, 2)))
    out, (h, c) = run_lstm(NoKernels(), x, w_ih, w_hh, h0=h0)
    assert out.shape == (T, B, 2) and h.shape == c.shape == (B, 2)
    grads = torch.autograd.grad(out.sum() + h.sum() + c.sum(), (x, w_ih, w_hh, h0), allow_unused=True)
    ref_out, (ref_h, ref_c) = ops.lstm(x, w_ih, w_hh, h0=h0, backend="torch")
    want = torch.autograd.grad(ref_out.sum() + ref_h.sum() + ref_c.sum(), (x, w_ih, w_hh, h0), allow_unused=True)
    for g, w in zip(grads, want):
        assert (g is None) == (w is None) and (g is None or torch.equal(g, w))
