"""Estimators under multi-process training (DDP): one global batch, and syncs on the right device.

Two things torchmetrics does not do for us, written here:

- ``gather_global_batch``: the paper's score pairs *consecutive samples of a batch*. Under DDP
  each process holds a shard of the global batch, so per-process scoring would drop the pairs
  that straddle shards and depend on the number of processes. This gathers the pooled
  per-sample states of every process and lays them out in the order a single process would
  have seen the global batch. Two layouts, after the two ways samples are dealt:
  ``"interleave"``: torch's ``DistributedSampler`` (which Lightning inserts, and infodyn's own
  epoch sampler) deals position ``W * q + r`` of the global order to process ``r`` as its
  ``q``-th sample, so sample ``q`` of process ``r`` goes back to position ``W * q + r``;
  ``"concat"``: accelerate (HF ``Trainer``) gives each process whole consecutive batches, so
  the global batch is the processes' batches one after another in rank order.
- ``sync_on_backend_device``: estimator states live on the CPU (O(L) sums), but NCCL only
  reduces CUDA tensors. Used as torchmetrics' ``dist_sync_fn``, it moves each state to the
  device the process group's backend serves, gathers there and brings the result back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def backend_device(group: Any = None) -> torch.device:
    """The device whose tensors the group's backend reduces: CUDA for NCCL, else the CPU."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_on_backend_device(tensor: Tensor, group: Any = None) -> list[Tensor]:
    """torchmetrics ``dist_sync_fn``: ``gather_all_tensors`` run on the backend's device."""
    device = backend_device(group)
    gathered = gather_all_tensors(tensor.to(device), group=group)
    return [t.to(tensor.device) for t in gathered]


def sum_over_processes(value: int) -> int:
    """``value`` summed over every process (a collective; the value itself without a group)."""
    if world_size() == 1:
        return int(value)
    total = torch.tensor(int(value), dtype=torch.int64, device=backend_device())
    torch.distributed.all_reduce(total)
    return int(total.item())


def interleave(shards: list[Tensor]) -> Tensor:
    """Undo ``DistributedSampler``'s dealing along dim 0: row ``q`` of shard ``r`` -> ``W*q + r``.

    Shards may differ in length (an uneven last batch); the longer ones then continue alone, as
    a round-robin deal would have left them.
    """
    lengths = [s.shape[0] for s in shards]
    if len(set(lengths)) == 1:
        return torch.stack(shards, dim=1).flatten(0, 1)
    rows = [s[q : q + 1] for q in range(max(lengths)) for s in shards if q < s.shape[0]]
    return torch.cat(rows, dim=0)


LAYOUTS = ("interleave", "concat")


def gather_global_batch(local: Tensor, dim: int, layout: str = "interleave") -> Tensor:
    """Every process's ``local`` shard, assembled along ``dim`` in single-process order.

    ``layout`` says how the sampler dealt the global batch (see the module docstring). A no-op
    without an initialised process group. Collective: every process must call it once per
    training batch (the callbacks' tap does, from each process's training forward).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if world_size() == 1:
        return local
    device = backend_device()
    moved = local.detach().to(device).movedim(dim, 0).contiguous()
    shards = [s.to(local.device) for s in gather_all_tensors(moved)]
    joined = interleave(shards) if layout == "interleave" else torch.cat(shards, dim=0)
    return joined.movedim(0, dim)
