"""Remove k blocks chosen uniformly at random (seeded): the chance baseline."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from infodyn.pruners.base import PrunerArgs, check_protect


class RandomPruner(PrunerArgs):
    """Remove `k` unprotected blocks drawn without replacement; same `seed` -> same blocks.

    Measures nothing (raw scores are NaN); prunability is minus the position of each block in
    the seeded random order (`random_order`), so the top k of it is the draw.

    Args:
        seed: seeds a private generator (the global RNG is untouched).
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(k, fraction, protect)
        self.seed = int(seed)

    def prunability(self, scores: Tensor) -> Tensor:
        return random_order(len(scores), self.protect, self.seed)


def random_order(num_layers: int, protect: Iterable[int], seed: int) -> Tensor:
    """`[L]`: minus each unprotected block's position in a permutation seeded `seed` (protected
    blocks NaN); the permutation is drawn over the unprotected blocks in index order."""
    keep = check_protect(protect, num_layers)
    cands = [i for i in range(num_layers) if i not in keep]
    order = torch.randperm(len(cands), generator=torch.Generator().manual_seed(int(seed)))
    out = torch.full((num_layers,), float("nan"), dtype=torch.float64)
    for pos, j in enumerate(order.tolist()):
        out[cands[j]] = -float(pos)
    return out
