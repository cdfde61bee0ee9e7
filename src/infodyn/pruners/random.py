"""Remove k blocks chosen uniformly at random (seeded): the chance baseline."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from infodyn.pruners.base import PrunerArgs, unprotected


class RandomPruner(PrunerArgs):
    """Remove `k` unprotected blocks drawn without replacement; same `seed` -> same blocks.

    Args:
        seed: seeds a private generator (the global RNG is untouched).
        k, fraction, protect: see `PrunerArgs`.
    """

    source = "none"

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(k, fraction, protect)
        self.seed = int(seed)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """`k` random unprotected blocks, sorted; scores are ignored except for their length."""
        return draw(unprotected(len(scores), k, self.protect), k, self.seed)


def draw(cands: list[int], k: int, seed: int) -> list[int]:
    """`k` of `cands` without replacement from a private generator seeded `seed`, sorted."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(cands), generator=gen).tolist()
    return sorted(cands[j] for j in order[:k])
