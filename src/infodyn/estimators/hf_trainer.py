"""`LayerDynamicsTrainerCallback`: the layer-dynamics profiles for HF `transformers.Trainer` users.

A thin adapter over `tracking.LayerTracker`, the core `LayerDynamicsCallback` uses too: the same
per-epoch profiles, the same indexing (`block_ids`), the same `profiles()` structure. The tap
runs from `on_step_begin` to `on_step_end`, so every micro-batch of a gradient-accumulation
step is one estimator batch and evaluation forwards never reach the estimators.

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

Checkpoints: every HF checkpoint save writes the callback's state (history, probe references,
the open epoch's running sums) to `<output_dir>/checkpoint-<step>/layer_dynamics.pt` (one
`layer_dynamics_rank<i>.pt` per process under DDP, as the Trainer does for its RNG state), and
`trainer.train(resume_from_checkpoint=...)` restores it, so a resumed run records the same
profiles as an uninterrupted one. Transformers' own mechanism for callback state
(`ExportableState`) does not fit: it stores JSON in `trainer_state.json`, is off unless
`restore_callback_states_from_checkpoint=True`, and replaces the callback with a new instance
built from JSON arguments (estimators and loaders are not JSON). A callback only learns the
step it resumes at, so the checkpoint is taken to be `<output_dir>/checkpoint-<step>`, where
the Trainer writes them; pass `resume_from=<checkpoint dir>` when resuming from elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from infodyn.estimators.tracking import STATE_FORMAT, LayerTracker, TrackerAdapter
from infodyn.io import atomic_write
from infodyn.models import find_hf_model

log = logging.getLogger("infodyn")

STATE_FILE = "layer_dynamics.pt"


def state_path(checkpoint_dir: str | os.PathLike, args: Any) -> str:
    """This process's state file in `checkpoint_dir` (per process under DDP, as `rng_state`)."""
    name = STATE_FILE if args.world_size <= 1 else f"layer_dynamics_rank{args.process_index}.pt"
    return os.path.join(os.fspath(checkpoint_dir), name)


