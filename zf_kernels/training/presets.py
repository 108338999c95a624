"""Run configuration and the presets with the authors' hyper-parameters.

Every field of ``TrainConfig`` is a command-line flag of ``python -m zf_kernels.train``
(``rnn_dim`` -> ``--rnn-dim``); a preset only changes the defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..model import AUX_COSTS
from ..ops._precision import FP32_DOT_CHOICES


def _opt(default, help: str):
    """A field of :class:`TrainConfig` with its ``--help`` text (``build_parser`` adds the defaults)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what and where
    preset: str = _opt("synthetic", "hyper-parameter defaults and data set")
    model: str = _opt("zforcing", "the model: a name in zf_kernels.train.MODELS")
    data: str | None = _opt(None, "the data: seqmnist a folder of the four MNIST IDX files (else downloaded "
                                  "and cached); timit / blizzard an .npz in the authors' format or a folder of "
                                  "WAV files; npz your own (N, T, D) or (N, T) .npz; text a text file or a folder of "
                                  "train/valid/test .txt files; ignored by synthetic")
    seq_len: int | None = _opt(None, "steps per sequence where the data are cut into sequences: words of text, "
                                     "frames of a WAV folder, synthetic steps (unset: 40, 40, 32)")
    vocab_size: int | None = _opt(None, "text: words in the vocabulary, <eos> and <unk> included (unset: 10000)")
    out: str | None = _opt(None, "run directory: checkpoints, metrics, curves, samples (unset: runs/PRESET)")
    seed: int = _opt(1234, "seeds the weights, the data splits, the batch order and the noise")
    device: str = _opt("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    dtype: str = _opt("float32", "float32 | float64 | bfloat16, float16 (mixed precision, float32 parameters) "
                                 "| bfloat16-pure (the whole model and Adam state in bfloat16)")
    backend: str = _opt("auto", "the fused ops' backend: auto | torch | triton | cuda (cuda: the two "
                                "recurrences on the CUDA extension, the other ops auto)")
    threads: int | None = _opt(None, "CPU intra-op threads (torch.set_num_threads); unset: torch's default")
    tf32: bool = _opt(False, "float32 matmuls (torch's and the Triton kernels') may use TF32")
    fp32_dot: str = _opt("auto", "the fused kernels' float32 products: auto (follow --tf32) | ieee | tf32 | "
                                 "tf32x3 (three TF32 products: near-IEEE on the tensor cores)")
    cuda_graph: bool = _opt(False, "replay each training step from a CUDA graph (one process, not float16)")
    compile: str = _opt("none", "torch.compile the step's forward and loss with this backend (inductor, "
                                "aot_eager, ...; one process, not float16), or none")
    # stopping
    epochs: int = _opt(20, "passes over the training set")
    max_steps: int | None = _opt(None, "stop after this many training steps (unset: no limit)")
    time_budget: float | None = _opt(None, "stop after this many seconds of training steps (their first compilation or CUDA-graph "
                                                    "capture included; evaluation, checkpoints and metrics excluded; unset: no limit)")
    resume: bool = _opt(False, "continue from OUT/last.pt (exactly: weights, optimizer, schedules, data order)")
    # model
    emb_dim: int = _opt(32, "embedding width of the input frames / tokens")
    rnn_dim: int = _opt(64, "width of the forward and backward LSTMs")
    z_dim: int = _opt(8, "latent variables per step")
    mlp_dim: int = _opt(32, "hidden width of the prior, posterior, auxiliary and output MLPs")
    cond_ln: bool = _opt(False, "g(z) gives gain and bias of a layer-normalised recurrent projection "
                                "instead of an input to the LSTM")
    z_force: bool = _opt(True, "the auxiliary cost predicts b_t from z_t alone (its h input zeroed)")
    aux_cost: str = _opt("gaussian", "the auxiliary cost: gaussian (the paper's -log p(b_t | z_t)) | l2 (the "
                                     "authors' code's variant: squared error of tanh(mu) against b_t, never "
                                     "below 0)")
    # optimisation
    batch_size: int = _opt(32, "sequences per training step (over all processes)")
    lr: float = _opt(1e-3, "Adam's learning rate")
    adam_eps: float = _opt(1e-5, "Adam's epsilon")
    clip: float = _opt(100.0, "gradient-norm clipping threshold")
    lr_decay: float = _opt(0.5, "on a validation plateau multiply the learning rate by this ...")
    lr_min: float = _opt(1e-4, "... but never below this")
    patience: int = _opt(1, "validations without a new best before the learning rate decays")
    # loss weights and their schedules (per training step)
    kl_start: float = _opt(0.2, "KL weight at the first step (KL annealing)")
    kl_step: float = _opt(5e-5, "the KL weight rises by this per step, up to 1")
    aux_start: float = _opt(0.0, "weight of the auxiliary cost at the first step")
    aux_end: float = _opt(0.0, "the auxiliary weight moves linearly to this (0: no auxiliary cost). The cost "
                               "sums the Gaussian NLL of b_t over rnn_dim x T elements (as the authors' code), "
                               "each as low as 3.1 nats below zero at the logvar clamp: even 0.01 can outweigh "
                               "the bound and inflate the KL (see the README's CPU results)")
    aux_step: float = _opt(5e-5, "the auxiliary weight moves by this per step")
    bwd: float = _opt(0.0, "weight of the backward network's reverse-prediction cost (counts only while the "
                           "auxiliary weight is above 0)")
    # evaluation and reporting
    eval_every: int | None = _opt(None, "also evaluate every N steps (besides each epoch's end; unset: only there)")
    iwae_k: int = _opt(32, "samples of the final importance-weighted bound (IWAE)")
    train_limit: int | None = _opt(None, "use only the first N training sequences (unset: all)")
    eval_limit: int | None = _opt(None, "... and the first N validation and test sequences (unset: all)")
    eval_batch_size: int = _opt(256, "sequences per evaluation batch")
    eval_window: int | None = _opt(None, "score evaluation sequences in windows of N steps, each from zero "
                                         "states, summed per sequence (the authors' TIMIT protocol, over whole "
                                         "test utterances; unset or 0: whole sequences)")
    num_samples: int = _opt(64, "sequences generated from the prior at the end (0: none)")
    log_every: int = _opt(10, "steps between metric lines")
    checkpoint_every: int = _opt(200, "steps between resumable checkpoints (last.pt)")
    metrics_format: str = _opt("jsonl", "jsonl | csv")
    progress: bool = _opt(True, "show a progress bar")

    def to_dict(self):
        return asdict(self)

    @property
    def scoring_window(self) -> int | None:
        """``eval_window`` as ``evaluate``'s ``window``: None (whole sequences) for unset or 0."""
        return self.eval_window or None


