"""Gaussian entropy rate with the temporal term (Theorem 1, eq. 31-39), on a fixed probe set.

Indexing: ``hidden_states`` z_0..z_L (HF ``output_hidden_states``), each ``[B, T, D]``; per-layer
outputs are ``[L]``, entry b scoring block b. For block b, with epoch t the previous committed
probe pass and t+1 the current one,

    u = z_{b+1}^{t+1}  (k dims),   v = (z_b^{t+1}, z_{b+1}^{t})  (2k dims).

Each layer is pooled per probe example and projected to k dims; the projection is fixed once:
``pca`` fits the top-k principal directions of each layer on the first committed (reference)
pass, ``random`` is one seeded Gaussian ``[D, k]`` matrix scaled by 1/sqrt(k). Empirical
covariances (ddof=1) of (u, v) plus ``ridge * I`` give, in float64 via Cholesky,

    H(u|v)   = k/2 ln(2 pi e) + 1/2 ln det S_{u|v},  S_{u|v} = S_uu - S_uv S_vv^-1 S_vu
    A        = S_uu^-1/2 S_uv S_vv^-1 S_vu S_uu^-1/2
    H_trace  = k/2 ln(2 pi e) + 1/2 ln det S_uu - 1/2 tr(A)     (the paper's ln det(I-A) ~ -tr A)
    I(u; v)  = -1/2 ln det(I - A)                                (exact)

(sigma^2 is absorbed in the empirical covariance, so C = k/2 ln(2 pi e).) Because
ln(1 - x) <= -x, H_trace >= H(u|v); ``trace_error`` = H_trace - H(u|v) shows by how much.
``compute()`` returns -H(u|v) (higher = more redundant).

Protocol with the callback: before training run the pretrained model over the probe set
(same examples, same order every pass), ``update(hidden_states, mask)`` per probe batch, then
``commit()``: that pass is X^t for the first epoch (and fits the PCA). At each epoch end run
the probe again with ``update``, call ``compute()``/``summary()``, then ``commit()``.
``reset()`` drops the uncommitted pass and the counters, never the reference or projection.
State is the probe representations: O(N * (L + 1) * k) float64 per pass (plus the raw pooled
reference pass, O(N * (L + 1) * D), until the first commit fits the PCA), independent of the
training length. It is saved in ``state_dict`` (module extra state) and is not synced across
processes: run the probe on every rank or on one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from infodyn.estimators.cosine import pool_layers
from infodyn.estimators.pooling import POOLINGS

PROJECTIONS = ("pca", "random")


class ProbeStore:
    """Pooled, projected probe representations of the current and the previous (committed) pass.

    Shared by the probe estimators (composition, not a base class).
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


def _logdet_pd(matrix: Tensor) -> Tensor:
    chol = torch.linalg.cholesky(matrix)
    return 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)


def gaussian_conditional_entropy(u: Tensor, v: Tensor, ridge: float = 1e-4) -> dict[str, Tensor]:
    """Gaussian H(u | v) from samples, exact and trace-approximated (eq. 31-39).

    Args:
        u: ``[..., N, k]`` samples.
        v: ``[..., N, m]`` samples (same N).
        ridge: added to the diagonal of the joint covariance.

    Returns:
        Dict of ``[...]`` float64 tensors (nats): ``entropy_rate`` (log-det, exact Gaussian),
        ``entropy_rate_trace``, ``trace_A``, ``mutual_information`` (= -1/2 ln det(I - A)),
        ``trace_error`` (= entropy_rate_trace - entropy_rate >= 0).
    """
    u, v = u.double(), v.double()
    k, num = u.shape[-1], u.shape[-2]
    if num < 2:
        raise ValueError(f"need at least 2 samples, got N={num}")
    joint = torch.cat([u, v], dim=-1)
    joint = joint - joint.mean(dim=-2, keepdim=True)
    cov = joint.transpose(-1, -2) @ joint / (num - 1)
    cov = cov + ridge * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    s_uu, s_uv, s_vv = cov[..., :k, :k], cov[..., :k, k:], cov[..., k:, k:]
    chol_vv = torch.linalg.cholesky(s_vv)
    explained = s_uv @ torch.cholesky_solve(s_uv.transpose(-1, -2), chol_vv)  # S_uv S_vv^-1 S_vu
    explained = 0.5 * (explained + explained.transpose(-1, -2))
    logdet_cond = _logdet_pd(s_uu - explained)
    logdet_uu = _logdet_pd(s_uu)
    trace_a = torch.linalg.solve(s_uu, explained).diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    const = 0.5 * k * math.log(2 * math.pi * math.e)
    entropy = const + 0.5 * logdet_cond
    entropy_trace = const + 0.5 * logdet_uu - 0.5 * trace_a
    return {
        "entropy_rate": entropy,
        "entropy_rate_trace": entropy_trace,
        "trace_A": trace_a,
        "mutual_information": -0.5 * (logdet_cond - logdet_uu),
        "trace_error": entropy_trace - entropy,
    }


