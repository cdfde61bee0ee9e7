"""One-shot removal loss (SLEB's first step, Song et al., 2024): each block removed alone,
the calibration loss of what remains; the blocks whose removal costs least go."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from infodyn.oracle import Evaluate, SubsetEvaluator
from infodyn.pruners.base import PrunerArgs, ScoringContext, as_scores, require_batches


@torch.no_grad()
def single_removal_losses(model: nn.Module, batches: list[dict], evaluate: Evaluate) -> Tensor:
    """`[L]` float64: `evaluate(model without block b, batches)["loss"]` for every block b
    (NaN where the loss is not finite); the model is left untouched."""
    with SubsetEvaluator(model, require_batches(batches), evaluate) as ev:
        losses = [ev([b])["loss"] for b in range(ev.num_layers)]
    return torch.tensor([float("nan") if v is None else v for v in losses], dtype=torch.float64)


class OneShotLossPruner(PrunerArgs):
    """Remove the `k` blocks whose removal, one at a time, gives the lowest calibration loss
    (`ctx.evaluate` on `ctx.calibration()`).

    Raw scores are those losses (lower = less damage); prunability = -loss. Unlike `greedy`,
    the blocks are judged once, each against the full model.
    """

    def score(self, ctx: ScoringContext) -> Tensor:
        return single_removal_losses(ctx.model, ctx.calibration(), ctx.evaluate)

    def prunability(self, scores: Tensor) -> Tensor:
        return -as_scores(scores)
