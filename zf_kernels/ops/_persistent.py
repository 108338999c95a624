"""Host side of the persistent Triton kernels (one launch per direction, programs that meet
at ``_triton_common.grid_barrier`` every step): the schedule choice, the barrier counters and
the check that no barrier timed out. Used by the LSTM and the Z-forcing chain."""
from __future__ import annotations

import os

import torch

SCHEDULES = ("auto", "persistent", "stepwise")
# polls of a grid barrier before a persistent launch gives up (~1 us each on an H100/H200):
# seconds, far beyond any real wait, so only a grid that was not co-resident ever reaches it
MAX_POLLS = 1 << 22

_NUM_SMS: dict[int, int] = {}


def num_sms(t: torch.Tensor) -> int:
    """Streaming multiprocessors of ``t``'s GPU (programs that can be resident at once, at one
    program per SM); a huge number for CPU tensors (the interpreter has no occupancy)."""
    if not t.is_cuda:
        return 1 << 30
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def requested_schedule(schedule: str, env_var: str) -> tuple[str, str]:
    """``(schedule, note)``: "auto" is overridden process-wide by the environment variable
    ``env_var`` when set (the note then names it); anything else must be one of SCHEDULES."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    forced = os.environ.get(env_var)
    if schedule != "auto" or not forced:
        return schedule, ""
    if forced not in SCHEDULES:
        raise ValueError(f"environment variable {env_var} must be one of {SCHEDULES}, got {forced!r}")
    return forced, f" ({env_var}={forced})"


def sync_buffer(n_groups: int, like: torch.Tensor) -> torch.Tensor:
    """Zeroed barrier counters, one per group of programs that wait for each other, then the
    timeout flag (the kernels find it at index n_groups)."""
    return torch.zeros(n_groups + 1, dtype=torch.int32, device=like.device)


def check_sync(sync: torch.Tensor, what: str) -> None:
    """Fail if a barrier of the launch timed out. Asynchronous on a GPU (no host sync, so a
    CUDA graph can capture it): a device-side assert; on the CPU an immediate RuntimeError."""
    torch._assert_async(sync[-1] == 0, f"zf_kernels: a grid barrier of the persistent {what} kernel timed "
                        "out (its programs were not all resident); use schedule='stepwise'")
