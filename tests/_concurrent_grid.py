"""Run the Triton interpreter's programs concurrently, one thread each, so that a persistent
kernel's grid barrier can be exercised on the CPU.

The interpreter (``TRITON_INTERPRET=1``) runs a grid's programs one after another, so programs
that wait for each other at a grid barrier never meet (a grid of one program per batch block
is all the default interpreter can test). ``concurrent_programs`` replaces the grid loop of
``triton.runtime.interpreter.GridExecutor.__call__`` by one thread per program and makes the
interpreter's current program id thread-local. The threads share the tensors' memory (the
interpreter runs on the host storage itself) and the GIL interleaves them, so the barrier's
atomics and spin loop behave as on a GPU with every program resident. It tests the
partitioning and the data flow between programs (who writes what before which barrier), not
a GPU's memory model.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time

import triton.runtime.interpreter as interp


def _patched_call(self, *args_dev, **kwargs):
    # GridExecutor.__call__ of triton 3.6 with the program loop replaced by threads
    argspec = inspect.getfullargspec(self.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}
    args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
    for hook in self.pre_run_hooks:
        hook(*args_hst, **kwargs_hst)
    patch_scope = interp._patch_lang(self.fn)
    try:
        args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
        args = {name: arg if name in self.constexprs else interp._implicit_cvt(arg) for name, arg in args.items()}
        grid = self.grid(args) if callable(self.grid) else self.grid
        grid = tuple(grid) + (1,) * (3 - len(grid))
        interp.interpreter_builder.set_grid_dim(*grid)
        errors = []

        def program(x, y, z):
            try:
                interp.interpreter_builder.set_grid_idx(x, y, z)
                self.fn(**args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)

        threads = [threading.Thread(target=program, args=(x, y, z), daemon=True)
                   for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise interp.InterpreterError(repr(errors[0])) from errors[0]
    finally:
        patch_scope.restore()
    self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)


class _ThreadLocalGridIdx:
    """``InterpreterBuilder.grid_idx`` per thread."""

    def __init__(self):
        self.local = threading.local()

    def __get__(self, obj, objtype=None):
        return getattr(self.local, "idx", None)

    def __set__(self, obj, value):
        self.local.idx = value


@contextlib.contextmanager
def concurrent_programs(monkeypatch):
    """Within the block, interpreted kernels run every program of the grid at once."""
    monkeypatch.setattr(interp.InterpreterBuilder, "grid_idx", _ThreadLocalGridIdx(), raising=False)
    monkeypatch.setattr(interp.GridExecutor, "__call__", _patched_call)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)   # spinning programs hand the GIL over quickly
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def slow_down_stores(monkeypatch, column: int = 0, seconds: float = 0.01):
    """Programs ``(*, column)`` of the grid (axis 1) sleep ``seconds`` before each of their
    stores (under ``concurrent_programs``): a grid barrier that lets the other programs through
    before these have written what the others read next is then caught on every run, not only
    when the threads happen to interleave so."""
    real_store = interp.InterpreterBuilder.create_masked_store

    def slow_store(self, *a, **k):
        if self.grid_idx[1] == column:
            time.sleep(seconds)
        return real_store(self, *a, **k)
    monkeypatch.setattr(interp.InterpreterBuilder, "create_masked_store", slow_store)
