"""Plug-in discrete entropy rate (eq. 4 / 57) on a low-dimensional projection, for validation.

Same probe protocol and indexing as ``gaussian.py`` (update per probe batch, ``commit()`` after
the reference pass and after each epoch's ``compute()``): for block b,
u = z_{b+1}^{t+1}, v = (z_b^{t+1}, z_{b+1}^t), each layer pooled and projected to d dims
(PCA fitted on the reference pass, or a seeded random projection).

Quantization: every projected coordinate of every (layer, pass) is cut into Q **equal-width**
bins spanning its observed [min, max] over the probe pass; the histogram over the Q^{3d} joint
(u, v) states is dense. H(u|v) = H(u, v) - H(v) in nats from the empirical frequencies
(plug-in; biased low by about (#occupied joint cells - #occupied v cells) / (2N)).
With ``differential=True`` (default) the result adds sum_j ln(width of u's bin j): the
standard link h(u|v) ~ H_Q(u|v) + d ln(Delta) between a discretised and a differential
entropy, which makes it comparable to ``GaussianEntropyRate``'s differential entropy for fine
enough bins. A constant coordinate has width 0 and differential entropy -inf.
``compute()`` returns -H (higher = more redundant).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from infodyn.estimators.probe import ProbeMetric, probe_blocks


def quantize(x: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Equal-width bins per column over its [min, max].

    Args:
        x: ``[N, ...]`` values; binned independently along every trailing position.
        bins: Q.

    Returns:
        ``codes`` (int64, same shape, in [0, Q)) and ``width`` (``x.shape[1:]``).
    """
    low, high = x.amin(dim=0), x.amax(dim=0)
    width = (high - low) / bins
    codes = torch.floor((x - low) / torch.where(width > 0, width, 1.0))
    return codes.clamp(0, bins - 1).long(), width


def _entropy(index: Tensor, num_states: int) -> Tensor:
    counts = torch.bincount(index, minlength=num_states)
    counts = counts[counts > 0].double()  # peak memory stays ~8 bytes per state
    p = counts / counts.sum()
    return -(p * p.log()).sum()


def _flat(codes: Tensor, bins: int) -> Tensor:
    """``[N, d]`` codes -> ``[N]`` state index in [0, Q^d)."""
    weights = bins ** torch.arange(codes.shape[-1], device=codes.device)
    return (codes * weights).sum(dim=-1)


class ExactEntropyRate(ProbeMetric):
    """Plug-in conditional entropy per block on a d-dim, Q-bin quantization of a probe set.

    Args:
        d: projection dim per layer, 1..3 (the joint histogram has Q^{3d} states).
        bins: Q, equal-width bins per coordinate.
        probe_size: number of probe examples the callback should run each pass.
        projection: ``"pca"`` or ``"random"``.
        pooling: per-example pooling.
        differential: add d ln(bin width) to make it a differential-entropy estimate.
        include_embedding_pair: when false, block 0 reports NaN.
        max_states: refuse any (d, bins) with Q^{3d} above this (8 bytes per state).
        seed: seeds the random projection.

    ``summary()``: ``exact`` (= compute(), -H), ``entropy_rate``, ``entropy_rate_discrete``
    ``[L]`` and the counters (``num_states`` among them).
    """

    name = "exact"

    def __init__(
        self,
        d: int = 1,
        bins: int = 16,
        probe_size: int = 512,
        projection: str = "pca",
        pooling: str = "mean",
        differential: bool = True,
        include_embedding_pair: bool = True,
        max_states: int = 2**27,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= d <= 3:
            raise ValueError(f"d must be 1, 2 or 3, got {d}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        num_states = bins ** (3 * d)
        if num_states > max_states:
            raise ValueError(
                f"d={d}, bins={bins} give Q^(3d) = {num_states:,} joint states "
                f"({num_states * 8 / 2**30:.1f} GiB at 8 bytes each), above max_states="
                f"{max_states:,}. Lower bins or d (need bins <= "
                f"{math.floor(max_states ** (1 / (3 * d)) + 1e-9)} at d={d}), "
                "or raise max_states."
            )
        if probe_size < 2:
            raise ValueError(f"probe_size must be >= 2, got {probe_size}")
        self.d, self.bins, self.probe_size, self.num_states = d, bins, probe_size, num_states
        self.differential = differential
        self._init_probe(d, projection, pooling, seed, include_embedding_pair)

    def _block_series(self, cur: Tensor, prev: Tensor) -> dict[str, Tensor]:
        cur_codes, cur_width = quantize(cur, self.bins)  # [N, L + 1, d], [L + 1, d]
        prev_codes, _ = quantize(prev, self.bins)
        u, v = probe_blocks(cur_codes, prev_codes)  # [L, N, d], [L, N, 2d]
        q_d = self.bins**self.d
        discrete = []
        for b in range(u.shape[0]):
            v_index = _flat(v[b], self.bins)
            joint = _flat(u[b], self.bins) + q_d * v_index
            h_joint = _entropy(joint, self.num_states)
            discrete.append(h_joint - _entropy(v_index, q_d * q_d))
        h_discrete = torch.stack(discrete)
        h_diff = h_discrete + cur_width[1:].log().sum(dim=-1)
        return {
            "entropy_rate": h_diff if self.differential else h_discrete,
            "entropy_rate_discrete": h_discrete,
        }

    def _summary_counters(self) -> dict[str, int]:
        return {"num_states": self.num_states}
