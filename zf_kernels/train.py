"""Train Z-Forcing: ``python -m zf_kernels.train [--preset NAME] [flags]``.

With no arguments it trains a small model on the built-in synthetic data for a couple of
minutes on the CPU and writes everything under ``runs/synthetic``. Every hyper-parameter is a
flag (see ``--help``); ``--preset`` only changes their defaults. Also callable from Python:
``train(make_config("synthetic", max_steps=100))``.

The run directory receives ``last.pt`` (resumable, written atomically every
``--checkpoint-every`` steps and at the end), ``best.pt`` (best validation -ELBO),
``metrics.jsonl`` (or ``.csv``), ``config.json``, ``results.json``, ``curves.png`` and samples
(``samples.png`` for images, ``sample_*.wav`` for speech, ``samples_plot.png`` otherwise).

Precision (``--dtype``): ``float32`` (default) and ``float64`` run everything in that dtype.
``bfloat16`` and ``float16`` are mixed precision: parameters, gradients and Adam state stay
float32, every forward pass (training, evaluation, sampling) runs under ``torch.autocast``
with that dtype (the fused ops follow torch's autocast policy, see ``zf_kernels.ops``), the
backward follows it; ``float16`` adds loss scaling (``torch.amp.GradScaler``; an overflowing
step is skipped and counted, and the scale is checkpointed). ``bfloat16-pure`` casts the whole
model and its Adam state to bfloat16 (no float32 master weights: less memory, less accuracy).
Data batches and the posterior noise stay in the parameters' dtype.

Several processes: ``torchrun --nproc_per_node N -m zf_kernels.train [flags]`` trains with
DistributedDataParallel (``gloo`` on the CPU, ``nccl`` on GPUs, one GPU per process). The
global batch stays ``--batch-size`` sequences, split across the processes, and every sequence
gets the same posterior noise whatever N is, so the run follows the single-process
trajectory up to floating-point rounding of the gradient reductions; only rank 0 evaluates
and writes files. ``last.pt`` holds no per-rank state: ``--resume`` works with any number of
processes (bit-exact with the same N on the CPU; equal up to rounding across different N).
See :mod:`zf_kernels.training.distributed`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

from .data import iterate_batches, load_dataset, num_batches, seeded_generator
from .data.batching import fingerprint, meta_differences
from . import ops
from .evaluate import evaluate
from .model import ZForcing, training_loss
from .ops._precision import FP32_DOT_ENV
from .training import distributed, report
from .training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .training.graph_step import StaticStep
from .training.report import TERMS
from .training.presets import PRESET_DATA, PRESETS, TrainConfig, config_fields, make_config, resume_conflicts
from .training.schedules import LossWeights, PlateauHalving

# --dtype -> (dtype of the parameters, gradients and Adam state; autocast dtype or None).
# bfloat16 / float16 are mixed precision: float32 master weights, the forward (and so the
# backward) under torch.autocast; float16 adds a torch.amp.GradScaler (loss scaling).
# bfloat16-pure is the whole model, optimizer state included, in bfloat16 (no master weights).
PRECISIONS = {
    "float32": (torch.float32, None),
    "float64": (torch.float64, None),
    "bfloat16": (torch.float32, torch.bfloat16),
    "float16": (torch.float32, torch.float16),
    "bfloat16-pure": (torch.bfloat16, None),
}


def resolve_device(name: str) -> torch.device:
    """``--device`` for a single process (see ``distributed.resolve_device`` for several)."""
    return distributed.resolve_device(name, distributed.DistContext())


def limit_split(split, n):
    """The first ``n`` sequences of a split (all of it when ``n`` is None)."""
    if n is None or n >= len(split):
        return split
    cut = lambda x: None if x is None else x[:n]  # noqa: E731
    return dataclasses.replace(split, y=split.y[:n], u=cut(split.u), mask=cut(split.mask),
                               recording=cut(split.recording))


def data_options(cfg: TrainConfig) -> dict:
    """The loader's keyword arguments from ``--seq-len`` / ``--vocab-size``, refused (ValueError)
    where the data set's sequences are fixed by its files."""
    name, opts = PRESET_DATA[cfg.preset], {}
    if cfg.seq_len is not None:
        if name == "synthetic":
            if cfg.seq_len < 2:   # the generator's own error named its argument T
                raise ValueError(f"--seq-len must be >= 2 for synthetic data, got {cfg.seq_len}")
            opts["T"] = cfg.seq_len
        elif name == "text" or (name in ("timit", "blizzard") and cfg.data and os.path.isdir(cfg.data)):
            opts["seq_len"] = cfg.seq_len
        else:
            raise ValueError(f"--seq-len applies to text, a folder of WAV files and synthetic data; the {name!r} "
                             f"data set's sequences are fixed by its files")
    if cfg.vocab_size is not None:
        if name != "text":
            raise ValueError(f"--vocab-size applies to text data, not to the {name!r} data set")
        opts["vocab_size"] = cfg.vocab_size
    return opts


