"""Public fused ops of zf_kernels. Each takes ``backend=`` in
``("auto", "torch", "triton", "cuda")``; ``explain(op, *tensors)`` says what "auto" picks and why."""
from ._checks import assume_valid_inputs
from ._dispatch import BACKENDS, BackendUnavailableError, explain, op_backend
from .activations import leaky_clamp
from .distributions import bernoulli_nll, categorical_nll, gaussian_kl, gaussian_nll, reparameterize
from .lstm import lstm, lstm_cell
from .recurrence import ChainOutput, zforcing_chain, zforcing_chain_ln

__all__ = [
    "BACKENDS", "BackendUnavailableError", "explain", "op_backend", "assume_valid_inputs",
    "lstm", "lstm_cell",
    "reparameterize", "gaussian_kl", "gaussian_nll", "bernoulli_nll", "categorical_nll",
    "leaky_clamp",
    "zforcing_chain", "zforcing_chain_ln", "ChainOutput",
]

# after every registration above (see preload_triton)
from ._dispatch import preload_triton  # noqa: E402

preload_triton()
