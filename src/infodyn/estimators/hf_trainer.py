"""`LayerDynamicsTrainerCallback`: the layer-dynamics profiles for HF `transformers.Trainer` users.

A thin adapter over the machinery of `estimators/callback.py` (`ActivationTap`,
`feed_estimators`, `run_probe`, `record_epoch`): the same per-epoch profiles, the same indexing,
the same `profiles()` structure as `LayerDynamicsCallback`. The tap runs from `on_step_begin` to
`on_step_end`, so every micro-batch of a gradient-accumulation step is one estimator batch and
evaluation forwards never reach the estimators.

Usage:

    from transformers import Trainer, TrainingArguments
    from infodyn.estimators import CosineRedundancy, KnowledgeEntropy
    from infodyn.estimators.hf_trainer import LayerDynamicsTrainerCallback

    dynamics = LayerDynamicsTrainerCallback(
        {"cosine": CosineRedundancy(), "knowledge_entropy": KnowledgeEntropy()}
    )
    trainer = Trainer(model=model, args=TrainingArguments("out", num_train_epochs=3),
                      train_dataset=train_ds, callbacks=[dynamics])
    trainer.train()
    profiles = dynamics.profiles()
    # profiles["finetune"]["cosine"]["redundancy"][epoch][block]  (0-based block index)

Probe estimators (`GaussianEntropyRate`, `ExactEntropyRate`) need `probe_dataloader=`: a fixed,
unshuffled loader of tokenized dicts (`input_ids`, `attention_mask`, ...). The model must be
called with `attention_mask=` (the Trainer does this for tokenized datasets).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn
from transformers import TrainerCallback

from infodyn.estimators.callback import (
    INDEXING,
    ActivationTap,
    check_estimators,
    feed_estimators,
    find_hf_model,
    record_epoch,
    run_probe,
)

log = logging.getLogger("infodyn")


class LayerDynamicsTrainerCallback(TrainerCallback):
    """Tracks every layer's estimator values at every epoch of an HF `Trainer` run.

    Args:
        estimators: name -> estimator (see `estimators/base.py::LayerEstimator`).
        stage: label under which epochs are recorded in `profiles()`.
        probe_dataloader: fixed, unshuffled loader of tokenized dicts; required when a probe
            estimator (input_kind "probe") is given.
    """

    def __init__(
        self,
        estimators: Mapping[str, Any],
        stage: str = "finetune",
        probe_dataloader: Iterable | None = None,
    ) -> None:
        self.estimators = check_estimators(estimators, stage)
        if self._kind("probe") and probe_dataloader is None:
            raise ValueError(
                f"probe estimators {sorted(self._kind('probe'))} need a fixed probe set. Fix: "
                "pass probe_dataloader=<unshuffled DataLoader of tokenized dicts>."
            )
        self.stage = stage
        self.probe_dataloader = probe_dataloader
        self.history: dict[str, dict[str, dict[str, Any]]] = {}
        self.reference_committed: dict[str, bool] = {k: False for k in self.estimators}
        self._tap: ActivationTap | None = None
        self._hf_model: nn.Module | None = None
        self._epoch = 0

    def _kind(self, kind: str) -> dict[str, Any]:
        return {k: e for k, e in self.estimators.items() if e.input_kind == kind}

    def _probe(self) -> None:
        probes = self._kind("probe")
        if probes and self._hf_model is not None:
            device = next(self._hf_model.parameters()).device
            run_probe(self._hf_model, self.probe_dataloader, probes, device)

    # -- wiring
    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        if model is None:
            raise ValueError("LayerDynamicsTrainerCallback needs the Trainer's `model`.")
        if self._tap is not None:
            self._tap.remove()
        for est in self.estimators.values():
            if isinstance(est, nn.Module):
                est.to("cpu")
        self._hf_model = find_hf_model(model)
        self._tap = ActivationTap(
            self._hf_model,
            want_hidden=bool(self._kind("hidden_states")),
            want_ffn=bool(self._kind("ffn_activations")),
            consumer=lambda hidden, ffn, mask: feed_estimators(self.estimators, hidden, ffn, mask),
        )
        pending = [k for k, e in self._kind("probe").items() if not self.reference_committed[k]]
        if pending:
            # X^t for the first epoch: the model's representations before training.
            self._probe()
            for key in pending:
                self.estimators[key].commit()
                self.reference_committed[key] = True

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    # -- per optimizer step (all its micro-batches)
    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if self._tap is not None:
            self._tap.start()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self._tap is not None:
            self._tap.stop()

    # -- per epoch
    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        if self._tap is not None:
            self._tap.stop()  # an epoch ending on a partial accumulation group
        self._probe()
        self._epoch += 1
        record_epoch(
            self.history.setdefault(self.stage, {}),
            self.estimators,
            self._tap.incomplete_ffn_batches if self._tap is not None else 0,
            where=f"{self.stage} epoch {self._epoch}",
        )
        if self._tap is not None:
            self._tap.incomplete_ffn_batches = 0

    def profiles(self) -> dict[str, Any]:
        """{indexing, <stage>: {<estimator>: {layers, <series>: [per-epoch values]}}}."""
        return {"indexing": INDEXING, **self.history}
