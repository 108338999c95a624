# Shared pytest setup. Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET
# is read when a kernel is decorated (module import), so it has to be set before any test
# module imports a zf_kernels Triton module. setdefault keeps an explicit choice.
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# triton 3.6's interpreter multiplies bfloat16 bit patterns as integers in tl.dot: repaired for
# the tests (only if broken, verified), so the kernels' bf16 paths run on the CPU too
import _interpreter_bf16  # noqa: E402

BF16_DOT_REPAIRED = _interpreter_bf16.install()

# The models under test are tiny: one intra-op thread is faster than two (and, on a busy
# 2-core machine, OpenMP threads spinning against each other slowed steps by 100x).
torch.set_num_threads(1)


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled (floating) or 77-filled (integer)
    tensors: a buffer a kernel never writes shows in the results. The kernel tests use it
    (``pytestmark = pytest.mark.usefixtures("nan_empty")`` or as an argument)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        with torch.no_grad():
            if t.is_floating_point():
                t.fill_(float("nan"))
            elif t.dtype != torch.bool:
                t.fill_(77)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))
    assert torch.empty(3).isnan().all()


@pytest.fixture
def tf32_flags():
    """``set(matmul=..., cudnn=...)``: torch's two TF32 switches for one test, both restored
    afterwards. Not through monkeypatch.setattr: the matmul switch is a property of a module
    object (``torch.backends.cuda.matmul``), which pytest 9.2's undo deletes instead of
    restoring (an error at teardown)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_(*, matmul: bool, cudnn: bool):
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
    yield set_
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def min_norm_torch_clamp(monkeypatch):
    """torch.clamp with torch 2.14's gradient at its bounds (0 there: the minimum-norm
    subgradient; torch <= 2.13 passes the gradient on the closed interval), whatever torch is
    installed. zf_kernels keeps the closed interval in every kernel and reference
    (``ops.activations.naive.clamp_ref``): with this fixture a reference that inherits
    torch.clamp's convention fails on CI's torch 2.13 too."""
    real_clamp = torch.clamp

    def clamp(x, min=None, max=None):   # scalar bounds, as the references use it
        y = real_clamp(x, min, max)
        inside = torch.ones_like(x, dtype=torch.bool)
        if min is not None:
            inside &= x > min
        if max is not None:
            inside &= x < max
        return torch.where(inside, x, y.detach())

    monkeypatch.setattr(torch, "clamp", clamp)
    x = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    (g,) = torch.autograd.grad(torch.clamp(x, -1.0, 1.0).sum(), x)
    assert g.tolist() == [0.0, 1.0, 0.0]
