"""Remove the k blocks with the highest knowledge entropy (Kim et al., 2025)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import Tensor

from infodyn.pruners.base import PrunerArgs, PrunerConfigError, top_k
from infodyn.pruners.redundancy import REDUCTIONS, reduce_profile


class KnowledgeEntropyPruner(PrunerArgs):
    """Remove the `k` blocks whose FFN knowledge entropy is highest.

    Scores come from the `knowledge_entropy` estimator (FFN activations read by a pre-hook on
    `layers.ffn_output_projection`), reduced over epochs like `RedundancyPruner`.

    Args:
        estimator: the estimator whose profile is read.
        reduce: `last`, `mean` or `calibration` (see `RedundancyPruner`).
        k, fraction, protect: see `PrunerArgs`.
    """

    source = "estimator"

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        estimator: str = "knowledge_entropy",
        reduce: Literal["last", "mean", "calibration"] = "last",
    ) -> None:
        super().__init__(k, fraction, protect)
        if reduce not in REDUCTIONS:
            raise PrunerConfigError(
                f"pruner.reduce='{reduce}' is unknown. Fix: use one of {', '.join(REDUCTIONS)}."
            )
        self.estimator = str(estimator)
        self.reduce = reduce

    def reduce_profile(self, profile: Tensor) -> Tensor:
        """`[E, L]` per-epoch scores (or `[L]`) -> `[L]` by `reduce`."""
        return reduce_profile(profile, self.reduce)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """The `k` highest-entropy blocks (NaN and protected never chosen), sorted."""
        return top_k(scores, k, self.protect)
