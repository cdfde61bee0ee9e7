"""Greedy layer removal: drop, one at a time, the block whose removal hurts a held-out
calibration metric least (lower metric = better)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from infodyn.forward import model_inputs
from infodyn.layers import num_blocks
from infodyn.pruners.base import (
    PrunerArgs,
    PrunerConfigError,
    check_protect,
    enough,
    top_k,
)
from infodyn.pruners.surgery import remove_layers

Evaluate = Callable[[nn.Module, list[dict]], float]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict]) -> float:
    """Mean HF loss (cross-entropy, or MSE for regression) over `batches`; needs `labels`."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for batch in batches:
        if "labels" not in batch:
            raise PrunerConfigError(
                "greedy pruning's default metric needs `labels` in the calibration batches. "
                "Fix: pass labelled batches, or give calibrate(..., evaluate=fn)."
            )
        out = model(**model_inputs(batch, device, labels=True))
        size = int(batch["labels"].shape[0])
        total += float(out.loss) * size
        n += size
    return total / n


class GreedyPruner(PrunerArgs):
    """Remove blocks one at a time, each time the one whose removal raises `evaluate` least.

    Works on copies (the given model is untouched). Cost: for k removals out of L blocks,
    sum_{j<k} (L - j) = O(k * L) evaluations of the calibration set, each on a fresh deep copy.
    """

    source = "calibration"

    @torch.no_grad()
    def calibrate(
        self,
        model: nn.Module,
        batches: list[dict],
        k: int,
        evaluate: Evaluate | None = None,
    ) -> Tensor:
        """`[L]` removal order as score: the j-th removed block (j = 0..k-1) gets k - j, the
        rest NaN, so `select(scores, k)` returns the greedy set."""
        if not batches:
            raise PrunerConfigError("greedy calibration got no batches. Fix: pass some.")
        evaluate = evaluate or mean_loss
        num_layers = num_blocks(model)
        keep = check_protect(self.protect, num_layers)
        alive = list(range(num_layers))  # original index of each current block
        enough([i for i in alive if i not in keep], k, num_layers, self.protect)
        scores = torch.full((num_layers,), float("nan"), dtype=torch.float64)
        was_training = model.training
        work = copy.deepcopy(model).eval()
        for step in range(k):
            best: tuple[float, int] | None = None
            for pos, orig in enumerate(alive):
                if orig in keep:
                    continue
                trial = remove_layers(copy.deepcopy(work), [pos])
                value = float(evaluate(trial, batches))
                del trial
                if best is None or value < best[0]:
                    best = (value, pos)
            assert best is not None
            remove_layers(work, [best[1]])
            scores[alive.pop(best[1])] = float(k - step)
        model.train(was_training)
        return scores

    def select(self, scores: Tensor, k: int) -> list[int]:
        """The `k` earliest-removed blocks, sorted."""
        return top_k(scores, k, self.protect)
