"""`estimators/distributed.py`: the global-batch layout and the backend-device sync.

The multi-process behaviour itself is tested under real DDP in
`tests/integration/test_callback.py::test_ddp_matches_single_process` and
`tests/integration/test_ddp_equality.py`; here are the pieces that need no second process.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from infodyn.estimators import distributed
from infodyn.estimators.cosine import CosineRedundancy
from infodyn.estimators.distributed import (
    backend_device,
    gather_global_batch,
    interleave,
    sync_on_backend_device,
)


def test_interleave_undoes_the_distributed_sampler_deal() -> None:
    order = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    for world in (2, 3, 4):
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(order, num_replicas=world, rank=rank, shuffle=False)
            shards.append(order[list(sampler)])
        # each rank's first batch of 2: the first 2 * world positions, in order
        got = interleave([s[:2] for s in shards])
        assert got.tolist() == order[: 2 * world].tolist()


def test_interleave_uneven_shards_continue_round_robin() -> None:
    shards = [torch.tensor([0, 3, 6]), torch.tensor([1, 4]), torch.tensor([2, 5])]
    assert interleave(shards).tolist() == [0, 1, 2, 3, 4, 5, 6]
    rows = [torch.arange(6.0).reshape(3, 2), torch.arange(6.0, 10.0).reshape(2, 2)]
    assert interleave(rows).tolist() == [[0, 1], [6, 7], [2, 3], [8, 9], [4, 5]]


def test_without_a_process_group_nothing_moves() -> None:
    local = torch.randn(3, 5, 4)
    assert distributed.world_size() == 1
    assert gather_global_batch(local, dim=1) is local


@pytest.mark.parametrize(
    ("backend", "device"),
    [("gloo", "cpu"), ("nccl", "cuda"), ("cpu:gloo,cuda:nccl", "cpu")],
)
def test_backend_device(monkeypatch, backend, device) -> None:
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert backend_device().type == device


def test_sync_and_gather_on_a_one_process_gloo_group(tmp_path) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        state = torch.arange(4, dtype=torch.float64)
        (gathered,) = sync_on_backend_device(state)
        assert torch.equal(gathered, state) and gathered.device == state.device
        local = torch.randn(3, 5, 4)
        assert torch.equal(gather_global_batch(local, dim=1), local)
        # a metric syncing through it: one process, so the sums are unchanged
        metric = CosineRedundancy(batch_scope="local")
        hidden = [torch.randn(6, 7, 8) for _ in range(3)]
        metric.update(hidden, torch.ones(6, 7))
        alone = CosineRedundancy()
        alone.update(hidden, torch.ones(6, 7))
        assert torch.allclose(metric.summary()["redundancy"], alone.summary()["redundancy"])
    finally:
        torch.distributed.destroy_process_group()


def test_batch_scope_and_layout_are_validated() -> None:
    with pytest.raises(ValueError, match="batch_scope"):
        CosineRedundancy(batch_scope="world")
    with pytest.raises(ValueError, match="global_layout"):
        CosineRedundancy(global_layout="zip")
    with pytest.raises(ValueError, match="layout"):
        gather_global_batch(torch.zeros(2, 3), dim=0, layout="zip")
