"""Taylor block importance (Shortened LLaMA, Kim et al., 2024): I_b = sum over the weights W of
block b of |W * dL/dW|, L the task loss on calibration data; the least important blocks go."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from infodyn.forward import model_inputs
from infodyn.layers import find_layer_list
from infodyn.pruners.base import (
    PrunerArgs,
    ScoringContext,
    as_scores,
    require_batches,
    require_labels,
)


def taylor_importance(model: nn.Module, batches: list[dict]) -> Tensor:
    """`[L]` float64: sum over each block's parameters of |W * dL/dW|.

    L is the mean HF loss (cross-entropy, or MSE for regression) over all calibration examples,
    in eval mode (no dropout). Gradients are taken with `torch.autograd.grad`, so no `.grad` is
    left on the model; parameters frozen by LoRA are differentiated too.
    """
    batches = require_batches(batches)
    require_labels(batches, "taylor")
    blocks = find_layer_list(model)[2]
    params = [list(b.parameters()) for b in blocks]
    flat = [p for ps in params for p in ps]
    was_training, flags = model.training, [p.requires_grad for p in flat]
    device = flat[0].device
    total = sum(int(b["labels"].shape[0]) for b in batches)
    grads = [torch.zeros_like(p, dtype=torch.float64) for p in flat]
    model.eval()
    try:
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                out = model(**model_inputs(batch, device, labels=True))
                weight = int(batch["labels"].shape[0]) / total  # the loss of the whole set
                for g, d in zip(grads, torch.autograd.grad(out.loss * weight, flat), strict=True):
                    g += d.double()
    finally:
        for p, flag in zip(flat, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    out, pos = [], 0
    for ps in params:
        terms = [
            (p.detach().double() * g).abs().sum() for p, g in zip(ps, grads[pos:], strict=False)
        ]
        pos += len(ps)
        out.append(torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64))
    return as_scores(torch.stack(out))


class TaylorPruner(PrunerArgs):
    """Remove the `k` blocks with the lowest first-order Taylor importance on
    `ctx.calibration()` (raw = importance, higher = keep; prunability = -importance)."""

    def score(self, ctx: ScoringContext) -> Tensor:
        return taylor_importance(ctx.model, ctx.calibration())

    def prunability(self, scores: Tensor) -> Tensor:
        return -as_scores(scores)
