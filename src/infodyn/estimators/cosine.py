"""Cosine-similarity redundancy score (Theorem 2, eq. 20-25 and appendix D of the paper).

Indexing: ``hidden_states`` are z_0..z_L (HF ``output_hidden_states``, z_0 = embedding output),
each ``[B, T, D]``; ``attention_mask`` is ``[B, T]``. Each layer is pooled per sample
(``pooling.pool``: ``mean`` over real tokens, ``cls`` or ``last``), so padding never enters.
For block b (0-based) and consecutive samples i, i+1 of a batch,
``dz_{l,i} = z_{l,i+1} - z_{l,i}`` and

    R_b = 1 / (2 (B - 1)) * sum_{i=1}^{B-1} cos^2(dz_{b+1,i}, dz_{b,i})   in [0, 0.5].

The paper's "layer l+1" is our block b = l. Over an epoch of M batches, R is the mean of the
per-batch values (eq. 25 when B is constant; each batch uses its own B - 1 otherwise), and the
entropy rate is ``d/2 ln(2 pi e sigma^2) - R`` (eq. 24; d = hidden width). Higher R = more
redundant = more prunable.

Zero-norm differences: each norm is clamped to ``eps`` in the denominator, so a pair with a zero
difference contributes cos^2 = 0 (it carries no direction) and is counted in ``eps_guarded``. A
block whose every pair is guarded in a batch (a pooled state constant over the batch, e.g.
block 0 under ``cls`` pooling: every first-token embedding is the same) has no score from that
batch: NaN for the batch, left out of that block's epoch mean and counted per block in
``degenerate_batches``; a block with no scored batch is NaN, never an artefactual 0.
Arithmetic runs in float32 or better, statistics accumulate in float64 whatever the input dtype.
A batch with B < 2 yields NaN from ``redundancy_score`` and is counted as ``skipped_batches``
by the metric; a batch whose pooled states contain NaN/inf is counted as ``nonfinite_batches``
and never reaches the running sums. Updates run on the inputs' device and never read a tensor
on the host (counts stay tensors until ``compute``/``summary``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from infodyn.estimators.base import keep_layer_axis
from infodyn.estimators.distributed import LAYOUTS, gather_global_batch, sync_on_backend_device
from infodyn.estimators.pooling import POOLINGS, pool

PAIRINGS = ("consecutive", "shuffled")
BATCH_SCOPES = ("global", "local")


def pool_layers(
    hidden_states: Sequence[Tensor], attention_mask: Tensor | None, pooling: str = "mean"
) -> Tensor:
    """Pool every layer and stack: ``[L + 1, B, D]`` float64."""
    if len(hidden_states) < 2:
        raise ValueError(f"need at least 2 hidden states (z_0, z_1), got {len(hidden_states)}")
    with torch.no_grad():
        return torch.stack(
            [pool(h.detach(), attention_mask, pooling).double() for h in hidden_states]
        )


def pair_cos2(pooled: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """cos^2 between consecutive-sample differences of adjacent layers.

    Args:
        pooled: ``[L + 1, B, D]`` pooled states, samples in pairing order.
        eps: lower bound on each difference norm in the denominator.

    Returns:
        ``cos2 [L, B - 1]`` and ``guarded [L, B - 1]`` (bool: a norm was below ``eps``).
    """
    delta = pooled[:, 1:] - pooled[:, :-1]  # [L + 1, B - 1, D]
    norm = delta.norm(dim=-1)
    dot = (delta[1:] * delta[:-1]).sum(dim=-1)
    cos = dot / (norm[1:].clamp(min=eps) * norm[:-1].clamp(min=eps))
    guarded = (norm[1:] < eps) | (norm[:-1] < eps)
    return cos.square(), guarded


def redundancy_score(
    hidden_states: Sequence[Tensor],
    attention_mask: Tensor | None,
    pooling: str = "mean",
    eps: float = 1e-8,
) -> Tensor:
    """The paper's per-batch redundancy score R_b (eq. 20/25 for one batch).

    Args:
        hidden_states: L + 1 tensors ``[B, T, D]`` (z_0 = embedding output).
        attention_mask: ``[B, T]``, nonzero = real token; ``None`` = no padding.
        pooling: ``"mean"``, ``"cls"`` or ``"last"``.
        eps: zero-norm guard (see module docstring).

    Returns:
        ``[L]`` float64 in [0, 0.5]; all NaN when B < 2 (no consecutive pair exists), NaN for a
        block whose every pair is zero-norm guarded (no direction to compare).
    """
    pooled = pool_layers(hidden_states, attention_mask, pooling)
    num_layers, batch = pooled.shape[0] - 1, pooled.shape[1]
    if batch < 2:
        return torch.full((num_layers,), math.nan, dtype=torch.float64)
    cos2, guarded = pair_cos2(pooled, eps)
    r = cos2.sum(dim=-1) / (2 * (batch - 1))
    return torch.where(guarded.all(dim=-1), math.nan, r)


class CosineRedundancy(Metric):
    """Epoch-level redundancy score R_b and entropy rate per block (Theorem 2).

    Args:
        pooling: per-sample pooling, ``"mean"`` | ``"cls"`` | ``"last"``.
        pairing: ``"consecutive"`` pairs samples in batch order (the paper);
            ``"shuffled"`` averages R over ``num_pairings`` random orders of the batch.
        num_pairings: permutations per batch when ``pairing="shuffled"``.
        include_embedding_pair: when false, block 0 (z_0 -> z_1) reports NaN.
        eps: zero-norm guard.
        sigma2: noise variance in the entropy-rate constant ``d/2 ln(2 pi e sigma^2)``.
        seed: seeds the permutation generator (``pairing="shuffled"``).
        num_layers: L, to allocate states now (needed under DDP so every rank agrees on shapes);
            ``None`` infers L on the first ``update``.
        batch_scope: under multi-process training (DDP), what one batch is. ``"global"``
            (default): the global batch, every process's samples gathered each step in the
            order one process would have seen them (``distributed.gather_global_batch``), so
            B = per-process batch x processes and the score equals a single-process run on the
            same global batches; every process then holds the same state and nothing is
            reduced at the end. ``"local"``: each process's own batch (B = per-process batch),
            sums reduced across processes at ``summary()``; no per-step communication, but the
            pairs that straddle processes are lost and R depends on the number of processes.
            Without a process group both are the same.
        global_layout: how the sampler dealt the global batch to the processes:
            ``"interleave"`` (torch's ``DistributedSampler``: Lightning, infodyn's pipeline) or
            ``"concat"`` (accelerate: HF ``Trainer``; ``LayerDynamicsTrainerCallback`` sets it).

    State is O(L) float64 sums, a per-block count and integer counters; all reduce by sum
    (width by max).
    """

    name = "redundancy"
    input_kind = "hidden_states"
    is_differentiable = False
    higher_is_better = None
    # True: forward() then does update + batch-only recompute, which works with lazy states.
    full_state_update = True

    def __init__(
        self,
        pooling: str = "mean",
        pairing: str = "consecutive",
        num_pairings: int = 8,
        include_embedding_pair: bool = True,
        eps: float = 1e-8,
        sigma2: float = 1.0,
        seed: int = 0,
        num_layers: int | None = None,
        batch_scope: str = "global",
        global_layout: str = "interleave",
        **kwargs,
    ) -> None:
        if batch_scope not in BATCH_SCOPES:
            raise ValueError(f"batch_scope must be one of {BATCH_SCOPES}, got {batch_scope!r}")
        if global_layout not in LAYOUTS:
            raise ValueError(f"global_layout must be one of {LAYOUTS}, got {global_layout!r}")
        kwargs.setdefault("dist_sync_fn", sync_on_backend_device)
        # a global-batch state is already identical on every process: summing would count it W x
        kwargs.setdefault("sync_on_compute", batch_scope == "local")
        super().__init__(**kwargs)
        self.batch_scope = batch_scope
        self.global_layout = global_layout
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if num_pairings < 1:
            raise ValueError(f"num_pairings must be >= 1, got {num_pairings}")
        if eps <= 0 or sigma2 <= 0:
            raise ValueError(f"eps and sigma2 must be > 0, got eps={eps}, sigma2={sigma2}")
        if num_layers is not None and num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 or None, got {num_layers}")
        self.pooling = pooling
        self.pairing = pairing
        self.num_pairings = num_pairings
        self.include_embedding_pair = include_embedding_pair
        self.eps = eps
        self.sigma2 = sigma2
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        size = 0 if num_layers is None else num_layers
        f64, i64 = torch.float64, torch.int64
        self.add_state("sum_r", torch.zeros(size, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_sq_r", torch.zeros(size, dtype=f64), dist_reduce_fx="sum")
        self.add_state("degenerate", torch.zeros(size, dtype=i64), dist_reduce_fx="sum")
        self.add_state("num_batches", torch.tensor(0, dtype=i64), dist_reduce_fx="sum")
        self.add_state("skipped_batches", torch.tensor(0, dtype=i64), dist_reduce_fx="sum")
        self.add_state("eps_guarded", torch.tensor(0, dtype=i64), dist_reduce_fx="sum")
        self.add_state("nonfinite_batches", torch.tensor(0, dtype=i64), dist_reduce_fx="sum")
        self.add_state("hidden_dim", torch.tensor(0, dtype=i64), dist_reduce_fx="max")
        self.persistent(True)

    def _wrap_compute(self, compute):
        return keep_layer_axis(super()._wrap_compute(compute))

    def _ensure_layers(self, num_layers: int) -> None:
        have = self.sum_r.numel()
        if have == 0:
            self.sum_r = torch.zeros(num_layers, dtype=torch.float64, device=self.device)
            self.sum_sq_r = torch.zeros(num_layers, dtype=torch.float64, device=self.device)
            self.degenerate = torch.zeros(num_layers, dtype=torch.int64, device=self.device)
        elif have != num_layers:
            raise ValueError(
                f"{type(self).__name__}: got {num_layers + 1} hidden states (L={num_layers} "
                f"blocks) but the running state has L={have}. After changing the model depth "
                "(e.g. pruning) build a new estimator, or call reset() if it was built with "
                "num_layers=None."
            )

    def update(self, states: Sequence[Tensor], attention_mask: Tensor) -> None:
        """Add one batch: ``states`` = z_0..z_L, each ``[B, T, D]`` (no host read: see above)."""
        self._ensure_layers(len(states) - 1)
        pooled = pool_layers(states, attention_mask, self.pooling)
        if self.batch_scope == "global":
            pooled = gather_global_batch(pooled, dim=1, layout=self.global_layout)
        batch = pooled.shape[1]
        if batch < 2:  # a shape, known on the host
            self.skipped_batches += 1
            return
        finite = torch.isfinite(pooled).all()
        if self.pairing == "consecutive":
            cos2, guarded = pair_cos2(pooled, self.eps)
            r = cos2.sum(dim=-1) / (2 * (batch - 1))
            num_guarded = guarded.sum()
            degenerate = guarded.all(dim=-1)
        else:
            r = torch.zeros(pooled.shape[0] - 1, dtype=torch.float64, device=pooled.device)
            num_guarded = torch.zeros((), dtype=torch.int64, device=pooled.device)
            degenerate = torch.ones_like(r, dtype=torch.bool)
            for _ in range(self.num_pairings):
                perm = torch.randperm(batch, generator=self._generator)  # CPU generator
                if perm.device != pooled.device:
                    perm = perm.to(pooled.device, non_blocking=True)  # no wait on the device
                cos2, guarded = pair_cos2(pooled[:, perm], self.eps)
                r += cos2.sum(dim=-1) / (2 * (batch - 1))
                num_guarded = num_guarded + guarded.sum()
                degenerate &= guarded.all(dim=-1)
            r /= self.num_pairings
        # a non-finite batch adds nothing: where(), not an `if` that would read it on the host
        scored = finite & ~degenerate
        r = torch.where(scored, r, 0.0)
        self.sum_r += r
        self.sum_sq_r += r.square()
        self.degenerate += (finite & degenerate).long()
        self.num_batches += finite.long()
        self.nonfinite_batches += (~finite).long()
        self.eps_guarded += torch.where(finite, num_guarded, 0)
        self.hidden_dim.clamp_(min=pooled.shape[-1])

    def get_extra_state(self) -> dict[str, Tensor]:
        """The pairing generator's state: a resumed run draws the pairings it would have."""
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        if state and "generator" in state:
            self._generator.set_state(state["generator"])

    def _series(self) -> dict[str, Tensor]:
        if self.sum_r.numel() == 0:
            raise RuntimeError(
                f"{type(self).__name__}: no update() yet, so the number of layers is unknown"
            )
        scored = (self.num_batches - self.degenerate).double()  # per block
        mean = torch.where(scored > 0, self.sum_r / scored.clamp(min=1), math.nan)
        # sample std (ddof=1) of the per-batch R across a block's scored batches
        var = (self.sum_sq_r - self.sum_r.square() / scored.clamp(min=1)) / (scored - 1)
        std = torch.where(scored > 1, var.clamp(min=0).sqrt(), math.nan)
        if not self.include_embedding_pair:
            mean[0] = std[0] = math.nan
        const = 0.5 * int(self.hidden_dim) * math.log(2 * math.pi * math.e * self.sigma2)
        return {
            "redundancy": mean.cpu(),
            "redundancy_std": std.cpu(),
            "entropy_rate": (const - mean).cpu(),
            "degenerate_batches": self.degenerate.cpu(),
        }

    def compute(self) -> Tensor:
        """``[L]`` float64: mean per-batch R_b (NaN where undefined). Higher = more redundant."""
        return self._series()["redundancy"]

    def summary(self) -> dict[str, Tensor | float | int]:
        """Per-layer ``redundancy``, ``redundancy_std`` (ddof=1 across batches; NaN if < 2),
        ``entropy_rate``, ``degenerate_batches`` (batches without a score) and the counters
        ``num_batches``, ``skipped_batches``, ``eps_guarded`` (pairs, summed over blocks and
        pairings), ``nonfinite_batches``."""
        local = self.batch_scope == "local"
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=local):
            out: dict[str, Tensor | float | int] = dict(self._series())
            for key in ("num_batches", "skipped_batches", "eps_guarded", "nonfinite_batches"):
                out[key] = int(getattr(self, key))
        return out
