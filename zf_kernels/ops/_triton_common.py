"""Small Triton device functions shared by the fused kernels (gate nonlinearities and the
model's clamped LeakyReLU). Import only where Triton is installed."""
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def leaky_clamp(x, slope: tl.constexpr, bound: tl.constexpr):
    """clamp(leaky_relu(x, slope), -bound, bound)."""
    y = tl.where(x >= 0, x, x * slope)
    return tl.minimum(tl.maximum(y, -bound), bound)


@triton.jit
def leaky_clamp_grad(x, slope: tl.constexpr, bound: tl.constexpr):
    """d/dx of leaky_clamp at x, matching autograd of torch.clamp(F.leaky_relu(x)):
    the clamp passes the gradient on its closed interval, leaky_relu uses slope at x <= 0."""
    y = tl.where(x >= 0, x, x * slope)
    # (x * 0.0 + c) gives c in x's dtype: a bare literal in tl.where would be fp32
    zero = x * 0.0
    g = tl.where(x > 0, zero + 1.0, zero + slope)
    return tl.where((y >= -bound) & (y <= bound), g, zero)
