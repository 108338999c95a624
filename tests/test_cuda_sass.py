"""The staging loops of csrc/'s persistent kernels keep several L2 loads in flight per thread, in
the machine code nvcc makes for sm_90a (H100 / H200), read without a GPU (tests/_sass.py).

Each time step every block stages the activations its product reads (h_{t-1}, dgates_{t+1}, ...)
from L2: 16-32 vectors of 16 bytes per thread at the TIMIT size. Written as one load and one store
per iteration, nvcc keeps that order (a global load is not moved above a shared store it cannot
prove disjoint), and each vector waits out a whole L2 round trip; stage_chunk issues
ZF_STAGE_BATCH (8) loads before its first store. Checked: every kernel entry (LSTM and chain,
forward and backward, float32, float64, bfloat16) has ZF_STAGE_BATCH 128-bit loads outstanding at
once, and the same source built with ZF_STAGE_BATCH=1 has one (the measure can fail). What this
does not show: the time it saves (benchmarks/, on a GPU)."""
import shutil
import subprocess
from pathlib import Path

import pytest

import _sass

CSRC = Path(__file__).resolve().parent.parent / "csrc"
BATCH = 8  # zf_persistent.h's default ZF_STAGE_BATCH
ENTRIES = [f"{op}_{d}_kernelI{s}" for op in ("lstm", "chain") for d in ("fwd", "bwd")
           for s in ("f", "d", "13__nv_bfloat16")]

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or _sass.nvdisasm() is None,
                                reason="needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")


def _cubin(tmp_path: Path, source: str, *flags: str) -> str:
    out = tmp_path / (Path(source).stem + "".join(flags).replace("-D", "_").replace("=", "") + ".cubin")
    subprocess.run(["nvcc", "-arch=sm_90a", "-O3", "-std=c++17", "-cubin", *flags, str(CSRC / source),
                    "-o", str(out)], check=True, capture_output=True, timeout=600)
    return str(out)


def _in_flight(cubins):
    found = {}
    for cubin in cubins:
        for name, instructions in _sass.kernels(cubin).items():
            entry = next((e for e in ENTRIES if e in name), None)
            if entry:
                found[entry] = _sass.loads_in_flight(instructions)
    return found


def test_staging_keeps_a_batch_of_loads_in_flight(tmp_path):
    found = _in_flight([_cubin(tmp_path, "lstm_kernels.cu"), _cubin(tmp_path, "chain_kernels.cu")])
    assert sorted(found) == sorted(ENTRIES), f"kernel entries found: {sorted(found)}"
    short = {e: n for e, n in found.items() if n < BATCH}
    assert not short, f"fewer than {BATCH} 128-bit loads in flight (kernel: loads): {short}"


def test_one_load_per_store_is_measured_as_one(tmp_path):
    found = _in_flight([_cubin(tmp_path, "lstm_kernels.cu", "-DZF_STAGE_BATCH=1")])
    assert found and all(n == 1 for n in found.values()), found