PRESETS: dict[str, dict] = {
    # a small model on the built-in synthetic data: the CPU default, a few minutes. A weak
    # aux cost: at 1200 steps, weights of 0.1 and 1 bought more KL but a worse bound
    # (docs/results/2026-11-26_cpu)
    "synthetic": dict(emb_dim=32, rnn_dim=64, z_dim=8, mlp_dim=32, batch_size=32, lr=1e-3,
                      epochs=30, aux_start=0.0, aux_end=0.01, aux_step=5e-4, bwd=1.0, z_force=True,
                      kl_step=5e-4, time_budget=150.0, iwae_k=64, patience=3),
    # Sequential MNIST, 784 binary pixels one per step (the paper's model size; use the
    # size flags for CPU runs)
    "seqmnist": dict(emb_dim=512, rnn_dim=1024, z_dim=128, mlp_dim=512, batch_size=32, lr=1e-3,
                     epochs=100, aux_start=0.0, aux_end=1.0, bwd=1.0, z_force=True,
                     eval_batch_size=128, iwae_k=100),
    # the authors' TIMIT settings (train_timit.py): 200-sample frames, 40 steps
    "timit": dict(emb_dim=512, rnn_dim=1024, z_dim=256, mlp_dim=512, batch_size=32, lr=1e-3,
                  epochs=100, aux_start=0.0, aux_end=0.0, bwd=0.0, z_force=False, iwae_k=100,
                  eval_window=40),
    # the authors' Blizzard settings
    "blizzard": dict(emb_dim=1024, rnn_dim=2048, z_dim=256, mlp_dim=1024, batch_size=128,
                     lr=3e-4, epochs=100, aux_start=0.0, aux_end=0.0, bwd=0.0, z_force=False,
                     iwae_k=100),
    # word-level language modelling on a text file or folder (the paper's IMDB experiment is
    # of this kind): 40-word sequences, a 10,000-word vocabulary (zf_kernels.data.text)
    "text": dict(emb_dim=128, rnn_dim=256, z_dim=32, mlp_dim=128, batch_size=32, lr=1e-3,
                 epochs=50, aux_start=0.0, aux_end=1.0, bwd=1.0, z_force=True),
    # a generic (N, T, D) .npz of the user's own sequences, with a small default model
    "npz": dict(emb_dim=128, rnn_dim=256, z_dim=32, mlp_dim=128, batch_size=32, lr=1e-3,
                epochs=50, aux_start=0.0, aux_end=1.0, bwd=1.0, z_force=True),
}

# --dtype values (their meaning: zf_kernels.train.PRECISIONS)
DTYPE_CHOICES = ("float32", "float64", "bfloat16", "float16", "bfloat16-pure")

# data set loader name of each preset
PRESET_DATA = {"synthetic": "synthetic", "seqmnist": "seqmnist", "timit": "timit",
               "blizzard": "blizzard", "npz": "npz", "text": "text"}


def config_fields():
    return fields(TrainConfig)


