"""Remove the k blocks with the highest redundancy score (this project's criterion)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import Tensor

from infodyn.pruners.base import PrunerArgs, PrunerConfigError, top_k

# `calibration`: the pipeline runs the estimator on calibration data after fine-tuning instead.
REDUCTIONS = ("last", "mean", "calibration")


class RedundancyPruner(PrunerArgs):
    """Remove the `k` blocks whose fine-tuning redundancy profile is highest.

    The pipeline reduces the estimator's per-epoch profile `[E, L]` with `reduce` (`last` epoch,
    or `mean` over fine-tuning epochs; see `reduce_profile`), or with `reduce=calibration` scores
    the fine-tuned model on calibration data with the estimator, and passes the `[L]` result to
    `select`.

    Args:
        estimator: the estimator whose profile is read (its `conf/estimator` name).
        reduce: `last`, `mean` or `calibration`.
        k, fraction, protect: see `PrunerArgs`.
    """

    source = "estimator"

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        estimator: str = "cosine",
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
        """`[E, L]` per-epoch scores (or `[L]`) -> `[L]` by `reduce`; NaN columns stay NaN."""
        return reduce_profile(profile, self.reduce)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """The `k` highest-scoring blocks (NaN and protected never chosen), sorted."""
        return top_k(scores, k, self.protect)


def reduce_profile(profile: Tensor, reduce: str) -> Tensor:
    """Collapse an epoch axis: `last` row or `mean` over rows (NaN-aware)."""
    if profile.ndim == 1:
        return profile
    if reduce == "last":
        return profile[-1]
    if reduce == "mean":
        return profile.double().nanmean(dim=0)
    raise PrunerConfigError(
        f"reduce='{reduce}' does not reduce a profile. Fix: use last or mean here; "
        "calibration scores come from the estimator run on calibration data."
    )
