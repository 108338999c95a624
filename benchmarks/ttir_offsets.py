"""Reads Triton's IR (TTIR) of a kernel for pointer offsets that wrap at long sequences.

Triton types an integer kernel argument and a loop's induction variable as i32; a pointer
offset computed as a 32-bit product of a time step (``(s + 1) * B * H`` into the LSTM's cell
states) passes 2**31 at (T + 1) B H >= 2**31 (T = 32768 at B = 64, H = 1024) and wraps: the
kernel then reads and writes 8 GiB before its buffer. ``benchmarks/compile_check.py`` fails a
kernel whose IR has one. Pure text processing: importable without a GPU or the compiler.
"""
from __future__ import annotations

import re

_SSA = re.compile(r"%[\w.#]+")
_TIME_LOOP = re.compile(r"scf\.for (%[\w.#]+) = \S+ to %T\b(?: step \S+)?(?: iter_args\((.*?)\) -> \((.*?)\))?")


def step_offsets_in_32_bits(ttir: str) -> list[str]:
    """The ``tt.addptr`` lines of a kernel's Triton IR (``ttir``) whose offset is a 32-bit value
    computed with a 32-bit multiplication of a time step: the induction variable of a loop
    ``to %T`` or an i32 value that loop carries (``t_prev``). Values widened to 64 bits
    (``arith.extsi``) are safe; a 32-bit step only added to or compared is not flagged."""
    step = set()          # 32-bit values derived from a step
    product = set()       # ... through a 32-bit multiplication
    flagged = []
    for line in ttir.splitlines():
        code = line.split(" loc(")[0].strip()
        loop = _TIME_LOOP.search(code)
        if loop:
            step.add(loop.group(1))
            if loop.group(2):
                names = [a.split("=")[0].strip() for a in loop.group(2).split(",")]
                types = [x.strip() for x in loop.group(3).split(",")]
                step.update(n for n, ty in zip(names, types) if ty == "i32")
            continue
        if " = " not in code:
            continue
        lhs, rhs = code.split(" = ", 1)
        result = lhs.split(":")[0].strip()
        op = rhs.split()[0]
        operands = _SSA.findall(rhs.split(" : ")[0])
        result_type = rhs.rsplit(" : ", 1)[-1].split("->")[-1] if " : " in rhs else ""
        step.discard(result)    # SSA names are reused in other regions: a new definition
        product.discard(result)
        if op == "tt.addptr":
            if len(operands) >= 2 and operands[1] in product:
                flagged.append(code)
            continue
        # cmpi prints its operands' type (its result is i1)
        if op in ("arith.extsi", "arith.extui", "arith.cmpi") or not re.search(r"\bi32\b|xi32>", result_type):
            continue
        if any(o in step for o in operands):
            step.add(result)
            if op == "arith.muli" or any(o in product for o in operands):
                product.add(result)
    return flagged
