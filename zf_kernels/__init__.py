"""zf_kernels: fused kernels and a complete trainer for Z-Forcing stochastic RNNs."""
__version__ = "0.1.0"

# The oldest torch the whole test suite has passed under (2.8.0, 2026-11-28; under 2.4.1 the
# Triton ops' torch.library.custom_op registrations fail on their list[bool] schemas);
# pyproject.toml asks for the same. Said here, by name, not from deep inside torch.library.
MIN_TORCH = "2.8"


def _check_torch_version():
    import torch
    if torch.__version__ < MIN_TORCH + ".0a0":   # TorchVersion compares as a version
        raise ImportError(f"zf_kernels needs torch >= {MIN_TORCH}, found torch {torch.__version__}")


_check_torch_version()

from . import ops  # noqa: E402
from .model import LossTerms, LSTMWeights, ZForcing, training_loss  # noqa: E402

__all__ = ["ops", "ZForcing", "LossTerms", "LSTMWeights", "training_loss", "__version__"]