# What --resume may change: how the run executes, when it stops and what its final report
# computes. Every other field defines the run (model, data, optimisation, schedules, validation)
# and must equal the checkpoint's: a resumed run that silently kept the checkpoint's learning
# rate and schedules while config.json said otherwise would misreport itself. Not
# eval_batch_size: validation draws its noise per batch, so the batch size changes the numbers
# the plateau rule and best.pt decide on. eval_every may change; it moves when they decide.
RESUME_MAY_CHANGE = frozenset({
    "out", "resume", "device", "backend", "threads", "tf32", "fp32_dot", "cuda_graph", "compile",
    "epochs", "max_steps", "time_budget", "progress", "log_every", "checkpoint_every", "eval_every",
    "iwae_k", "num_samples"})


def resume_conflicts(saved: dict, cfg: TrainConfig) -> list[str]:
    """``--flag value (the checkpoint's run: value)`` for each field of ``cfg`` outside
    RESUME_MAY_CHANGE that differs from ``saved`` (a checkpoint's configuration)."""
    now = cfg.to_dict()
    return [f"--{k.replace('_', '-')} {now[k]} (the checkpoint's run: {saved[k]})"
            for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]


def make_config(preset: str, **overrides) -> TrainConfig:
    """The preset's defaults, then ``overrides`` (None means "keep the preset's value")."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    values = dict(PRESETS[preset])
    known = {f.name for f in config_fields()}
    for k, v in overrides.items():
        if k not in known:
            raise ValueError(f"unknown configuration field {k!r}")
        if v is not None:
            values[k] = v
    values["preset"] = preset
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def flag(name):
        return "--" + name.replace("_", "-")

    def positive(name, allow_none=False):
        v = getattr(cfg, name)
        if v is None and allow_none:
            return
        if v is None or not 0 < v < math.inf:   # NaN and inf too
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {v}")
    for name in ("emb_dim", "rnn_dim", "z_dim", "mlp_dim", "batch_size", "lr", "adam_eps", "clip",
                 "epochs", "iwae_k", "eval_batch_size", "log_every", "checkpoint_every", "patience"):
        positive(name)
    for name in ("max_steps", "time_budget", "eval_every", "train_limit", "eval_limit", "threads", "seq_len",
                 "vocab_size"):
        positive(name, allow_none=True)
    for name in ("lr_min", "kl_start", "kl_step", "aux_start", "aux_end", "aux_step", "bwd"):
        v = getattr(cfg, name)
        if not 0 <= v < math.inf:
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {v}")
    if cfg.lr_min > cfg.lr:
        raise ValueError(f"--lr-min ({cfg.lr_min:g}) must be <= --lr ({cfg.lr:g}): the plateau rule "
                         f"decays the learning rate down to --lr-min, never up to it")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2 ** 63:
        # the run seeds generators with seed + 1 and seed + 2 (torch takes < 2**64, numpy >= 0)
        raise ValueError(f"--seed must be an integer in [0, 2**63), got {cfg.seed!r}")
    if cfg.eval_window is not None and cfg.eval_window < 0:
        raise ValueError(f"--eval-window must be >= 0 (0: whole sequences), got {cfg.eval_window}")
    if not 0 < cfg.lr_decay <= 1:   # NaN too
        raise ValueError(f"--lr-decay must be in (0, 1], got {cfg.lr_decay}")
    if cfg.dtype not in DTYPE_CHOICES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (bfloat16 and float16: "
                         f"mixed precision with float32 parameters), got {cfg.dtype!r}")
    if cfg.fp32_dot not in FP32_DOT_CHOICES:
        raise ValueError(f"--fp32-dot must be one of {', '.join(FP32_DOT_CHOICES)}, got {cfg.fp32_dot!r}")
    if cfg.backend not in ("auto", "torch", "triton", "cuda"):
        raise ValueError(f"--backend must be auto, torch, triton or cuda, got {cfg.backend!r}")
    if cfg.compile != "none":
        if cfg.cuda_graph:
            raise ValueError("--compile and --cuda-graph do not combine (a capture of the compiled "
                             "step is untested): pick one")
        import torch   # torch._dynamo (imported here) costs ~1.5 s: only when asked for
        if cfg.compile not in torch.compiler.list_backends(exclude_tags=()):
            raise ValueError(f"--compile must be none or a torch.compile backend "
                             f"({', '.join(torch.compiler.list_backends())}, or a debug one such as "
                             f"aot_eager), got {cfg.compile!r}")
    if cfg.aux_cost not in AUX_COSTS:
        raise ValueError(f"--aux-cost must be one of {', '.join(AUX_COSTS)}, got {cfg.aux_cost!r}")
    if cfg.metrics_format not in ("jsonl", "csv"):
        raise ValueError(f"--metrics-format must be jsonl or csv, got {cfg.metrics_format!r}")
    if cfg.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 0, got {cfg.num_samples}")
