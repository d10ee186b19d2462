"""Process-group setup for `torchrun --nproc-per-node N pcas <stage> ...`, and collectives that are no-ops alone.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each worker's environment; without them (plain `pcas ...`) every
helper here behaves as a single process of rank 0.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pcas_cli.errors import PcasError

# Non-main ranks wait in a collective while rank 0 evaluates on val and writes checkpoints; a long validation pass
# must not trip the default NCCL watchdog (10 minutes).
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank of this process (0 when not distributed)
    world_size: int  # number of processes (1 when not distributed)
    local_rank: int  # rank on this machine: picks the GPU
    is_main: bool  # rank 0: the only one that writes checkpoints, logs and artifacts
    device: torch.device  # where this process trains
    initialized_here: bool = False  # init_distributed created the process group (so shutdown() destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this rank's GPU when CUDA is available, else the CPU; "cuda" refuses to fall back silently."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PcasError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise PcasError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<index>")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when launched by it (NCCL on GPUs, gloo on the CPU); else a 1-process info."""
    rank, world_size, local_rank = env_world()
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, True, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        created = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_rank() == 0, dev, created)


def shutdown(info: DistInfo) -> None:
    """Wait for every rank, then destroy the process group if `init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (or when not distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity alone); returns `t`."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list alone)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
