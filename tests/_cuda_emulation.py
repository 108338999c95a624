"""The CUDA LSTM kernels (csrc/lstm_kernels.cu) and Z-forcing chain kernels
(csrc/chain_kernels.cu) compiled by g++ as CPU libraries
(-DZF_CPU_EMULATION, csrc/zf_device.h: each block a group of std::threads, __syncthreads a
per-block std::barrier, the grid sync a global one) and called with ctypes.

``kernels(...)`` returns an object with the ``forward`` / ``backward`` methods that
``zf_kernels.ops.lstm._cuda_function.run_lstm`` calls, so the tests run the real autograd glue
with the real kernel source on CPU tensors. Builds are cached in the temp dir, keyed by the
hash of the sources and flags (about 3 s each with g++ -O1)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from zf_kernels.ops._precision import state_dtype

CSRC = Path(__file__).resolve().parent.parent / "csrc"
# what each library's build reads (its cache key): the .cu first, then every header it includes
SOURCES = ("lstm_kernels.cu", "lstm_kernels.h", "zf_device.h", "zf_persistent.h")
CHAIN_SOURCES = ("chain_kernels.cu", "chain_kernels.h", "lstm_kernels.h", "zf_device.h", "zf_persistent.h")
BASE_FLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-DZF_CPU_EMULATION")
# the flag that turns the grid sync into a block barrier and runs the blocks one after another
NO_GRID_SYNC = "-DZF_EMU_NO_GRID_SYNC"


class ZfLstmLaunch(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("units_per_block", ctypes.c_int),
                ("smem_limit", ctypes.c_longlong), ("num_sms", ctypes.c_int), ("tf32", ctypes.c_int)]


class ZfLstmPlan(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in (
        "blocks", "threads", "units_per_block", "rows", "k", "kc", "ksplit", "row_groups_b", "row_groups_m",
        "w_stride", "a_stride", "mma")] + [(n, ctypes.c_longlong) for n in (
            "w_bytes", "part_bytes", "state_bytes", "a_bytes", "smem_bytes")]


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


_LIBS: dict[tuple, ctypes.CDLL] = {}


def _build(stem: str, sources: tuple, extra_flags: tuple) -> Path:
    """Compile csrc/``sources[0]`` as an emulation library (cached on disk by content + flags)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) to build the CPU emulation")
    flags = BASE_FLAGS + tuple(extra_flags)
    h = hashlib.sha256(" ".join(flags).encode())
    for name in sources:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    out_dir = Path(tempfile.gettempdir()) / "zf_kernels_cuda_emulation"
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"{stem}_{h.hexdigest()[:16]}.so"
    if not so.exists():
        tmp = out_dir / f"{so.stem}.{os.getpid()}.tmp.so"
        cmd = [cxx, *flags, "-x", "c++", str(CSRC / sources[0]), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the CPU emulation failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
        os.replace(tmp, so)  # atomic: a concurrent build writes the same bytes
    return so


def library(extra_flags: tuple = ()) -> ctypes.CDLL:
    """The LSTM emulation library built with ``extra_flags`` (cached on disk and per process)."""
    key = tuple(extra_flags)
    if key in _LIBS:
        return _LIBS[key]
    lib = ctypes.CDLL(str(_build("lstm_emu", SOURCES, key)))
    ptr, i, err = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    cfg = ctypes.POINTER(ZfLstmLaunch)
    for dt in ("f32", "f64", "bf16"):
        getattr(lib, f"zf_lstm_forward_{dt}").argtypes = [ptr] * 5 + [i] * 4 + [cfg, ptr, err, i]
        getattr(lib, f"zf_lstm_backward_{dt}").argtypes = [ptr] * 6 + [i] * 4 + [cfg, ptr, err, i]
    lib.zf_lstm_plan.argtypes = [i, i, i, i, cfg, ctypes.POINTER(ZfLstmPlan), err, i]
    _LIBS[key] = lib
    return lib


STAGE_PATHS = ("vectors inside", "vectors at an edge", "elements")


def stage_counts(lib) -> dict[str, int]:
    """How many batches of each stage_chunk path (zf_persistent.h) the library ran since the
    last call (zf_emu_stage_counts in zf_device.h; the counters are reset by reading them)."""
    out = (ctypes.c_longlong * len(STAGE_PATHS))()
    lib.zf_emu_stage_counts(out, 1)
    return dict(zip(STAGE_PATHS, out))


class EmulationError(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def plan(lib, backward: bool, B: int, H: int, elem_size: int, launch: ZfLstmLaunch) -> ZfLstmPlan:
    p = ZfLstmPlan()
    buf = ctypes.create_string_buffer(1024)
    rc = lib.zf_lstm_plan(int(backward), B, H, elem_size, ctypes.byref(launch), ctypes.byref(p), buf, 1024)
    if rc != 0:
        raise EmulationError(rc, buf.value.decode())
    return p


def chunked_limits(lib, B: int, H: int, units: int, threads: int, elem_size: int, tf32: int,
                   chunk_row_bytes: int) -> tuple[int, int]:
    """Shared-memory limits (forward, backward) under which the LSTM's tensor-core plans stage
    their operand in 32-wide K chunks: the plan's fixed buffers plus `chunk_row_bytes` per padded
    batch row (a 32-wide chunk with its stride padding, short of a 64-wide one)."""
    limits = []
    for bwd in (False, True):
        p = plan(lib, bwd, B, H, elem_size, ZfLstmLaunch(threads, units, 0, 0, tf32))
        limit = p.w_bytes + p.part_bytes + p.state_bytes + p.row_groups_b * 16 * chunk_row_bytes + 8
        q = plan(lib, bwd, B, H, elem_size, ZfLstmLaunch(threads, units, limit, 0, tf32))
        assert q.mma and q.kc == 32 < q.k, (q.mma, q.kc, q.k)
        limits.append(limit)
    return limits[0], limits[1]


class EmulatedKernels:
    """``forward`` / ``backward`` of csrc/lstm_kernels.h on contiguous CPU tensors."""

    def __init__(self, lib, threads: int, units_per_block: int, smem_limit: int = 0, num_sms: int = 0,
                 tf32: int = 0):
        self.lib = lib
        self.launch = ZfLstmLaunch(threads, units_per_block, smem_limit, num_sms, int(tf32))
        self.calls = []

    @staticmethod
    def _suffix(t):
        return {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}[t.dtype]


    def _check(self, rc, buf):
        if rc != 0:
            raise EmulationError(rc, buf.value.decode())

    def forward(self, gates, h0, w_hh, out, c_all, reverse):
        T, B, H = out.shape
        tensors = (gates, h0, w_hh, out, c_all)
        assert all(t.is_contiguous() for t in tensors)
        assert all(t.dtype == gates.dtype for t in tensors[:4]) and c_all.dtype == state_dtype(gates.dtype)
        buf = ctypes.create_string_buffer(1024)
        fn = getattr(self.lib, f"zf_lstm_forward_{self._suffix(gates)}")
        rc = fn(*(t.data_ptr() for t in tensors), T, B, H, int(reverse), ctypes.byref(self.launch), None, buf, 1024)
        self.calls.append("forward")
        self._check(rc, buf)

    def backward(self, d_out, d_hT, w_hh, gates, c_all, dc, reverse):
        T, B, H = d_out.shape
        tensors = (d_out, d_hT, w_hh, gates, c_all, dc)
        assert all(t.is_contiguous() for t in tensors)
        assert all(t.dtype == gates.dtype for t in tensors[:4])
        assert c_all.dtype == dc.dtype == state_dtype(gates.dtype)
        buf = ctypes.create_string_buffer(1024)
        fn = getattr(self.lib, f"zf_lstm_backward_{self._suffix(gates)}")
        rc = fn(*(t.data_ptr() for t in tensors), T, B, H, int(reverse), ctypes.byref(self.launch), None, buf, 1024)
        self.calls.append("backward")
        self._check(rc, buf)


# ------------------------------------------------------------------ the Z-forcing chain kernels

class ZfChainLaunch(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("units_per_block", ctypes.c_int),
                ("smem_limit", ctypes.c_longlong), ("num_sms", ctypes.c_int), ("tf32", ctypes.c_int)]


class ZfChainPlan(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int) for n in (
        "blocks", "threads", "units_per_block", "m_per_block", "z_per_block", "kc", "a_stride", "row_groups_b",
        "resident", "mma")] + [(n, ctypes.c_int * 4) for n in ("rows", "k", "ksplit", "row_groups_m", "w_stride")]
        + [(n, ctypes.c_longlong * 4) for n in ("w_offset", "w_bytes")]
        + [(n, ctypes.c_longlong) for n in ("resident_bytes", "part_bytes", "state_bytes", "a_bytes", "smem_bytes",
                                            "pre_bytes", "pair_offset")])


