"""Data-parallel training on several GPUs (or CPU processes) with ``torchrun`` and DistributedDataParallel.

:func:`graphreg.training.train` (and ``graphreg train``) run distributed when they are started by
``torchrun`` (``WORLD_SIZE > 1`` in the environment) or inside an initialised process group::

    torchrun --standalone --nproc_per_node=4 --no-python graphreg train --config configs/voxelmorph.yaml --out runs/vm

Convention:
    - One process per GPU. The process group is initialised from torchrun's environment
      (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): backend NCCL on
      CUDA, gloo on CPU. Rank ``r`` trains on ``cuda:LOCAL_RANK``.
    - The batch size is global: every rank builds the same batch of step ``s`` (``data(s)`` is
      deterministic, or the same iterable on every rank) and keeps its own share of the samples,
      rows ``r, r + W, r + 2W, ...`` along dimension 0 of every tensor (:func:`shard_batch`); the
      batch size must be a multiple of the world size ``W``. DDP averages the gradients, so with
      a loss that is a mean over the batch one distributed step equals one single-process step on
      the whole batch.
    - Logged losses are averaged over the ranks. Only rank 0 validates, writes checkpoints,
      ``history.jsonl`` and ``model.pt``; every rank waits at a barrier at the end. Resuming reads
      the checkpoint on every rank, so ``out_dir`` must be on a filesystem all ranks see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Union

import torch
import torch.distributed as dist

from graphreg.errors import ConfigError, GraphregError


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise GraphregError(f"WORLD_SIZE: expected an integer, got {value!r}") from None


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """The share of ``batch`` of ``rank``: rows ``rank::world_size`` of every tensor (also inside
    dicts, lists and tuples); other values are kept as they are.

    Shapes:
        each tensor ``(B, ...)`` -> ``(B / world_size, ...)``; ``B`` must be a multiple of
        ``world_size`` (0-dim tensors are kept whole).

    Raises:
        ConfigError: a tensor's first dimension is not a multiple of ``world_size``.
    """
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            return batch
        if batch.shape[0] % world_size:
            raise ConfigError(f"batch_size: expected a multiple of the world size {world_size} (every rank gets "
                              f"the same number of samples), got a batch tensor of shape {tuple(batch.shape)}")
        return batch[rank::world_size]
    if isinstance(batch, dict):
        return {key: shard_batch(value, rank, world_size) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        shards = [shard_batch(value, rank, world_size) for value in batch]
        return type(batch)(*shards) if hasattr(batch, "_fields") else type(batch)(shards)
    return batch


@dataclass
class DistributedContext:
    """This process's place in a data-parallel run.

    Attributes:
        rank, world_size, local_rank: as set by torchrun.
        device: ``cuda:<local_rank>`` with NCCL, else CPU.
        owns_group: the group was initialised by :func:`init_distributed` (and is destroyed by
            :meth:`close`); False when the caller had initialised it.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and validates."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        """``model`` (already on :attr:`device`) wrapped in DistributedDataParallel; rank 0's weights
        are broadcast to the others."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, batch: Any) -> Any:
        """This rank's share of a global batch (:func:`shard_batch`)."""
        return shard_batch(batch, self.rank, self.world_size)

    def mean(self, values: dict) -> dict:
        """``{name: float}`` averaged over the ranks (every rank must pass the same names)."""
        names = sorted(values)
        tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {name: float(value) / self.world_size for name, value in zip(names, tensor.tolist())}

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a time limit reached)."""
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        """Barrier, then destroy the process group when this context created it."""
        self.barrier()
        if self.owns_group:
            dist.destroy_process_group()


def init_distributed(device: Union[str, torch.device, None] = None, backend: Optional[str] = None,
                     timeout_minutes: float = 30.0) -> Optional[DistributedContext]:
    """The :class:`DistributedContext` of this process, or None for a single-process run.

    Joins the process group that torchrun's environment describes (``WORLD_SIZE > 1``), or uses
    the one already initialised. The device is ``cuda:LOCAL_RANK`` when CUDA is available and
    ``device`` is not ``"cpu"``, else CPU.

    Args:
        device: ``"cpu"`` forces CPU training (gloo); None or ``"cuda"``: one GPU per process when
            CUDA is available.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL on CUDA, gloo on CPU.
        timeout_minutes: how long collectives (and the barrier while rank 0 prepares data) wait.

    Raises:
        GraphregError: more processes on a node than GPUs; an unknown backend.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and env_world_size() <= 1:
        return None
    if not dist.is_available():
        raise GraphregError("WORLD_SIZE: a distributed run was asked for but torch.distributed is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cpu = device is not None and torch.device(device).type == "cpu"
    if torch.cuda.is_available() and not wants_cpu:
        if local_rank >= torch.cuda.device_count():
            raise GraphregError(f"LOCAL_RANK: process {local_rank} has no GPU of its own "
                                f"({torch.cuda.device_count()} GPUs); start at most one process per GPU")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    else:
        resolved = torch.device("cpu")
    if not initialised:
        backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
        if backend not in ("nccl", "gloo"):
            raise GraphregError(f"backend: expected 'nccl' or 'gloo', got {backend!r}")
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes),
                                device_id=resolved if resolved.type == "cuda" else None)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                              device=resolved, owns_group=not initialised)


__all__ = ["DistributedContext", "env_world_size", "init_distributed", "shard_batch"]
