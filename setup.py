"""Build script: the pure-Python package always; the CUDA extension in csrc/ only where a
CUDA build of torch and nvcc are both present (set ZF_KERNELS_SKIP_CUDA_BUILD=1 to skip it,
ZF_KERNELS_FORCE_CUDA_BUILD=1 to demand it). Every build of the package (a wheel) also carries
csrc/'s sources as zf_kernels/_csrc, so that a wheel built without CUDA can still JIT-build the
extension on a GPU machine (zf_kernels.ops._cuda_ext)."""
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC_SUFFIXES = (".cu", ".cpp", ".h", ".cuh")   # _cuda_ext.SOURCE_SUFFIXES


class BuildPyWithSources(build_py):
    """build_py, plus csrc/'s sources copied into the built package as zf_kernels/_csrc."""

    def run(self):
        super().run()
        dest = Path(self.build_lib) / "zf_kernels" / "_csrc"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted((ROOT / "csrc").glob("*")):
            if src.suffix in CSRC_SUFFIXES:
                shutil.copy2(src, dest / src.name)


def _cuda_extensions():
    if os.environ.get("ZF_KERNELS_SKIP_CUDA_BUILD") == "1":
        print("zf_kernels: ZF_KERNELS_SKIP_CUDA_BUILD=1, skipping the CUDA extension")
        return [], {}
    force = os.environ.get("ZF_KERNELS_FORCE_CUDA_BUILD") == "1"
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c*"))
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        torch = None
    reason = None
    if not sources:
        reason = "no sources in csrc/"
    elif torch is None:
        reason = "torch is not importable at build time"
    elif torch.version.cuda is None:
        reason = "torch is a CPU-only build"
    elif shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        reason = "nvcc not found"
    if reason is not None:
        if force:
            raise RuntimeError(f"zf_kernels: CUDA extension requested but cannot be built: {reason}")
        print(f"zf_kernels: skipping the CUDA extension ({reason}); backend='cuda' will be unavailable")
        return [], {}
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    ext = CUDAExtension(
        name="zf_kernels._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        # no --use_fast_math: the LSTM kernels keep IEEE expf / tanhf (same numbers as torch)
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