def _plain(obj: Any, where: str) -> Any:
    """`obj` as nested dicts/lists of tensors, numbers, strings, None (what weights_only loads)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"layer-dynamics state {where} is a {type(obj).__name__}; a checkpoint holds only "
        "tensors, numbers, strings and containers of them (it is read with weights_only=True). "
        "Fix: make the estimator's state_dict()/get_extra_state() return only those."
    )


def _check_saved(saved: Any, global_step: int) -> None:
    """Raise ValueError unless `saved` is a state file written at `global_step`."""
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise ValueError(f"not a layer-dynamics state (format {STATE_FORMAT})")
    if saved.get("global_step") != global_step:
        raise ValueError(
            f"written at global step {saved.get('global_step')}, but the Trainer resumes at "
            f"step {global_step}"
        )
    types = {
        "history": dict,
        "reference_committed": dict,
        "estimators": dict,
        "update_counts": dict,
        "epochs_recorded": int,
        "open_epoch_batches": int,
        "incomplete_ffn_batches": int,
    }
    for key, kind in types.items():
        if not isinstance(saved.get(key), kind):
            raise ValueError(f"entry {key!r} is missing or not a {kind.__name__}")


class LayerDynamicsTrainerCallback(TrackerAdapter, TrainerCallback):
    """Tracks every block's estimator values at every epoch of an HF `Trainer` run.

    Args:
        estimators: name -> estimator (see `estimators/base.py::LayerEstimator`).
        stage: label under which epochs are recorded in `profiles()`.
        probe_dataloader: fixed, unshuffled loader of tokenized dicts; required when a probe
            estimator (input_kind "probe") is given.
        resume_from: the checkpoint folder a resumed run starts from, when it is not
            `<output_dir>/checkpoint-<step>` (the folder given to `resume_from_checkpoint=`).
        block_ids: the original (unpruned-model) index of each present block; None: 0..L-1.
    """

    def __init__(
        self,
        estimators: Mapping[str, Any],
        stage: str = "finetune",
        probe_dataloader: Iterable | None = None,
        resume_from: str | os.PathLike | None = None,
        block_ids: Sequence[int] | None = None,
    ) -> None:
        self.tracker = LayerTracker(estimators, stage, block_ids)
        for est in self.estimators.values():
            if hasattr(est, "global_layout"):
                # accelerate deals each process whole consecutive batches (not round-robin):
                # the global batch is theirs one after another (estimators/distributed.py)
                est.global_layout = "concat"
        if self.tracker.kind("probe") and probe_dataloader is None:
            raise ValueError(
                f"probe estimators {sorted(self.tracker.kind('probe'))} need a fixed probe set. "
                "Fix: pass probe_dataloader=<unshuffled DataLoader of tokenized dicts>."
            )
        self.probe_dataloader = probe_dataloader
        self.resume_from = resume_from
        self._hf_model: Any = None

    def _record_epoch(self) -> None:
        self.tracker.record_epoch(self._hf_model, self.probe_dataloader)

    # -- wiring
    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        if model is None:
            raise ValueError("LayerDynamicsTrainerCallback needs the Trainer's `model`.")
        self._hf_model = find_hf_model(model)
        self.tracker.attach(self._hf_model)
        if state.global_step > 0:  # a fresh TrainerState starts at 0: this run resumes
            self._resume(args, state)
        elif self.resume_from is not None:
            log.warning(
                "LayerDynamicsTrainerCallback: resume_from=%s is ignored: the Trainer starts "
                "at step 0 (pass resume_from_checkpoint= to trainer.train() to resume).",
                self.resume_from,
            )
        self.tracker.commit_reference(self._hf_model, self.probe_dataloader)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.tracker.detach()

    # -- per optimizer step (all its micro-batches)
    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.tracker.start()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.tracker.stop()

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        self._record_epoch()

    # -- checkpoints
    def on_save(self, args, state, control, **kwargs) -> None:
        if state.is_hyper_param_search:
            return  # trials checkpoint under <output_dir>/run-<trial>, a name callbacks never see
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        payload = _plain({**self.state_dict(), "global_step": state.global_step}, "state")
        # a crash mid-write never leaves a torn state file
        atomic_write(state_path(folder, args), lambda tmp: torch.save(payload, tmp))

    def _resume(self, args, state) -> None:
        folder = self.resume_from or os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        path = state_path(folder, args)
        fresh = "the layer-dynamics profiles restart here (earlier epochs are not in profiles())"
        if not os.path.isfile(path):
            log.warning(
                "LayerDynamicsTrainerCallback: resuming at step %d but %s does not exist; %s. "
                "Fix: pass resume_from=<the checkpoint folder> if it is not %s.",
                state.global_step, path, fresh, folder,
            )  # fmt: skip
            return
        snapshot = self.state_dict()
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            _check_saved(saved, state.global_step)
            self.load_state_dict(saved)
        except Exception as err:  # any unreadable file (torn zip, pickle, wrong layout): go on
            self.load_state_dict(snapshot)
            log.warning(
                "LayerDynamicsTrainerCallback: cannot restore %s (%s: %s); %s.",
                path, type(err).__name__, err, fresh,
            )  # fmt: skip
            return
        missing = sorted(set(self.estimators) - set(saved["estimators"]))
        if missing:
            log.warning(
                "LayerDynamicsTrainerCallback: %s holds no state for estimators %s; they "
                "restart at this step.", path, missing,
            )  # fmt: skip
        if not self.tracker.open_epoch_batches:
            return
        if state.epoch is not None and float(state.epoch).is_integer():
            # Saved at the epoch's last step, before on_epoch_end: the Trainer resumes with the
            # next epoch, so this one is recorded now (the model is that step's model).
            self._record_epoch()
        elif args.ignore_data_skip:
            # The Trainer replays this epoch from its first batch: drop its partial sums.
            self.tracker.drop_open_epoch()
