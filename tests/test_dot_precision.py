"""``_precision.dot_precision``: the one rule for the fused kernels' float32 precision (float32
follows torch's TF32 switch on a GPU unless ZF_FP32_DOT overrides it; the interpreter always IEEE),
for ``tl.dot`` and, through ``tf32_passes``, for the CUDA extension's tensor-core tiles."""
import pytest
import torch

from zf_kernels.ops._precision import FP32_DOT_ENV, dot_precision, tf32_passes


class _CudaLike:
    """Stands in for a CUDA tensor: dot_precision and tf32_passes read only ``dtype`` and ``is_cuda``."""
    is_cuda = True

    def __init__(self, dtype):
        self.dtype = dtype


@pytest.fixture
def tf32(monkeypatch, tf32_flags):
    """Set torch's float32-matmul TF32 switch for one test (restored afterwards: conftest's
    tf32_flags), with no ZF_FP32_DOT override."""
    monkeypatch.delenv(FP32_DOT_ENV, raising=False)
    return lambda on: tf32_flags(matmul=on, cudnn=torch.backends.cudnn.allow_tf32)


def test_float32_follows_torch_tf32_switch_by_default(tf32):
    tf32(False)
    assert dot_precision(_CudaLike(torch.float32)) == "ieee"
    tf32(True)
    assert dot_precision(_CudaLike(torch.float32)) == "tf32"


@pytest.mark.parametrize("choice", ["ieee", "tf32", "tf32x3"])
@pytest.mark.parametrize("allow", [False, True])
def test_env_overrides_for_float32_on_gpu_only(choice, allow, tf32, monkeypatch):
    tf32(allow)
    monkeypatch.setenv(FP32_DOT_ENV, choice)
    assert dot_precision(_CudaLike(torch.float32)) == choice
    assert dot_precision(torch.zeros(1)) == "ieee"            # the interpreter: float32 stays IEEE
    assert dot_precision(_CudaLike(torch.float64)) == "ieee"
    assert dot_precision(_CudaLike(torch.bfloat16)) == "tf32"  # 16-bit: the setting does not apply


def test_bad_setting_names_the_variable(tf32, monkeypatch):
    monkeypatch.setenv(FP32_DOT_ENV, "fast")
    with pytest.raises(ValueError, match="ZF_FP32_DOT must be one of auto, ieee, tf32, tf32x3; got 'fast'"):
        dot_precision(_CudaLike(torch.float32))


@pytest.mark.parametrize("choice,allow,expected", [
    ("auto", True, 1), ("auto", False, 0), ("tf32", False, 1), ("ieee", True, 0), ("tf32x3", False, 3)])
def test_cuda_kernels_take_tf32_tiles_by_the_same_rule(choice, allow, expected, tf32, monkeypatch):
    tf32(allow)
    monkeypatch.setenv(FP32_DOT_ENV, choice)
    assert tf32_passes(_CudaLike(torch.float32)) == expected
    assert tf32_passes(_CudaLike(torch.float64)) == 0 and tf32_passes(torch.zeros(1)) == 0


def test_triton_kernels_share_the_rule():
    pytest.importorskip("triton")
    from zf_kernels.ops import _triton_common
    assert _triton_common.dot_precision is dot_precision
