"""EntroDrop (Yang et al., ICLR 2026, "Entropy-Based Block Pruning for Efficient Large Language
Models"): a block's entropy increase dH_b = H(output) - H(input) on calibration data; in the
stage where entropy rises, the blocks that add least go.

Entropy of a set of states (rows = points, columns = the D hidden dimensions), in nats:
- `bucket`: each dimension histogrammed into `num_bins` equal bins between its min and max,
  the D marginal entropies summed (the authors' bucket estimator);
- `knn`: Kozachenko-Leonenko, H = psi(n) - psi(k) + log V_D + D/n * sum_i log r_i, r_i the
  distance to the k-th nearest other point (in dH only the last term differs).
`states=tokens` takes every non-padding token of a batch as a point and averages dH over batches
(as the authors do); `states=pooled` mean-pools each example and estimates once over the whole
calibration set. For GPT-2 / Llama the last block's output is taken after the final norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

from infodyn.estimators.pooling import pool
from infodyn.forward import eval_hidden_states
from infodyn.pruners.base import (
    PrunerArgs,
    PrunerConfigError,
    ScoringContext,
    as_scores,
    require_batches,
)

ENTROPIES = ("bucket", "knn")
STATES = ("tokens", "pooled")
STAGES = ("increase", "all")


def bucket_entropy(points: Tensor, num_bins: int = 20) -> Tensor:
    """Sum over dimensions of the histogram entropy of `points` `[N, D]` (nats, float64)."""
    x = points.double()
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    width = (hi - lo).clamp(min=torch.finfo(torch.float64).tiny)
    bins = ((x - lo) / width * num_bins).floor().clamp(0, num_bins - 1).long()
    dims = x.shape[1]
    index = bins + torch.arange(dims, device=x.device) * num_bins
    counts = torch.bincount(index.reshape(-1), minlength=dims * num_bins).reshape(dims, num_bins)
    p = counts.double() / x.shape[0]
    return -(p * torch.log(p.clamp(min=1e-300))).sum()


def knn_entropy(points: Tensor, k: int = 5) -> Tensor:
    """Kozachenko-Leonenko entropy of `points` `[N, D]` with the k-th neighbour (nats)."""
    x = points.double()
    n, d = x.shape
    if n <= k:
        raise PrunerConfigError(
            f"the knn entropy needs more than knn_k={k} points, got {n}. Fix: a smaller "
            "pruner.knn_k, more calibration examples (data.calibration_size), or states=tokens."
        )
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(math.inf)
    r = dist.kthvalue(k, dim=1).values.clamp(min=1e-10)
    log_ball = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    return (
        torch.digamma(torch.tensor(float(n)))
        - torch.digamma(torch.tensor(float(k)))
        + (log_ball + d * torch.log(r).mean())
    )


class EntroDropPruner(PrunerArgs):
    """Remove the `k` blocks with the smallest entropy increase on `ctx.calibration()`.

    Raw scores are dH_b (nats). With `stage=increase`, the blocks up to the minimum of the
    entropy curve H(z_0..z_L) (the compression stage, read from the cumulative dH) rank after
    every later block, in their own dH order; `stage=all` ranks all blocks by dH alone.

    Args:
        entropy: `knn` (the authors' default) or `bucket`.
        states: `tokens` (non-padding token states, per batch) or `pooled` (mean per example).
        num_bins: bins per dimension for `bucket`.
        knn_k: the neighbour for `knn`.
        max_points: token states per batch kept for `knn` (a seeded subsample beyond it).
        stage: `increase` or `all`.
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        entropy: Literal["knn", "bucket"] = "knn",
        states: Literal["tokens", "pooled"] = "tokens",
        num_bins: int = 20,
        knn_k: int = 25,
        max_points: int = 4096,
        stage: Literal["increase", "all"] = "increase",
    ) -> None:
        super().__init__(k, fraction, protect)
        for key, value, allowed in (
            ("entropy", entropy, ENTROPIES),
            ("states", states, STATES),
            ("stage", stage, STAGES),
        ):
            if value not in allowed:
                raise PrunerConfigError(
                    f"pruner.{key}='{value}' is unknown. Fix: use one of {', '.join(allowed)}."
                )
        for key, value, least in (("num_bins", num_bins, 2), ("knn_k", knn_k, 1),
                                  ("max_points", max_points, 2)):  # fmt: skip
            if isinstance(value, bool) or int(value) != value or int(value) < least:
                raise PrunerConfigError(
                    f"pruner.{key}={value!r} must be a whole number >= {least}. "
                    f"Fix: e.g. pruner.{key}={max(least, 20)}."
                )
        self.entropy, self.states, self.stage = entropy, states, stage
        self.num_bins, self.knn_k, self.max_points = int(num_bins), int(knn_k), int(max_points)

    def _h(self, points: Tensor) -> Tensor:
        if self.entropy == "bucket":
            return bucket_entropy(points, self.num_bins)
        return knn_entropy(points, self.knn_k)

    @torch.no_grad()
    def entropies(self, model: torch.nn.Module, batches: list[dict], seed: int = 0) -> Tensor:
        """`[L + 1]` H(z_0), ..., H(z_L) on `batches` (token-weighted mean over batches for
        `states=tokens`)."""
        gen = torch.Generator().manual_seed(int(seed))
        pooled: list[list[Tensor]] = []
        total, weight = None, 0
        for hs, mask in eval_hidden_states(model, require_batches(batches)):
            if self.states == "pooled":
                pooled.append([pool(h, mask, "mean").double().cpu() for h in hs])
                continue
            keep = mask.reshape(-1).bool()
            pts = [h.reshape(-1, h.shape[-1])[keep].double() for h in hs]
            if self.entropy == "knn" and pts[0].shape[0] > self.max_points:
                pick = torch.randperm(pts[0].shape[0], generator=gen)[: self.max_points]
                pts = [p[pick.to(p.device)] for p in pts]
            h = torch.stack([self._h(p).cpu() for p in pts])
            n = int(keep.sum())
            total = h * n if total is None else total + h * n
            weight += n
        if self.states == "pooled":
            layers = [torch.cat([b[i] for b in pooled]) for i in range(len(pooled[0]))]
            return torch.stack([self._h(p) for p in layers]).double()
        return (total / weight).double()

    def score(self, ctx: ScoringContext) -> Tensor:
        """`[L]` dH_b = H(z_{b+1}) - H(z_b)."""
        return as_scores(self.entropies(ctx.model, ctx.calibration(), ctx.seed).diff())

    def prunability(self, scores: Tensor) -> Tensor:
        """-dH; with `stage=increase` the compression-stage blocks shifted below all others."""
        dh = as_scores(scores)
        out = -dh
        if self.stage == "all" or dh.isnan().all():
            return out
        curve = torch.cat([torch.zeros(1, dtype=torch.float64), dh.nan_to_num(0.0).cumsum(0)])
        minimum = int(curve.argmin())  # blocks 0..minimum-1 lead down to the entropy minimum
        finite = out[~out.isnan()]
        shift = float(finite.max() - finite.min()) + 1.0
        out[:minimum] -= shift
        return out
