"""Thin helpers around torch.distributed for runs launched with `torchrun`.

Outside torchrun every helper degrades to the single-process answer (rank 0, identity
gather, no-op barrier), so training code calls them unconditionally.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor

# The device check lives with the other hardware facts; training code imports it from here as well.
from ..hardware import NO_CUDA_MESSAGE, DeviceUnavailable, select_device

__all__ = ["NO_CUDA_MESSAGE", "DeviceUnavailable", "DistInfo", "all_gather_tensors", "barrier", "cleanup",
           "get_world_size", "init_distributed", "is_main_process", "reduce_max", "reduce_sum", "select_device"]


@dataclass
class DistInfo:
    """Where this process sits in the job and which device it should use."""
    enabled: bool
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    The backend defaults to nccl when CUDA is available and gloo otherwise. Each process uses
    `cuda:LOCAL_RANK` when CUDA is available, else the CPU. Without torchrun's variables this
    returns single-process info and initialises nothing.
    """
    cuda = torch.cuda.is_available()
    if not _launched_by_torchrun():
        return DistInfo(False, 0, 1, 0, torch.device("cuda" if cuda else "cpu"))

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or ("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        # Bind the device first: nccl otherwise puts every rank's communicator on GPU 0.
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(True, rank, world_size, local_rank, device)


def is_main_process() -> bool:
    """True on rank 0, and in any process that is not part of a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _comm_device(tensor: Tensor) -> torch.device:
    # nccl only moves CUDA tensors and gloo is reliable only with CPU tensors.
    return tensor.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_tensors(tensor: Tensor) -> Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order.

    Ranks may hold different numbers of rows (e.g. the last eval batch of a sharded set):
    sizes are gathered first, every tensor is padded to the largest, and the padding is cut
    off again. Trailing dimensions and dtype must match across ranks. The result lies on the
    input's device. Not differentiable.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    device = _comm_device(tensor)
    local = tensor.detach().to(device).contiguous()
    world_size = dist.get_world_size()

    size = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    max_rows = max(sizes)

    padded = local.new_zeros((max_rows, *local.shape[1:]))
    padded[:local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    out = torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)
    return out.to(tensor.device)


def reduce_sum(value: Union[Tensor, float, int]) -> Union[Tensor, float]:
    """Sum of `value` over all ranks: a tensor for a tensor, a float for a number."""
    if not (dist.is_available() and dist.is_initialized()):
        return value if isinstance(value, Tensor) else float(value)
    if isinstance(value, Tensor):
        device = _comm_device(value)
        out = value.detach().to(device).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(value.device)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return float(out.item())


def reduce_max(value: float) -> float:
    """Largest `value` over all ranks (the value itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out.item())


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
