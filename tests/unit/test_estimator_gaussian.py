"""Known answers for the Gaussian entropy rate (paper Theorem 1) on a probe set."""

import copy
import io
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch

from infodyn.estimators.base import ProbeEstimator
from infodyn.estimators.gaussian import GaussianEntropyRate, gaussian_conditional_entropy

DIM, LAYERS, N = 3, 3, 6000
NOISE_PREV = [1.0, 0.5, 0.7, 0.3]
NOISE_CUR = [1.0, 0.4, 0.6, 0.8]


def _chain(seed=0):
    """Linear-Gaussian space-time chain: X_l^{t+1} = A X_{l-1}^{t+1} + B X_l^t + s_l eps.

    The fresh noise is independent of (X_{l-1}^{t+1}, X_l^t), so the conditional entropy of
    block b = l - 1 is exactly that of N(0, s_l^2 I): DIM/2 ln(2 pi e s_l^2).
    """
    gen = torch.Generator().manual_seed(seed)
    a = 0.5 * torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
    b = 0.4 * torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)

    def run(prev, noise):
        xs = []
        for layer in range(LAYERS + 1):
            x = noise[layer] * torch.randn(N, DIM, generator=gen, dtype=torch.float64)
            if layer > 0:
                x = x + xs[-1] @ a.T
            if prev is not None:
                x = x + prev[layer] @ b.T
            xs.append(x)
        return xs

    before = run(None, NOISE_PREV)
    return before, run(before, NOISE_CUR)


def _feed(metric, xs, batch=1000):
    for start in range(0, N, batch):
        states = [x[start : start + batch].unsqueeze(1) for x in xs]  # T = 1 token
        metric.update(states, torch.ones(states[0].shape[0], 1))


def _fitted(**kwargs):
    before, after = _chain()
    metric = GaussianEntropyRate(probe_size=N, k=DIM, **kwargs)
    _feed(metric, before)
    metric.commit()
    _feed(metric, after)
    return metric, before, after


def test_satisfies_protocol():
    metric = GaussianEntropyRate(probe_size=512, k=8)
    assert isinstance(metric, ProbeEstimator)
    assert metric.name == "gaussian" and metric.input_kind == "probe"


def test_linear_gaussian_chain_recovers_closed_form():
    metric, _, _ = _fitted()  # k = D: PCA is a rotation, which leaves H(u|v) unchanged
    expected = torch.tensor(
        [DIM / 2 * math.log(2 * math.pi * math.e * s**2) for s in NOISE_CUR[1:]],
        dtype=torch.float64,
    )
    summary = metric.summary()
    torch.testing.assert_close(summary["entropy_rate"], expected, rtol=0.02, atol=0)
    torch.testing.assert_close(metric.compute(), -summary["entropy_rate"])
    torch.testing.assert_close(summary["gaussian"], metric.compute())  # primary series


def test_trace_approximation_error_is_reported_and_correct():
    metric, before, after = _fitted(bias_correction=False)  # the plug-in identities
    summary = metric.summary()
    for key in ("entropy_rate_trace", "trace_A", "mutual_information", "trace_error"):
        assert torch.isfinite(summary[key]).all(), key
    # ln(1 - x) <= -x: the trace approximation over-estimates the entropy.
    assert (summary["trace_error"] > 0).all()
    torch.testing.assert_close(
        summary["trace_error"], summary["entropy_rate_trace"] - summary["entropy_rate"]
    )
    # Independent numpy/scipy check of A on the same samples (ridge 1e-4 as in the metric).
    for block in range(LAYERS):
        u = after[block + 1].numpy()
        v = np.concatenate([after[block].numpy(), before[block + 1].numpy()], axis=1)
        cov = np.cov(np.concatenate([u, v], axis=1), rowvar=False) + 1e-4 * np.eye(3 * DIM)
        s_uu, s_uv, s_vv = cov[:DIM, :DIM], cov[:DIM, DIM:], cov[DIM:, DIM:]
        w = np.linalg.inv(scipy.linalg.sqrtm(s_uu).real)
        eig = np.linalg.eigvalsh(w @ s_uv @ np.linalg.solve(s_vv, s_uv.T) @ w)
        assert summary["trace_A"][block].item() == pytest.approx(eig.sum(), rel=1e-6)
        mi = -0.5 * np.log1p(-eig).sum()
        assert summary["mutual_information"][block].item() == pytest.approx(mi, rel=1e-6)
        assert summary["trace_error"][block].item() == pytest.approx(
            mi - 0.5 * eig.sum(), rel=1e-5
        )


def test_compute_without_reference_raises():
    metric = GaussianEntropyRate(probe_size=N, k=DIM)
    before, _ = _chain()
    _feed(metric, before)
    with pytest.raises(RuntimeError, match="no reference probe pass committed"):
        metric.compute()


