"""Run configuration and the presets with the authors' hyper-parameters.

Every field of ``TrainConfig`` is a command-line flag of ``python -m zf_kernels.train``
(``rnn_dim`` -> ``--rnn-dim``); a preset only changes the defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..ops._precision import FP32_DOT_CHOICES


@dataclass
class TrainConfig:
    # what and where
    preset: str = "synthetic"
    model: str = "zforcing"              # a name in zf_kernels.train.MODELS
    data: str | None = None              # file/folder of the data set (ignored by synthetic)
    out: str | None = None               # default: runs/<preset>
    seed: int = 1234
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    dtype: str = "float32"               # float32 | float64 | bfloat16 | float16 (mixed) | bfloat16-pure
    backend: str = "auto"                # auto | torch | triton | cuda
    threads: int | None = None           # CPU intra-op threads (torch.set_num_threads); None: torch's default
    tf32: bool = False                   # float32 matmuls (torch's and the Triton kernels') may use TF32
    fp32_dot: str = "auto"               # the fused kernels' float32 products: auto (follow --tf32), ieee,
                                         # tf32, tf32x3 (three TF32 products: near-IEEE on the tensor cores)
    cuda_graph: bool = False             # replay each training step from a CUDA graph (one process, not float16)
    compile: str = "none"                # torch.compile the step's forward and loss with this backend
                                         # (inductor, aot_eager, ...; one process, not float16) or none
    # stopping
    epochs: int = 20
    max_steps: int | None = None
    time_budget: float | None = None     # seconds of training (evaluation excluded)
    resume: bool = False
    # model
    emb_dim: int = 32
    rnn_dim: int = 64
    z_dim: int = 8
    mlp_dim: int = 32
    cond_ln: bool = False
    z_force: bool = True
    # optimisation
    batch_size: int = 32
    lr: float = 1e-3
    adam_eps: float = 1e-5
    clip: float = 100.0
    lr_decay: float = 0.5                # plateau: multiply lr by this ...
    lr_min: float = 1e-4                 # ... but never below this
    patience: int = 1                    # valid evaluations without improvement before decaying
    # loss weights and their schedules (per training step)
    kl_start: float = 0.2
    kl_step: float = 5e-5
    aux_start: float = 0.0
    aux_end: float = 0.0
    aux_step: float = 5e-5
    bwd: float = 0.0
    # evaluation and reporting
    eval_every: int | None = None        # also evaluate every N steps (besides each epoch's end)
    iwae_k: int = 32                     # samples of the final importance-weighted bound
    train_limit: int | None = None       # use only the first N training sequences
    eval_limit: int | None = None        # ... and the first N valid/test sequences
    eval_batch_size: int = 256
    num_samples: int = 64                # sequences generated at the end
    log_every: int = 10
    checkpoint_every: int = 200          # steps between resumable checkpoints (last.pt)
    metrics_format: str = "jsonl"        # jsonl | csv
    progress: bool = True

    def to_dict(self):
        return asdict(self)


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
                  epochs=100, aux_start=0.0, aux_end=0.0, bwd=0.0, z_force=False, iwae_k=100),
    # the authors' Blizzard settings
    "blizzard": dict(emb_dim=1024, rnn_dim=2048, z_dim=256, mlp_dim=1024, batch_size=128,
                     lr=3e-4, epochs=100, aux_start=0.0, aux_end=0.0, bwd=0.0, z_force=False,
                     iwae_k=100),
    # a generic (N, T, D) .npz of the user's own sequences, with a small default model
    "npz": dict(emb_dim=128, rnn_dim=256, z_dim=32, mlp_dim=128, batch_size=32, lr=1e-3,
                epochs=50, aux_start=0.0, aux_end=1.0, bwd=1.0, z_force=True),
}

# --dtype values (their meaning: zf_kernels.train.PRECISIONS)
DTYPE_CHOICES = ("float32", "float64", "bfloat16", "float16", "bfloat16-pure")

# data set loader name of each preset
PRESET_DATA = {"synthetic": "synthetic", "seqmnist": "seqmnist", "timit": "timit",
               "blizzard": "blizzard", "npz": "npz"}


def config_fields():
    return fields(TrainConfig)


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
    def positive(name, allow_none=False):
        v = getattr(cfg, name)
        if v is None and allow_none:
            return
        if v is None or v <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    for name in ("emb_dim", "rnn_dim", "z_dim", "mlp_dim", "batch_size", "lr", "adam_eps", "clip",
                 "epochs", "iwae_k", "eval_batch_size", "log_every", "checkpoint_every", "patience"):
        positive(name)
    for name in ("max_steps", "time_budget", "eval_every", "train_limit", "eval_limit", "threads"):
        positive(name, allow_none=True)
    if not 0 < cfg.lr_decay <= 1:
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
    if cfg.metrics_format not in ("jsonl", "csv"):
        raise ValueError(f"--metrics-format must be jsonl or csv, got {cfg.metrics_format!r}")
    if cfg.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 0, got {cfg.num_samples}")
