"""Data sets for zf_kernels: Sequential MNIST, TIMIT / Blizzard (the authors' ``.npz`` or raw
WAV / NIST SPHERE folders), generic
``.npz`` sequences, word sequences from text files and a synthetic latent-driven set, behind one interface
(:func:`load_dataset` -> :class:`DataBundle` of :class:`SequenceSplit`) and one
deterministic, resumable batch iterator (:func:`iterate_batches`, time-major batches)."""
from .batching import (Batch, DataBundle, SequenceSplit, fixed_binarize, iterate_batches, load_dataset,
                       num_batches, seeded_generator)
from .mnist import fetch_mnist, load_mnist, read_idx
from .npz import load_npz, load_speech_npz, read_npz
from .synthetic import make_synthetic
from .text import load_text
from .wav import load_wav_folder, read_audio

__all__ = [
    "Batch", "DataBundle", "SequenceSplit", "iterate_batches", "num_batches", "load_dataset",
    "seeded_generator", "fixed_binarize",
    "fetch_mnist", "load_mnist", "read_idx",
    "load_npz", "load_speech_npz", "read_npz",
    "make_synthetic",
    "load_text",
    "load_wav_folder", "read_audio",
]
