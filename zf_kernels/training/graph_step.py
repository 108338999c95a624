"""The trainer's step replayed from a CUDA graph (``--cuda-graph``).

Why: at the TIMIT size an eager training step is a few hundred small kernels plus several
host reads (is the loss finite? the gradient norm? the window's metrics), and on a GPU those
launches and synchronisations cost more than the math (DESIGN s.2: 87 ms eager, 16.9 ms as a
CUDA graph). Here one step is: check the batch on its host copy, copy it into static buffers,
draw the posterior noise into a static buffer, set the loss weights (device scalars), replay
the graph. Nothing is read back until the metrics are read (``store_window``, at each log line
and checkpoint).

Same numbers as the eager step (``Run.train_step``): the same ops in the same order, the same
noise stream (drawn from the run's generator outside the graph), fused Adam in both, and a
non-finite loss or gradient norm skips the update inside the graph (Adam's ``found_inf``, the
mechanism torch's GradScaler uses) exactly where the eager step skips it. The tests run this
step without capture on the CPU and compare it bit for bit with the eager step; on a GPU they
compare the replayed graph with both.

One graph per static configuration, captured on first use: the batch shape, whether the batch
has padding, whether the auxiliary terms are on (``aux_w > 0`` changes which parameters get
gradients) and the learning rate (a float baked into the fused Adam kernel; a plateau decay
captures a new graph; the old one is freed). Each graph has its own memory pool (padded and
unpadded batches may alternate).
Warm-up before a capture runs the step with Adam's ``found_inf`` forced to 1: fused Adam then
leaves parameters and moments untouched, so warming up changes nothing.

``--compile BACKEND`` runs the same step uncaptured with its forward and loss compiled by
``torch.compile(backend=BACKEND)`` (backward through AOTAutograd; clipping and Adam eager): the
loss weights are device scalars, so the annealing schedules recompile nothing, and the value
checks stay on the host copy, outside the compiled code (with them inside, each would break
its graph). A new batch shape, padding or the aux terms switching on recompile it (dynamo makes
a size that changes dynamic on its second value).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..model import training_loss
from ..sequences import check_batch
from .report import TERMS

# the device accumulators: the window's sums, then the skip counters
STATS = (*TERMS, "grad_norm", "n", "non_finite_loss", "non_finite_grad")
WARMUP_STEPS = 3


def unsupported_reason(run) -> str | None:
    """Why ``run`` cannot train with ``--cuda-graph`` (None when it can)."""
    if run.device.type != "cuda":
        return f"--cuda-graph needs a CUDA device, got --device {run.cfg.device!r} ({run.device})"
    return static_step_unsupported(run)


def static_step_unsupported(run, flag: str = "--cuda-graph") -> str | None:
    """Why the static (host-sync-free) step cannot run for ``run``, on any device; ``flag``:
    the option that asks for it (--cuda-graph or --compile)."""
    if run.dist.enabled:
        return f"{flag} runs one process; it does not support torchrun / DDP"
    if run.scaler is not None:
        return (f"{flag} does not support --dtype float16 (loss scaling decides on the host); "
                "use bfloat16 or float32")
    if not run.accepts_eps:
        return f"{flag} needs a model whose forward takes eps; {run.cfg.model!r} does not"
    return None


def loss_and_terms(model, y, u, mask, eps, kl_w, aux_w, bwd_w, aux_on: bool):
    """The step's forward: the training loss and the per-sequence terms (what --compile compiles)."""
    terms = model(y, u, mask, eps=eps)
    loss = training_loss(terms, kl_w, aux_w, bwd_w, aux_on=aux_on)
    return loss, {k: getattr(terms, k) for k in TERMS[1:]}


@dataclass(frozen=True)
class _Key:
    y_shape: tuple
    padded: bool
    aux_on: bool
    lr: float


class _Buffers:
    """The static tensors one graph reads: the batch, the noise, the loss weights."""

    def __init__(self, run, batch, padded: bool):
        dev, dt = run.device, run.dtype
        like = lambda x: torch.empty(x.shape, device=dev, dtype=dt if x.dtype.is_floating_point else x.dtype)  # noqa: E731
        self.y = like(batch.y)
        self.u = None if batch.u is None else like(batch.u)
        self.mask = like(batch.mask) if padded else None
        T, B = batch.y.shape[:2]
        self.eps = torch.empty(T, B, run.model.z_dim, device=dev, dtype=dt)
        # float64 scalars: cast to the loss terms' dtype inside the multiply, as Python floats are
        self.kl_w, self.aux_w, self.bwd_w = (torch.zeros((), device=dev, dtype=torch.float64) for _ in range(3))

    def load(self, run, batch, eps_gen):
        self.y.copy_(batch.y, non_blocking=True)
        if self.u is not None:
            self.u.copy_(batch.u, non_blocking=True)
        if self.mask is not None:
            self.mask.copy_(batch.mask, non_blocking=True)
        # the eager step's draw (ZForcing.forward / SequenceVAE.forward), into the buffer
        torch.randn(self.eps.shape, generator=eps_gen, device=self.eps.device, dtype=self.eps.dtype, out=self.eps)
        w = run.weights
        self.kl_w.fill_(w.kl)
        self.aux_w.fill_(w.aux)
        self.bwd_w.fill_(run.cfg.bwd)


