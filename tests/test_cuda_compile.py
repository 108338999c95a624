"""The CUDA extension builds without a GPU: nvcc compiles csrc/*.cu for sm_90a (H100 / H200)
with every kernel free of register spills and stack frames, g++ compiles the torch bindings
(csrc/bindings.cpp) against torch's headers, and the two link (cudart static) into a module
that imports and reports, as an error naming the CUDA call, that there is no usable GPU.
Skipped where nvcc / g++ are absent. What this does not show: that the kernels run, or run
correctly, on a GPU (tests/test_cuda_emulation.py runs the same source on the CPU,
tests/test_cuda_lstm.py on a GPU)."""
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
# the kernel entries lstm_kernels.cu and chain_kernels.cu must define: forward / backward x float / double
# (and bfloat16 storage, __nv_bfloat16: "I13__nv_bfloat16" in the mangled name)
KERNELS = ("lstm_fwd_kernelIf", "lstm_fwd_kernelId", "lstm_bwd_kernelIf", "lstm_bwd_kernelId",
           "lstm_fwd_kernelI13__nv_bfloat16", "lstm_bwd_kernelI13__nv_bfloat16",
           "chain_fwd_kernelIf", "chain_fwd_kernelId", "chain_bwd_kernelIf", "chain_bwd_kernelId",
           "chain_fwd_kernelI13__nv_bfloat16", "chain_bwd_kernelI13__nv_bfloat16")
