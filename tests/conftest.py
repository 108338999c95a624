# Shared pytest setup. Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET
# is read when a kernel is decorated (module import), so it has to be set before any test
# module imports a zf_kernels Triton module. setdefault keeps an explicit choice.
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# triton 3.6's interpreter multiplies bfloat16 bit patterns as integers in tl.dot: repaired for
# the tests (only if broken, verified), so the kernels' bf16 paths run on the CPU too
import _interpreter_bf16  # noqa: E402

BF16_DOT_REPAIRED = _interpreter_bf16.install()

# The models under test are tiny: one intra-op thread is faster than two (and, on a busy
# 2-core machine, OpenMP threads spinning against each other slowed steps by 100x).
torch.set_num_threads(1)
