"""A built-in synthetic data set whose sequences are driven by a hidden discrete mode, so a
model with latent variables can beat a deterministic one.

Each sequence has a hidden mode ``k_t`` in ``0..n_modes-1`` that follows a Markov chain: it
starts uniform and at every step switches, with probability ``switch_prob``, to one of the
other modes chosen uniformly. The switch is independent of the past, so it cannot be
predicted. Mode ``k`` sets an offset ``c_k`` (a point in D dims) and an angular frequency
``w_k``; a shared phase advances by ``w_{k_t}`` each step, and

    y_t[d] = c_{k_t}[d] + amplitude * sin(phase_t + 2 pi d / D) + noise * N(0, 1).

Given the past, the next frame is therefore a mixture: the current mode's continuation with
probability ``1 - switch_prob``, a jump to another offset and frequency otherwise. Output
type "gaussian". Everything is deterministic in ``seed`` (numpy PCG64).
"""
from __future__ import annotations

import numpy as np
import torch

from .batching import DataBundle, SequenceSplit


def mode_parameters(n_modes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n_modes, dim) spread on a circle of radius 1.5 per dim pair, and angular
    frequencies (n_modes,) evenly spaced below the Nyquist rate; fixed, not random, so
    every seed samples the same process."""
    k = np.arange(n_modes)[:, None]
    d = np.arange(dim)[None, :]
    offsets = 1.5 * np.cos(2 * np.pi * k / n_modes + np.pi * d / max(dim, 2))
    freqs = np.pi * (np.arange(n_modes) + 1) / (n_modes + 2)
    return offsets, freqs


def switching_sequences(n: int, T: int, D: int, rng: np.random.Generator, *, n_modes: int = 3,
                        switch_prob: float = 0.1, amplitude: float = 0.7,
                        noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` sequences: returns ``y`` (n, T, D) float32 and the hidden modes (n, T) int64."""
    offsets, freqs = mode_parameters(n_modes, D)
    modes = np.empty((n, T), dtype=np.int64)
    modes[:, 0] = rng.integers(n_modes, size=n)
    switch = rng.random((n, T)) < switch_prob
    # A switch adds 1..n_modes-1 (mod n_modes): a uniformly chosen *other* mode.
    shift = rng.integers(1, n_modes, size=(n, T)) if n_modes > 1 else np.zeros((n, T), dtype=np.int64)
    for t in range(1, T):
        modes[:, t] = np.where(switch[:, t], (modes[:, t - 1] + shift[:, t]) % n_modes, modes[:, t - 1])
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1)) + np.cumsum(freqs[modes], axis=1)
    wave = np.sin(phase[:, :, None] + 2 * np.pi * np.arange(D) / D)
    y = offsets[modes] + amplitude * wave + noise * rng.standard_normal((n, T, D))
    return y.astype(np.float32), modes


def make_synthetic(n_train: int = 2000, n_valid: int = 200, n_test: int = 200, T: int = 32, D: int = 4,
                   seed: int = 0, *, n_modes: int = 3, switch_prob: float = 0.1, noise: float = 0.1,
                   variable_length: bool = False) -> DataBundle:
    """The synthetic bundle. With ``variable_length=True`` each sequence keeps a random
    length in ``[max(2, T // 2), T]`` (right-padded with zeros, masked)."""
    for arg, value, low in (("n_train", n_train, 1), ("n_valid", n_valid, 1), ("n_test", n_test, 1),
                            ("T", T, 2), ("D", D, 1), ("n_modes", n_modes, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    if not 0 <= switch_prob <= 1:
        raise ValueError(f"switch_prob must be in [0, 1], got {switch_prob!r}")
    if not noise > 0:
        raise ValueError(f"noise must be > 0 (a Gaussian likelihood needs it), got {noise!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    n = n_train + n_valid + n_test
    y, _ = switching_sequences(n, T, D, rng, n_modes=n_modes, switch_prob=switch_prob, noise=noise)
    mask = None
    if variable_length:
        lengths = rng.integers(max(2, T // 2), T + 1, size=n)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
        y *= mask[:, :, None]
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}

    def split(s):
        lo, hi = bounds[s]
        return SequenceSplit(torch.from_numpy(y[lo:hi].copy()), None,
                             None if mask is None else torch.from_numpy(mask[lo:hi].copy()))

    return DataBundle(name="synthetic", train=split("train"), valid=split("valid"), test=split("test"),
                      output_type="gaussian", input_dim=D,
                      meta={"seed": int(seed), "n_modes": n_modes, "switch_prob": switch_prob, "noise": noise,
                            "variable_length": variable_length})
