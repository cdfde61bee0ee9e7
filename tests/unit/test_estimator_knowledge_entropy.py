"""Known answers for knowledge entropy (Kim et al., ICLR 2025)."""

import io
import math

import pytest
import torch

from infodyn.estimators.base import LayerEstimator
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy


def test_satisfies_protocol():
    metric = KnowledgeEntropy()
    assert isinstance(metric, LayerEstimator)
    assert metric.name == "knowledge_entropy" and metric.input_kind == "ffn_activations"


def test_uniform_activations_give_log_f():
    f = 37
    signs = torch.randint(0, 2, (4, 6, f)) * 2 - 1  # |a| is what counts
    metric = KnowledgeEntropy()
    metric.update([signs.float() * 0.3, -torch.ones(4, 6, f)], torch.ones(4, 6))
    torch.testing.assert_close(
        metric.compute(), torch.full((2,), math.log(f), dtype=torch.float64)
    )


def test_one_hot_activations_give_zero():
    a = torch.zeros(3, 5, 11)
    a[..., 4] = -2.0
    metric = KnowledgeEntropy()
    metric.update([a], torch.ones(3, 5))
    torch.testing.assert_close(metric.compute(), torch.zeros(1, dtype=torch.float64))


def test_matches_formula_and_excludes_padding():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 9, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [0] * 3 + [1] * 3])
    real = a[mask.bool()]  # [tokens, F]
    p = real.abs().double().mean(0)
    p = p / p.sum()
    expected = -(p * p.log()).sum()
    dirty = a.clone()
    dirty[~mask.bool()] = math.nan  # padding garbage must not matter
    metric = KnowledgeEntropy()
    metric.update([dirty], mask)
    torch.testing.assert_close(metric.compute()[0], expected)
    summary = metric.summary()
    assert summary["num_tokens"] == 11 and summary["nonfinite_batches"] == 0


def test_nonfinite_batch_skipped_and_bf16_accepted():
    metric = KnowledgeEntropy()
    good = torch.rand(2, 4, 8)
    bad = good.clone()
    bad[0, 0, 0] = math.inf
    metric.update([good.bfloat16()], torch.ones(2, 4))
    metric.update([bad], torch.ones(2, 4))
    summary = metric.summary()
    assert summary["nonfinite_batches"] == 1 and summary["num_batches"] == 1
    assert torch.isfinite(summary["knowledge_entropy"]).all()


def test_shape_change_raises_and_state_round_trips():
    metric = KnowledgeEntropy()
    metric.update([torch.rand(2, 4, 8)] * 2, torch.ones(2, 4))
    with pytest.raises(ValueError, match="running state"):
        metric.update([torch.rand(2, 4, 8)] * 3, torch.ones(2, 4))
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    restored = KnowledgeEntropy()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.compute(), metric.compute())
