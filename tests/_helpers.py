"""Small helpers shared by the trainer tests (imported as a plain module: pytest puts this
folder on sys.path)."""
import json
from pathlib import Path


def quiet(*_):
    """A ``log`` callback that prints nothing."""


def cli_flags(settings: dict) -> list:
    """``TrainConfig`` field values as command-line flags of ``python -m zf_kernels.train``."""
    args = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v is not None:
            args += [flag, str(v)]
    return args


def read_metrics(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


def without_timing(records):
    """Metrics records without their wall-clock fields, for exact comparisons."""
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]
