"""Backend selection for the public ops.

Every op has a plain-PyTorch reference ("torch"); fused versions ("triton", "cuda") are
registered per op as importable ``module:attribute`` paths, imported lazily so the package
works where Triton or the CUDA extension is missing. ``backend="auto"`` picks the fastest
one usable for the given tensors and never fails where "torch" works; ``explain()`` says why
it chose what it chose (the reason is also logged once per op and reason).

Under torch.compile (``_callable``): a fused implementation registered with a ``traced_form``
(the same kernels as torch.library custom ops: every Triton op, the CUDA recurrences) is traced;
any other would be opaque to dynamo, a graph break at every call; "auto" takes the reference of
the ops registered ``compile_traced`` (elementwise and reduction ops, one GEMM), which dynamo
traces and inductor fuses with its neighbours. An implementation not imported yet when a trace first meets it is
unavailable there (``_why_not``: dynamo refuses imports): the Triton ones are imported with the
package where they can run (``preload_triton``), the CUDA extension's at their first eager call.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")
log = logging.getLogger("zf_kernels.ops")

# op name -> backend -> "module:attribute" of a function with the op's exact signature
# (without ``backend``).
_REGISTRY: dict[str, dict[str, str]] = {}
# (op, backend) -> why "auto" must not pick it (it still runs when requested explicitly).
# Kept here rather than in the implementation module: importing that module may build an
# extension, which "auto" should not pay for an implementation it will not use.
_NOT_AUTO: dict[tuple[str, str], str] = {}
_logged: set[tuple[str, str]] = set()
# ops whose reference "auto" picks under torch.compile (see the module docstring)
_COMPILE_TRACED: set[str] = set()
# fused implementation's "module:attribute" -> that of the same function as torch.library custom
# ops, which torch.compile traces (where it exists the fused op is no graph break)
_TRACED_FORMS: dict[str, str] = {}
COMPILE_TRACED_REASON = (
    "under torch.compile the reference is traced: inductor fuses it with the ops around it, where "
    "a fused kernel would be a call of its own that inductor cannot fuse into; an explicit backend "
    "still runs the fused kernel")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these arguments; the message says why."""