MODULE = "zf_compile_check_C"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Both compilations at once (nvcc and g++ take ~7 s and ~25 s on one core each)."""
    nvcc, cxx = shutil.which("nvcc"), shutil.which("g++")
    if nvcc is None or cxx is None:
        pytest.skip(f"needs nvcc and g++ (nvcc: {nvcc}, g++: {cxx})")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    from zf_kernels.ops._cuda_ext import NVCC_FLAGS
    out = tmp_path_factory.mktemp("cuda_build")
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, "no .cu sources in csrc/"
    jobs = {}
    for src in sources:
        # what torch's JIT build passes (its common flags, e.g. -D__CUDA_NO_BFLOAT16_CONVERSIONS__,
        # and the C++20 of this torch's load()) with the package's own; test_cuda_sass.py builds C++17
        jobs[src.name] = subprocess.Popen(
            [nvcc, "-arch=sm_90a", *NVCC_FLAGS, *COMMON_NVCC_FLAGS, "-std=c++20", "-Xptxas", "-v",
             "-Xcompiler", "-fPIC", "-c", str(src), "-o", str(out / (src.stem + ".o"))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jobs["bindings.cpp"] = subprocess.Popen(
        [cxx, "-std=c++20", "-O0", "-fPIC", "-Wall", "-c", f"-DTORCH_EXTENSION_NAME={MODULE}",
         "-DTORCH_API_INCLUDE_EXTENSION_H", f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}",
         *(f"-I{p}" for p in include_paths()), str(CSRC / "bindings.cpp"), "-o", str(out / "bindings.o")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = {}
    for name, proc in jobs.items():
        _, err = proc.communicate(timeout=600)
        logs[name] = (proc.returncode, err)
    return out, nvcc, logs


def test_cuda_kernels_compile_for_sm90a_without_spills(build):
    _, _, logs = build
    text = ""
    for name, (rc, err) in logs.items():
        if name.endswith(".cu"):
            assert rc == 0, f"{name}:\n{err[-4000:]}"
            text += err
    # ptxas: "Function properties for <name>" then
    # "<n> bytes stack frame, <n> bytes spill stores, <n> bytes spill loads"
    usage = {}
    for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads", text):
        usage[m.group(1)] = tuple(int(g) for g in m.group(2, 3, 4))
    for kernel in KERNELS:
        found = [name for name in usage if kernel in name]
        assert found, f"ptxas reported no entry for {kernel}:\n{text[-3000:]}"
        for name in found:
            assert usage[name] == (0, 0, 0), f"{name}: stack frame / spill stores / spill loads {usage[name]}"


def test_cuda_bindings_compile_against_torch_headers(build):
    rc, err = build[2]["bindings.cpp"]
    assert rc == 0, err[-4000:]
    assert "warning" not in err, err[-4000:]


def test_cuda_extension_links_and_imports(build):
    out, nvcc, logs = build
    if any(rc != 0 for rc, _ in logs.values()):
        pytest.skip("a compilation failed (reported by the other tests)")
    from torch.utils.cpp_extension import library_paths
    so = out / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    lib = library_paths()[0]
    proc = subprocess.run([nvcc, "-shared", "-o", str(so), *map(str, sorted(out.glob("*.o"))), f"-L{lib}",
                           "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", f"-Xlinker=-rpath,{lib}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # in a subprocess: the module stays out of this process; without a usable GPU every entry
    # raises with the failing CUDA call named (never a crash), and the tensor checks run first
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(out)!r})
        import {MODULE} as m
        assert {{"lstm_forward", "lstm_backward", "lstm_plan", "chain_forward", "chain_backward",
                 "chain_plan"}} <= set(dir(m))
        g = torch.zeros(2, 3, 16)
        try:
            m.lstm_forward(g, torch.zeros(3, 4), torch.zeros(16, 4), torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), False)
        except RuntimeError as e:
            print("forward:", str(e).splitlines()[0])
        try:   # the arguments as zf_kernels/ops/lstm/cuda.py passes them (units, threads, tf32, stream)
            m.lstm_forward(g, torch.zeros(3, 4), torch.zeros(16, 4), torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), False,
                           0, 0, True, 0)
        except RuntimeError as e:
            print("forward tf32:", str(e).splitlines()[0])
        x = torch.zeros
        try:
            m.chain_forward(x(2, 3, 16), x(2, 3, 5), x(2, 3, 2), x(3, 4), x(3, 4), x(5, 4), x(4, 5), x(4),
                            x(16, 2), x(16, 4), x(2, 3, 4), x(2, 3, 4), x(2, 3, 2), x(2, 3, 2), x(2, 3, 2),
                            x(2, 3, 5), x(2, 3, 4, dtype=torch.uint8))
        except RuntimeError as e:
            print("chain_forward:", str(e).splitlines()[0])
        try:   # as zf_kernels/ops/recurrence/cuda.py passes them (units, threads, tf32, stream)
            m.chain_forward(x(2, 3, 16), x(2, 3, 5), x(2, 3, 2), x(3, 4), x(3, 4), x(5, 4), x(4, 5), x(4),
                            x(16, 2), x(16, 4), x(2, 3, 4), x(2, 3, 4), x(2, 3, 2), x(2, 3, 2), x(2, 3, 2),
                            x(2, 3, 5), x(2, 3, 4, dtype=torch.uint8), 0, 0, True, 0)
        except RuntimeError as e:
            print("chain_forward tf32:", str(e).splitlines()[0])
        if not torch.cuda.is_available():
            try:
                m.lstm_plan(False, 32, 1024, 4)
            except RuntimeError as e:
                print("plan:", e)
            try:
                m.lstm_plan(False, 32, 1024, 4, 0, 0, True)
            except RuntimeError as e:
                print("plan tf32:", e)
            try:
                m.chain_plan(False, 32, 1024, 512, 256, 4)
            except RuntimeError as e:
                print("chain_plan:", e)
            try:
                m.chain_plan(False, 32, 1024, 512, 256, 4, 0, 0, True)
            except RuntimeError as e:
                print("chain_plan tf32:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "\nforward: zf_kernels._C: gates must be a CUDA tensor" in "\n" + proc.stdout, proc.stdout
    assert "forward tf32: zf_kernels._C: gates must be a CUDA tensor" in proc.stdout, proc.stdout
    assert "chain_forward: zf_kernels._C: gates must be a CUDA tensor" in proc.stdout, proc.stdout
    assert "chain_forward tf32: zf_kernels._C: gates must be a CUDA tensor" in proc.stdout, proc.stdout
    import torch
    if not torch.cuda.is_available():
        assert "plan: zf_kernels lstm: cudaGetDevice failed" in proc.stdout, proc.stdout
        assert "plan tf32: zf_kernels lstm: cudaGetDevice failed" in proc.stdout, proc.stdout
        assert "chain_plan: zf_kernels zforcing_chain: cudaGetDevice failed" in proc.stdout, proc.stdout
        assert "chain_plan tf32: zf_kernels zforcing_chain: cudaGetDevice failed" in proc.stdout, proc.stdout


def test_jit_build_links_the_cuda_runtime_nvcc_itself_uses(tmp_path):
    """The JIT build (zf_kernels/ops/_cuda_ext.py) passes nvcc's own library folders to the link:
    torch's CUDA_HOME guess is wrong where the nvcc on PATH is a wrapper script, as here."""
    from zf_kernels.ops import _cuda_ext
    nvcc = _cuda_ext._nvcc()
    if nvcc is None:
        pytest.skip("needs nvcc")
    dirs = _cuda_ext.nvcc_library_dirs(nvcc)
    assert dirs and all("stubs" not in d for d in dirs), dirs
    assert any(next(Path(d).glob("libcudart*"), None) for d in dirs), dirs
    assert _cuda_ext.nvcc_library_dirs(str(tmp_path / "no-nvcc")) == []
    fake = tmp_path / "nvcc"            # an nvcc that prints no LIBRARIES line: no folders, no error
    fake.write_text("#!/bin/sh\necho nothing\n")
    fake.chmod(0o755)
    assert _cuda_ext.nvcc_library_dirs(str(fake)) == []