class GaussianEntropyRate(Metric):
    """Theorem 1 entropy rate per block, on a fixed probe set across epochs.

    Args:
        probe_size: number of probe examples the callback should run each pass.
        k: projection dim per layer (the covariance of (u, v) is 3k x 3k; needs N > 3k).
        projection: ``"pca"`` (fitted per layer on the reference pass) or ``"random"``.
        ridge: diagonal ridge on the empirical covariance.
        pooling: per-example pooling, ``"mean"`` | ``"cls"`` | ``"last"``.
        include_embedding_pair: when false, block 0 reports NaN.
        seed: seeds the random projection.
    """

    name = "gaussian"
    input_kind = "probe"
    is_differentiable = False
    higher_is_better = None
    full_state_update = True

    def __init__(
        self,
        probe_size: int = 512,
        k: int = 64,
        projection: str = "pca",
        ridge: float = 1e-4,
        pooling: str = "mean",
        include_embedding_pair: bool = True,
        seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("compute_with_cache", False)  # commit() changes the result
        super().__init__(**kwargs)
        if probe_size <= 3 * k:
            raise ValueError(
                f"probe_size={probe_size} must exceed 3k={3 * k} (the (u, v) covariance is "
                "3k x 3k); lower k or enlarge the probe set"
            )
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.probe_size, self.k, self.ridge = probe_size, k, ridge
        self.include_embedding_pair = include_embedding_pair
        self._store = ProbeStore(k, projection, pooling, seed)
        self.add_state(
            "nonfinite_batches", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.persistent(True)

    def _wrap_compute(self, compute):
        wrapped = super()._wrap_compute(compute)
        # torchmetrics squeezes a 1-element result to 0-dim; keep [L] even when L == 1.
        return lambda *args, **kwargs: wrapped(*args, **kwargs).reshape(-1)

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

    def _series(self) -> dict[str, Tensor]:
        cur, prev = self._store.pair()
        out = gaussian_conditional_entropy(*probe_blocks(cur, prev), ridge=self.ridge)
        if not self.include_embedding_pair:
            for value in out.values():
                value[0] = math.nan
        return out

    def compute(self) -> Tensor:
        """``[L]`` float64: -H(z_{b+1}^{t+1} | z_b^{t+1}, z_{b+1}^t) in nats."""
        return -self._series()["entropy_rate"]

    def summary(self) -> dict[str, Tensor | float | int]:
        """``gaussian`` (= compute(), -H), ``entropy_rate``, ``entropy_rate_trace``,
        ``trace_A``, ``mutual_information``, ``trace_error`` ``[L]`` and the counters."""
        out: dict[str, Tensor | float | int] = dict(self._series())
        out = {self.name: -out["entropy_rate"], **out}
        out["num_probe"] = int(self._store.previous.shape[0])
        out["nonfinite_batches"] = int(self.nonfinite_batches)
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return self._store.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._store.load(state)