def register(op: str, backend: str, target: str, *, not_auto: str | None = None,
             compile_traced: bool = False, traced_form: str | None = None) -> None:
    """Register ``target`` as ``op``'s ``backend``; ``not_auto``: the reason "auto" skips it
    (e.g. a kernel not yet verified on a GPU), which ``explain`` reports; ``compile_traced``
    (the "torch" reference only): "auto" picks it under torch.compile; ``traced_form`` (a fused
    backend): the same function built from torch.library custom ops, called while dynamo traces."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"unknown backend {backend!r}")
    if compile_traced:
        if backend != "torch":
            raise ValueError("compile_traced applies to the reference (backend 'torch') only")
        _COMPILE_TRACED.add(op)
    if traced_form is not None:
        if backend == "torch":
            raise ValueError("traced_form applies to a fused backend, not the reference")
        _TRACED_FORMS[target] = traced_form
    if backend == "torch":
        # loaded now (the references are plain torch code the op's package imports anyway): a
        # first load inside a torch.compile trace would be a graph break (importlib)
        _load(target)
    _REGISTRY.setdefault(op, {})[backend] = target
    if not_auto:
        _NOT_AUTO[(op, backend)] = not_auto
    else:
        _NOT_AUTO.pop((op, backend), None)


def op_backend(op: str, backend: str) -> str:
    """The backend a model configured with ``backend`` passes to ``op``: ``backend`` itself,
    except that "cuda" gives "auto" for an op without CUDA kernels (only ``lstm`` and
    ``zforcing_chain`` have them), so ``ZForcing(backend="cuda")`` (``--backend cuda``) runs its
    recurrences on the CUDA extension, raising where it cannot, and the rest as "auto"."""
    if backend == "cuda" and "cuda" not in _REGISTRY.get(op, {}):
        return "auto"
    return backend


_LOADED: dict[str, Callable] = {}


def _load(target: str) -> Callable:
    # cached: besides saving the import machinery per op call, a dict lookup is something
    # torch.compile traces, where importlib.import_module is a graph break at every op
    fn = _LOADED.get(target)
    if fn is None:
        module, attr = target.split(":")
        fn = _LOADED[target] = getattr(importlib.import_module(module), attr)
        if target in _TRACED_FORMS:
            # with it (eagerly, as a rule): a first import while dynamo traces is a graph break
            _load(_TRACED_FORMS[target])
    return fn


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def preload_triton() -> None:
    """Import the Triton implementations (with their traced forms) now, where they can run: a
    CUDA build of torch, or TRITON_INTERPRET=1. Their first import inside a torch.compile trace
    would be a graph break (with fullgraph=True an error), e.g. when a compiled step is the
    process's first call. ~0.25 s (triton and the kernel modules; no kernel compiles); elsewhere,
    or without triton, they stay lazy (the CUDA extension's always: importing it may build it)."""
    if not (_interpreting() or torch.version.cuda is not None):
        return
    for impls in _REGISTRY.values():
        if "triton" in impls:
            try:
                _load(impls["triton"])
            except Exception:   # noqa: BLE001 - never fail the package import: the op's first
                return          # call meets the same error where it matters ("auto" says why)


def _why_not(op: str, backend: str, tensors) -> str | None:
    """None if ``backend`` can run ``op`` on ``tensors``, else the reason it cannot."""
    if backend == "torch":
        return None
    target = _REGISTRY.get(op, {}).get(backend)
    if target is None:
        return f"op {op!r} has no {backend} implementation yet"
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return f"triton is not importable ({exc})"
        if devices != {"cuda"} and not _interpreting():
            return f"Triton kernels need CUDA tensors (got {sorted(devices)}) or TRITON_INTERPRET=1"
        if devices == {"cuda"} and _interpreting():
            return "TRITON_INTERPRET=1 is set but the tensors are on CUDA"
    if backend == "cuda":
        if devices != {"cuda"}:
            return f"the CUDA extension needs CUDA tensors (got {sorted(devices)})"
    if target not in _LOADED and torch.compiler.is_compiling():
        # dynamo refuses importlib (an error with fullgraph=True), and the CUDA extension's first
        # load may be a build: not inside a trace (the Triton ones are loaded with the package)
        return (f"the {backend} implementation of {op!r} is not loaded yet, and its first import cannot happen "
                f"inside a torch.compile trace: call the op (or the model) once eagerly before compiling")
    try:
        fn = _load(target)
    except ImportError as exc:
        hint = " (rebuild with `pip install -e .` on a machine with nvcc and a CUDA torch)" if backend == "cuda" else ""
        return f"cannot import the {backend} implementation of {op!r}: {exc}{hint}"
    # an implementation may carry ``unsupported(*tensors) -> str | None`` (e.g. dtypes it lacks)
    unsupported = getattr(fn, "unsupported", None)
    return unsupported(*tensors) if unsupported is not None else None


def _on_cuda(tensors) -> bool:
    """Every tensor on CUDA, and at least one (explain("lstm") without tensors was "on CUDA")."""
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


# "1": "auto" also tries the implementations registered with ``not_auto`` (not yet verified on
# a GPU), e.g. to benchmark a whole training step on the CUDA recurrences; explain() says so
AUTO_UNVERIFIED_ENV = "ZF_AUTO_UNVERIFIED"


def _auto_takes_unverified() -> bool:
    value = os.environ.get(AUTO_UNVERIFIED_ENV, "0")
    if value not in ("0", "1", ""):
        raise ValueError(f"{AUTO_UNVERIFIED_ENV} must be 0 or 1; got {value!r}")
    return value == "1"


def _auto_choice(op: str, tensors, detail: bool = True, compiling: bool | None = None) -> tuple[str, str]:
    reasons, skipped = [], []
    if compiling is None:
        compiling = torch.compiler.is_compiling()

    def reference(reason):
        # with what the "torch" implementation runs, where it says (lstm: torch's own op or the
        # loop); not for a trace, which always takes the traceable reference
        return "torch", _with_detail(op, "torch", reason, tensors) if detail and not compiling else reason
    if not any(isinstance(t, torch.Tensor) for t in tensors):
        return "torch", "no tensors given: 'auto' decides on the op's tensors (their device, dtype and sizes)"
    if not _on_cuda(tensors):
        return reference("tensors are not on CUDA: the fused kernels only pay off on a GPU")
    if compiling and op in _COMPILE_TRACED:
        return reference(COMPILE_TRACED_REASON)
    for candidate in ("cuda", "triton"):
        gate = _NOT_AUTO.get((op, candidate)) if candidate in _REGISTRY.get(op, {}) else None
        if gate is not None and not _auto_takes_unverified():
            skipped.append(f"{candidate} not tried by 'auto': {gate}")
            continue
        why = _why_not(op, candidate, tensors)
        if why is None:
            reason = f"{candidate} is available for {op!r}"
            if gate is not None:
                reason += f" (tried although {gate.split(';')[0]}: {AUTO_UNVERIFIED_ENV}=1)"
            reason = _with_detail(op, candidate, reason, tensors) if detail else reason
            # the candidates tried before it and why they could not run (none silently passed over)
            return candidate, "; ".join([reason] + reasons + skipped)
        reasons.append(f"{candidate}: {why}")
    return reference("; ".join(["falling back to torch"] + reasons + skipped))


def _with_detail(op: str, backend: str, reason: str, tensors) -> str:
    """``reason`` plus how the implementation will run these tensors, where it says: an
    implementation may carry an ``explain(*tensors) -> str`` attribute (e.g. the Triton
    LSTM's persistent vs stepwise schedule)."""
    detail = getattr(_load(_REGISTRY[op][backend]), "explain", None)
    if detail is None:
        return reason
    try:
        return f"{reason}; {detail(*tensors)}"
    except Exception as exc:   # the op's own argument checks report bad input better
        return f"{reason}; (no detail: {type(exc).__name__}: {exc})"


def explain(op: str, *tensors, backend: str = "auto", compiling: bool | None = None) -> tuple[str, str]:
    """Return ``(backend, reason)``: what ``backend`` resolves to for ``op`` on ``tensors``;
    ``compiling``: what "auto" picks under torch.compile (True) or eagerly (False); by default
    whichever is the case where ``explain`` runs. The choice reads the tensors' devices, dtypes
    and sizes; it does not check them as the op does (a call may still refuse them)."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(_REGISTRY)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if compiling is not None and not isinstance(compiling, bool):
        raise TypeError(f"compiling must be a bool or None, got {compiling!r}")
    if backend == "auto":
        return _auto_choice(op, tensors, compiling=compiling)
    why = _why_not(op, backend, tensors)
    if why is not None:
        return backend, why
    return backend, _with_detail(op, backend, "requested", tensors)


_OPAQUE: dict[Callable, Callable] = {}


def _callable(op: str, backend: str) -> Callable:
    """The implementation to call. In a process that uses torch.compile (torch._dynamo
    imported) a fused one ("triton", "cuda") is opaque to dynamo (``torch.compiler.disable``):
    dynamo runs it as eager code would, between graphs, instead of tracing its launches and
    autograd.Function (in Triton's interpreter that tracing fails; on a GPU it would be
    untested). Decided by the import, not by ``torch.compiler.is_compiling()``: dynamo runs a
    frame it gives up on (e.g. past its recompile limit) eagerly, where is_compiling() is False,
    and a plain function returned there would be traced by the frame that calls it. While dynamo
    traces, an implementation registered with a ``traced_form`` (torch.library custom ops) is
    called in that form instead: traced, no graph break. The reference ("torch") stays
    traceable. In a process without torch.compile the plain function: wrapping it would import
    torch._dynamo (~1.5 s) in every process."""
    target = _REGISTRY[op][backend]
    compiling = torch.compiler.is_compiling()
    if backend == "torch" or not (compiling or "torch._dynamo" in sys.modules):
        return _load(target)
    if compiling and target in _TRACED_FORMS:
        return _load(_TRACED_FORMS[target])
    fn = _load(target)
    # keyed by the function, not its name: a test that swaps an implementation gets a new wrapper
    opaque = _OPAQUE.get(fn)
    if opaque is None:
        opaque = _OPAQUE[fn] = torch.compiler.disable(fn, recursive=True)
    return opaque


def resolve(op: str, backend: str, *tensors) -> Callable:
    """The implementation of ``op`` to call for ``backend`` on ``tensors``."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        why = _why_not(op, backend, tensors)
        if why is not None:
            raise BackendUnavailableError(f"backend={backend!r} cannot run {op}: {why}")
        return on_tensors_device(_callable(op, backend), backend, tensors)
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(_REGISTRY)}")
    # the per-call path skips the implementation's detail (e.g. the LSTM's schedule): it is
    # computed for the log line, once per op and reason, and by explain()
    chosen, reason = _auto_choice(op, tensors, detail=False)
    # not while dynamo traces: a logging call is a graph break there (explain(..., compiling=True)
    # says what "auto" picks under torch.compile)
    if (op, reason) not in _logged and not torch.compiler.is_compiling():
        _logged.add((op, reason))
        log.info("zf_kernels.ops.%s: backend='auto' -> %s (%s)", op, chosen, _auto_choice(op, tensors)[1])
    return on_tensors_device(_callable(op, chosen), chosen, tensors)


def on_tensors_device(fn: Callable, backend: str, tensors) -> Callable:
    """``fn``, run with the tensors' CUDA device current where it is not: Triton launches its
    kernels on the current device, not on the tensors' (``ops.lstm`` on ``cuda:1`` tensors with
    ``cuda:0`` current ran its kernels on GPU 0 against GPU 1's memory). The CUDA extension
    guards its own launches; autograd runs a backward with its device current; a compiled graph
    has inductor's guard."""
    if backend != "triton" or torch.compiler.is_compiling():
        return fn
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor)), None)
    if device is None or device.type != "cuda" or device.index is None \
            or device.index == torch.cuda.current_device():
        return fn

    def on_device(*args, **kwargs):
        with torch.cuda.device(device):
            return fn(*args, **kwargs)
    return on_device
