"""Progress: a bar (stage, epoch, ETA) on a terminal, plain line logs elsewhere (clusters), and
`quiet_libraries()`: only the library output that helps.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

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
            "[%s] epoch %d/%d done in %.0fs%s; stage ETA %.0fs",
            self._stage,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            took,
            _epoch_metrics(trainer.callback_metrics),
            left,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop = trainer.early_stopping_callback
        if stop is None or trainer.current_epoch >= trainer.max_epochs:
            return
        log.info(
            "[%s] early stop after epoch %d/%d: %s did not improve for %d epoch(s) (best %.4f)",
            self._stage,
            stop.stopped_epoch + 1,
            trainer.max_epochs,
            stop.monitor,
            stop.wait_count,
            float(stop.best_score),
        )


def _epoch_metrics(metrics) -> str:
    """`; val/accuracy 0.5000 val/loss 0.6931 train/loss 0.6937` from this epoch's values."""
    val = [k for k in metrics if k.startswith("val/")]
    keys = sorted(val, key=lambda k: k == "val/loss") + ["train/loss_epoch"] * (
        "train/loss_epoch" in metrics
    )
    parts = [f"{k.removesuffix('_epoch')} {float(metrics[k]):.4f}" for k in keys]
    return f"; {' '.join(parts)}" if parts else ""


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


# Lightning's per-Trainer banners: shown once per process (they do not change between stages).
ONCE = ("GPU available", "TPU available", "HPU available", "LOCAL_RANK:", "You are using a CUDA")
# Lightning's lines that never help here: adverts, and what every stage does anyway.
NEVER = ("💡 Tip", "Loading `train_dataloader` to estimate")
NEVER_CONTAINS = ("stopped: `max_epochs=",)  # the planned end; an early stop is still shown
# Library warnings that are noise for this pipeline (not for the user's code).
WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own pytree call on a newer torch
    r"The number of training batches .* is smaller than the logging interval",
)


class _Quiet(logging.Filter):
    """Drops `NEVER` lines; passes a `ONCE` line or a model-load report only the first time."""

    def __init__(self) -> None:
        super().__init__("infodyn-quiet")
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith(NEVER) or any(s in msg for s in NEVER_CONTAINS):
            return False
        if msg.startswith(ONCE) or "LOAD REPORT" in msg:
            if msg in self.seen:
                return False
            self.seen.add(msg)
        return True


_QUIET = _Quiet()
# rank_zero_info writes to these two; the model-load report table to the third.
QUIET_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "transformers.modeling_utils",
)


def quiet_libraries(tty: bool | None = None) -> None:
    """Keep the terminal to what helps; call once at the start of a run (idempotent).

    Lightning's accelerator banners print once per process instead of once per Trainer, its
    tips never; the model-load report table prints once; two library warnings that every
    stage repeats are ignored. Off a terminal (`tty` None: stderr is not a TTY) the datasets
    and transformers progress bars are off too: a log file gets one line per update.
    """
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if not (sys.stderr.isatty() if tty is None else tty):
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
