"""Remove the k blocks with the highest knowledge entropy (Kim et al., 2025)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from infodyn.pruners.redundancy import RedundancyPruner


class KnowledgeEntropyPruner(RedundancyPruner):
    """Remove the `k` blocks whose FFN knowledge entropy is highest.

    `RedundancyPruner` reading another profile: scores come from the `knowledge_entropy`
    estimator (FFN activations read by a pre-hook on `layers.ffn_output_projection`), reduced
    over epochs and ranked exactly as there. Its input is FFN activations, so
    `reduce=calibration` is refused by `check`.

    Args:
        estimator: the estimator whose profile is read.
        reduce: `last` or `mean` (see `RedundancyPruner`).
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        estimator: str = "knowledge_entropy",
        reduce: Literal["last", "mean", "calibration"] = "last",
    ) -> None:
        super().__init__(k, fraction, protect, estimator, reduce)