def test_jit_build_lock_clears_a_dead_builds_lock_and_waits_for_a_live_one(tmp_path):
    """torch's build lock (a plain file) left by a killed build made every later build in that
    folder wait forever (seen on the H200 after a timed-out build, within one session). Under
    _cuda_ext.build_lock (an flock the OS releases when its holder dies) such a file is a dead
    build's and goes; while a live process holds build_lock, others wait and its file stays."""
    import signal
    import subprocess
    import sys

    from zf_kernels.ops import _cuda_ext
    lock = tmp_path / "lock"
    lock.touch()                                   # a killed build's
    with _cuda_ext.build_lock(tmp_path, timeout=5):
        assert not lock.exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from zf_kernels.ops import _cuda_ext\n"
         f"with _cuda_ext.build_lock(Path({str(tmp_path)!r})):\n"
         "    (Path(sys.argv[1]) / 'lock').touch(); print('held', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match="another process has been building"):
            with _cuda_ext.build_lock(tmp_path, timeout=1):
                pass
        assert lock.exists()                       # a live build's lock stays
        holder.send_signal(signal.SIGKILL)         # killed mid-build: its torch lock is left behind
        holder.wait(timeout=30)
        assert lock.exists()
        with _cuda_ext.build_lock(tmp_path, timeout=5):
            assert not lock.exists()
    finally:
        holder.kill()


def test_jit_build_defines_come_from_the_environment_and_are_checked(monkeypatch):
    """$ZF_KERNELS_NVCC_DEFINES (the benchmarks' A/B builds of a kernel variant) passes -D flags
    only; anything else is refused by name, before a compiler runs."""
    from zf_kernels.ops import _cuda_ext
    monkeypatch.delenv(_cuda_ext.DEFINES_ENV, raising=False)
    assert _cuda_ext.nvcc_defines() == []
    monkeypatch.setenv(_cuda_ext.DEFINES_ENV, " -DZF_STAGE_BATCH=1  -DZF_STAGE_VECTORS=0 ")
    assert _cuda_ext.nvcc_defines() == ["-DZF_STAGE_BATCH=1", "-DZF_STAGE_VECTORS=0"]
    for bad in ("--use_fast_math", "-DX=1;rm", "-I/tmp", "-D1X"):
        monkeypatch.setenv(_cuda_ext.DEFINES_ENV, f"-DZF_STAGE_BATCH=1 {bad}")
        with pytest.raises(ImportError, match=r"ZF_KERNELS_NVCC_DEFINES=.*-DNAME=VALUE.*" + re.escape(repr(bad))):
            _cuda_ext.nvcc_defines()


