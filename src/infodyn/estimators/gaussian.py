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

Small-sample correction (``bias_correction=True``, default): with n = N - 1 degrees of freedom a
p-dim sample log-determinant is low by b_p(n) = sum_{i=1}^p [psi((n - i + 1)/2) - ln(n/2)]
(the mean of ln det of a Wishart; Ahmed & Gokhale 1989, Misra, Singh & Demchuk 2005), so every
ln det above is corrected by it (k + 2k dims give the conditional's b_{3k} - b_{2k}), and tr(A)
by Ezekiel's adjustment, tr - (k - tr) m / (n - m) (m = dim v), unbiased when u, v are
independent. Each is a per-block constant shift or a positive rescaling: rankings are unchanged.
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

import torch
from torch import Tensor

from infodyn.estimators.probe import ProbeMetric, probe_blocks


def _logdet_pd(matrix: Tensor) -> Tensor:
    chol = torch.linalg.cholesky(matrix)
    return 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)


def logdet_bias(dim: int, dof: int) -> float:
    """E[ln det S] - ln det Sigma for a ``dim``-dim sample covariance with ``dof`` degrees of
    freedom (the Wishart mean of ln det; Ahmed & Gokhale 1989)."""
    i = torch.arange(1, dim + 1, dtype=torch.float64)
    return float((torch.special.digamma((dof - i + 1) / 2) - math.log(dof / 2)).sum())


def gaussian_conditional_entropy(
    u: Tensor, v: Tensor, ridge: float = 1e-4, bias_correction: bool = True
) -> dict[str, Tensor]:
    """Gaussian H(u | v) from samples, exact and trace-approximated (eq. 31-39).

    Args:
        u: ``[..., N, k]`` samples.
        v: ``[..., N, m]`` samples (same N).
        ridge: added to the diagonal of the joint covariance.
        bias_correction: remove the small-sample bias of every ln det and of tr(A) (see the
            module docstring); False gives the plug-in values.

    Returns:
        Dict of ``[...]`` float64 tensors (nats): ``entropy_rate`` (log-det, exact Gaussian),
        ``entropy_rate_trace``, ``trace_A``, ``mutual_information`` (= -1/2 ln det(I - A)),
        ``trace_error`` (= entropy_rate_trace - entropy_rate; >= 0 without the correction).
    """
    u, v = u.double(), v.double()
    k, m, num = u.shape[-1], v.shape[-1], u.shape[-2]
    if num < 2:
        raise ValueError(f"need at least 2 samples, got N={num}")
    if bias_correction and num - 1 <= k + m:
        raise ValueError(
            f"the bias correction needs N - 1 > k + m = {k + m} samples, got N={num}; "
            "enlarge the probe set or lower k"
        )
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
    if bias_correction:
        dof = num - 1
        logdet_cond = logdet_cond - (logdet_bias(k + m, dof) - logdet_bias(m, dof))
        logdet_uu = logdet_uu - logdet_bias(k, dof)
        trace_a = trace_a - (k - trace_a) * m / (dof - m)
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


class GaussianEntropyRate(ProbeMetric):
    """Theorem 1 entropy rate per block, on a fixed probe set across epochs.

    Args:
        probe_size: number of probe examples the callback should run each pass.
        k: projection dim per layer (the covariance of (u, v) is 3k x 3k; needs N > 3k).
        projection: ``"pca"`` (fitted per layer on the reference pass) or ``"random"``.
        ridge: diagonal ridge on the empirical covariance.
        pooling: per-example pooling, ``"mean"`` | ``"cls"`` | ``"last"``.
        include_embedding_pair: when false, block 0 reports NaN.
        seed: seeds the random projection.
        bias_correction: remove the small-sample bias (module docstring); False: plug-in.

    ``summary()``: ``gaussian`` (= compute(), -H), ``entropy_rate``, ``entropy_rate_trace``,
    ``trace_A``, ``mutual_information``, ``trace_error`` ``[L]`` and the counters.
    """

    name = "gaussian"

    def __init__(
        self,
        probe_size: int = 512,
        k: int = 64,
        projection: str = "pca",
        ridge: float = 1e-4,
        pooling: str = "mean",
        include_embedding_pair: bool = True,
        seed: int = 0,
        bias_correction: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if probe_size <= 3 * k:
            raise ValueError(
                f"probe_size={probe_size} must exceed 3k={3 * k} (the (u, v) covariance is "
                "3k x 3k); lower k or enlarge the probe set"
            )
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.probe_size, self.k, self.ridge = probe_size, k, ridge
        self.bias_correction = bias_correction
        self._init_probe(k, projection, pooling, seed, include_embedding_pair)

    def _block_series(self, cur: Tensor, prev: Tensor) -> dict[str, Tensor]:
        u, v = probe_blocks(cur, prev)
        return gaussian_conditional_entropy(u, v, self.ridge, self.bias_correction)
