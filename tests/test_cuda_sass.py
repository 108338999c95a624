"""csrc/'s persistent kernels keep their global loads in flight together, in the machine code nvcc
makes for sm_90a (H100 / H200), read without a GPU (tests/_sass.py).

Every load a thread waits for in a time step is an L2 (or HBM) round trip on the step's critical
path, and the kernels are latency-bound at the design's sizes. Checked on every kernel entry (LSTM
and chain, forward and backward, float32, float64, bfloat16):
- staging (stage_chunk): ZF_STAGE_BATCH (8) 128-bit L2 loads outstanding at once (written as one
  load and one store per iteration, nvcc kept that order: one round trip per vector, 16-64 per
  thread and step at the TIMIT size); the same source built with ZF_STAGE_BATCH=1 has one, so the
  measure can fail;
- the once-per-launch copies of the weight slices and cell states (copy_batched): 8 at once;
- the elementwise stages' inputs (an LSTM unit's 4 pre-activations; the backward cell's 7 inputs;
  the chain's sampling inputs): one group per element, loaded twice in the code: for this thread's
  first element before the stage's product (Prefetched) and for any further element in the loop.
- the timing variants (ZF_TIMING_SKIP_STAGING / _PRODUCTS / _GRID_SYNC) that device_check.sh
  times against the default build each lack exactly their part.
What this does not show: the time it saves (benchmarks/, on a GPU)."""
import shutil
import subprocess
from pathlib import Path

import pytest

import _sass

CSRC = Path(__file__).resolve().parent.parent / "csrc"
BATCH = 8  # zf_persistent.h's default ZF_STAGE_BATCH
DTYPES = ("f", "d", "13__nv_bfloat16")
ENTRIES = [f"{op}_{d}_kernelI{s}" for op in ("lstm", "chain") for d in ("fwd", "bwd") for s in DTYPES]
# the elementwise stages' input groups (loads per element) of each kernel
STAGE_GROUPS = {"lstm_fwd": (4,), "lstm_bwd": (7,),      # Gates4; BwdCellIn (d_out, 4 gates, 2 c)
                "chain_fwd": (3, 4), "chain_bwd": (7,)}  # SampleIn, Gates4; SampleBwdIn

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or _sass.nvdisasm() is None,
                                reason="needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")


def _cubin(out_dir: Path, source: str, *flags: str) -> str:
    out = out_dir / (Path(source).stem + "".join(flags).replace("-D", "_").replace("=", "") + ".cubin")
    # the JIT build's flags (zf_kernels/ops/_cuda_ext.py: -O3 -lineinfo, sm_90a)
    subprocess.run(["nvcc", "-arch=sm_90a", "-O3", "-lineinfo", "-std=c++17", "-cubin", *flags, str(CSRC / source),
                    "-o", str(out)], check=True, capture_output=True, timeout=600)
    return str(out)


def _entries(cubins):
    found = {}
    for cubin in cubins:
        for name, instructions in _sass.kernels(cubin).items():
            entry = next((e for e in ENTRIES if e in name), None)
            if entry:
                found[entry] = instructions
    return found


@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    """The default builds of both kernel files: {source: cubin path}."""
    out = tmp_path_factory.mktemp("sass")
    return {src: _cubin(out, src) for src in ("lstm_kernels.cu", "chain_kernels.cu")}


@pytest.fixture(scope="module")
def kernels(cubins):
    found = _entries(list(cubins.values()))
    assert sorted(found) == sorted(ENTRIES), f"kernel entries found: {sorted(found)}"
    return found


def test_staging_keeps_a_batch_of_loads_in_flight(kernels):
    short = {e: _sass.loads_in_flight(ins) for e, ins in kernels.items()}
    short = {e: n for e, n in short.items() if n < BATCH}
    assert not short, f"fewer than {BATCH} 128-bit staging loads in flight (kernel: loads): {short}"


def test_one_load_per_store_is_measured_as_one(tmp_path):
    found = _entries([_cubin(tmp_path, "lstm_kernels.cu", "-DZF_STAGE_BATCH=1")])
    runs = {e: _sass.load_runs(ins, staging=True) for e, ins in found.items()}
    assert found and all(r and max(r) == 1 for r in runs.values()), runs
    plain = {e: _sass.load_runs(ins, staging=False) for e, ins in found.items()}
    assert all(max(r) < BATCH for r in plain.values()), plain  # the weight copies: 1 at a time too


def test_weight_copies_and_stage_inputs_load_together(kernels):
    problems = []
    for entry, instructions in kernels.items():
        runs = _sass.load_runs(instructions, staging=False)
        if max(runs, default=0) < BATCH:
            problems.append(f"{entry}: no copy with {BATCH} loads in flight, runs {runs}")
        for group in STAGE_GROUPS[entry[: entry.index("_kernel")]]:
            if runs.count(group) < 2:
                problems.append(f"{entry}: fewer than 2 groups of {group} loads in flight "
                                f"(prefetched and in the loop), runs {runs}")
    assert not problems, "\n".join(problems)


# what each timing variant (zf_persistent.h: ZF_TIMING_SKIP_*) leaves out, as SASS opcodes: the
# staging's 128-bit L2 loads, the tensor-core products (TF32 and bf16 HMMA), the grid sync's atomic
PARTS = {"staging": "LDG.E.128.STRONG", "products": "HMMA", "grid_sync": "ATOM"}


def _part_counts(cubin):
    ops = [op for ins in _sass.kernels(cubin).values() for op, _ in ins]
    return {part: sum(op.startswith(prefix) for op in ops) for part, prefix in PARTS.items()}


def test_each_timing_variant_leaves_out_its_part_only(cubins, tmp_path):
    """benchmarks/device_check.sh times builds without one part of each step (its time is the
    difference); each build must lack exactly that part, so that the difference means it (the
    LSTM's file: the parts are zf_persistent.h's and zf_device.h's, shared with the chain)."""
    default = _part_counts(cubins["lstm_kernels.cu"])
    assert all(n > 0 for n in default.values()), default
    for part in PARTS:
        counts = _part_counts(_cubin(tmp_path, "lstm_kernels.cu", f"-DZF_TIMING_SKIP_{part.upper()}"))
        assert counts == {p: 0 if p == part else n for p, n in default.items()}, (part, counts, default)
