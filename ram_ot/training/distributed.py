"""A small ``torch.distributed`` helper: the process group from ``torchrun``'s environment
(NCCL on GPUs, Gloo on CPU), barriers, gathering, an evaluation sampler, unwrapping DDP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Sampler

__all__ = [
    "DistInfo",
    "ShardSampler",
    "all_gather_objects",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "unwrap",
]


class DistInfo(NamedTuple):
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank. world_size: number of processes. local_rank: rank on this node.
        device: the device this process uses.
        distributed: whether a process group was initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes checkpoints)."""
        return self.rank == 0


def init_distributed(
    *, device: str | torch.device | None = None, backend: str | None = None
) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment, if any.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``
    through ``init_method="env://"``). Without them (``WORLD_SIZE`` unset or 1) nothing is
    initialised. Works across nodes: ``torchrun --nnodes N --node-rank i --rdzv-endpoint ...``.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA if available). On CUDA the process uses
            device ``LOCAL_RANK``.
        backend: process-group backend; default NCCL on CUDA, Gloo on CPU.

    Returns:
        :class:`DistInfo`.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        except TypeError:  # torch < 2.3 has no `device_id`
            dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)


def cleanup_distributed() -> None:
    """Destroy the default process group if one is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """``torch.distributed.barrier()`` when distributed, else nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (``[obj]`` when not distributed). Picklable objects only."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset, in order, without padding.

    For evaluation under DDP: unlike ``DistributedSampler`` no index is repeated to even out
    the shards, so metrics gathered from all ranks count each image exactly once.
    """

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or `model`)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )
