"""Loads the CUDA extension ``zf_kernels._C`` (csrc/): the one ``setup.py`` built, else a JIT
build with ``torch.utils.cpp_extension.load`` on first use, where torch has CUDA and nvcc exists.
Any failure is an ImportError carrying the reason (``_dispatch`` turns it into the message of
``BackendUnavailableError``); the outcome is cached, so a failed build is not retried per call.

The JIT build compiles for the current GPU (``sm_90a`` on an H100 / H200) into
``$ZF_KERNELS_CACHE/torch_ext/<hash>`` (default ``~/.cache/zf_kernels``), the hash covering
the sources, torch's version and the architecture, so an edit of csrc/ rebuilds and an
unchanged tree reuses the build. A prebuilt ``zf_kernels._C`` from ``pip install -e .`` is
used as it is: rebuild it after editing csrc/.

``ZF_KERNELS_NO_CUDA_EXT=1`` makes the extension unavailable (backend="cuda" raises, "auto" never
tries it): benchmarks/device_check.sh sets it after the extension's tests hung.

``$ZF_KERNELS_NVCC_DEFINES`` (e.g. ``-DZF_STAGE_BATCH=1``) adds macro definitions to the JIT
build, in its hash too, and skips any prebuilt module: how benchmarks/device_check.sh times a
variant of the kernels against the default build.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import torch

# where the JIT build reads csrc/: the checkout's (an editable install), else the copy a wheel
# carries as package data (setup.py's build_py puts csrc/'s sources into zf_kernels/_csrc)
CHECKOUT_CSRC = Path(__file__).resolve().parent.parent.parent / "csrc"
PACKAGED_CSRC = Path(__file__).resolve().parent.parent / "_csrc"
SOURCE_SUFFIXES = (".cu", ".cpp", ".h", ".cuh")   # what the build reads


def _compiled_sources(folder: Path) -> list[Path]:
    """What setup.py compiles in ``folder``: *.c* (the .cu kernels and the .cpp bindings)."""
    return sorted(folder.glob("*.c*"))


CSRC = CHECKOUT_CSRC if _compiled_sources(CHECKOUT_CSRC) else PACKAGED_CSRC
NVCC_FLAGS = ["-O3", "-lineinfo"]   # no --use_fast_math: the kernels keep IEEE expf / tanhf

_cached = None   # the module, or the ImportError of the first attempt
DEFINES_ENV = "ZF_KERNELS_NVCC_DEFINES"
DISABLE_ENV = "ZF_KERNELS_NO_CUDA_EXT"


def sources() -> list[Path]:
    """What the build compiles, from ``CSRC``."""
    return _compiled_sources(CSRC)


def nvcc_defines() -> list[str]:
    """The macro definitions ``$ZF_KERNELS_NVCC_DEFINES`` adds to the JIT build (space-separated
    ``-DNAME`` / ``-DNAME=VALUE``); anything else is an ImportError naming it."""
    raw = os.environ.get(DEFINES_ENV, "")
    flags = raw.split()
    bad = [f for f in flags if not re.fullmatch(r"-D[A-Za-z_]\w*(=[\w.+-]*)?", f)]
    if bad:
        raise ImportError(f"{DEFINES_ENV}={raw!r}: expected space-separated -DNAME or -DNAME=VALUE flags, "
                          f"got {bad}")
    return flags


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home, "bin", "nvcc") if home else None
    return str(cand) if cand is not None and cand.exists() else None


def nvcc_library_dirs(nvcc: str) -> list[str]:
    """The folders nvcc itself links the CUDA runtime from (the ``LIBRARIES`` line of
    ``nvcc --dryrun``, stubs left out). torch guesses CUDA_HOME as two folders above the nvcc on
    PATH; where that nvcc is a wrapper script (``/usr/local/bin/nvcc`` exec-ing
    ``/usr/local/cuda-13.0/bin/nvcc``, as on this project's CPU machines) the guess is
    ``/usr/local`` and the link fails with "cannot find -lcudart" (seen with torch 2.11+cu130)."""
    try:
        proc = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    dirs = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if "LIBRARIES=" in line:
            for flag in shlex.split(line.split("LIBRARIES=", 1)[1]):
                d = flag[2:] if flag.startswith("-L") else ""
                if d and not d.rstrip("/").endswith("stubs") and Path(d).is_dir():
                    dirs.append(str(Path(d).resolve()))
    return dirs


def _arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    # sm_90a: the Hopper-specific target (wgmma etc. for later versions of the kernels)
    return f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")


@contextlib.contextmanager
def build_lock(build_dir: Path, timeout: float | None = None):
    """Hold ``build_dir``'s build lock: an flock, which the OS releases when its holder exits,
    killed or not. Under it any lock file of torch's in ``build_dir`` is a dead build's (a live
    builder would hold this lock) and goes: torch's FileBaton is a plain file that a build killed
    mid-way leaves behind, on which every later build waited forever (seen on the H200 after a
    timed-out build; removing only locks older than 10 minutes did not help within a session).
    ``timeout``: seconds to wait for a live builder (None: as long as it builds)."""
    import fcntl
    with open(build_dir / "zf_build.lock", "w") as f:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"another process has been building in {build_dir} for "
                                       f"over {timeout:g} s") from None
                time.sleep(0.5)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _jit_build():
    if torch.version.cuda is None:
        raise ImportError(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise ImportError("torch sees no CUDA device")
    nvcc = _nvcc()
    if nvcc is None:
        raise ImportError("nvcc not found (neither on PATH nor in $CUDA_HOME/bin)")
    srcs = sources()
    if not srcs:
        raise ImportError(f"no CUDA sources in {CHECKOUT_CSRC} or {PACKAGED_CSRC} (this install carries "
                          f"neither csrc/ nor its packaged copy: reinstall from a checkout or a wheel "
                          f"built by setup.py)")
    arch = _arch()
    flags = NVCC_FLAGS + nvcc_defines()
    h = hashlib.sha256(f"{torch.__version__} {torch.version.cuda} sm_{arch} {flags}".encode())
    for p in sorted(CSRC.glob("*")):
        if p.suffix in SOURCE_SUFFIXES:
            h.update(p.name.encode())
            h.update(p.read_bytes())
    tag = h.hexdigest()[:12]
    cache = Path(os.environ.get("ZF_KERNELS_CACHE", Path.home() / ".cache" / "zf_kernels"))
    build_dir = cache / "torch_ext" / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import load
    try:
        with build_lock(build_dir):
            return load(name=f"zf_kernels_C_{tag}", sources=[str(p) for p in srcs],
                        extra_cflags=["-O3"], extra_include_paths=[str(CSRC)],
                        extra_cuda_cflags=flags + [f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                        extra_ldflags=[f"-L{d}" for d in nvcc_library_dirs(nvcc)],
                        build_directory=str(build_dir), verbose=os.environ.get("ZF_KERNELS_VERBOSE_BUILD") == "1")
    except Exception as exc:  # noqa: BLE001 - compiler errors come in many types
        msg = " ".join(str(exc).split())[-1500:]
        raise ImportError(f"the JIT build of csrc/ failed ({type(exc).__name__}: {msg}); "
                          f"ZF_KERNELS_VERBOSE_BUILD=1 shows the compiler output") from exc


def load():
    """The extension module; ImportError with the reason where it cannot be had."""
    global _cached
    if os.environ.get(DISABLE_ENV) == "1":
        raise ImportError(f"the CUDA extension is disabled by {DISABLE_ENV}=1")
    if _cached is None:
        try:
            if os.environ.get(DEFINES_ENV, "").strip():
                raise ImportError(f"${DEFINES_ENV} asks for a build of its own")
            _cached = importlib.import_module("zf_kernels._C")
        except ImportError as prebuilt:
            try:
                _cached = _jit_build()
            except ImportError as exc:
                _cached = ImportError(f"no prebuilt zf_kernels._C ({prebuilt}) and no JIT build: {exc}")
    if isinstance(_cached, ImportError):
        raise ImportError(str(_cached))
    return _cached
