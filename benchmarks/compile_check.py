"""Compile every Triton kernel for a GPU without one: registers, spills, shared memory.

    python benchmarks/compile_check.py                 # sm_90 (H100 / H200), table + checks
    python benchmarks/compile_check.py --arch 90 --json out.json
    python benchmarks/compile_check.py --dtypes all     # + float16, float64, tf32x3 (the GPU tests' dtypes)

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not that they compile:
it accepts code the GPU compiler rejects, and it says nothing about registers. This script
runs Triton's real compiler (with the ``ptxas`` that ships in the triton wheel) for the target
architecture at the block configurations the GPU dispatch picks, and reads the resource usage
of each cubin with the bundled ``cuobjdump``. Checks (exit status 1 if one fails):

- every kernel compiles;
- no kernel spills to local memory (``STACK`` / ``LOCAL`` > 0 costs a round trip per spill in
  the latency-bound time loop), with the Triton the tiles and warps were chosen for
  (``TUNED_TRITON``, the GPU machine's); another version's spills are reported, not failed
  (triton 3.9 spills 8-48 B in seven chain kernels), unless ``--strict-spills``; in float64 and
  tf32x3 (``SPILLS_REPORTED``) spills are reported, not failed;
- a persistent kernel fits one program per SM (its programs wait for each other at grid
  barriers, so all of them must be resident): registers x threads <= 64 K and shared
  memory <= 227 KB;
- no pointer offset inside a kernel's loop over the T time steps comes from a 32-bit product of
  the step (``step_offsets_in_32_bits``, read from Triton's IR): at long sequences such an
  offset (e.g. ``(s + 1) * B * H`` into the cell states) passes 2**31 and wraps.

It must run without ``TRITON_INTERPRET=1`` (the kernels must be real ``JITFunction``s); the test
suite runs it in a subprocess. No GPU and no CUDA torch are needed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("compile_check.py compiles real kernels: run it without TRITON_INTERPRET=1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.ttir_offsets import step_offsets_in_32_bits  # noqa: E402
from zf_kernels.ops._triton_common import LAUNCH_OPTIONS  # noqa: E402
from zf_kernels.ops.activations import triton as act_triton  # noqa: E402
from zf_kernels.ops.distributions import triton as dist_triton  # noqa: E402
from zf_kernels.ops.lstm import triton as lstm_triton  # noqa: E402
from zf_kernels.ops.recurrence import naive as chain_naive  # noqa: E402
from zf_kernels.ops.recurrence import triton as chain_triton  # noqa: E402
from zf_kernels.ops.recurrence import triton_ln as chain_ln_triton  # noqa: E402

REGS_PER_SM = 64 * 1024
SMEM_PER_SM = 227 * 1024          # usable shared memory per block on sm_90
# the Triton whose register allocation the tiles, warps and K chunks were chosen against (no
# spills): the GPU machine's, and the CPU test environment's (requirements-test.txt)
TUNED_TRITON = "3.6.0"
# every dtype the kernels take on a GPU: name -> (pointer element type, tl.dot's input precision).
# By default the three the benchmarks time; --dtypes all adds the ones only the GPU tests run
# (float16, float64) and the tf32x3 experiment (ZF_FP32_DOT=tf32x3: spills, reported as such)
DTYPES = {"float32": ("fp32", "ieee"), "float32-tf32": ("fp32", "tf32"), "bfloat16": ("bf16", "tf32"),
          "float16": ("fp16", "tf32"), "float64": ("fp64", "ieee"), "float32-tf32x3": ("fp32", "tf32x3")}
DEFAULT_DTYPES = ("float32", "float32-tf32", "bfloat16")
# dtypes whose spills are reported, never failed: float64 runs only in tests (gradchecks, float64
# references; twice the registers per value, so the float32 tiles spill there) and tf32x3 is an
# experiment (three products per element)
SPILLS_REPORTED = ("float64", "float32-tf32x3")
TORCH_DTYPES = {name: DTYPES[name] for name in DEFAULT_DTYPES}   # the selection (main() sets it)


def _half(dt: str) -> bool:
    """16-bit inputs: 64-wide K chunks, Triton's default pipeline, float32 states."""
    return dt in ("bf16", "fp16")


