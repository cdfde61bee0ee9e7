"""The no-pruning baseline (Table 1's first row): removes nothing."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


class NoPruner:
    """Selects no block; `k`, `fraction` and `protect` are accepted and ignored."""

    source = "none"

    def __init__(
        self, k: int | None = None, fraction: float | None = None, protect: Iterable[int] = ()
    ) -> None:
        self.k, self.fraction, self.protect = None, None, ()

    def num_to_remove(self, num_layers: int) -> int:
        """Always 0."""
        return 0

    def select(self, scores: Tensor, k: int) -> list[int]:
        """Always `[]`."""
        return []

    def __repr__(self) -> str:
        return "NoPruner()"
