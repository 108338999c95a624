"""Evaluate a checkpoint that python/train.py wrote (VRNN, SRNN, STORN; Z-Forcing too), with the
flags of ``python -m zf_kernels.evaluate``:

    python python/evaluate.py runs/vrnn --split test --iwae-k 100
"""
from __future__ import annotations

import sys

from train import all_models   # python/train.py (this folder is on sys.path when run as a script)

from zf_kernels import evaluate

if __name__ == "__main__":
    sys.exit(evaluate.main(models=all_models()))