def _acc(dt: str):
    """The kernels' accumulator (``_triton_common.acc_type``): float64 for float64, else float32."""
    return tl.float64 if dt == "fp64" else tl.float32


def _state(dt: str) -> str:
    """Element type of the kept cell states and row statistics: the input's, float32 for 16-bit."""
    return "fp64" if dt == "fp64" else "fp32"


def _torch_dtype(dt: str):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}[dt]


def _elementwise_dtypes() -> list[tuple[str, str]]:
    """(name, pointer type) of the selection without precision variants: the distribution and
    activation kernels have no product."""
    return [(name, dt) for name, (dt, _) in TORCH_DTYPES.items() if "-" not in name]


@dataclass
class Spec:
    """One compilation: a kernel, its pointer element types and constexprs, launch options."""
    label: str
    kernel: object
    dtype: str                                   # element type of every pointer not overridden
    constexprs: dict
    pointers: dict = field(default_factory=dict)  # pointer name -> element type (e.g. "i32")
    options: dict = field(default_factory=lambda: dict(num_warps=4))   # num_warps, num_stages
    persistent: bool = False

    @property
    def num_warps(self) -> int:
        return self.options.get("num_warps", 4)

    ints: tuple = ()                             # integer arguments when pointers are not named *_ptr

    def __post_init__(self):
        # constexpr parameters with a default (e.g. the LSTM's W_T) take it, as a launch does
        for p in getattr(self.kernel, "params", ()):
            if p.is_constexpr and p.name not in self.constexprs and p.default is not inspect.Parameter.empty:
                self.constexprs = dict(self.constexprs, **{p.name: p.default})

    def signature(self) -> dict:
        sig = {}
        for name in self.kernel.arg_names:
            if name in self.constexprs:
                sig[name] = "constexpr"
            elif name.endswith("_ptr") or (self.ints and name not in self.ints):
                sig[name] = "*" + self.pointers.get(name, self.dtype)
            else:
                sig[name] = "i32"
        return sig