def load_data(cfg: TrainConfig):
    name = PRESET_DATA[cfg.preset]
    if cfg.data is None and name not in ("seqmnist", "synthetic"):
        raise ValueError(f"--data is required with --preset {cfg.preset} (the data set's file or folder)")
    try:
        bundle = load_dataset(name, cfg.data, seed=cfg.seed, **data_options(cfg))
    except FileNotFoundError as exc:   # the loaders name their argument, "path"
        raise FileNotFoundError(f"--data: {exc}") from None
    bundle = dataclasses.replace(
        bundle, meta={**bundle.meta, "fingerprint": fingerprint(bundle)},   # of the whole data set
        train=limit_split(bundle.train, cfg.train_limit),
        valid=limit_split(bundle.valid, cfg.eval_limit), test=limit_split(bundle.test, cfg.eval_limit))
    for name in ("train", "valid", "test"):
        if len(getattr(bundle, name)) == 0:
            raise ValueError(f"the {name} split of {bundle.name!r} is empty")
    return bundle


def build_zforcing(cfg: TrainConfig, bundle) -> ZForcing:
    return ZForcing(bundle.input_dim, bundle.output_type, emb_dim=cfg.emb_dim, rnn_dim=cfg.rnn_dim,
                    z_dim=cfg.z_dim, mlp_dim=cfg.mlp_dim, cond_ln=cfg.cond_ln, z_force=cfg.z_force,
                    aux_cost=cfg.aux_cost, backend=cfg.backend)


