"""ops.leaky_clamp, the model's clamped LeakyReLU (and, with slope 1, its parameter clamp):
the fused Triton op against torch's ``clamp(leaky_relu(x))`` on values and gradients, bit for
bit in every dtype (both compute in float32, float64 for float64, and round once), at the
kinks and the bounds, with NaN / inf inputs and upstream gradients, NaN-prefilled outputs,
odd and empty shapes, non-contiguous inputs; float64 gradcheck; argument errors.
Triton runs in the interpreter on the CPU (TRITON_INTERPRET=1, set by conftest.py)."""
import math

import numpy as np
import pytest
import torch

from zf_kernels import ops
from zf_kernels.ops.activations.naive import leaky_clamp_ref

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (slope, bound): the MLP activation, the parameter clamp, a ReLU-like clamp, and a bound that
# float32 cannot hold (a float32 constant in the kernel clamped float64 to 0.1 + 1.5e-9)
SETTINGS = [(1 / 3, 3.0), (1.0, 8.0), (0.0, 2.5), (0.25, 0.1)]


pytestmark = pytest.mark.usefixtures("nan_empty")   # conftest.py


def _inputs(shape, dtype, slope, bound, seed=0):
    """Random values of both signs well past the bounds, plus (where there is room) the
    kinks and edges: 0, +-bound, -bound / slope, +-inf, NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 * bound
    special = [0.0, -0.0, bound, -bound, math.inf, -math.inf, math.nan, 1e-30, -1e-30]
    if slope > 0:
        special += [-bound / slope, -bound / slope * 1.0001]
    flat = x.view(-1)
    flat[: min(len(special), flat.numel())] = torch.tensor(special[: flat.numel()], dtype=torch.float64)
    return x.to(device=DEVICE, dtype=dtype)


def _grads_of(fn, x, g):
    x = x.detach().requires_grad_()
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, g)
    return y, dx


def _fused(front_end):
    """The Triton leaky_clamp through its autograd Function (what eager code calls) or its
    torch.library custom ops (what torch.compile traces; called eagerly here)."""
    if front_end == "custom_op":
        from zf_kernels.ops.activations import triton_op
        return triton_op.leaky_clamp
    return lambda t, slope, bound: ops.leaky_clamp(t, slope, bound, backend="triton")


@pytest.mark.parametrize("front_end", ["function", "custom_op"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("slope,bound", SETTINGS)
@pytest.mark.parametrize("shape", [(), (1,), (11,), (3, 5, 7), (2, 1037), (0, 4)], ids=str)
def test_triton_equals_torch_bit_for_bit(shape, slope, bound, dtype, front_end):
    x = _inputs(shape, dtype, slope, bound)
    gen = torch.Generator().manual_seed(1)
    g = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(DEVICE, dtype)
    if g.numel() > 3:                       # non-finite upstream gradients, cut by the clamp or not
        g.view(-1)[-3:] = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float64).to(g.dtype)
    y_ref, dx_ref = _grads_of(lambda t: leaky_clamp_ref(t, slope, bound), x, g)
    y, dx = _grads_of(lambda t: _fused(front_end)(t, slope, bound), x, g)
    assert y.dtype == dtype and y.shape == x.shape and dx.dtype == dtype
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=0, equal_nan=True)


def test_non_contiguous_input_and_gradient():
    x = _inputs((6, 9), torch.float32, 1 / 3, 3.0).t()[:, ::2]
    g = torch.randn(9, 6, dtype=torch.float32, device=DEVICE).t()[::2].t()
    assert not x.is_contiguous() and not g.is_contiguous() and g.shape == x.shape
    y_ref, dx_ref = _grads_of(lambda t: leaky_clamp_ref(t, 1 / 3, 3.0), x, g)
    y, dx = _grads_of(lambda t: ops.leaky_clamp(t, 1 / 3, 3.0, backend="triton"), x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_values_of_the_docstring_and_the_conventions(backend, min_norm_torch_clamp):
    """zf_kernels' gradient convention, in the kernel and the reference alike, with torch.clamp
    giving 0 at its bounds as torch >= 2.14 does (the fixture): the reference must not inherit it."""
    x = torch.tensor([-12.0, -9.0, -1.5, 0.0, 0.5, 3.0, 9.0, math.nan], device=DEVICE, requires_grad=True)
    y = ops.leaky_clamp(x, 1 / 3, 3.0, backend=backend)
    torch.testing.assert_close(y.detach(), torch.tensor([-3.0, -3.0, -0.5, 0.0, 0.5, 3.0, 3.0, math.nan],
                                                        device=DEVICE), equal_nan=True)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    # slope at x <= 0 (0 included); the closed interval passes (-9 -> -3 and 3 -> 3); NaN -> 0
    torch.testing.assert_close(dx, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 1.0, 1.0, 0.0, 0.0], device=DEVICE))


def test_gradcheck_float64():
    x = torch.tensor([-20.0, -4.0, -1.0, 0.25, 2.0, 5.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.leaky_clamp(t, 1 / 3, 3.0, backend="triton"), (x,))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(slope=-0.1), ValueError, "slope"), (dict(slope=1.5), ValueError, "slope"),
    (dict(slope=True), ValueError, "slope"), (dict(slope="1"), ValueError, "slope"),
    (dict(bound=0.0), ValueError, "bound"), (dict(bound=math.inf), ValueError, "bound"),
    (dict(bound=math.nan), ValueError, "bound"), (dict(x=[1.0]), TypeError, "x"),
    (dict(x=torch.ones(3, dtype=torch.int64)), TypeError, "x"),
    (dict(backend="cuda-ish"), ValueError, "backend"),
    # a numpy float32 is in range but not a Python number: the message says which
    (dict(slope=np.float32(0.25)), ValueError, r"slope must be a Python int or float in \[0, 1\], got .* \(float32\)"),
    # over float16's range: torch.clamp's own error named no argument
    (dict(x=torch.ones(3, dtype=torch.float16), bound=1e5), ValueError,
     r"bound must be at most the largest torch.float16 value \(65504\) for x of that dtype, got 100000.0"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    args = dict(x=torch.ones(3), slope=1 / 3, bound=3.0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ops.leaky_clamp(**args)


def test_auto_is_the_reference_on_the_cpu_and_triton_on_cuda():
    want = "triton" if torch.cuda.is_available() else "torch"
    assert want in ops.explain("leaky_clamp", torch.ones(2, device=DEVICE))
