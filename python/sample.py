"""Sample from a checkpoint that python/train.py wrote (VRNN, SRNN, STORN; Z-Forcing too), with
the flags of ``python -m zf_kernels.sample``:

    python python/sample.py runs/vrnn --num 16 --out samples/
"""
from __future__ import annotations

import sys

from train import all_models   # python/train.py (this folder is on sys.path when run as a script)

from zf_kernels import sample

if __name__ == "__main__":
    sys.exit(sample.main(models=all_models()))
