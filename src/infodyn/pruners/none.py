"""The no-pruning baseline (Table 1's first row): removes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from infodyn.pruners.base import ScoringContext, nan_scores


class NoPruner:
    """Selects no block; `k`, `fraction` and `protect` are accepted and ignored."""

    def __init__(
        self, k: int | None = None, fraction: float | None = None, protect: Iterable[int] = ()
    ) -> None:
        self.k, self.fraction, self.protect = None, None, ()

    def needs_estimator(self) -> str | None:
        return None

    def needs_profile(self) -> bool:
        return False

    def num_to_remove(self, num_layers: int) -> int:
        """Always 0."""
        return 0

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        return None

    def training_signature(self) -> dict[str, Any]:
        return {}

    def prepare_training(self, model: nn.Module, seed: int) -> None:
        return None

    def finish_training(self, model: nn.Module) -> None:
        return None

    def score(self, ctx: ScoringContext) -> Tensor:
        return nan_scores(ctx.num_layers)

    def prunability(self, scores: Tensor) -> Tensor:
        return nan_scores(len(scores))

    def select(self, scores: Tensor, k: int) -> list[int]:
        """Always `[]`."""
        return []

    def __repr__(self) -> str:
        return "NoPruner()"
