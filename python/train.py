"""Train VRNN, SRNN or STORN with zf_kernels' own trainer (same flags, data, checkpoints and
reports as ``python -m zf_kernels.train``):

    python python/train.py --model vrnn --preset seqmnist --rnn-dim 64 --max-steps 150
    python python/train.py --model srnn-resq --preset synthetic

Models: ``vrnn``, ``srnn``, ``srnn-resq`` (SRNN with the residual posterior mean), ``storn``.
The trainer's Z-forcing-only flags (``--aux-*``, ``--bwd``, ``--z-force``, ``--cond-ln``) do not
apply: these models report zero ``aux`` and ``bwd_nll`` terms.
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:     # imported from elsewhere (tests), not run as a script
    sys.path.insert(0, str(_HERE))
try:
    import zf_kernels  # noqa: F401
except ImportError:                # a source checkout without `pip install -e .`
    sys.path.insert(1, str(_HERE.parent))

from srnn import SRNN    # noqa: E402
from storn import STORN  # noqa: E402
from vrnn import VRNN    # noqa: E402

from zf_kernels import train as zf_train  # noqa: E402


def factory(cls, **extra):
    """``(cfg, bundle) -> model``: the trainer's size flags and the data set's output type."""
    def build(cfg, bundle):
        return cls(bundle.input_dim, bundle.output_type, emb_dim=cfg.emb_dim, rnn_dim=cfg.rnn_dim,
                   z_dim=cfg.z_dim, mlp_dim=cfg.mlp_dim, backend=cfg.backend, **extra)
    build.__name__ = f"build_{cls.name}"
    return build


FACTORIES = {"vrnn": factory(VRNN), "srnn": factory(SRNN), "srnn-resq": factory(SRNN, resq=True),
             "storn": factory(STORN)}


def register(models: dict | None = None) -> dict:
    """Add the factories to ``zf_kernels.train.MODELS`` (or to ``models``); returns it."""
    models = zf_train.MODELS if models is None else models
    models.update(FACTORIES)
    return models


def all_models() -> dict:
    """The trainer's models and these, without changing ``zf_kernels.train.MODELS`` (for
    python/evaluate.py and python/sample.py)."""
    return register(dict(zf_train.MODELS))


def main(argv=None) -> int:
    register()
    return zf_train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
