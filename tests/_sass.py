"""Reading the machine code (SASS) nvcc makes of csrc/ for sm_90a, without a GPU: nvdisasm (the
pip package nvidia-cuda-nvdisasm, or one on PATH) disassembles a cubin, and
``loads_in_flight`` measures how many 128-bit global loads a kernel has outstanding at once
before it needs any of them, the property of the staging loops (zf_persistent.h: stage_chunk)
that decides how many L2 round trips each time step waits out."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess


def nvdisasm() -> str | None:
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        files = importlib.metadata.files("nvidia-cuda-nvdisasm") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((str(f.locate()) for f in files if f.name == "nvdisasm"), None)


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


def loads_in_flight(instructions: list[tuple[str, str]]) -> int:
    """The most 128-bit global loads (LDG...128) that the code issues, in address order, before
    any instruction reads or overwrites one of their destination registers (which would wait for
    that load) or a barrier: a loop of one load and one store gives 1. Branches are not followed:
    code laid out between two loads counts as if it ran (conservative: it can only end a run)."""
    best = count = 0
    pending: set[int] = set()
    for op, operands in instructions:
        parts = [p.strip() for p in operands.split(",")]
        if op.startswith("LDG") and ".128" in op:
            if _registers(",".join(parts[1:])) & pending:  # its address needs an earlier load
                best, count, pending = max(best, count), 0, set()
            first = int(re.match(r"R(\d+)", parts[0]).group(1))
            pending |= {first, first + 1, first + 2, first + 3}
            count += 1
            continue
        if not pending:
            continue
        # any operand: a source reads the register (waits for the load), a destination overwrites it
        if _registers(operands) & pending or op.startswith(("BAR", "EXIT", "RET", "CALL")):
            best, count, pending = max(best, count), 0, set()
    return max(best, count)
