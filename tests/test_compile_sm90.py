"""Every Triton kernel (LSTM, chain, cond_ln chain, distributions) compiles for sm_90 (H100 / H200) in every dtype
the GPU tests run, without spilling registers in the benchmarked ones (with the Triton the tiles were tuned with;
another version's spills are a warning; float64's and tf32x3's are reported only), and the persistent ones fit one
program per SM: benchmarks/compile_check.py run in a subprocess (the suite itself runs under TRITON_INTERPRET=1,
which never calls the real compiler)."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parent.parent


def test_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")     # a real compile, not a cached one
    out = tmp_path / "usage.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compile_check.py"), "--dtypes", "all",
                           "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    usage = json.loads(out.read_text())
    rows = usage["rows"]
    labels = [r["label"] for r in rows]
    # every schedule and direction, in every dtype a GPU test runs; lstm_cell's own specializations
    # (its cell states in the input dtype) in 16-bit
    for kind in ("lstm fwd step", "lstm bwd step", "lstm fwd persistent", "lstm bwd persistent",
                 "chain fwd lstm step", "chain bwd lstm cell", "chain fwd persistent", "chain bwd persistent",
                 "chain_ln fwd persistent", "chain_ln bwd persistent",
                 "reparameterize bwd", "kl bwd", "gnll bwd", "bnll bwd", "cat bwd", "leaky_clamp bwd"):
        for dt in ("float32", "bfloat16", "float16", "float64"):
            assert any((lb + " ").startswith(f"{kind} {dt} ") for lb in labels), (kind, dt)
    for kind in ("lstm_cell fwd", "lstm_cell bwd"):
        for dt in ("bfloat16", "float16"):
            assert any(lb.startswith(f"{kind} {dt} ") for lb in labels), (kind, dt)
    for kind in ("lstm fwd persistent", "chain fwd persistent", "chain_ln bwd persistent"):
        for dt in ("float32-tf32", "float32-tf32x3"):
            assert any(lb.startswith(f"{kind} {dt} ") for lb in labels), (kind, dt)
    # float64's spills (tests only) and tf32x3's (an experiment) are reported, not failed
    assert all(r["spills_fail"] == (usage["strict_spills"] and not any(
        n in r["label"].split() for n in ("float64", "float32-tf32x3"))) for r in rows)
    spills = [f"{r['label']}: {r['stack']} + {r['local']} B" for r in rows
              if (r["stack"] or r["local"]) and (r["spills_fail"] or not usage["strict_spills"])]
    if usage["strict_spills"]:        # the Triton the tiles were tuned with (the GPU machine's)
        assert not spills, spills
    elif spills:                       # another Triton: its register allocation is not ours to fail on
        warnings.warn(f"triton {usage['triton']} spills in {len(spills)} kernels: {spills}")
    for r in rows:
        assert r["ok"], r
        if r["persistent"]:
            assert r["regs"] * 32 * r["num_warps"] <= 64 * 1024, r


def _step_offsets(ttir):
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.ttir_offsets import step_offsets_in_32_bits
    finally:
        sys.path.pop(0)
    return step_offsets_in_32_bits(ttir)


# Triton IR as the persistent LSTM forward had it before its cell-state offsets went to 64 bits:
# (s + 1) * B * H wrapped at (T + 1) B H >= 2**31 (T = 32768 at B = 64, H = 1024)
_LOOP = ("    %t_prev:3 = scf.for %s = %c0_i32 to %T step %c1_i32 iter_args(%c_26 = %c_25, %ok_27 = %ok, "
         "%t_prev_28 = %c0_i32) -> (tensor<16x16xf32>, i1, i32)  : i32 {\n")
_WRAPPING = _LOOP + """      %14 = arith.addi %s, %c1_i32 : i32 loc(#loc133)
      %15 = arith.muli %14, %BH : i32 loc(#loc134)
      %16 = tt.addptr %c_ptr, %15 : !tt.ptr<f32>, i32 loc(#loc135)
"""


def test_step_offsets_in_32_bits_flags_a_wrapping_product_only():
    assert _step_offsets(_WRAPPING) == ["%16 = tt.addptr %c_ptr, %15 : !tt.ptr<f32>, i32"]
    widened = _WRAPPING.replace("%15 = arith.muli %14, %BH : i32", "%15w = arith.extsi %14 : i32 to i64\n"
                                "      %15 = arith.muli %15w, %BH64 : i64").replace(", i32 loc(#loc135)",
                                                                                     ", i64 loc(#loc135)")
    assert _step_offsets(widened) == []
    # the loop-carried step (t_prev) counts; a product of sizes alone does not; nor a compare
    carried = _LOOP + "      %a = arith.muli %t_prev_28, %BH : i32\n      %p = tt.addptr %out_ptr, %a : !tt.ptr<f32>, i32\n"
    assert len(_step_offsets(carried)) == 1
    sizes = _LOOP + "      %a = arith.muli %H, %c4_i32 : i32\n      %p = tt.addptr %g_ptr, %a : !tt.ptr<f32>, i32\n"
    assert _step_offsets(sizes) == []
    # a name a nested region defined from the step and another region reuses for a size
    reused = _LOOP + ("      %16 = arith.cmpi sgt, %s, %c0_i32 : i32\n      %16 = arith.muli %H, %c4_i32 : i32\n"
                      "      %x = tt.splat %16 : i32 -> tensor<32x1xi32>\n      %y = arith.muli %rb, %x : tensor<32x1xi32>\n"
                      "      %p = tt.addptr %g, %y : tensor<32x1x!tt.ptr<f32>>, tensor<32x1xi32>\n")
    assert _step_offsets(reused) == []
