"""Reading the machine code (SASS) nvcc makes of csrc/ for sm_90a, without a GPU: nvdisasm (on
PATH, the pip package nvidia-cuda-nvdisasm, or triton's) disassembles a cubin, and
``loads_in_flight`` measures how many 128-bit global loads a kernel has outstanding at once
before it needs any of them, the property of the staging loops (zf_persistent.h: stage_chunk)
that decides how many L2 round trips each time step waits out."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path


def nvdisasm() -> str | None:
    """nvdisasm on PATH, else the pip package's, else the one in the triton wheel (CUDA 12.8's:
    it reads nvcc 13.0's sm_90a cubins too, with a warning)."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        files = importlib.metadata.files("nvidia-cuda-nvdisasm") or []
        found = next((str(f.locate()) for f in files if f.name == "nvdisasm"), None)
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    return str(bundled) if bundled.exists() else None


def kernels(cubin: str) -> dict[str, list[tuple[str, str]]]:
    """Each function of the cubin: its instructions as (opcode with modifiers, operands), in
    address order, predicates dropped."""
    text = subprocess.run([nvdisasm(), "-c", cubin], capture_output=True, text=True, check=True).stdout
    funcs: dict[str, list[tuple[str, str]]] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*\.text\.(\S+):$", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)\s*(.*?)\s*;", line)
        if m and name is not None:
            funcs[name].append((m.group(1), m.group(2)))
    return funcs


def _registers(operands: str) -> set[int]:
    """The general registers an operand list names (R4.64: R4 and R5; RZ is no register)."""
    regs = set()
    for m in re.finditer(r"\bR(\d+)(\.64)?\b", operands):
        n = int(m.group(1))
        regs.add(n)
        if m.group(2):
            regs.add(n + 1)
    return regs


def load_runs(instructions: list[tuple[str, str]], staging: bool) -> list[int]:
    """The runs of global loads the code keeps in flight together, in address order: each run is
    the number of loads issued before an instruction reads or overwrites one of their destination
    registers (which waits for that load), a barrier, a call or an exit. `staging`: the 128-bit
    L2 loads of the staging loops (LDG...128.STRONG: ld.global.cg.v4); else the plain loads
    (LDG without .STRONG: the weight copies and the elementwise stages' inputs). A loop of one
    load and one store gives runs of 1. Branches are not followed: code laid out between two
    loads counts as if it ran (conservative: it can only end a run). Barriers end a run although
    loads stay in flight across bar.sync on the GPU (conservative too)."""
    runs: list[int] = []
    count = 0
    pending: set[int] = set()

    def end_run():
        nonlocal count, pending
        if count:
            runs.append(count)
        count, pending = 0, set()

    for op, operands in instructions:
        parts = [p.strip() for p in operands.split(",")]
        is_load = op.startswith("LDG") and (("STRONG" in op and ".128" in op) if staging else "STRONG" not in op)
        if is_load:
            if _registers(",".join(parts[1:])) & pending:  # its address needs an earlier load
                end_run()
            first = int(re.match(r"R(\d+)", parts[0]).group(1))
            width = 4 if ".128" in op else 2 if ".64" in op else 1
            pending |= set(range(first, first + width))
            count += 1
            continue
        if not pending:
            continue
        # any operand: a source reads the register (waits for the load), a destination overwrites it
        if _registers(operands) & pending or op.startswith(("BAR", "EXIT", "RET", "CALL")):
            end_run()
    end_run()
    return runs


def loads_in_flight(instructions: list[tuple[str, str]]) -> int:
    """The most 128-bit staging loads the code keeps in flight at once (load_runs)."""
    return max(load_runs(instructions, staging=True), default=0)