def test_probe_pass_must_match_reference():
    metric, _, after = _fitted()
    metric.commit()
    _feed(metric, [x[:3000] for x in after])
    with pytest.raises(ValueError, match="same probe examples"):
        metric.compute()


def test_reset_keeps_reference_and_commit_rolls_forward():
    metric, _, after = _fitted()
    first = metric.compute()
    metric.reset()
    with pytest.raises(RuntimeError, match="no probe batches"):
        metric.compute()
    _feed(metric, after)
    torch.testing.assert_close(metric.compute(), first)
    metric.commit()  # previous := after; feeding `after` again gives u fully predictable
    _feed(metric, after)
    assert (metric.summary()["entropy_rate"] < first.neg() - 1).all()


def test_random_projection_state_round_trip_and_embedding_pair():
    before, after = _chain()
    metric = GaussianEntropyRate(
        probe_size=N, k=2, projection="random", include_embedding_pair=False
    )
    _feed(metric, before)
    metric.commit()
    _feed(metric, after)
    value = metric.compute()
    assert torch.isnan(value[0]) and torch.isfinite(value[1:]).all()
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    restored = GaussianEntropyRate(
        probe_size=N, k=2, projection="random", include_embedding_pair=False
    )
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.compute(), value, equal_nan=True)
    torch.testing.assert_close(copy.deepcopy(metric).compute(), value, equal_nan=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="3k"):
        GaussianEntropyRate(probe_size=100, k=64)
    with pytest.raises(ValueError, match="projection"):
        GaussianEntropyRate(probe_size=512, k=8, projection="svd")
    metric = GaussianEntropyRate(probe_size=512, k=8)
    with pytest.raises(ValueError, match="exceeds the hidden width"):
        metric.update([torch.randn(4, 2, 3)] * 3, torch.ones(4, 2))


def _wishart_bias(p: int, n: int) -> float:
    """E[ln det S] - ln det Sigma, S a sample covariance with n degrees of freedom (scipy)."""
    return sum(scipy.special.digamma((n - i + 1) / 2) - math.log(n / 2) for i in range(1, p + 1))


def test_independent_gaussians_at_the_defaults_give_the_true_values():
    # u, v independent: H(u|v) = H(u) = k/2 ln(2 pi e) for unit variance, tr(A) = 0. Defaults:
    # k = 64 projected dims, N = 512 probe examples (the plug-in is ~12 nats low, tr(A) ~ 16).
    metric = GaussianEntropyRate()
    assert (metric.k, metric.probe_size) == (64, 512)
    gen = torch.Generator().manual_seed(0)
    width, layers = 96, 3
    for reference in (True, False):
        states = [torch.randn(512, 1, width, generator=gen) for _ in range(layers + 1)]
        metric.update(states, torch.ones(512, 1))
        if reference:
            metric.commit()
    summary = metric.summary()
    truth = 64 / 2 * math.log(2 * math.pi * math.e)
    for block in range(layers):
        assert abs(summary["entropy_rate"][block].item() - truth) <= 0.05 * truth, summary
        assert abs(summary["trace_A"][block].item()) <= 0.5, summary["trace_A"]


def test_correction_is_the_wishart_mean_and_ezekiel_adjustment_and_keeps_rankings():
    gen = torch.Generator().manual_seed(3)
    num, k, m = 300, 4, 8
    mix = torch.randn(3, k + m, k + m, generator=gen, dtype=torch.float64)
    joint = torch.randn(3, num, k + m, generator=gen, dtype=torch.float64) @ mix
    u, v = joint[..., :k], joint[..., k:]
    raw = gaussian_conditional_entropy(u, v, bias_correction=False)
    fixed = gaussian_conditional_entropy(u, v)
    n = num - 1
    shift = 0.5 * (_wishart_bias(k + m, n) - _wishart_bias(m, n))
    torch.testing.assert_close(fixed["entropy_rate"], raw["entropy_rate"] - shift)
    want_trace = raw["trace_A"] - (k - raw["trace_A"]) * m / (n - m)
    torch.testing.assert_close(fixed["trace_A"], want_trace)
    mi_shift = 0.5 * (_wishart_bias(k, n) + _wishart_bias(m, n) - _wishart_bias(k + m, n))
    torch.testing.assert_close(fixed["mutual_information"], raw["mutual_information"] - mi_shift)
    for key in ("entropy_rate", "trace_A", "mutual_information"):
        assert fixed[key].argsort().tolist() == raw[key].argsort().tolist(), key
    with pytest.raises(ValueError, match="N - 1 > k \\+ m"):
        gaussian_conditional_entropy(u[:, : k + m], v[:, : k + m])
