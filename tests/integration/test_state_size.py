"""Estimator state is O(L): independent of the number of batches seen, linear in the depth.

Counted over every `torchmetrics` state (`Metric._defaults`), the way `state_dict` and DDP sync
see it. Synthetic hidden states feed `update` directly (fast); one short real callback run on a
48-block decoder checks the same numbers through the training forward.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, LlamaConfig

from infodyn.estimators import CosineRedundancy, KnowledgeEntropy
from infodyn.estimators.callback import LayerDynamicsCallback

WIDTH, FFN, BATCH, TOKENS = 16, 24, 4, 6


def state_numel(metric) -> int:
    states = [getattr(metric, name) for name in metric._defaults]
    # a list state (torchmetrics "cat") would grow with every batch: O(L) forbids it
    assert all(isinstance(s, torch.Tensor) for s in states), [type(s) for s in states]
    return sum(s.numel() for s in states)


def make(name: str):
    return CosineRedundancy() if name == "cosine" else KnowledgeEntropy()


def synthetic(name: str, num_layers: int, seed: int) -> list[torch.Tensor]:
    """What `update` receives: z_0..z_L `[B, T, D]` (cosine) or L FFN inputs `[B, T, F]`."""
    g = torch.Generator().manual_seed(seed)
    count, width = (num_layers + 1, WIDTH) if name == "cosine" else (num_layers, FFN)
    return [torch.randn(BATCH, TOKENS, width, generator=g) for _ in range(count)]


def feed(metric, name: str, num_layers: int, batches: int, start: int = 0) -> None:
    mask = torch.ones(BATCH, TOKENS, dtype=torch.long)
    mask[0, TOKENS // 2 :] = 0
    for i in range(start, start + batches):
        metric.update(synthetic(name, num_layers, seed=i), mask)


# per-layer state elements: cosine sum_r + sum_sq_r + degenerate; knowledge entropy sum_abs [L, F]
PER_LAYER = {"cosine": 3, "knowledge_entropy": FFN}


@pytest.mark.parametrize("name", ["cosine", "knowledge_entropy"])
def test_state_does_not_grow_with_batches(name):
    metric = make(name)
    feed(metric, name, 48, batches=10)
    after_10 = state_numel(metric)
    feed(metric, name, 48, batches=190, start=10)
    assert int(metric.num_batches) == 200  # all 200 batches were counted, none skipped
    assert state_numel(metric) == after_10
    assert torch.isfinite(metric.compute()).all()


@pytest.mark.parametrize("name", ["cosine", "knowledge_entropy"])
def test_state_is_linear_in_depth(name):
    sizes = {}
    for num_layers in (6, 12, 48):
        metric = make(name)
        feed(metric, name, num_layers, batches=3)
        sizes[num_layers] = state_numel(metric)
        assert metric.compute().shape == (num_layers,)
    slope = (sizes[12] - sizes[6]) / 6
    const = sizes[6] - 6 * slope
    assert slope == PER_LAYER[name]
    assert sizes[48] == slope * 48 + const
    assert 0 < const <= 8  # the scalar counters only


class _Host(pl.LightningModule):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _StateSizes(pl.Callback):
    """Records each estimator's state size after every training batch (before epoch-end reset)."""

    def __init__(self, estimators) -> None:
        self.estimators, self.sizes = estimators, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sizes.append({k: state_numel(e) for k, e in self.estimators.items()})


def test_state_size_through_callback_on_48_blocks():
    layers = 48
    cfg = LlamaConfig(
        vocab_size=99, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        num_labels=2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(3, 99, (TOKENS,), generator=g),
         "attention_mask": torch.ones(TOKENS, dtype=torch.long),
         "labels": torch.tensor(i % 2)}
        for i in range(5 * BATCH)
    ]  # fmt: skip
    estimators = {"cosine": CosineRedundancy(), "knowledge_entropy": KnowledgeEntropy()}
    sizes = _StateSizes(estimators)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False,
        callbacks=[LayerDynamicsCallback(estimators), sizes], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_Host(model), DataLoader(data, batch_size=BATCH))
    assert len(sizes.sizes) == 5
    reference = {}
    for name in estimators:
        metric = make(name)
        feed(metric, name, layers, batches=1)
        reference[name] = state_numel(metric)
    assert reference["knowledge_entropy"] == FFN * layers + 3
    assert sizes.sizes == [reference] * 5  # same after batch 1 as after batch 5, = synthetic
