"""`LayerDynamicsCallback`: runs layer estimators live during training, in any Lightning project.

A thin adapter: every step of the work (tap, feed, probe passes, epoch records, state) is
`tracking.LayerTracker`'s; this class only calls it from Lightning's hooks. Hidden states come
from the training forward itself (no second pass); probe estimators (`gaussian`, `exact`) run
a fixed probe set once before training (the reference X^0) and at every epoch end.

Conventions: per-block values are indexed by `block_ids` (the original, unpruned-model index of
each present block; default 0..L-1), the value for a block computed from (z_b, z_{b+1}) of the
model as trained. Logged keys are `<stage>/<name>/layer_<block>` (`finetune/redundancy/layer_07`).
With gradient accumulation each micro-batch is one estimator batch (under DDP the cosine
estimator's default ``batch_scope="global"`` makes it the global batch, B x processes).

Requirements on the host LightningModule: it holds an HF `PreTrainedModel` somewhere among its
modules (found automatically, or name it with `model_attr`) and calls it with `attention_mask=`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl

from infodyn.estimators.tap import ActivationTap, feed_estimators
from infodyn.estimators.tracking import (
    INDEXING,
    LayerTracker,
    TrackerAdapter,
    estimators_state,
    load_estimators_state,
    record_epoch,
)
from infodyn.models import find_hf_model

__all__ = [
    "INDEXING",
    "ActivationTap",
    "LayerDynamicsCallback",
    "estimators_state",
    "feed_estimators",
    "load_estimators_state",
    "record_epoch",
]


class LayerDynamicsCallback(TrackerAdapter, pl.Callback):
    """Tracks every block's estimator values at every epoch of a training stage.

    Args:
        estimators: name -> estimator (see `estimators/base.py::LayerEstimator`).
        stage: label under which epochs are recorded and logged (`finetune`, `recover`, ...).
        model_attr: dotted attribute of the LightningModule that holds the HF model (optional).
        probe_dataloader: a fixed, unshuffled dataloader for probe estimators; if None the
            callback asks `trainer.datamodule.probe_dataloader(n)`.
        block_ids: the original (unpruned-model) index of each present block; None: 0..L-1.
    """

    def __init__(
        self,
        estimators: Mapping[str, Any],
        stage: str = "finetune",
        model_attr: str | None = None,
        probe_dataloader: Iterable | None = None,
        block_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.tracker = LayerTracker(estimators, stage, block_ids)
        self.model_attr = model_attr
        self.probe_dataloader = probe_dataloader

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.tracker.tap is None:
            self.tracker.attach(find_hf_model(pl_module, self.model_attr), root=pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.tracker.detach()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tracker.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tracker.stop()

    def _probe_loader(self, trainer: pl.Trainer) -> Iterable | None:
        if not self.tracker.kind("probe"):
            return None
        if self.probe_dataloader is not None:
            return self.probe_dataloader
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "probe_dataloader"):
            raise ValueError(
                "a probe estimator (gaussian/exact) needs a fixed probe set. Fix: pass "
                "probe_dataloader=... to LayerDynamicsCallback, or use a datamodule with "
                "probe_dataloader(n)."
            )
        return dm.probe_dataloader(self.tracker.probe_size())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(not self.reference_committed[k] for k in self.tracker.kind("probe")):
            hf_model = find_hf_model(pl_module, self.model_attr)
            self.tracker.commit_reference(hf_model, self._probe_loader(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hf_model = find_hf_model(pl_module, self.model_attr)
        metrics = self.tracker.record_epoch(hf_model, self._probe_loader(trainer))
        for name, value in metrics.items():
            # already reduced across ranks by summary()'s sync: no second sync
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