_CHAIN_LIBS: dict[tuple, ctypes.CDLL] = {}


def chain_library(extra_flags: tuple = ()) -> ctypes.CDLL:
    """The chain emulation library built with ``extra_flags`` (cached on disk and per process)."""
    key = tuple(extra_flags)
    if key in _CHAIN_LIBS:
        return _CHAIN_LIBS[key]
    lib = ctypes.CDLL(str(_build("chain_emu", CHAIN_SOURCES, key)))
    ptr, i, err = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    cfg = ctypes.POINTER(ZfChainLaunch)
    for dt in ("f32", "f64", "bf16"):
        getattr(lib, f"zf_chain_forward_{dt}").argtypes = [ptr] * 17 + [i] * 5 + [cfg, ptr, err, i]
        getattr(lib, f"zf_chain_backward_{dt}").argtypes = [ptr] * 20 + [i] * 5 + [cfg, ptr, err, i]
    lib.zf_chain_plan.argtypes = [i] * 6 + [cfg, ctypes.POINTER(ZfChainPlan), err, i]
    _CHAIN_LIBS[key] = lib
    return lib


def chain_plan(lib, backward: bool, B: int, H: int, M: int, Z: int, elem_size: int,
               launch: ZfChainLaunch) -> ZfChainPlan:
    p = ZfChainPlan()
    buf = ctypes.create_string_buffer(1024)
    rc = lib.zf_chain_plan(int(backward), B, H, M, Z, elem_size, ctypes.byref(launch), ctypes.byref(p), buf, 1024)
    if rc != 0:
        raise EmulationError(rc, buf.value.decode())
    return p


