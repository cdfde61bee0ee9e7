"""The oracle as a pruner (a row of Table 1): the best k-block subset on a selection split
carved from the training data (`ctx.calibration()`), never on the dev set it is reported on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from infodyn.oracle import DEFAULT_BUDGET, as_beam, check_budget, evaluate_subsets, ranked
from infodyn.pruners.base import PrunerArgs, PrunerConfigError, ScoringContext, as_scores
from infodyn.results import Oracle


class OraclePruner(PrunerArgs):
    """Evaluate every C(L, k) subset (or a beam's) with `ctx.evaluate` on `ctx.calibration()`
    and remove the best one (`objective`: higher metric then lower loss, or the reverse).

    Raw scores: per block, the rank (0 = best) of the best evaluated subset that contains it
    (NaN: in none, e.g. protected), so the k blocks of the best subset are exactly the ones
    with rank 0; prunability = -rank. The full record is kept as `self.result` (an `Oracle`
    with `split="selection"`).

    Args:
        objective: `metric` or `loss`.
        beam: None for all subsets, else a beam search of that width.
        budget: the most example x block forwards allowed (refused in `check`, before training).
        num_examples: the size of the selection split (the config's `data.calibration_size`),
            for the cost estimate of `check`.
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        objective: Literal["metric", "loss"] = "metric",
        beam: int | None = None,
        budget: float | None = DEFAULT_BUDGET,
        num_examples: int = 256,
    ) -> None:
        super().__init__(k, fraction, protect)
        ranked([], objective)  # validates objective
        if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 1:
            raise PrunerConfigError(
                f"pruner.num_examples={num_examples!r} is not a positive whole number. Fix: "
                "pruner.num_examples=${data.calibration_size}."
            )
        self.objective = objective
        self.beam = as_beam(beam)
        self.budget = None if budget is None else float(budget)
        self.num_examples = int(num_examples)
        self.result: Oracle | None = None

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        k = self.num_to_remove(num_layers)
        check_budget(
            num_layers, k, self.num_examples, self.budget, protect=self.protect, beam=self.beam,
            size_key="data.calibration_size",
        )  # fmt: skip

    def score(self, ctx: ScoringContext) -> Tensor:
        self.result = evaluate_subsets(
            ctx.model,
            ctx.calibration(),
            ctx.k,
            ctx.evaluate,
            metric=ctx.main_metric,
            split="selection",
            protect=self.protect,
            beam=self.beam,
            budget=self.budget,
            objective=self.objective,
            size_key="data.calibration_size",
        )
        return subset_ranks(self.result, ctx.num_layers, self.objective)

    def prunability(self, scores: Tensor) -> Tensor:
        return -as_scores(scores)


def subset_ranks(oracle: Oracle, num_layers: int, objective: str = "metric") -> Tensor:
    """`[L]`: per block, the rank of the best subset of `oracle` containing it (NaN: none)."""
    out = torch.full((num_layers,), float("nan"), dtype=torch.float64)
    for rank, s in enumerate(ranked(oracle.subsets, objective)):
        for b in s.layers:
            if out[b].isnan():
                out[b] = float(rank)
    return out