class StaticStep:
    """``run``'s training step without host synchronisation; with ``capture`` (CUDA only)
    each static configuration is captured once as a CUDA graph and replayed."""

    def __init__(self, run, capture: bool, compile_backend: str | None = None):
        why = unsupported_reason(run) if capture else static_step_unsupported(
            run, "--cuda-graph" if compile_backend is None else "--compile")
        if why is not None:
            raise ValueError(why)
        self.run, self.capture = run, capture
        self.forward = (loss_and_terms if compile_backend is None
                        else torch.compile(loss_and_terms, backend=compile_backend))
        self.stats = torch.zeros(len(STATS), device=run.device, dtype=torch.float64)
        self.graphs: dict[_Key, tuple] = {}
        self.captures = 0    # graphs captured so far (a plateau decay adds one)

    # ------------------------------------------------------------------ step
    def __call__(self, batch):
        run = self.run
        # the value checks the graph cannot make, on the batch's host copy (no GPU sync)
        model = run.model
        check_batch(batch.y, batch.u, batch.mask, model.input_dim, model.output_type)
        padded = batch.mask is not None and not bool((batch.mask != 0).all())
        key = _Key(tuple(batch.y.shape), padded, run.weights.aux > 0, float(run.opt.param_groups[0]["lr"]))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._prepare(key, batch)
        graph, buffers = entry
        buffers.load(run, batch, run.eps_gen)
        if graph is None:
            self._body(buffers, key.aux_on)
        else:
            graph.replay()
        run.weights.advance()
        run.step += 1

    def _prepare(self, key: _Key, batch):
        run = self.run
        buffers = _Buffers(run, batch, key.padded)
        graph = None
        if self.capture:
            # free the graphs that cannot come back: the aux weight moves monotonically
            # towards aux_end (so aux_on changes at most once) and lr only decays
            for old in [k for k in self.graphs if k.lr != key.lr or k.aux_on != key.aux_on]:
                del self.graphs[old]
            graph = self._capture(buffers, key.aux_on, batch)
        self.graphs[key] = (graph, buffers)
        return graph, buffers

    def _body(self, b: _Buffers, aux_on: bool, warmup: bool = False):
        """Forward, loss, backward, clip, Adam (skipped on a non-finite loss or gradient
        norm) and the window's sums: only device work, in the eager step's order."""
        run = self.run
        with run.autocast(cache_enabled=False), ops.assume_valid_inputs():
            loss, terms = self.forward(run.model, b.y, b.u, b.mask, b.eps, b.kl_w, b.aux_w, b.bwd_w, aux_on)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip)
        finite_loss, finite_norm = torch.isfinite(loss), torch.isfinite(grad_norm)
        ok = finite_loss & finite_norm
        skip = torch.ones((), device=loss.device) if warmup else (~ok).float()
        run.opt.found_inf = skip     # fused Adam: no update, no step count, when 1
        try:
            run.opt.step()
        finally:
            del run.opt.found_inf
        if warmup:
            return
        sums = torch.stack([loss.detach().double(), *(terms[k].detach().double().mean() for k in TERMS[1:]),
                            grad_norm.double(), torch.ones((), device=loss.device, dtype=torch.float64)])
        counts = torch.stack([~finite_loss, finite_loss & ~finite_norm]).double()
        self.stats.add_(torch.cat([torch.where(ok, sums, 0.0), counts]))

    def _capture(self, b: _Buffers, aux_on: bool, batch):
        """Warm up (without effect) on a side stream, then capture one step."""
        run = self.run
        b.load(run, batch, _scratch_generator(run.device))   # warm-up noise: not from the run's stream
        side = torch.cuda.Stream(run.device)
        side.wait_stream(torch.cuda.current_stream(run.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._body(b, aux_on, warmup=True)
        torch.cuda.current_stream(run.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(b, aux_on)
        self.captures += 1
        return graph

    # --------------------------------------------------------------- metrics
    # The device accumulators mirror ``run.window`` (and ``run.skipped``) and add to them in
    # the eager step's order, so the logged means are the eager run's to the last bit.
    def load_window(self):
        """Set the device accumulators from ``run.window`` / ``run.skipped`` (after a flush or a resume)."""
        run = self.run
        host = [run.window[k] for k in (*TERMS, "grad_norm", "n")]
        host += [run.skipped[k] for k in ("non_finite_loss", "non_finite_grad")]
        self.stats.copy_(torch.tensor(host, dtype=torch.float64))

    def store_window(self):
        """Copy the device accumulators into ``run.window`` / ``run.skipped`` (one sync)."""
        values = dict(zip(STATS, self.stats.tolist()))
        run = self.run
        for k in (*TERMS, "grad_norm"):
            run.window[k] = values[k]
        run.window["n"] = int(values["n"])
        for k in ("non_finite_loss", "non_finite_grad"):
            run.skipped[k] = int(values[k])


def _scratch_generator(device):
    return torch.Generator(device=device).manual_seed(0)