class EmulatedChainKernels:
    """``forward`` / ``backward`` of csrc/chain_kernels.h on contiguous CPU tensors."""

    def __init__(self, lib, threads: int, units_per_block: int, smem_limit: int = 0, num_sms: int = 0,
                 backward_lib=None, tf32: int = 0):
        self.lib, self.backward_lib = lib, backward_lib or lib
        self.launch = ZfChainLaunch(threads, units_per_block, smem_limit, num_sms, int(tf32))
        self.calls = []

    def _call(self, lib, name, tensors, dims, dtype):
        """tensors: the storage dtype's, the cell states' (float32 for bfloat16) and the uint8 mask."""
        allowed = (dtype, state_dtype(tensors[0].dtype), torch.uint8)
        for t in tensors:
            assert t.is_contiguous() and t.dtype in allowed, (name, t.dtype, t.shape)
        buf = ctypes.create_string_buffer(1024)
        fn = getattr(lib, f"{name}_{EmulatedKernels._suffix(tensors[0])}")
        rc = fn(*(t.data_ptr() for t in tensors), *dims, ctypes.byref(self.launch), None, buf, 1024)
        self.calls.append(name)
        if rc != 0:
            raise EmulationError(rc, buf.value.decode())

    def forward(self, gates, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_comb, w_hh, h, c, z, mu, lv, s, okmask):
        T, B, H = h.shape
        dims = (T, B, H, s.shape[-1], z.shape[-1])
        assert c0.dtype == c.dtype == state_dtype(gates.dtype)
        self._call(self.lib, "zf_chain_forward",
                   (gates, post_x, eps, h0, c0, w_qh, w_q2, b_q2, w_comb, w_hh, h, c, z, mu, lv, s, okmask), dims,
                   gates.dtype)

    def backward(self, grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0, c, lv, eps, okmask, s,
                 w_qh, w_q2, w_comb, w_hh, dparams, ds, grad_eps, dc):
        T, B, H = grad_h.shape
        dims = (T, B, H, s.shape[-1], lv.shape[-1])
        assert grad_c.dtype == c0.dtype == c.dtype == dc.dtype == state_dtype(gates.dtype)
        self._call(self.backward_lib, "zf_chain_backward",
                   (grad_h, grad_c, grad_z, grad_mu, grad_lv, gates, c0, c, lv, eps, okmask, s,
                    w_qh, w_q2, w_comb, w_hh, dparams, ds, grad_eps, dc), dims, gates.dtype)


