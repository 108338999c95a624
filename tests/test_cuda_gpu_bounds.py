"""The GPU tests of the CUDA extension (tests/test_cuda_lstm.py, tests/test_cuda_chain.py) hold
bounds that were set without a GPU. Here their comparisons run on the CPU with the CPU emulation
of the same kernel source (tests/_cuda_emulation.py) in place of the extension, so a bound the
kernels' own rounding cannot meet (as the chain's DESIGN-shape bound could not, found by hand on
2026-11-27) fails in CI rather than in a device session; and with the grid sync compiled out,
the same comparisons must fail. The DESIGN shapes themselves take ~50 s each here and are left
to the GPU run."""
import pytest

import _cuda_emulation as emu
import test_cuda_chain as gpu_chain
import test_cuda_lstm as gpu_lstm

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")


def _module(make_kernels):
    """What the GPU tests' fixtures return, as far as their comparisons use it."""
    return type("EmulatedExtension", (), {"_ExtensionKernels": staticmethod(make_kernels)})


def _chain(extra_flags=()):
    # TF32 tiles: whole warps (32 emulated threads per block) over 16 "SMs", as _lstm
    return _module(lambda units, tf32=False: emu.EmulatedChainKernels(
        emu.chain_library(extra_flags), 32 if tf32 else 8, units, 0, 16 if tf32 else 132, tf32=int(tf32)))


def _lstm(extra_flags=()):
    # the TF32 tiles need whole warps: 32 emulated threads per block for them, over 16 "SMs"
    # (132 blocks of 32 std::threads took 76 s for one shape; the rounding does not depend on it)
    return _module(lambda units, tf32=False: emu.EmulatedKernels(
        emu.library(extra_flags), 32 if tf32 else 8, units, 0, 16 if tf32 else 132, tf32=int(tf32)))


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(gpu_chain, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_lstm, "DEVICE", "cpu")


# the GPU tests' random-shape comparisons (IEEE float32 and TF32 tiles), each with the emulated
# kernels of its module: name -> (module, GPU test, kernels)
RANDOM_SHAPES = {
    "chain float32": (gpu_chain, "test_cuda_chain_random_shapes_float32", _chain),
    "chain tf32": (gpu_chain, "test_cuda_chain_random_shapes_tf32", _chain),
    "lstm float32": (gpu_lstm, "test_cuda_lstm_random_shapes_float32", _lstm),
    "lstm tf32": (gpu_lstm, "test_cuda_lstm_random_shapes_tf32", _lstm),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", list(RANDOM_SHAPES))
def test_random_shapes_bound_holds_for_the_kernels_rounding(on_cpu, which, seed):
    module, test, kernels = RANDOM_SHAPES[which]
    getattr(module, test)(kernels(), seed)


def test_chain_3xtf32_random_shapes_bound_holds(on_cpu):
    # the chain only (7 s): the LSTM's 3xTF32 case takes 18 s emulated, and test_cuda_emulation_tf32
    # holds its tiles to 2e-6 of float64, 5x inside the GPU test's bound
    gpu_chain.test_cuda_chain_random_shapes_3xtf32(_chain(), 0)


@pytest.mark.parametrize("units", [0, 1, 3])
def test_chain_float64_bound_holds(on_cpu, units):
    gpu_chain.test_cuda_chain_small_odd_shapes_float64(_chain(), units)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("units", [0, 1, 3])
def test_lstm_float64_bound_holds(on_cpu, reverse, units):
    gpu_lstm.test_cuda_lstm_small_odd_shapes_float64(_lstm(), reverse, units)


def test_the_comparisons_fail_without_the_grid_sync(on_cpu):
    with pytest.raises(AssertionError):
        gpu_chain.test_cuda_chain_random_shapes_float32(_chain((emu.NO_GRID_SYNC,)), 0)
    with pytest.raises(AssertionError):
        gpu_lstm.test_cuda_lstm_random_shapes_float32(_lstm((emu.NO_GRID_SYNC,)), 0)


# the bfloat16 kernels' step-by-step checks (whole warps: 32 emulated threads per block, 16 "SMs"),
# at the GPU tests' small shapes
def _bf16(make):
    return _module(lambda units: make(units))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T,B,H,units", [(5, 7, 13, 0), (3, 1, 40, 3)])   # H=300: 17 s each, CI time
def test_lstm_bf16_step_bound_holds(on_cpu, T, B, H, units, reverse):
    kernels = _bf16(lambda u: emu.EmulatedKernels(emu.library(), 32, u, 0, 16))
    gpu_lstm.test_cuda_lstm_bf16_kernels_store_each_step_within_rounding(kernels, T, B, H, units, reverse)


@pytest.mark.parametrize("shape,units", [((4, 5, 13, 7, 5), 0), ((3, 19, 100, 37, 9), 0), ((3, 1, 40, 11, 6), 3)])
def test_chain_bf16_stage_bound_holds(on_cpu, shape, units):
    kernels = _bf16(lambda u: emu.EmulatedChainKernels(emu.chain_library(), 32, u, 0, 16))
    gpu_chain.test_cuda_chain_bf16_kernels_store_each_stage_within_rounding(kernels, shape, units)
