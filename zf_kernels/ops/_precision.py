"""The one rule for the precision of float32 products in the fused kernels: Triton's ``tl.dot``
(``input_precision``) and the CUDA extension's block products (IEEE FMAs or TF32 tensor cores);
and what the CUDA extension keeps wider than a 16-bit input (its cell states). No Triton import
here: the CUDA kernels use it where Triton is not installed."""
import os

import torch

FP32_DOT_ENV = "ZF_FP32_DOT"
FP32_DOT_CHOICES = ("auto", "ieee", "tf32", "tf32x3")


def dot_precision(t: torch.Tensor) -> str:
    """``tl.dot``'s ``input_precision`` for inputs like ``t``, and through :func:`tf32_passes` the
    CUDA kernels' block products. It matters only for float32 on a GPU: by default TF32 exactly when torch allows it for its own float32 matmuls
    (``torch.backends.cuda.matmul.allow_tf32``, e.g. ``torch.set_float32_matmul_precision("high")``),
    else IEEE, so a fused op rounds like the reference it replaces. ``ZF_FP32_DOT=ieee|tf32|tf32x3``
    overrides that on a GPU; "tf32x3" (three TF32 products per element, the split operands'
    low parts included: close to IEEE float32 on the tensor cores) is an experiment, measured by
    the benchmarks' "tf32x3" rows. The interpreter computes float32 dots in float32 whatever
    the setting. 16-bit inputs get "tf32" (Triton's default, a no-op for them); float64 "ieee"."""
    if t.dtype == torch.float32:
        if not t.is_cuda:
            return "ieee"
        choice = os.environ.get(FP32_DOT_ENV, "auto")
        if choice not in FP32_DOT_CHOICES:
            raise ValueError(f"{FP32_DOT_ENV} must be one of {', '.join(FP32_DOT_CHOICES)}; got {choice!r}")
        if choice == "auto":
            return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        return choice
    return "ieee" if t.dtype == torch.float64 else "tf32"


# the CUDA kernels' products per precision: TF32 products per element (0: IEEE FMAs)
TF32_PASSES = {"ieee": 0, "tf32": 1, "tf32x3": 3}
PRODUCTS = {0: "IEEE FMAs", 1: "TF32 tensor cores", 3: "3xTF32 tensor cores"}


def tf32_passes(t: torch.Tensor) -> int:
    """How the CUDA extension's float32 block products run for inputs like ``t``, by the same
    rule as ``tl.dot``'s: 1 (TF32 tensor-core tiles) for "tf32", 3 (each operand split into two
    TF32 parts, three products: close to IEEE) for "tf32x3", 0 (IEEE FMAs) otherwise."""
    return TF32_PASSES[dot_precision(t)] if t.dtype == torch.float32 else 0


def products(t: torch.Tensor, passes: int) -> str:
    """What ``ops.explain`` says the CUDA extension's block products run on for inputs like ``t``
    (``passes``: the plan's TF32 products per element; bfloat16 always has its own tiles)."""
    return "bfloat16 tensor cores" if t.dtype == torch.bfloat16 else PRODUCTS[passes]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cell states the CUDA extension's recurrences keep (the LSTM's c_all and dc,
    the chain's c0, c, grad_c and dc): float32 for bfloat16 inputs, as the Triton kernels."""
    return torch.float32 if dtype == torch.bfloat16 else dtype
