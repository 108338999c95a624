"""zf_kernels: fused kernels and a complete trainer for Z-Forcing stochastic RNNs."""
__version__ = "0.1.0"

from . import ops  # noqa: E402

__all__ = ["ops", "__version__"]
