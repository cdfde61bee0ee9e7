"""The no-pruning baseline (Table 1's first row): removes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from infodyn.pruners.base import PrunerArgs, nan_scores


class NoPruner(PrunerArgs):
    """Selects no block; `k`, `fraction` and `protect` are accepted and ignored.

    The training hooks, the signature and `score` are `PrunerArgs`' no-ops; only what differs
    from a pruner that removes blocks is written here.
    """

    def __init__(
        self, k: int | None = None, fraction: float | None = None, protect: Iterable[int] = ()
    ) -> None:
        self.k, self.fraction, self.protect = None, None, ()

    def num_to_remove(self, num_layers: int) -> int:
        """Always 0."""
        return 0

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        return None

    def prunability(self, scores: Tensor) -> Tensor:
        return nan_scores(len(scores))

    def select(self, scores: Tensor, k: int) -> list[int]:
        """Always `[]`."""
        return []

    def __repr__(self) -> str:
        return "NoPruner()"