def lstm_specs() -> list[Spec]:
    """The LSTM kernels at the configurations ``zf_kernels.ops.lstm.triton`` picks on a GPU, and
    ``lstm_cell``'s step kernels where its cell states (the caller's, in the input dtype) differ
    from ``lstm``'s (16-bit inputs: float32 states there)."""
    lt = lstm_triton
    specs = []
    for dt_name, (dt, prec) in TORCH_DTYPES.items():
        torch_dtype, st = _torch_dtype(dt), _state(dt)
        common = dict(ACC_DTYPE=_acc(dt), PRECISION=prec, BLOCK_K=64 if _half(dt) else 32)
        for block_b, block_h in lt.STEPWISE_TILES:
            cfg = dict(common, BLOCK_B=block_b, BLOCK_H=block_h)
            tag = f"{dt_name} B{block_b} H{block_h}"
            opts = lt._launch_options(block_b, block_h, "stepwise", torch_dtype)
            specs.append(Spec(f"lstm fwd step {tag}", lt._lstm_fwd_step_kernel, dt,
                              dict(cfg, HAS_H=True, HAS_BIAS=False, STORE_GATES=True),
                              {"c_ptr": st, "co_ptr": st}, opts))
            specs.append(Spec(f"lstm bwd step {tag}", lt._lstm_bwd_step_kernel, dt,
                              dict(cfg, HAS_DHX=False, HAS_NEXT=True),
                              {"cp_ptr": st, "cn_ptr": st, "dc_ptr": st}, opts))
            if st != dt:     # lstm_cell: c and c_new in the input dtype, dc in the state dtype
                specs.append(Spec(f"lstm_cell fwd {tag}", lt._lstm_fwd_step_kernel, dt,
                                  dict(cfg, HAS_H=True, HAS_BIAS=True, STORE_GATES=True), {}, opts))
                specs.append(Spec(f"lstm_cell bwd {tag}", lt._lstm_bwd_step_kernel, dt,
                                  dict(cfg, HAS_DHX=False, HAS_NEXT=False), {"dc_ptr": st}, opts))
        for block_b, block_h in lt.PERSISTENT_TILES:
            cfg = dict(common, BLOCK_B=block_b, BLOCK_H=block_h, MAX_POLLS=lt.MAX_POLLS)
            if not _half(dt):
                cfg["BLOCK_K"] = lt.PERSISTENT_FP32_BLOCK_K
            tag = f"{dt_name} B{block_b} H{block_h}"
            opts = lt._launch_options(block_b, block_h, "persistent", torch_dtype)
            specs.append(Spec(f"lstm fwd persistent {tag}", lt._lstm_fwd_persistent_kernel, dt,
                              dict(cfg, REVERSE=False), {"c_ptr": st, "sync_ptr": "i32"}, opts,
                              persistent=True))
            if lt.FWD_W_TRANSPOSED and prec == "ieee":   # --fwd-wt: the W_hh^T forward too
                specs.append(Spec(f"lstm fwd persistent {tag} W_T", lt._lstm_fwd_persistent_kernel, dt,
                                  dict(cfg, REVERSE=False, W_T=True), {"c_ptr": st, "sync_ptr": "i32"},
                                  opts, persistent=True))
            specs.append(Spec(f"lstm bwd persistent {tag}", lt._lstm_bwd_persistent_kernel, dt,
                              dict(cfg, REVERSE=True), {"c_ptr": st, "dc_ptr": st, "sync_ptr": "i32"},
                              opts, persistent=True))
    return specs


def chain_specs() -> list[Spec]:
    """The Z-forcing chain kernels (zf_kernels.ops.recurrence.triton) at its GPU tiles: the
    stepwise ones at the largest tile ``_config`` picks on a GPU (32 x 32), the persistent ones
    at each of ``PERSISTENT_TILES``. Reduction chunks as at the TIMIT sizes (H 1024, M 512, Z 256)."""
    ct = chain_triton
    ints = ("t", "T", "B", "H", "M", "Z")
    acts = dict(SLOPE=chain_naive.LEAKY_SLOPE, ACT_BOUND=chain_naive.ACT_CLAMP)
    specs = []
    for dt_name, (dt, prec) in TORCH_DTYPES.items():
        torch_dtype = _torch_dtype(dt)
        state = {n: _state(dt) for n in ("C0", "C_OUT", "DC")}
        ptrs = dict(state, OKMASK="i8", SYNC="i32")
        bk = 64 if _half(dt) else 32
        common = dict(ACC=_acc(dt), PREC=prec)
        step = dict(common, BLOCK_B=32, BLOCK_N=32, BLOCK_K=bk)
        for name, kernel, extra in (
                ("fwd posterior hidden", ct._fwd_posterior_hidden, {}),
                ("fwd posterior sample", ct._fwd_posterior_sample, dict(acts, PARAM_BOUND=chain_naive.PARAM_CLAMP)),
                ("fwd lstm step", ct._fwd_lstm_step, {}),
                ("bwd lstm cell", ct._bwd_lstm_cell, dict(HAS_NEXT=True)),
                ("bwd posterior sample", ct._bwd_posterior_sample, {}),
                ("bwd posterior hidden", ct._bwd_posterior_hidden, acts)):
            opts = ct._launch_options("stepwise", torch_dtype, step) if name == "fwd lstm step" else {}
            specs.append(Spec(f"chain {name} {dt_name} B32 N32", kernel, dt, dict(step, **extra), ptrs,
                              dict(dict(num_warps=4), **opts), ints=ints))
        # the K chunks the forward passes at the TIMIT sizes (K = H, M, H + Z folded: all >= 256)
        pk = bk if _half(dt) else ct.PERSISTENT_FP32_BLOCK_K
        fwd_k = dict(BLOCK_K1=pk, BLOCK_K2=pk,
                     BLOCK_K3=bk if _half(dt) else min(pk, ct.PERSISTENT_FP32_GATE_BLOCK_K))
        for block_b, block_n in ct.PERSISTENT_TILES:
            cfg = dict(common, BLOCK_B=block_b, BLOCK_N=block_n, MAX_POLLS=ct.MAX_POLLS, BLOCK_K1=pk,
                       BLOCK_K2=pk, BLOCK_K3=pk, **acts)
            opts = ct._launch_options("persistent", torch_dtype, dict(BLOCK_B=block_b, BLOCK_N=block_n))
            specs.append(Spec(f"chain fwd persistent {dt_name} B{block_b} N{block_n}", ct._fwd_persistent, dt,
                              dict(cfg, PARAM_BOUND=chain_naive.PARAM_CLAMP, **fwd_k), ptrs, opts, True, ints))
            if ct.FWD_W_TRANSPOSED and prec == "ieee":   # --fwd-wt: the transposed-weight forward too
                specs.append(Spec(f"chain fwd persistent {dt_name} B{block_b} N{block_n} W_T", ct._fwd_persistent,
                                  dt, dict(cfg, PARAM_BOUND=chain_naive.PARAM_CLAMP, W_T=True, **fwd_k), ptrs,
                                  opts, True, ints))
            specs.append(Spec(f"chain bwd persistent {dt_name} B{block_b} N{block_n}", ct._bwd_persistent, dt,
                              cfg, ptrs, opts, True, ints))
    return specs