def _accepts_eps(model) -> bool:
    """Whether ``model.forward`` takes the posterior noise as ``eps (T, B, model.z_dim)``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "eps" in params and isinstance(getattr(model, "z_dim", None), int)


# ``--model NAME`` -> factory(cfg, data bundle) -> nn.Module. Other sequence VAEs register
# here (see python/train.py). A model must offer what ZForcing offers the trainer:
# ``forward(y, u, mask, generator=) -> LossTerms``, ``iwae_bound``, ``sample`` and a
# JSON-serialisable ``config`` dict.
MODELS = {"zforcing": build_zforcing}


def _configure_adam(opt, capturable: bool):
    """After ``load_state_dict``: the run's own optimizer flags (a checkpoint carries the
    flags of the run that wrote it) and step counters where fused Adam reads them (on the
    parameters' device)."""
    for group in opt.param_groups:
        group.update(fused=True, foreach=None, capturable=capturable)
        for p in group["params"]:
            state = opt.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def build_model(cfg: TrainConfig, bundle):
    if cfg.model not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {cfg.model!r}")
    return MODELS[cfg.model](cfg, bundle)


def _batch_to(batch, device, dtype):
    mv = lambda x: None if x is None else x.to(  # noqa: E731
        device=device, dtype=dtype if x.dtype.is_floating_point else x.dtype, non_blocking=True)
    return mv(batch.y), mv(batch.u), mv(batch.mask)


class _TrainingLoss(torch.nn.Module):
    """The module DDP wraps: model + training loss. DDP finds the parameters that get no
    gradient (the auxiliary and reverse-prediction heads while the aux weight is 0) by
    walking the graph from the forward's outputs, so the output must be the loss itself
    (the per-sequence terms go out detached)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y, u, mask, weights, **noise):
        terms = self.model(y, u, mask, **noise)
        loss = training_loss(terms, *weights)
        return loss, {k: getattr(terms, k).detach() for k in TERMS[1:]}


class Run:
    """One training run: its state, the loop, checkpoints and reports."""

    def __init__(self, cfg: TrainConfig, log=print, dist_ctx: distributed.DistContext | None = None,
                 data=None):
        """``data``: a DataBundle to train on instead of the one ``cfg`` names (benchmarks)."""
        self.cfg = cfg
        # several processes: only rank 0 logs and writes files (see fit / save / finish)
        self.dist = dist_ctx or distributed.DistContext()
        self.is_main = self.dist.is_main
        self.log = log if self.is_main else (lambda *a, **k: None)
        self.out = Path(cfg.out or f"runs/{cfg.preset}")
        if self.is_main:
            report.output_dir(self.out)
        self.device = distributed.resolve_device(cfg.device, self.dist)
        # self.dtype: parameters, optimizer state, data batches and noise; self.amp_dtype:
        # the autocast dtype of the forward passes (None: no autocast)
        self.dtype, self.amp_dtype = PRECISIONS[cfg.dtype]
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16
                       else None)
        if cfg.threads is not None:
            # small models on a busy CPU run far faster on one thread than on two contending ones
            torch.set_num_threads(cfg.threads)
        if cfg.tf32:
            # process-wide, as torch's own switch: the fused kernels follow the matmul flag
            # (zf_kernels.ops._precision.dot_precision; the CUDA kernels too), cuDNN the cudnn one
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.fp32_dot != "auto":
            # process-wide too: the one rule the Triton and CUDA kernels read (_precision.dot_precision)
            os.environ[FP32_DOT_ENV] = cfg.fp32_dot
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg) if data is None else data
        self.model = build_model(cfg, self.data).to(self.device, self.dtype)
        # fused Adam in every mode: one kernel per step, and the CUDA-graph step skips a
        # non-finite step through its found_inf, so both modes run the same optimizer
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True,
                                    capturable=cfg.cuda_graph)
        self.accepts_eps = _accepts_eps(self.model)
        self.weights = LossWeights.from_config(cfg)
        if not getattr(self.model, "has_aux_terms", True):
            # a model without the aux / reverse-prediction terms (python/): an aux schedule
            # would change nothing but the logged aux_weight, so there is none
            self.weights.aux = self.weights.aux_step = self.weights.aux_end = 0.0
        self.plateau = PlateauHalving(cfg.lr_decay, cfg.lr_min, cfg.patience)
        self.eps_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = self.epoch = self.next_batch = 0
        self.validated_step = None   # the step of the last validation: at most one per step
        self.skipped = {"non_finite_loss": 0, "non_finite_grad": 0}
        self.train_seconds = 0.0
        self.window = {k: 0.0 for k in TERMS} | {"n": 0, "grad_norm": 0.0}
        ext = "jsonl" if cfg.metrics_format == "jsonl" else "csv"
        self.metrics = report.MetricsLog(self.out / f"metrics.{ext}", cfg.metrics_format)
        self.drop_last = len(self.data.train) >= cfg.batch_size
        self.ddp = None              # the DistributedDataParallel wrapper (several processes)
        self.rank_digests = None     # parameter digest of every rank at the end of fit
        if self.dist.enabled:
            self._check_distributed()
        # --cuda-graph: the step without host reads, replayed from CUDA graphs; --compile: the
        # same step, uncaptured, its forward and loss compiled by torch.compile
        self.static_step = None
        if cfg.cuda_graph or cfg.compile != "none":
            self.static_step = StaticStep(self, capture=cfg.cuda_graph,
                                          compile_backend=None if cfg.compile == "none" else cfg.compile)

    def _check_distributed(self):
        n = self.dist.world_size
        # the smallest global batch must give every rank at least one sequence
        smallest = self.cfg.batch_size if self.drop_last else len(self.data.train)
        if smallest < n:
            raise ValueError(f"with {n} processes each global batch is split across them: --batch-size "
                             f"(and the training split, {len(self.data.train)} sequences) must be >= {n}, "
                             f"got a batch of {smallest}")
        # where the collectives run: nccl needs CUDA tensors, gloo takes CPU tensors
        self.comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")

    def autocast(self, cache_enabled: bool = True):
        """The context of every forward pass (training, evaluation, sampling): autocast to
        ``amp_dtype`` with mixed precision, nothing otherwise (a CUDA-graph capture needs
        ``cache_enabled=False``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache_enabled)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self):
        if self.static_step is not None:
            self.static_step.store_window()
        return dict(config=self.cfg.to_dict(), model_config=self.model.config,
                    model=self.model.state_dict(), optimizer=self.opt.state_dict(),
                    scaler=None if self.scaler is None else self.scaler.state_dict(),
                    step=self.step, epoch=self.epoch, next_batch=self.next_batch,
                    weights=self.weights.state_dict(), plateau=self.plateau.state_dict(),
                    eps_generator=self.eps_gen.get_state(), skipped=dict(self.skipped),
                    train_seconds=self.train_seconds, window=dict(self.window),
                    validated_step=self.validated_step,
                    data_meta=self.data.meta, world_size=self.dist.world_size)

    def load_state_dict(self, state, path):
        try:
            self._load_state_dict(state, path)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint {path} does not hold a complete training state "
                                  f"({type(exc).__name__}: {exc})") from None

    def _load_state_dict(self, state, path):
        conflicts = resume_conflicts(state["config"], self.cfg)
        if conflicts:
            raise CheckpointError(
                f"--resume: checkpoint {path} was written by a run with other settings: {'; '.join(conflicts)}. "
                f"A resumed run keeps its own settings (the command line fills in the flags it does not "
                f"give): drop these flags or give the run's values, or start a new run in another --out")
        if state["model_config"] != self.model.config:
            raise CheckpointError(f"checkpoint {path} holds a model {state['model_config']}, "
                                  f"but this run builds {self.model.config}; use the same size flags")
        differ = meta_differences(self.data.meta, state["data_meta"])
        if differ:
            raise CheckpointError(f"--resume: the data set differs from the one checkpoint {path} was "
                                  f"trained on (its {', '.join(differ)}): pass --data with the run's data")
        saved_noise = state["eps_generator"].cpu()   # a torch.load onto a GPU moved it there
        if saved_noise.numel() != self.eps_gen.get_state().numel():
            raise CheckpointError(
                f"--resume: checkpoint {path} was written on another kind of device than --device "
                f"{self.device} (the posterior noise generator's state has {saved_noise.numel()} bytes, this "
                f"device's {self.eps_gen.get_state().numel()}): resume on the device type the run used "
                f"(CPU or CUDA)")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])   # with its (possibly decayed) lr
        _configure_adam(self.opt, capturable=self.cfg.cuda_graph)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])   # the loss scale of a float16 run
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        self.weights = LossWeights(**state["weights"])
        self.plateau = PlateauHalving(**state["plateau"])
        self.eps_gen.set_state(saved_noise)
        self.skipped, self.train_seconds = state["skipped"], state["train_seconds"]
        self.window = state["window"]
        self.validated_step = state.get("validated_step")   # absent from checkpoints before 2026-11-28
        if self.static_step is not None:
            self.static_step.load_window()

    def save(self, name="last.pt"):
        if self.is_main:
            save_checkpoint(self.state_dict(), self.out / name)

    def _read_last(self, path):
        """``last.pt`` (None when absent). With several processes rank 0 reads it and
        broadcasts it (or its error), so the ranks agree and need no shared file system."""
        if not self.dist.enabled:
            return load_checkpoint(path, map_location=self.device) if path.exists() else None
        payload = None
        if self.is_main:
            try:
                payload = ("ok", load_checkpoint(path, map_location="cpu") if path.exists() else None)
            except CheckpointError as exc:
                payload = ("error", str(exc))
        kind, value = self.dist.broadcast_object(payload)
        if kind == "error":
            raise CheckpointError(value)
        return value

    def remove_earlier_run(self):
        """A new run in an --out that holds another's files: its metrics and checkpoints go (a
        stale best.pt was the final evaluation's weights when the new run stopped before its
        first validation)."""
        if self.is_main:
            for path in (self.metrics.path, self.out / "best.pt", self.out / "last.pt"):
                path.unlink(missing_ok=True)

    def try_resume(self):
        path = self.out / "last.pt"
        if self.is_main:   # temp files of checkpoint / metrics writes that a kill interrupted
            for pattern in ("last.pt.*.tmp", "best.pt.*.tmp", f"{self.metrics.path.name}.*.tmp"):
                for stale in self.out.glob(pattern):
                    stale.unlink(missing_ok=True)
        state = self._read_last(path)
        if state is None:
            self.log(f"--resume: no checkpoint at {path}, starting a new run")
            self.remove_earlier_run()
            return
        self.load_state_dict(state, path)
        if self.is_main:
            self.metrics.truncate_after(self.step)
        self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.next_batch})")

    # ----------------------------------------------------------------- steps
    def train_step(self, batch):
        if self.dist.enabled:
            return self._train_step_distributed(batch)
        if self.static_step is not None:
            return self.static_step(batch)
        y, u, mask = _batch_to(batch, self.device, self.dtype)
        with self.autocast():
            terms = self.model(y, u, mask, generator=self.eps_gen)
            loss = training_loss(terms, self.weights.kl, self.weights.aux, self.cfg.bwd)
        self.weights.advance()
        self.step += 1
        if not torch.isfinite(loss):
            self.skipped["non_finite_loss"] += 1
            return
        if not self._update(loss):
            return
        w = self.window
        w["loss"] += float(loss.detach())
        for k in TERMS[1:]:
            w[k] += float(getattr(terms, k).detach().double().mean())

    def _update(self, loss) -> bool:
        """Backward, clip, Adam step; skips (and counts) a non-finite gradient norm. Under DDP
        the gradients, hence their norm and the decision, are the same on every rank. With
        float16 the loss is scaled for the backward and the gradients unscaled before the
        clipping; an overflow is a skipped step that also lowers the scale."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        if not torch.isfinite(grad_norm):
            self.skipped["non_finite_grad"] += 1
            if self.scaler is not None:
                self.scaler.update()   # back off the scale (unscale_ recorded the overflow)
            return False
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.window["n"] += 1
        self.window["grad_norm"] += float(grad_norm)
        return True

    def _noise(self, T, B, part: slice) -> dict:
        """The posterior noise of this rank's part of a global batch of ``B`` sequences: the
        global batch's noise drawn exactly as one process draws it, then sliced (so it does
        not depend on the number of processes); a per-step, per-rank generator for models
        that take no ``eps``."""
        if self.accepts_eps:
            eps = torch.randn(T, B, self.model.z_dim, generator=self.eps_gen, device=self.device,
                              dtype=self.dtype)
            return {"eps": eps[:, part].contiguous()}
        seed = int(seeded_generator(2, self.cfg.seed, self.step, self.dist.rank).initial_seed())
        return {"generator": torch.Generator(device=self.device).manual_seed(seed)}

    def _train_step_distributed(self, batch):
        """One DDP step on this rank's part of the global batch. The loss is scaled by
        ``world_size * B_rank / B`` so that DDP's gradient average is the gradient of the
        global batch mean; whether to skip is decided from all-reduced values, so every rank
        takes the same decision (a rank that skipped the backward alone would hang DDP)."""
        y, u, mask = _batch_to(batch, self.device, self.dtype)
        T, B = y.shape[0], y.shape[1]
        part = self.dist.shard(B)
        take = lambda x: None if x is None else x[:, part]  # noqa: E731
        noise = self._noise(T, B, part)
        weights = (self.weights.kl, self.weights.aux, self.cfg.bwd)
        with self.autocast():
            loss, terms = self.ddp(take(y), take(u), take(mask), weights, **noise)
        n_rank = part.stop - part.start
        # [non-finite flag, sum of the losses, sums of the terms] over the global batch
        local = torch.stack([(~torch.isfinite(loss.detach())).double(), loss.detach().double() * n_rank,
                             *(terms[k].double().sum() for k in TERMS[1:])])
        stats = self.dist.all_reduce(local.to(self.comm_device)).tolist()
        self.weights.advance()
        self.step += 1
        if stats[0] > 0:    # some rank saw a non-finite loss: nobody runs the backward
            self.skipped["non_finite_loss"] += 1
            return
        # DDP all-reduces the gradients in the backward
        if not self._update(loss * (self.dist.world_size * n_rank / B)):
            return
        for k, v in zip(TERMS, stats[1:]):
            self.window[k] += v / B

    def flush_window(self, bar=None):
        if self.static_step is not None:
            self.static_step.store_window()
        w, n = self.window, self.window["n"]
        rec = {"kind": "train", "step": self.step, "epoch": self.epoch}
        # a window whose every step was skipped has no averages (None, not a measured 0)
        rec |= {k: w[k] / n if n else None for k in TERMS + ("grad_norm",)}
        kl_w, aux_w = self.weights.last_used()
        rec |= {"kl_weight": kl_w, "aux_weight": aux_w,
                "lr": self.opt.param_groups[0]["lr"], "skipped": sum(self.skipped.values()),
                "train_seconds": round(self.train_seconds, 3)}
        if self.is_main:
            self.metrics.write(rec)
        if bar is not None:
            bar.set_postfix({k: f"{rec[k]:.2f}" if n else "-" for k in TERMS} | {"kl_w": f"{kl_w:.3f}"})
        self.window = {k: 0.0 for k in TERMS} | {"n": 0, "grad_norm": 0.0}
        if self.static_step is not None:
            self.static_step.load_window()

    def validate(self):
        # several processes: rank 0 evaluates, every rank applies the learning-rate rule to
        # its result (so the ranks' learning rates stay equal)
        res = None
        if self.is_main:
            with self.autocast():
                res = evaluate(self.model, self.data.valid, batch_size=self.cfg.eval_batch_size,
                               seed=self.cfg.seed, window=self.cfg.scoring_window)
        res = self.dist.broadcast_object(res)
        self.validated_step = self.step
        best, decayed = self.plateau.update(res["neg_elbo"], self.opt)
        if self.is_main:
            self.metrics.write({"kind": "valid", "step": self.step, "epoch": self.epoch, **res,
                                "lr": self.opt.param_groups[0]["lr"], "new_best": best})
        if decayed:
            self.log(f"valid -ELBO did not improve: learning rate -> {self.opt.param_groups[0]['lr']:g}")
        if best:
            self.save("best.pt")
        return res

    def out_of_budget(self):
        cfg = self.cfg
        return ((cfg.max_steps is not None and self.step >= cfg.max_steps)
                or (cfg.time_budget is not None and self.train_seconds >= cfg.time_budget))

    # ------------------------------------------------------------------ loop
    def fit(self):
        cfg = self.cfg
        n_batches = num_batches(self.data.train, cfg.batch_size, drop_last=self.drop_last)
        total = cfg.max_steps or cfg.epochs * n_batches
        if self.dist.enabled and self.ddp is None:
            # after try_resume: DDP broadcasts rank 0's (loaded) parameters on construction
            self.ddp = distributed.wrap_ddp(_TrainingLoss(self.model), self.device)
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=min(self.step, total), disable=not (cfg.progress and self.is_main),
                   desc=f"{cfg.preset}", unit="step", dynamic_ncols=True)
        try:
            while self.epoch < cfg.epochs and not self.out_of_budget():
                batches = iterate_batches(self.data.train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                          epoch=self.epoch, start_batch=self.next_batch,
                                          drop_last=self.drop_last)
                for batch in batches:
                    t0 = time.perf_counter()
                    self.train_step(batch)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.train_seconds += time.perf_counter() - t0
                    if self.dist.enabled:   # the slowest rank's clock: every rank stops together
                        self.train_seconds = self.dist.all_reduce(
                            [self.train_seconds], "max", device=self.comm_device).item()
                    self.next_batch += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        self.flush_window(bar)
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        self.validate()
                    # at an epoch's last batch the checkpoint comes after the epoch-end
                    # validation (below): a checkpoint taken before it would, after a crash
                    # in between, make the resumed run validate (and log) that step twice
                    if self.step % cfg.checkpoint_every == 0 and self.next_batch < n_batches:
                        self.save()
                    if self.out_of_budget():
                        break
                if self.next_batch >= n_batches:   # the epoch ran to its end (the budget may end with it)
                    self.epoch, self.next_batch = self.epoch + 1, 0
                    # unless --eval-every just validated this step: the same weights scored
                    # twice would count as a validation that did not improve (a halved rate)
                    if self.validated_step != self.step:
                        self.validate()
                    self.save()
        finally:
            bar.close()
        # a partly filled log window stays in the checkpoint, so a resumed run logs exactly
        # what an uninterrupted one would
        self.save()
        if self.dist.enabled:
            self.rank_digests = self.dist.all_gather_object(distributed.param_digest(self.model))
            if len(set(self.rank_digests)) > 1:
                self.log(f"WARNING: the parameters differ across ranks: {self.rank_digests}")

    # ---------------------------------------------------------------- finish
    def finish(self):
        """Final evaluation (best checkpoint if any), IWAE on test, samples and plots (on
        rank 0 only; other ranks return a short summary)."""
        cfg = self.cfg
        if not self.is_main:
            return {"rank": self.dist.rank, "steps": self.step, "skipped_batches": self.skipped,
                    "param_digest": distributed.param_digest(self.model)}
        best = self.out / "best.pt"
        model = self.model
        if best.exists():   # evaluate a copy: the run itself (and last.pt) keeps training weights
            model = copy.deepcopy(self.model)
            model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
        kw = dict(batch_size=cfg.eval_batch_size, seed=cfg.seed, window=cfg.scoring_window)
        with self.autocast():
            valid = evaluate(model, self.data.valid, **kw)
            test = evaluate(model, self.data.test, iwae_k=cfg.iwae_k, **kw)
        results = {"preset": cfg.preset, "data": self.data.name, "steps": self.step,
                   "epochs_completed": self.epoch, "train_seconds": round(self.train_seconds, 1),
                   "skipped_batches": self.skipped, "model": self.model.config,
                   "parameters": sum(p.numel() for p in self.model.parameters()),
                   "checkpoint": str(best if best.exists() else self.out / "last.pt"),
                   "valid": valid, "test": test, "iwae_k": cfg.iwae_k, "eval_window": cfg.scoring_window,
                   "device": str(self.device), "dtype": cfg.dtype}
        if self.dist.enabled:
            results |= {"world_size": self.dist.world_size, "rank_param_digests": self.rank_digests}
        self.metrics.write({"kind": "test", "step": self.step, "epoch": self.epoch, **test})
        with open(self.out / "results.json", "w") as f:
            json.dump(results, f, indent=2)
        report.plot_curves(self.metrics.read(), self.out / "curves.png")
        results["samples"] = self.write_samples(model)
        return results

    def write_samples(self, model):
        n = self.cfg.num_samples
        if n == 0:
            return []
        T = self.data.train.y.shape[1]
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 2)
        with self.autocast():
            samples, means = model.sample(T, n, generator=gen)
        return report.write_samples(samples, means, self.data.meta, self.out)


def _precision_note(run) -> str:
    if run.amp_dtype is None:
        return ""
    name = str(run.amp_dtype).removeprefix("torch.")
    return (f" (mixed precision: {str(run.dtype).removeprefix('torch.')} parameters and optimizer "
            f"state, {name} autocast" + (", loss scaling" if run.scaler is not None else "") + ")")


def train(cfg: TrainConfig, log=print, resume_flags: dict | None = None) -> dict:
    """Run (or resume) training as configured; returns the final results dict (on ranks
    other than 0 of a multi-process run: a short summary). Under torchrun (``WORLD_SIZE > 1``)
    it initialises the process group from the environment and destroys it at the end.
    ``resume_flags`` (the command line's, with ``cfg.resume``): the configuration becomes the
    one saved in ``last.pt`` with these flags over it."""
    ctx, _ = distributed.setup(cfg.device)
    try:
        if resume_flags is not None:
            cfg = _resumed_config(cfg, resume_flags, ctx)
        return _train(cfg, log, ctx)
    finally:
        ctx.close()


# machine-specific: never taken from a checkpoint written elsewhere (and the process group is
# already set up for this one)
_NOT_RESUMED = ("preset", "device")


def _resumed_config(cfg: TrainConfig, flags: dict, ctx) -> TrainConfig:
    """``cfg`` for --resume: the configuration saved in ``last.pt`` (read by rank 0 and
    broadcast, so the ranks need no shared file system) with the command line's ``flags`` over
    it; ``cfg`` itself where there is no checkpoint yet (a new run)."""
    path = Path(cfg.out or f"runs/{cfg.preset}") / "last.pt"
    payload = None
    if ctx.is_main:
        try:
            payload = ("ok", load_checkpoint(path, map_location="cpu").get("config") if path.exists() else None)
        except CheckpointError as exc:
            payload = ("error", str(exc))
    kind, saved = ctx.broadcast_object(payload)
    if kind == "error":
        raise CheckpointError(saved)
    if saved is None:
        return cfg
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a complete training state (no run configuration)")
    known = {f.name for f in config_fields()}
    merged = {k: v for k, v in saved.items() if k in known and k not in _NOT_RESUMED}
    merged |= {k: v for k, v in flags.items() if k != "preset"}
    return make_config(flags.get("preset") or saved.get("preset", cfg.preset), **merged)


def _train(cfg: TrainConfig, log, ctx) -> dict:
    run = Run(cfg, log, ctx)
    log = run.log
    if cfg.resume:
        run.try_resume()
    else:
        run.remove_earlier_run()
    if run.is_main:   # after a resume's checks: what this run really uses
        with open(run.out / "config.json", "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
    n_params = sum(p.numel() for p in run.model.parameters())
    log(f"zf_kernels.train: model {cfg.model!r}, preset {cfg.preset!r}, data {run.data.name!r} "
        f"({len(run.data.train)} train / {len(run.data.valid)} valid / {len(run.data.test)} test sequences, "
        f"T={run.data.train.y.shape[1]}), model {n_params:,} parameters, device {run.device}, "
        f"dtype {cfg.dtype}{_precision_note(run)}, backend {cfg.backend}"
        + (f", {ctx.world_size} processes (DDP)" if ctx.enabled else ""))
    if hasattr(run.model, "explain_backends"):   # what the recurrences run on, and why (ops.explain)
        per_rank = max(1, cfg.batch_size // ctx.world_size) if ctx.enabled else cfg.batch_size
        choices = run.model.explain_backends(run.data.train.y.shape[1], per_rank, run.amp_dtype or run.dtype)
        for op, (backend, why) in choices.items():
            log(f"  {op}: {backend} ({why})")
    run.fit()
    results = run.finish()
    if not run.is_main:
        return results
    t = results["test"]
    log(f"done: {results['steps']} steps in {results['train_seconds']} s of training; "
        f"test -ELBO {t['neg_elbo']:.3f} nats/sequence, IWAE(k={cfg.iwae_k}) {t['iwae']:.3f}, "
        f"KL {t['kl']:.3f}" + (f", perplexity {t['perplexity']:.2f}" if "perplexity" in t else "")
        + (f"; per recording ({t['recordings']}): -ELBO {t['neg_elbo_per_recording']:.3f}, IWAE "
           f"{t['iwae_per_recording']:.3f}" if "recordings" in t else "")
        + (f"; scored in {cfg.scoring_window}-step windows" if cfg.scoring_window else "")
        + f"; skipped batches {sum(results['skipped_batches'].values())}")
    files = ["results.json", run.metrics.path.name, "curves.png"]
    files += [Path(p).name for p in results["samples"]]
    files += [n for n in ("best.pt", "last.pt") if (run.out / n).exists()]
    log(f"results in {run.out}/: " + ", ".join(files))
    return results


# ------------------------------------------------------------------------ CLI
def _flag_help(f, default) -> str:
    """``--help`` of a TrainConfig field: what it does, its default and the presets that change it."""
    parts = [] if default is None else [f"default: {default}"]   # None: the text says what unset means
    by_preset = ", ".join(f"{name} {values[f.name]}" for name, values in PRESETS.items() if f.name in values)
    if by_preset:
        parts.append(f"presets: {by_preset}")
    return f.metadata["help"] + (f" ({'; '.join(parts)})" if parts else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zf_kernels.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="hyper-parameter defaults and data set (default: synthetic; with --resume, the "
                        "run's own settings are the defaults)")
    defaults = TrainConfig()
    for f in config_fields():
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = _flag_help(f, getattr(defaults, f.name))
        typ = f.type if isinstance(f.type, str) else f.type.__name__
        if "bool" in typ:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            cast = int if "int" in typ else float if "float" in typ else str
            p.add_argument(flag, type=cast, default=None, metavar=f.name.upper(), help=help_text)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        cfg = make_config(given.get("preset") or "synthetic", **{k: v for k, v in given.items() if k != "preset"})
        # --resume: the run's own settings fill in the flags not given (train reads them)
        train(cfg, resume_flags=given if cfg.resume else None)
    except (ValueError, CheckpointError, FileNotFoundError, ops.BackendUnavailableError) as exc:
        # ops.BackendUnavailableError: --backend names one that cannot run here (e.g. cuda on a CPU)
        message = " ".join(str(exc).split())   # one line, whatever the exception holds
        print(f"zf_kernels.train: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
