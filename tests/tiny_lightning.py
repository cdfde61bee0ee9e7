"""A tiny LightningModule whose dev-set metric follows a script, and random token loaders.

The scripted metric lets a test know in advance which epoch is best and when early stopping
must fire, while a real (tiny) model trains underneath.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tiny_models import tiny_roberta


class ScriptedClassifier(pl.LightningModule):
    """Tiny RoBERTa; logs `train/loss`, `val/loss` and `val/<metric>` = `script[epoch]`."""

    def __init__(self, script: Sequence[float] = (0.5,), metric: str = "accuracy") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = tiny_roberta()

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=4)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.model(**batch).loss, on_epoch=True, batch_size=4)

    def on_validation_epoch_end(self) -> None:
        script = self.hparams.script
        value = script[min(self.current_epoch, len(script) - 1)]
        self.log(f"val/{self.hparams.metric}", float(value))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def token_loader(n: int = 8, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """`n` random sequences of 12 tokens with binary labels, as dict batches."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, 12), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    rows = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "labels": labels[i],
        }
        for i in range(n)
    ]
    return DataLoader(rows, batch_size=batch_size)
