"""Progress: a bar (stage, epoch, ETA) on a terminal, plain line logs elsewhere (clusters)."""

from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

log = logging.getLogger("infodyn")


class LineProgress(pl.Callback):
    """One log line per epoch (and every `every_n_batches`), with throughput and ETA."""

    def __init__(self, every_n_batches: int = 50) -> None:
        self.every_n_batches = every_n_batches
        self._t0 = 0.0
        self._stage = ""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cb = next((c for c in trainer.callbacks if hasattr(c, "stage")), None)
        self._stage = getattr(cb, "stage", "train")
        self._t_fit = time.time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.num_training_batches
        if self.every_n_batches and (batch_idx + 1) % self.every_n_batches == 0:
            rate = (batch_idx + 1) / max(time.time() - self._t0, 1e-9)
            eta = (total - batch_idx - 1) / rate if total != float("inf") else float("nan")
            loss = trainer.callback_metrics.get("train/loss_step")
            log.info(
                "[%s] epoch %d/%d batch %d/%s loss %s %.2f it/s, epoch ETA %.0fs",
                self._stage,
                trainer.current_epoch + 1,
                trainer.max_epochs,
                batch_idx + 1,
                total,
                f"{float(loss):.4f}" if loss is not None else "-",
                rate,
                eta,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        took = time.time() - self._t0
        left = (trainer.max_epochs - trainer.current_epoch - 1) * took
        log.info(
            "[%s] epoch %d/%d done in %.0fs; stage ETA %.0fs",
            self._stage,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            took,
            left,
        )


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, with the stage name (finetune/recover) in its description."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        cb = next((c for c in trainer.callbacks if hasattr(c, "stage")), None)
        stage = getattr(cb, "stage", "train")
        self.train_progress_bar.set_description(
            f"{stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )


def progress_callbacks(enable: bool | None) -> list[pl.Callback]:
    """A bar when attached to a terminal (or `enable=True`), plain line logs otherwise."""
    use_bar = sys.stderr.isatty() if enable is None else bool(enable)
    return [StageProgressBar()] if use_bar else [LineProgress()]
