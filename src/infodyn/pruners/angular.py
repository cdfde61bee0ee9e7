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

    Scores are *distances* (lower = more prunable) computed for one `k`: `calibrate` and
    `select` must use the same `k`. Runs overlapping a protected block are skipped.

    Args:
        token: `mean` over non-padding tokens, or `last` real token.
        k, fraction, protect: see `PrunerArgs`.
    """

    source = "calibration"

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

    def calibrate(self, model: nn.Module, batches: list[dict], k: int) -> Tensor:
        """`[L]` distance of the run starting at each block (NaN where it would overrun)."""
        return angular_distances(model, batches, k, self.token)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """`list(range(b*, b*+k))` for the finite, unprotected run of least distance."""
        num_layers = len(scores)
        check_k(k, num_layers)
        if k == 0:
            return []
        keep = check_protect(self.protect, num_layers)
        vals = scores.detach().double().cpu().tolist()
        starts = [
            b
            for b in range(num_layers - k + 1)
            if not math.isnan(vals[b]) and not keep.intersection(range(b, b + k))
        ]
        if not starts:
            raise PrunerConfigError(
                f"no run of k={k} contiguous blocks out of {num_layers} has a score and avoids "
                f"protect={sorted(keep)}. Fix: lower pruner.k, protect fewer blocks, or "
                "calibrate with the same k."
            )
        best = min(starts, key=lambda b: (vals[b], b))
        return list(range(best, best + k))
