"""Known answers for the plug-in discrete entropy rate (paper eq. 4 / 57)."""

import math

import pytest
import torch

from infodyn.estimators.base import ProbeEstimator
from infodyn.estimators.exact import ExactEntropyRate, quantize

N = 100_000
NOISE_CUR = [1.0, 0.7, 0.9]


def _chain_1d(seed=0):
    """1-D chain x_l^{t+1} = 0.6 x_{l-1}^{t+1} + 0.5 x_l^t + s_l eps.

    H(u|v) = 1/2 ln(2 pi e s_l^2) exactly.
    """
    gen = torch.Generator().manual_seed(seed)

    def run(prev, noise):
        xs = []
        for layer, s in enumerate(noise):
            x = s * torch.randn(N, 1, generator=gen, dtype=torch.float64)
            if layer > 0:
                x = x + 0.6 * xs[-1]
            if prev is not None:
                x = x + 0.5 * prev[layer]
            xs.append(x)
        return xs

    before = run(None, [1.0, 0.8, 0.8])
    return before, run(before, NOISE_CUR)


def _run(before, after, **kwargs):
    metric = ExactEntropyRate(probe_size=N, **kwargs)
    metric.update([x.unsqueeze(1) for x in before], None)  # T = 1 token, no padding
    metric.commit()
    metric.update([x.unsqueeze(1) for x in after], None)
    return metric


def test_satisfies_protocol():
    metric = ExactEntropyRate()
    assert isinstance(metric, ProbeEstimator)
    assert metric.name == "exact" and metric.input_kind == "probe"


def test_one_dim_gaussian_chain_matches_closed_form():
    metric = _run(*_chain_1d(), d=1, bins=24)
    expected = torch.tensor(
        [0.5 * math.log(2 * math.pi * math.e * s**2) for s in NOISE_CUR[1:]], dtype=torch.float64
    )
    # Tolerance 0.05 nats (~4%): quantizing v with bins of width ~range/24 blurs the
    # conditional mean (+~0.01 nats), the plug-in estimate over up to 24^3 joint cells from
    # 1e5 samples is biased low by ~(occupied cells)/(2N) ~ 0.02 nats, sampling error ~0.005.
    torch.testing.assert_close(metric.summary()["entropy_rate"], expected, atol=0.05, rtol=0)
    torch.testing.assert_close(metric.compute(), -metric.summary()["entropy_rate"])
    torch.testing.assert_close(metric.summary()["exact"], metric.compute())  # primary series


def test_discrete_known_answers():
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(N, 1, generator=gen, dtype=torch.float64)
    fresh = [torch.rand(N, 1, generator=gen, dtype=torch.float64) for _ in range(2)]
    # Block 0: z_1 is a copy of z_0 -> u is a function of v: H = 0.
    # Block 1: z_2 is fresh uniform noise each pass, independent of v -> H = ln Q.
    metric = ExactEntropyRate(d=1, bins=8, probe_size=N, differential=False)
    metric.update([base.unsqueeze(1), base.unsqueeze(1), fresh[0].unsqueeze(1)], None)
    metric.commit()
    metric.update([base.unsqueeze(1), base.unsqueeze(1), fresh[1].unsqueeze(1)], None)
    h = metric.summary()["entropy_rate_discrete"]
    assert h[0].item() == pytest.approx(0.0, abs=1e-12)
    # u independent of a 64-state v: plug-in bias ~ 7 * 64 / (2N) ~ 2e-3.
    assert h[1].item() == pytest.approx(math.log(8), abs=5e-3)


def test_quantize_equal_width():
    x = torch.tensor([[0.0], [0.49], [0.5], [1.0]], dtype=torch.float64)
    codes, width = quantize(x, 2)
    assert codes.squeeze(1).tolist() == [0, 0, 1, 1]
    assert width.item() == pytest.approx(0.5)


def test_refuses_too_many_states():
    with pytest.raises(ValueError, match=r"d=3, bins=64.*Lower bins or d"):
        ExactEntropyRate(d=3, bins=64)
    with pytest.raises(ValueError, match="max_states"):
        ExactEntropyRate(d=1, bins=16, max_states=1000)
    ExactEntropyRate(d=3, bins=8)  # 8^9 = 2^27 states: exactly at the default limit


def test_compute_without_reference_raises():
    metric = ExactEntropyRate(probe_size=N)
    metric.update([torch.randn(8, 1, 2)] * 3, None)
    with pytest.raises(RuntimeError, match="no reference probe pass committed"):
        metric.compute()
