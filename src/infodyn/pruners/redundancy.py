"""Remove the k blocks with the highest redundancy score (this project's criterion)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from torch import Tensor

from infodyn.pruners.base import PrunerArgs, ScoringContext
from infodyn.pruners.scoring import (
    built_estimator,
    calibration_scores,
    check_calibration_kind,
    check_reduce,
    profile_scores,
)


class RedundancyPruner(PrunerArgs):
    """Remove the `k` blocks whose estimator score is highest (higher = more redundant).

    `score` reads `ctx.profiles[estimator]` (one row per fine-tuning epoch) reduced by `reduce`
    (`last` epoch or `mean`), or with `reduce=calibration` re-scores the fine-tuned model with
    `ctx.estimators[estimator]` on `ctx.calibration()` batches.

    Args:
        estimator: the estimator whose profile is read (its `conf/estimator` name).
        reduce: `last`, `mean` or `calibration`.
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        estimator: str = "cosine",
        reduce: Literal["last", "mean", "calibration"] = "last",
    ) -> None:
        super().__init__(k, fraction, protect)
        self.estimator = str(estimator)
        self.reduce = check_reduce(reduce)

    def needs_estimator(self) -> str | None:
        return self.estimator

    def needs_profile(self) -> bool:
        return self.reduce != "calibration"  # calibration re-scores the model itself

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        super().check(num_layers, estimators)
        est = built_estimator(estimators, self.estimator)
        if self.reduce == "calibration":
            check_calibration_kind(est, self.estimator)

    def score(self, ctx: ScoringContext) -> Tensor:
        if self.reduce == "calibration":
            est = built_estimator(ctx.estimators, self.estimator)
            return calibration_scores(est, ctx.model, ctx.calibration())
        return profile_scores(ctx.profiles, ctx.estimators, self.estimator, self.reduce)
