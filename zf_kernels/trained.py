"""A trained model loaded back from a trainer checkpoint (``best.pt`` / ``last.pt``) with the
data set and the precision of its run: what ``python -m zf_kernels.evaluate`` and
``python -m zf_kernels.sample`` start from."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch


def find_checkpoint(path) -> Path:
    """``path`` itself, or in a run directory its ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"checkpoint: {path} is a directory without best.pt or last.pt")
    return path


@dataclasses.dataclass
class Trained:
    model: torch.nn.Module        # in eval mode, on ``device``, in the run's parameter dtype
    cfg: object                   # the run's TrainConfig, with the overrides given to load_trained
    data: object                  # its DataBundle
    checkpoint: Path
    step: int                     # training steps behind the weights
    device: torch.device
    amp_dtype: torch.dtype | None  # the run's autocast dtype (mixed precision), or None

    def autocast(self):
        """The context of the run's forward passes (autocast with mixed precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def load_trained(path, *, data: str | None = None, device: str = "auto", backend: str = "auto",
                 models: dict | None = None, **overrides) -> Trained:
    """The model of checkpoint ``path`` (or of a run directory) with the run's data set, built as
    the run built it; ``data`` where the data set is now (default: where the run read it),
    ``overrides`` other TrainConfig fields (e.g. ``eval_limit``). ``models`` maps ``--model``
    names to factories (default: zf_kernels.train.MODELS; python/train.py adds the other VAEs).
    A data set whose description (normalisation, generator, ...) differs from the run's is a
    ValueError naming what differs."""
    from . import train as train_mod          # here: train imports evaluate, which imports this module
    from .training.checkpoint import load_checkpoint
    from .training.presets import TrainConfig, config_fields, validate
    from .data.batching import meta_differences

    ckpt = find_checkpoint(path)
    state = load_checkpoint(ckpt)
    known = {f.name for f in config_fields()}
    saved = {k: v for k, v in state["config"].items() if k in known}
    cfg = dataclasses.replace(TrainConfig(**saved), device=device, backend=backend, data=data or saved["data"],
                              **overrides)
    validate(cfg)
    models = train_mod.MODELS if models is None else models
    if cfg.model not in models:
        raise ValueError(f"checkpoint {ckpt} holds a {cfg.model!r} model; this command knows "
                         f"{sorted(models)} (python/evaluate.py and python/sample.py know the other VAEs)")
    bundle = train_mod.load_data(cfg)
    differ = meta_differences(bundle.meta, state["data_meta"])
    if differ:
        raise ValueError(f"the data set differs from the one checkpoint {ckpt} was trained on "
                         f"(its {', '.join(differ)}): pass --data with the run's data")
    dev = train_mod.resolve_device(cfg.device)
    dtype, amp_dtype = train_mod.PRECISIONS[cfg.dtype]
    model = models[cfg.model](cfg, bundle).to(dev, dtype)
    if state["model_config"] != model.config:
        raise ValueError(f"checkpoint {ckpt} holds a model {state['model_config']}, its configuration "
                         f"builds {model.config}")
    model.load_state_dict(state["model"])
    model.eval()
    return Trained(model, cfg, bundle, ckpt, state["step"], dev, amp_dtype)
