"""zf_kernels: fused kernels and a complete trainer for Z-Forcing stochastic RNNs."""
__version__ = "0.1.0"

from . import ops  # noqa: E402
from .model import LossTerms, LSTMWeights, ZForcing, training_loss  # noqa: E402

__all__ = ["ops", "ZForcing", "LossTerms", "LSTMWeights", "training_loss", "__version__"]
