"""Greedy layer removal: drop, one at a time, the block whose removal hurts the calibration
loss least."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from infodyn.oracle import SubsetEvaluator
from infodyn.pruners.base import (
    PrunerArgs,
    ScoringContext,
    as_scores,
    check_protect,
    enough,
    require_batches,
)

Evaluate = Callable[[nn.Module, list[dict]], dict[str, float]]


@torch.no_grad()
def greedy_order(
    model: nn.Module,
    batches: list[dict],
    k: int,
    evaluate: Evaluate,
    protect: Iterable[int] = (),
) -> Tensor:
    """`[L]` removal rank: the j-th block removed (j = 0..k-1) gets j, the others NaN.

    Step j removes, from the model without the blocks already chosen, the unprotected block
    whose removal gives the lowest `evaluate(...)["loss"]` (ties -> lower index). Cost: sum over
    steps of (L - j) evaluations, each reusing the states before its first removed block.
    """
    batches = require_batches(batches)
    with SubsetEvaluator(model, batches, evaluate) as ev:
        num_layers = ev.num_layers
        keep = check_protect(protect, num_layers)
        enough([i for i in range(num_layers) if i not in keep], k, num_layers, protect)
        removed: list[int] = []
        ranks = torch.full((num_layers,), float("nan"), dtype=torch.float64)
        for step in range(k):
            best: tuple[float, int] | None = None
            for b in range(num_layers):
                if b in keep or b in removed:
                    continue
                loss = ev([*removed, b])["loss"]
                value = float("inf") if loss is None else loss
                if best is None or value < best[0]:
                    best = (value, b)
            assert best is not None
            removed.append(best[1])
            ranks[best[1]] = float(step)
    return ranks


class GreedyPruner(PrunerArgs):
    """Remove blocks one at a time, each time the one whose removal raises the calibration loss
    least (`ctx.evaluate` on `ctx.calibration()`; the model is left untouched).

    Raw scores are removal ranks (0 = removed first, NaN = never removed); prunability = -rank.
    """

    def score(self, ctx: ScoringContext) -> Tensor:
        return greedy_order(ctx.model, ctx.calibration(), ctx.k, ctx.evaluate, self.protect)

    def prunability(self, scores: Tensor) -> Tensor:
        return -as_scores(scores)
