"""Files a device session's device_check.sh run under benchmarks/results/ with the card and date.

device_check.sh packs every file it wrote into ``$OUT/device_check_files.tar.gz`` (the device tool
returns at most 8 files). This names them as the committed results are named, from the run's own
environment record (results.json: the GPU, the date):

    results.{json,csv,png}        -> <gpu>_<date>.{json,csv,png}
    summary.md                    -> <gpu>_<date>.md
    stages.txt                    -> <gpu>_<date>_stages.txt   (ZF_SEED_RESULTS / ZF_STAGES=rest)
    <log>.log                     -> <gpu>_<date>_<log>.log
    results_variant*.{json,csv}   -> <gpu>_<date>_variant*.{json,csv}

<gpu> is the card's model in lower case (``NVIDIA H100 80GB HBM3`` -> ``h100``); a second run of
the same card on the same date gets ``_2``, ``_3``, ... Refuses to overwrite anything.

    python benchmarks/unpack_device_run.py <files_at folder or archive> [--dest benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ARCHIVE = "device_check_files.tar.gz"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def card(gpu: str) -> str:
    """The model token of a device name: 'NVIDIA H100 80GB HBM3' -> 'h100', else a slug of it all."""
    m = re.search(r"\b([A-Z]{1,3}\d{2,4}[A-Za-z]?)\b", gpu)
    return (m.group(1) if m else re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-") or "unknown").lower()


def target_name(name: str, base: str) -> str | None:
    """Where file `name` of the run goes (without the folder), or None for files not kept."""
    stem, _, ext = name.partition(".")
    if name in ("results.json", "results.csv", "results.png"):
        return f"{base}.{ext}"
    if name == "summary.md":
        return f"{base}.md"
    if name == "stages.txt":
        return f"{base}_stages.txt"
    if ext == "log":
        return f"{base}_{stem}.log"
    if stem.startswith("results_variant") and ext in ("json", "csv"):
        return f"{base}_{stem[len('results_'):]}.{ext}"
    return None


def unpack(source: Path, dest: Path, base: str | None = None) -> list[Path]:
    archive = source / ARCHIVE if source.is_dir() else source
    if not archive.is_file():
        raise SystemExit(f"source: expected {ARCHIVE} or a folder holding it, got {source}")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        files = {p.name: p for p in Path(tmp).iterdir() if p.is_file()}
        if "results.json" not in files:
            raise SystemExit(f"{archive}: no results.json (every benchmark stage failed?): "
                             f"files {sorted(files)}")
        env = json.loads(files["results.json"].read_text()).get("environment", {})
        if not base:
            if env.get("device") != "cuda" or not env.get("gpu") or not env.get("date"):
                raise SystemExit(f"{archive}: results.json's environment names no GPU run "
                                 f"(device {env.get('device')!r}, gpu {env.get('gpu')!r}); pass --name")
            stem = f"{card(env['gpu'])}_{env['date'][:10]}"
            base, n = stem, 1
            while any(dest.glob(f"{base}.*")) or any(dest.glob(f"{base}_*")):
                n += 1
                base = f"{stem}_{n}"
        plan = {src: dest / t for name, src in sorted(files.items()) if (t := target_name(name, base))}
        clash = [str(t) for t in plan.values() if t.exists()]
        if clash:
            raise SystemExit(f"refusing to overwrite {clash}")
        dest.mkdir(parents=True, exist_ok=True)
        for src, target in plan.items():
            shutil.copyfile(src, target)
    return sorted(plan.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help=f"the device tool's files_at folder, or {ARCHIVE}")
    ap.add_argument("--dest", type=Path, default=RESULTS_DIR, help="default: benchmarks/results")
    ap.add_argument("--name", help="the files' common name instead of <gpu>_<date>")
    args = ap.parse_args(argv)
    for p in unpack(args.source, args.dest, args.name):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