def test_jit_build_gets_a_build_of_its_own_per_variant_and_source(tmp_path, monkeypatch):
    """The JIT build's folder (its hash) changes with $ZF_KERNELS_NVCC_DEFINES, which nvcc gets,
    and with any file of csrc/ the build reads, headers too (zf_persistent.h holds most of the
    kernels' code): a variant or an edit never reuses another build. With defines set, a prebuilt
    zf_kernels._C (the default build) is not used. The compiler stubbed (~0 s, no nvcc needed)."""
    import sys
    import types

    import torch
    from torch.utils import cpp_extension

    from zf_kernels.ops import _cuda_ext
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in ("bindings.cpp", "kernels.cu", "zf_persistent.h"):
        (csrc / name).write_text(f"// {name}\n")
    builds = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: builds.append(kw) or kw["build_directory"])
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_cuda_ext, "_nvcc", lambda: "/opt/cuda/bin/nvcc")
    monkeypatch.setattr(_cuda_ext, "_arch", lambda: "90a")
    monkeypatch.setattr(_cuda_ext, "nvcc_library_dirs", lambda nvcc: [])
    monkeypatch.setattr(_cuda_ext, "CSRC", csrc)
    monkeypatch.setenv("ZF_KERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(_cuda_ext.DEFINES_ENV, raising=False)
    default = _cuda_ext._jit_build()
    assert _cuda_ext._jit_build() == default and default.startswith(str(tmp_path / "cache"))   # unchanged: reused
    assert sorted(builds[-1]["sources"]) == [str(csrc / "bindings.cpp"), str(csrc / "kernels.cu")]
    monkeypatch.setenv(_cuda_ext.DEFINES_ENV, "-DZF_STAGE_BATCH=1")
    variant = _cuda_ext._jit_build()
    assert variant != default and "-DZF_STAGE_BATCH=1" in builds[-1]["extra_cuda_cflags"]
    monkeypatch.delenv(_cuda_ext.DEFINES_ENV)
    (csrc / "zf_persistent.h").write_text("// edited\n")
    assert _cuda_ext._jit_build() not in (default, variant)
    # load(): the prebuilt module, unless defines ask for a build of their own
    prebuilt = types.ModuleType("zf_kernels._C")
    monkeypatch.setitem(sys.modules, "zf_kernels._C", prebuilt)
    monkeypatch.setattr(_cuda_ext, "_jit_build", lambda: "jit build")
    monkeypatch.setattr(_cuda_ext, "_cached", None)
    assert _cuda_ext.load() is prebuilt
    monkeypatch.setattr(_cuda_ext, "_cached", None)
    monkeypatch.setenv(_cuda_ext.DEFINES_ENV, "-DZF_TIMING_SKIP_GRID_SYNC")
    assert _cuda_ext.load() == "jit build"


def test_the_extension_can_be_switched_off(monkeypatch):
    """ZF_KERNELS_NO_CUDA_EXT=1 (device_check.sh sets it after the extension's tests hung): loading
    fails with the reason, even where a module was loaded before."""
    from zf_kernels.ops import _cuda_ext
    monkeypatch.setattr(_cuda_ext, "_cached", object())   # as if loaded
    assert _cuda_ext.load() is _cuda_ext._cached
    monkeypatch.setenv(_cuda_ext.DISABLE_ENV, "1")
    with pytest.raises(ImportError, match="disabled by ZF_KERNELS_NO_CUDA_EXT=1"):
        _cuda_ext.load()


def test_launch_remembers_the_drivers_answers_across_call_sites(tmp_path):
    """zf_persistent.h's cache of what the driver said about a kernel (the shared memory it was
    allowed, its blocks per SM), read and written through lambdas of different types: one store
    per (kernel, device), so a launch repeats no driver call (a static inside the function
    template would be one store per lambda type and ask again every launch). Host code only."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    src = tmp_path / "facts.cu"
    src.write_text(textwrap.dedent("""
        #include "zf_persistent.h"
        #include <cstdio>
        int main() {
          using namespace zf_persistent;
          const void* k = reinterpret_cast<const void*>(&main);
          with_kernel_facts(k, 0, [](KernelFacts& f) { return f.smem_allowed = 123; });
          with_kernel_facts(k, 0, [](KernelFacts& f) { return f.blocks_per_sm[{256, 123}] = 1; });
          const int seen = with_kernel_facts(k, 0, [](KernelFacts& f) {
            const auto it = f.blocks_per_sm.find({256, 123});
            return f.smem_allowed + 1000 * (it == f.blocks_per_sm.end() ? 0 : it->second);
          });
          const int other = with_kernel_facts(k, 1, [](KernelFacts& f) { return f.smem_allowed; });
          std::printf("%d %d\\n", seen, other);
          return 0;
        }
    """))
    exe = tmp_path / "facts"
    build = subprocess.run([nvcc, "-std=c++17", f"-I{CSRC}", "-o", str(exe), str(src)], capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.split() == ["1123", "0"], (run.returncode, run.stdout, run.stderr)
