"""Angular-distance block pruning (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the
Deeper Layers"): remove the contiguous run of k blocks that changes the representation least."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infodyn.forward import eval_hidden_states
from infodyn.pruners.base import (
    PrunerArgs,
    PrunerConfigError,
    ScoringContext,
    check_k,
    check_protect,
    require_batches,
)

TOKENS = ("mean", "last")


def last_token_index(mask: Tensor) -> Tensor:
    """`[B]` position of each row's last real token (left or right padding)."""
    t = mask.shape[-1]
    return t - 1 - mask.flip(-1).long().argmax(dim=-1)


@torch.no_grad()
def angular_distances(
    model: nn.Module, batches: list[dict], k: int, token: str = "mean"
) -> Tensor:
    """`[L]` float64: entry b = mean angular distance arccos(cos(h_b, h_{b+k})) / pi.

    `h_b` = hidden_states[b] (input of block b); NaN where b + k > L. `token="mean"` averages
    over non-padding tokens, `"last"` uses each sequence's last real token (the paper's choice for
    decoders).
    """
    sums: Tensor | None = None
    count = torch.zeros((), dtype=torch.float64)
    num_layers = 0
    for hs, mask in eval_hidden_states(model, require_batches(batches)):
        num_layers = len(hs) - 1
        check_k(k, num_layers)
        m = mask.to(torch.float64)
        if token == "last":
            m = torch.zeros_like(m)
            m[torch.arange(m.shape[0]), last_token_index(mask)] = 1.0
        dist = []
        for b in range(num_layers - k + 1):
            cos = F.cosine_similarity(hs[b].double(), hs[b + k].double(), dim=-1)
            dist.append(torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi)
        batch_sum = (torch.stack(dist) * m).sum(dim=(1, 2)).cpu()
        sums = batch_sum if sums is None else sums + batch_sum
        count += m.sum().cpu()
    out = torch.full((num_layers,), float("nan"), dtype=torch.float64)
    out[: num_layers - k + 1] = sums / count
    return out


class AngularPruner(PrunerArgs):
    """Remove the contiguous blocks [b*, b*+k) with the smallest angular distance d(h_b, h_{b+k}).

    Raw scores are *distances* indexed by run start (lower = more prunable; NaN where a run
    would overrun), computed on `ctx.calibration()` for `ctx.k`: `score` and `select` must use
    the same `k`. Runs overlapping a protected block are skipped. Per block, prunability is
    minus the smallest distance of an allowed run containing it, so the blocks of the chosen
    run are exactly the k most prunable.

    Args:
        token: `mean` over non-padding tokens, or `last` real token.
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        token: Literal["mean", "last"] = "mean",
    ) -> None:
        super().__init__(k, fraction, protect)
        if token not in TOKENS:
            raise PrunerConfigError(
                f"pruner.token='{token}' is unknown. Fix: use one of {', '.join(TOKENS)}."
            )
        self.token = token

    def num_to_remove(self, num_layers: int) -> int:
        """As for every pruner, and some run of k contiguous blocks must avoid `protect`."""
        k = super().num_to_remove(num_layers)
        if k and not allowed_starts(num_layers, k, self.protect):
            raise PrunerConfigError(
                f"no run of k={k} contiguous blocks out of {num_layers} avoids pruner.protect="
                f"{sorted(self.protect)}. Fix: lower pruner.k, or protect fewer blocks (or "
                "blocks at one end of the model only)."
            )
        return k

    def score(self, ctx: ScoringContext) -> Tensor:
        """`[L]` distance of the run of `ctx.k` blocks starting at each block."""
        return angular_distances(ctx.model, ctx.calibration(), ctx.k, self.token)

    def prunability(self, scores: Tensor) -> Tensor:
        """`[L]`: per block, minus the least distance of an allowed, scored run containing it."""
        num_layers = len(scores)
        vals = scores.detach().double().cpu()
        k = num_layers - int((~vals.isnan()).sum()) + 1  # runs of k blocks have L - k + 1 starts
        out = torch.full((num_layers,), float("nan"), dtype=torch.float64)
        for b in allowed_starts(num_layers, k, self.protect):
            if not math.isnan(float(vals[b])):
                run = out[b : b + k]
                out[b : b + k] = torch.fmax(run, torch.full_like(run, -float(vals[b])))
        return out

    def select(self, scores: Tensor, k: int) -> list[int]:
        """`list(range(b*, b*+k))` for the finite, unprotected run of least distance."""
        num_layers = len(scores)
        check_k(k, num_layers)
        if k == 0:
            return []
        keep = check_protect(self.protect, num_layers)
        vals = scores.detach().double().cpu().tolist()
        starts = [b for b in allowed_starts(num_layers, k, keep) if not math.isnan(vals[b])]
        if not starts:
            raise PrunerConfigError(
                f"no run of k={k} contiguous blocks out of {num_layers} has a score and avoids "
                f"protect={sorted(keep)}. Fix: lower pruner.k, protect fewer blocks, or "
                "score with the same k."
            )
        best = min(starts, key=lambda b: (vals[b], b))
        return list(range(best, best + k))


def allowed_starts(num_layers: int, k: int, protect: Iterable[int]) -> list[int]:
    """Starts b of the runs [b, b+k) inside the model that touch no protected block."""
    keep = check_protect(protect, num_layers)
    return [b for b in range(num_layers - k + 1) if not keep.intersection(range(b, b + k))]
