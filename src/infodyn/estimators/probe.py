"""Probe-pass mechanics shared by the probe estimators (``gaussian.py``, ``exact.py``).

``ProbeStore`` pools, projects and keeps the current and the previous (committed) probe pass;
``ProbeMetric`` is the torchmetrics glue around it (update / commit / reset / state_dict extra
state / compute / summary). A probe estimator only validates its arguments and scores the
per-block ``(u, v)`` pairs in ``_block_series``. See ``gaussian.py`` for the protocol and the
indexing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from infodyn.estimators.base import keep_layer_axis
from infodyn.estimators.cosine import pool_layers
from infodyn.estimators.pooling import POOLINGS

PROJECTIONS = ("pca", "random")


class ProbeStore:
    """Pooled, projected probe representations of the current and the previous (committed) pass.

    Held by every `ProbeMetric` (composition: the metric adds only the torchmetrics glue).
    """

    def __init__(self, k: int, projection: str, pooling: str, seed: int) -> None:
        if k < 1:
            raise ValueError(f"projection dim must be >= 1, got {k}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.k, self.projection, self.pooling, self.seed = k, projection, pooling, seed
        self.mean: Tensor | None = None  # [L + 1, D]
        self.basis: Tensor | None = None  # [L + 1, D, k]
        self.previous: Tensor | None = None  # [N, L + 1, k]
        self.current: list[Tensor] = []  # projected [B, L + 1, k], or raw [B, L + 1, D]

    def add(self, states: Sequence[Tensor], attention_mask: Tensor | None) -> bool:
        """Pool, project and store one probe batch; False (nothing stored) if non-finite."""
        pooled = pool_layers(states, attention_mask, self.pooling).transpose(0, 1).cpu()
        if not torch.isfinite(pooled).all():
            return False
        num_states, width = pooled.shape[1], pooled.shape[2]
        if self.mean is not None and self.mean.shape[0] != num_states:
            raise ValueError(
                f"probe batch has {num_states} hidden states but the reference has "
                f"{self.mean.shape[0]}; build a new estimator after changing the model depth"
            )
        if self.current and self.current[0].shape[1] != num_states:
            raise ValueError("hidden-state count changed within one probe pass")
        if self.k > width:
            raise ValueError(f"projection dim k={self.k} exceeds the hidden width D={width}")
        if self.basis is None and self.projection == "random":
            gen = torch.Generator().manual_seed(self.seed)
            matrix = torch.randn(width, self.k, generator=gen, dtype=torch.float64)
            self.basis = (matrix / math.sqrt(self.k)).expand(num_states, -1, -1).contiguous()
            self.mean = torch.zeros(num_states, width, dtype=torch.float64)
        self.current.append(pooled if self.basis is None else self._project(pooled))
        return True

    def _project(self, pooled: Tensor) -> Tensor:
        return torch.einsum("nld,ldk->nlk", pooled.double() - self.mean, self.basis)

    def _fit_pca(self, raw: Tensor) -> None:
        num, _, width = raw.shape
        if self.k > min(num, width):
            raise ValueError(
                f"PCA to k={self.k} dims needs at least k probe examples and k hidden dims; "
                f"got N={num}, D={width}. Lower k or enlarge the probe set."
            )
        raw = raw.double()
        self.mean = raw.mean(dim=0)  # [L + 1, D]
        centered = (raw - self.mean).transpose(0, 1)  # [L + 1, N, D]
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        basis = vh[:, : self.k].transpose(1, 2)  # [L + 1, D, k]
        # Fix the SVD sign ambiguity so a refit gives the same basis.
        pivot = basis.abs().argmax(dim=1, keepdim=True)
        self.basis = basis * torch.gather(basis, 1, pivot).sign()

    def current_pass(self) -> Tensor:
        """The uncommitted pass, projected: ``[N, L + 1, k]`` float64."""
        if not self.current:
            raise RuntimeError("no probe batches since the last commit()/reset()")
        return torch.cat(self.current)  # projected: a basis exists once anything is committed

    def commit(self) -> None:
        """The current pass becomes the previous one (fitting the PCA on the first commit)."""
        if not self.current:
            raise RuntimeError("commit() with no probe batches since the last commit()/reset()")
        cur = torch.cat(self.current)
        if self.basis is None:
            self._fit_pca(cur)
            cur = self._project(cur)
        self.previous = cur
        self.current = []

    def pair(self) -> tuple[Tensor, Tensor]:
        """``(current, previous)`` projected passes ``[N, L + 1, k]``, validated."""
        if self.previous is None:
            raise RuntimeError(
                "no reference probe pass committed: before training, run the probe set "
                "through the model, call update(hidden_states, mask) per batch, then commit()"
            )
        cur = self.current_pass()
        if cur.shape != self.previous.shape:
            raise ValueError(
                f"current probe pass {tuple(cur.shape)} does not match the committed pass "
                f"{tuple(self.previous.shape)}: feed the same probe examples, in the same "
                "order, every pass"
            )
        return cur, self.previous

    def state(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "basis": self.basis,
            "previous": self.previous,
            "current": torch.cat(self.current) if self.current else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.mean, self.basis, self.previous = state["mean"], state["basis"], state["previous"]
        self.current = [] if state["current"] is None else [state["current"]]


def probe_blocks(cur: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
    """Stack (u, v) per block: ``u [L, N, k]`` = z_{b+1}^{t+1}, ``v [L, N, 2k]``."""
    u = cur[:, 1:].transpose(0, 1)
    v = torch.cat([cur[:, :-1], prev[:, 1:]], dim=-1).transpose(0, 1)
    return u, v


class ProbeMetric(Metric):
    """A per-block score on a fixed probe set across epochs, held in a `ProbeStore`.

    Subclasses call ``_init_probe`` once their own arguments are validated and implement
    ``_block_series(cur, prev)`` -> dict of ``[L]`` float64 series (``entropy_rate`` among them).
    """

    name: str
    input_kind = "probe"
    is_differentiable = False
    higher_is_better = None
    full_state_update = True

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("compute_with_cache", False)  # commit() changes the result
        super().__init__(**kwargs)

    def _init_probe(
        self, k: int, projection: str, pooling: str, seed: int, include_embedding_pair: bool
    ) -> None:
        self.include_embedding_pair = include_embedding_pair
        self._store = ProbeStore(k, projection, pooling, seed)
        self.add_state(
            "nonfinite_batches", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.persistent(True)

    def _wrap_compute(self, compute):
        return keep_layer_axis(super()._wrap_compute(compute))

    def update(self, states: Sequence[Tensor], attention_mask: Tensor) -> None:
        """Add one probe batch: ``states`` = z_0..z_L, each ``[B, T, D]``."""
        if not self._store.add(states, attention_mask):
            self.nonfinite_batches += 1

    def commit(self) -> None:
        """Make the current probe pass the previous epoch's X^t."""
        self._store.commit()
        self._computed = None

    def reset(self) -> None:
        """Drop the uncommitted pass and the counters; keep the reference and projection."""
        super().reset()
        self._store.current = []

    def _block_series(self, cur: Tensor, prev: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def _series(self) -> dict[str, Tensor]:
        out = self._block_series(*self._store.pair())
        if not self.include_embedding_pair:
            for value in out.values():
                value[0] = math.nan
        return out

    def compute(self) -> Tensor:
        """``[L]`` float64: -H(z_{b+1}^{t+1} | z_b^{t+1}, z_{b+1}^t) in nats."""
        return -self._series()["entropy_rate"]

    def _summary_counters(self) -> dict[str, int]:
        """Estimator-specific counters, listed before ``num_probe`` in ``summary()``."""
        return {}

    def summary(self) -> dict[str, Tensor | float | int]:
        """``<name>`` (= compute(), -H), the ``_block_series`` series ``[L]`` and the counters."""
        out: dict[str, Tensor | float | int] = dict(self._series())
        out = {self.name: -out["entropy_rate"], **out, **self._summary_counters()}
        out["num_probe"] = int(self._store.previous.shape[0])
        out["nonfinite_batches"] = int(self.nonfinite_batches)
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return self._store.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._store.load(state)
