"""Process-group helpers for data-parallel training with ``torch.distributed`` and
``torch.nn.parallel.DistributedDataParallel`` (no home-made communication).

``python -m zf_kernels.train`` is one process; ``torchrun --nproc_per_node N -m
zf_kernels.train ...`` starts N. :func:`setup` reads the standard torchrun environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and, when
``WORLD_SIZE > 1``, initialises the default process group (``nccl`` for CUDA devices, ``gloo``
on the CPU). A process group that already exists (a caller's own script, a test that spawned
the workers) is used as it is and left open.

How the trainer splits the work (see :mod:`zf_kernels.train`):

- **Global batch = ``--batch-size``.** Every rank builds the same global batch from the
  deterministic iterator and keeps its own contiguous slice of the sequences
  (:meth:`DistContext.shard`, sizes differ by at most one); the loss of each rank is scaled so
  that DDP's gradient average is the gradient of the mean over the *global* batch, even when
  the slices are unequal. The sequence of global batches is the same for any number of
  processes, so the number of processes is a pure execution detail.
- **Posterior noise per sequence, not per rank.** Each rank draws the noise of the whole
  global batch from one generator seeded like the single-process run's (``seed + 1``) and
  uses its slice; every rank therefore uses different noise, and a sequence gets the same
  noise whatever the number of processes. (Models whose ``forward`` takes no ``eps`` get a
  per-rank generator reseeded every step from ``(seed, step, rank)`` instead.)
- Only rank 0 evaluates, writes files and logs; results every rank needs (the validation
  bound for the learning-rate rule) are broadcast, and decisions that must agree (skip a
  non-finite batch, stop on the time budget) are all-reduced.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Rank 0 evaluates (and, at the end, runs the final evaluation) while the other ranks wait
# in a collective: give it far more than the default 10-30 minutes.
DEFAULT_TIMEOUT = datetime.timedelta(hours=2)


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``0, 1, 0`` without it)."""
    def read(name, default):
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    world = read("WORLD_SIZE", 1)
    rank, local = read("RANK", 0), read("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``enabled`` when there is more
    than one process. Every method is a cheap no-op (or the identity) for one process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------- data split
    def shard(self, n: int, rank: int | None = None) -> slice:
        """This rank's contiguous part of ``n`` items (as ``torch.tensor_split``: the first
        ``n % world_size`` ranks get one item more)."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.world_size)
        lo = r * base + min(r, extra)
        return slice(lo, lo + base + (1 if r < extra else 0))

    # ------------------------------------------------------------ collectives
    def all_reduce(self, values, op: str = "sum", device=None) -> torch.Tensor:
        """Sum (or max) a float64 vector over all ranks; returns it (a copy for one process)."""
        t = torch.as_tensor(values, dtype=torch.float64, device=device).clone()
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """``--device`` for this rank: with several processes ``auto`` / ``cuda`` mean
    ``cuda:LOCAL_RANK`` (each process its own GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):   # mps, meta, ...: nothing here runs there
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and ctx.enabled:
        if dev.index is not None:
            raise ValueError(f"--device {name}: with {ctx.world_size} processes each uses the GPU "
                             f"of its LOCAL_RANK; pass --device cuda (or auto)")
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {ctx.local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        dev = torch.device("cuda", ctx.local_rank)
    return dev


def setup(device_name: str = "auto", timeout: datetime.timedelta = DEFAULT_TIMEOUT
          ) -> tuple[DistContext, torch.device]:
    """The process group (initialised here from the torchrun environment when needed) and
    this rank's device."""
    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), env_world()[2], owns_group=False)
        return ctx, resolve_device(device_name, ctx)
    rank, world, local = env_world()
    ctx = DistContext(rank, world, local)
    device = resolve_device(device_name, ctx)
    if not ctx.enabled:
        return ctx, device
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={world} but {name} is not set; start the processes with "
                             f"torchrun --nproc_per_node N -m zf_kernels.train ...")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    ctx.owns_group = True
    return ctx, device


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around ``model``: it broadcasts rank 0's parameters now and all-reduces (averages)
    the gradients in every backward. ``find_unused_parameters``: with the auxiliary weight at
    0 the auxiliary and reverse-prediction heads get no gradient; DDP then leaves their
    ``.grad`` at None, exactly like one process, so Adam skips them alike. The wrapped
    module's forward must return the loss (DDP walks the graph from its outputs)."""
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=None if ids is None else ids[0],
                                                     find_unused_parameters=True)


def param_digest(module) -> str:
    """A short SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes) of a
    module or a state dict: equal digests across ranks mean bit-identical models."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