# ------------------------------------------------------------ "cuda" as a backend of ``ops``
LSTM_TARGET = "zf_kernels.ops.lstm.cuda:lstm"
CHAIN_TARGET = "zf_kernels.ops.recurrence.cuda:zforcing_chain"


def install_backend(monkeypatch, threads: int, tf32: int) -> list[str]:
    """``ops`` as on a GPU whose "auto" may take the CUDA recurrences: CPU tensors count as CUDA
    ones, the CUDA lstm / chain are the emulated kernels (3 hidden units per block, so test
    shapes span several blocks), eagerly through the autograd Functions and under torch.compile
    through the custom ops (``*/cuda_op.py``, their kernels factory patched); every other check
    is the real one (Triton runs in the interpreter). Returns the list of kernel calls made, e.g.
    "lstm forward"."""
    from zf_kernels.ops import _dispatch
    from zf_kernels.ops.lstm import cuda_op as lstm_op
    from zf_kernels.ops.lstm._cuda_function import run_lstm
    from zf_kernels.ops.recurrence import cuda_op as chain_op
    from zf_kernels.ops.recurrence._cuda_function import run_chain
    from zf_kernels.ops.recurrence.naive import ChainOutput

    calls = []
    lstm_kernels = EmulatedKernels(library(), threads=threads, units_per_block=3, tf32=tf32)
    chain_kernels = EmulatedChainKernels(chain_library(), threads=threads, units_per_block=3, tf32=tf32)

    class Recorded:
        def __init__(self, name, kernels):
            self.name, self.k = name, kernels

        def forward(self, *a):
            calls.append(f"{self.name} forward")
            self.k.forward(*a)

        def backward(self, *a):
            calls.append(f"{self.name} backward")
            self.k.backward(*a)

    recorded_lstm, recorded_chain = Recorded("lstm", lstm_kernels), Recorded("chain", chain_kernels)

    def lstm(*args):
        return run_lstm(recorded_lstm, *args)

    def chain(*args):
        return ChainOutput(*run_chain(recorded_chain, *args))

    real_why_not = _dispatch._why_not

    def why_not(op, backend, tensors):
        if backend == "cuda" and op in ("lstm", "zforcing_chain"):
            return None
        return real_why_not(op, backend, tensors)

    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    monkeypatch.setattr(_dispatch, "_why_not", why_not)
    monkeypatch.setattr(_dispatch, "_with_detail", lambda op, backend, reason, tensors: reason)
    monkeypatch.setitem(_dispatch._LOADED, LSTM_TARGET, lstm)
    monkeypatch.setitem(_dispatch._LOADED, CHAIN_TARGET, chain)
    # the traced forms as registered, their kernels the emulated ones
    for target, traced in ((LSTM_TARGET, lstm_op.lstm), (CHAIN_TARGET, chain_op.zforcing_chain)):
        if target in _dispatch._TRACED_FORMS:
            monkeypatch.setitem(_dispatch._LOADED, _dispatch._TRACED_FORMS[target], traced)
    monkeypatch.setattr(lstm_op, "kernels_factory", lambda units, threads, tf32: recorded_lstm)
    monkeypatch.setattr(chain_op, "kernels_factory", lambda units, threads, tf32: recorded_chain)
    monkeypatch.setenv(_dispatch.AUTO_UNVERIFIED_ENV, "1")
    return calls