def chain_ln_specs() -> list[Spec]:
    """The cond_ln chain's own kernels (zf_kernels.ops.recurrence.triton_ln; its stepwise
    posterior stages are chain_specs' kernels) at the largest stepwise tile ``_config`` picks
    on a GPU (32 x 32), and its persistent kernels at each of the plain chain's
    ``PERSISTENT_TILES``, with the launch options it uses. Row-statistics tiles as at the
    TIMIT size (H 1024: 32 tiles of 32 units, 64 of 16)."""
    ct, lt = chain_triton, chain_ln_triton
    ints = ("t", "B", "H", "M", "Z", "G", "NT")
    acts = dict(SLOPE=chain_naive.LEAKY_SLOPE, ACT_BOUND=chain_naive.ACT_CLAMP)
    specs = []
    for dt_name, (dt, prec) in TORCH_DTYPES.items():
        torch_dtype = _torch_dtype(dt)
        ptrs = {n: _state(dt) for n in ("C0", "C_OUT", "DC", "HH", "PSUM", "GEN", "NORM", "RSTD", "DN")}
        ptrs["OKMASK"] = "i8"
        bk = 64 if _half(dt) else 32
        step = dict(ACC=_acc(dt), PREC=prec, BLOCK_B=32, BLOCK_N=32, BLOCK_K=bk)
        opts = dict(dict(num_warps=4), **ct._launch_options("stepwise", torch_dtype, step))
        ln = dict(GEN_BOUND=chain_naive.COND_CLAMP)
        for name, kernel, cexpr, o in (
                ("fwd ln proj", lt._fwd_ln_proj, step, opts),
                ("fwd gen hidden", lt._fwd_gen_hidden, step, dict(num_warps=4)),
                ("fwd ln cell", lt._fwd_ln_cell, dict(step, **acts, **ln, EPS_LN=chain_naive.LN_EPS,
                                                        BLOCK_T=lt._stat_chunk(1024 // 32)),
                 opts),
                ("bwd ln cell", lt._bwd_ln_cell, dict(step, **ln, HAS_NEXT=True), opts),
                ("bwd ln norm", lt._bwd_ln_norm, dict(ACC=_acc(dt), BLOCK_B=32, BLOCK_N=32,
                                                      BLOCK_T=lt._stat_chunk(1024 // 32)),
                 dict(num_warps=4)),
                ("bwd ln sample", lt._bwd_ln_sample, step, dict(num_warps=4))):
            specs.append(Spec(f"chain_ln {name} {dt_name} B32 N32", kernel, dt, cexpr, ptrs, o, ints=ints))
        ptrs = dict(ptrs, SYNC="i32")
        for block_b, block_n in ct.PERSISTENT_TILES:
            # row statistics of H 1024 in block_n-unit tiles
            cfg = dict(ACC=_acc(dt), PREC=prec, BLOCK_B=block_b, BLOCK_N=block_n, MAX_POLLS=ct.MAX_POLLS,
                       BLOCK_T=lt._stat_chunk(1024 // block_n), **acts, **ln)
            opts = ct._launch_options("persistent", torch_dtype, dict(BLOCK_B=block_b, BLOCK_N=block_n))
            tag = f"{dt_name} B{block_b} N{block_n}"
            specs.append(Spec(f"chain_ln fwd persistent {tag}", lt._fwd_ln_persistent, dt,
                              dict(cfg, PARAM_BOUND=chain_naive.PARAM_CLAMP, EPS_LN=chain_naive.LN_EPS,
                                   **{n: lt.PERSISTENT_FWD_BLOCK_K for n in ("BK_S", "BK_Z", "BK_H", "BK_U", "BK_G")}),
                              ptrs, opts, True, ints + ("T",)))
            specs.append(Spec(f"chain_ln bwd persistent {tag}", lt._bwd_ln_persistent, dt,
                              dict(cfg, BK_C=bk, BK_U=bk, BK_Z=bk, BK_S=bk), ptrs, opts, True, ints + ("T",)))
    return specs


def distribution_specs() -> list[Spec]:
    """The sampling / likelihood kernels (zf_kernels.ops.distributions.triton) at the row tiles
    ``_tiles`` picks for the model's shapes: D = 1 (SeqMNIST pixels), 200 / 256 (TIMIT frames,
    latents), 10000 (a vocabulary), with a mask and every gradient."""
    dt_mod = dist_triton
    specs = []
    for dt_name, dt in _elementwise_dtypes():
        _, bn, bd, opts = dt_mod._tiles(1280, 256)    # z of the TIMIT model: T B rows of 256
        ew = dict(ACC=_acc(dt), IDX=tl.int32, BLOCK_N=bn, BLOCK_D=bd)
        specs.append(Spec(f"reparameterize fwd {dt_name} N{bn} D{bd}", dt_mod._reparam_fwd_kernel.fn, dt, ew,
                          options=opts))
        specs.append(Spec(f"reparameterize bwd {dt_name} N{bn} D{bd}", dt_mod._reparam_bwd_kernel.fn, dt,
                          dict(ew, NEED_LV=True, NEED_EPS=True), options=opts))
        acc_ptrs = {"raw_ptr": _state(dt), "max_ptr": _state(dt), "lsum_ptr": _state(dt), "t_ptr": "i64"}
        for op, n, d in (("kl", 1280, 256), ("gnll", 1280, 200), ("bnll", 25088, 1), ("cat", 1280, 10000)):
            _, bn, bd, opts = dt_mod._tiles(n, d)
            # int32 offsets: what _strided picks below 2^31 elements (the int64 variant, for
            # bigger tensors, is not checked here)
            tile = dict(ACC=_acc(dt), HAS_MASK=True, BLOCK_N=bn, BLOCK_D=bd, IDX=tl.int32)
            need = {"kl": ("NEED_MQ", "NEED_LQ", "NEED_MP", "NEED_LP"), "gnll": ("NEED_X", "NEED_MU", "NEED_LV"),
                    "bnll": ("NEED_X", "NEED_L"), "cat": ()}[op]
            fwd = getattr(dt_mod, f"_{op}_fwd_kernel").fn
            bwd = getattr(dt_mod, f"_{op}_bwd_kernel").fn
            specs.append(Spec(f"{op} fwd {dt_name} N{bn} D{bd}", fwd, dt, dict(tile, STORE_RAW=True), acc_ptrs,
                              opts))
            specs.append(Spec(f"{op} bwd {dt_name} N{bn} D{bd}", bwd, dt, dict(tile, **{k: True for k in need}),
                              acc_ptrs, opts))
    return specs


def activation_specs() -> list[Spec]:
    """ops.leaky_clamp (zf_kernels.ops.activations.triton) at the model's two settings."""
    specs = []
    for dt_name, dt in _elementwise_dtypes():
        for slope, bound in ((1 / 3, 3.0), (1.0, 8.0)):     # the MLP activation, the parameter clamp
            consts = dict(SLOPE=slope, BOUND=bound, ACC=_acc(dt), BLOCK=act_triton._BLOCK)
            specs.append(Spec(f"leaky_clamp fwd {dt_name} slope {slope:.3g}", act_triton._leaky_clamp_fwd_kernel.fn,
                              dt, consts))
            specs.append(Spec(f"leaky_clamp bwd {dt_name} slope {slope:.3g}", act_triton._leaky_clamp_bwd_kernel.fn,
                              dt, consts))
    return specs


def _cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _sass_path(folder: Path, label: str) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".sass")


def compile_one(spec: Spec, arch: int, sass_dir: Path | None = None, strict_spills: bool = True) -> dict:
    k = spec.kernel
    src = ASTSource(fn=k, signature=spec.signature(),
                    constexprs={(k.arg_names.index(n),): v for n, v in spec.constexprs.items()})
    row = dict(label=spec.label, num_warps=spec.num_warps, num_stages=spec.options.get("num_stages"),
               persistent=spec.persistent, spills_fail=strict_spills)
    try:
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={**LAUNCH_OPTIONS, **spec.options})
    except Exception as exc:   # noqa: BLE001 - reported per kernel
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
        return row
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    try:
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, timeout=60).stdout
        if sass_dir is not None:
            sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True,
                                  timeout=60, check=True).stdout
            # the temporary file's name is the only line that differs between two equal builds
            _sass_path(sass_dir, spec.label).write_text(sass.replace(f.name, "<cubin>"))
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    if m is None:
        row.update(ok=False, error=f"cannot read cuobjdump resource usage: {usage[:200]!r}")
        return row
    regs, stack, _static_smem, local = map(int, m.groups())
    shared = int(ck.metadata.shared)
    problems, hard = [], False         # hard: the row fails
    if stack or local:
        problems.append(f"spills (stack {stack} B, local {local} B per thread)")
        hard |= strict_spills
    if regs * 32 * spec.num_warps > REGS_PER_SM:
        problems.append(f"{regs} regs x {32 * spec.num_warps} threads > 64K: "
                        + ("cannot be resident" if spec.persistent else "no second program per SM"))
        hard |= spec.persistent
    if shared > SMEM_PER_SM:
        problems.append(f"shared memory {shared} B > {SMEM_PER_SM} B")
        hard = True
    wrapping = step_offsets_in_32_bits(ck.asm["ttir"])
    if wrapping:
        problems.append(f"{len(wrapping)} pointer offsets from 32-bit products of the time step, e.g. "
                        f"{wrapping[0][:160]}")
        hard = True
    row.update(ok=not hard, regs=regs, stack=stack, local=local, shared=shared,
               problems="; ".join(problems))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    ap.add_argument("--only", default="", help="substring filter on the kernel labels")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES),
                    help=f"comma-separated, of {', '.join(DTYPES)}; or 'all' (default: %(default)s, what the "
                         "benchmarks time; float16 and float64 only the GPU tests run; float32-tf32x3: "
                         "ZF_FP32_DOT=tf32x3, whose spills are known)")
    ap.add_argument("--fp32-stages", type=int, default=None,
                    help="the persistent kernels' float32 K pipeline depth (PERSISTENT_FP32_STAGES; default the modules')")
    ap.add_argument("--fp32-block-k", type=int, default=None,
                    help="the persistent kernels' float32 K chunk (PERSISTENT_FP32_BLOCK_K; default the modules')")
    ap.add_argument("--sass", type=Path, metavar="DIR",
                    help="also write each kernel's machine code (cuobjdump -sass) to DIR/<label>.sass: "
                         "`diff -r` two such folders, each compiled with an empty TRITON_CACHE_DIR, to show "
                         "that a refactor changed no instruction (triton 3.6 compiles the chain_ln 'bwd ln "
                         "norm' kernels to one of two versions at random: its thread-locality pass visits "
                         "their two in-loop reductions in pointer order)")
    ap.add_argument("--strict-spills", action="store_true",
                    help=f"fail on spills with any Triton (by default only with {TUNED_TRITON}, the tuned one)")
    ap.add_argument("--fwd-wt", action="store_true",
                    help="also the LSTM's and the chain's IEEE forwards reading transposed weights (FWD_W_TRANSPOSED)")
    args = ap.parse_args(argv)
    if args.fwd_wt:
        lstm_triton.FWD_W_TRANSPOSED = chain_triton.FWD_W_TRANSPOSED = True
    if args.fp32_stages is not None:
        lstm_triton.PERSISTENT_FP32_STAGES = chain_triton.PERSISTENT_FP32_STAGES = args.fp32_stages
    if args.fp32_block_k is not None:
        lstm_triton.PERSISTENT_FP32_BLOCK_K = chain_triton.PERSISTENT_FP32_BLOCK_K = args.fp32_block_k
    names = list(DTYPES) if args.dtypes == "all" else [n.strip() for n in args.dtypes.split(",") if n.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        ap.error(f"--dtypes: expected names from {', '.join(DTYPES)} or 'all'; got {args.dtypes!r}")
    TORCH_DTYPES.clear()
    TORCH_DTYPES.update({n: DTYPES[n] for n in names})
    specs = [s for s in lstm_specs() + chain_specs() + chain_ln_specs() + distribution_specs() + activation_specs()
             if args.only in s.label]
    rows = []
    if args.sass is not None:
        args.sass.mkdir(parents=True, exist_ok=True)
    strict = args.strict_spills or triton.__version__ == TUNED_TRITON
    print(f"# triton {triton.__version__}, target sm_{args.arch}"
          + ("" if strict else f"; spills reported, not failed (tiles tuned with triton {TUNED_TRITON})"))
    print(f"{'kernel':44} {'warps':>5} {'regs':>5} {'stack':>5} {'shared':>7}  status")
    for spec in specs:
        reported = any(name in spec.label.split() for name in SPILLS_REPORTED)
        r = compile_one(spec, args.arch, args.sass, strict_spills=strict and not reported)
        rows.append(r)
        if "regs" in r:
            status = ("ok" if r["ok"] else "FAIL") + (f" ({r['problems']})" if r["problems"] else "")
            print(f"{r['label']:44} {r['num_warps']:5d} {r['regs']:5d} {r['stack']:5d} {r['shared']:7d}  {status}",
                  flush=True)
        else:
            print(f"{r['label']:44} {r['num_warps']:5d} {'-':>5} {'-':>5} {'-':>7}  FAIL ({r['error']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(arch=args.arch, triton=triton.__version__, strict_spills=strict,
                                             rows=rows), indent=1))
    failed = [r["label"] for r in rows if not r["ok"]]
    print(f"# {len(rows) - len(failed)} / {len(rows)} ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
