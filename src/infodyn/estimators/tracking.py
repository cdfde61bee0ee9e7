"""`LayerTracker`: the one core of live layer dynamics, shared by every training-loop adapter.

It taps a model's training forwards (`tap.ActivationTap`), feeds the estimators, runs the probe
passes, records each epoch (every estimator's `summary()` appended to its profile) and saves and
restores all of it. `callback.LayerDynamicsCallback` (Lightning) and
`hf_trainer.LayerDynamicsTrainerCallback` (HF `Trainer`) only call it from their hooks.

Blocks are named by `block_ids`, the original (unpruned-model) index of each present block:
`profiles()[stage][estimator]["layers"]` holds them and the logged keys use them, so
`finetune/redundancy/layer_07` and `recover/redundancy/layer_07` are the same block of the
original model, also after pruning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from infodyn.estimators.distributed import sum_over_processes
from infodyn.estimators.tap import ActivationTap, feed_estimators
from infodyn.forward import eval_hidden_states

log = logging.getLogger("infodyn")

INDEXING = (
    "0-based transformer block index b of the original (unpruned) model, listed per estimator "
    "in 'layers'; the value for block b is computed from the pair (z_b, z_{b+1}) of the model "
    "as trained, where z_0 is the embedding output and z_{b+1} the output of block b (the "
    "paper's 'layer b+1')"
)
INPUT_KINDS = ("hidden_states", "ffn_activations", "probe")
STATE_FORMAT = 1


def check_estimators(estimators: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """`estimators` as a dict, each with a known `input_kind`; `stage` non-empty."""
    for key, est in estimators.items():
        kind = getattr(est, "input_kind", None)
        if kind not in INPUT_KINDS:
            raise ValueError(
                f"estimator '{key}' ({type(est).__name__}) has input_kind={kind!r}; expected "
                f"one of {sorted(INPUT_KINDS)}. Fix: implement estimators/base.py::LayerEstimator."
            )
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")
    return dict(estimators)


def check_block_ids(block_ids: Sequence[int] | None) -> list[int] | None:
    """`block_ids` as a list of distinct non-negative ints (None: 0..L-1, set on first record)."""
    if block_ids is None:
        return None
    ids = list(block_ids)
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in ids):
        raise ValueError(
            f"block_ids must be non-negative ints (the original index of each present block), "
            f"got {ids!r}"
        )
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"block_ids must be a non-empty list of distinct blocks, got {ids!r}")
    return ids


@torch.no_grad()
def run_probe(hf_model: nn.Module, loader: Iterable, probes: Mapping[str, Any]) -> None:
    """One probe pass: the HF model in eval mode over `loader`, hidden states to every probe.

    States stay on the model's device: each probe pools them there and keeps only the pooled
    ``[B, L + 1, D]`` rows, never the token states.
    """
    for hidden_states, mask in eval_hidden_states(hf_model, loader):
        for est in probes.values():
            est.update(hidden_states, mask)


def _num(v: Any) -> float | None:
    """JSON-safe number: NaN/inf -> None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def record_epoch(
    stage_hist: dict[str, dict[str, Any]],
    estimators: Mapping[str, Any],
    incomplete_ffn_batches: int = 0,
    where: str = "",
    block_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Append this epoch's `summary()` of every estimator to `stage_hist`, then commit/reset.

    Args:
        stage_hist: estimator key -> {"layers": block ids, <series>: [per-epoch values]}
            (mutated).
        estimators: name -> estimator; probe estimators must already hold this epoch's pass.
        incomplete_ffn_batches: this process's batches whose FFN profile had a LayerDrop hole
            this epoch (summed over DDP processes here, like the estimators' own counters).
        where: label for the warning, e.g. "finetune epoch 2".
        block_ids: the original index of each present block (None: 0..L-1).

    Returns:
        The per-block primary values to log, `{"<name>/layer_07": value}` (finite ones only).
    """
    incomplete_ffn_batches = sum_over_processes(incomplete_ffn_batches)  # collective: first
    metrics: dict[str, float] = {}
    for key, est in estimators.items():
        entry = stage_hist.setdefault(key, {"layers": None})
        if est.input_kind != "probe" and getattr(est, "_update_count", 1) == 0:
            # e.g. every batch of the epoch had a LayerDrop hole: record a gap, not a crash
            why = ""
            if est.input_kind == "ffn_activations" and incomplete_ffn_batches:
                why = (
                    f" (LayerDrop skipped a block in all {int(incomplete_ffn_batches)} of its "
                    "batches, and such a batch has no complete FFN profile)"
                )
            log.warning("estimator %s saw no batch in %s%s; its values are null.", key, where, why)
            for series, values in entry.items():  # keep one entry per epoch in every series
                if series not in ("layers", "incomplete_batches"):
                    values.append(None)
            if est.input_kind == "ffn_activations":  # why the epoch is a gap stays on record
                entry.setdefault("incomplete_batches", []).append(int(incomplete_ffn_batches))
            continue
        for series, value in est.summary().items():
            if isinstance(value, Tensor) and value.ndim == 1:
                values = [_num(v) for v in value.tolist()]
                ids = list(range(len(values))) if block_ids is None else list(block_ids)
                if len(ids) != len(values):
                    raise ValueError(
                        f"block_ids has {len(ids)} entries but estimator '{key}' scores "
                        f"{len(values)} blocks. Fix: pass block_ids=<the original index of "
                        "each block of the model being trained>."
                    )
                entry.setdefault(series, []).append(values)
                if entry["layers"] is None:
                    entry["layers"] = ids
                if series == est.name:
                    for block, v in zip(ids, values, strict=True):
                        if v is not None:
                            metrics[f"{est.name}/layer_{block:02d}"] = v
            else:
                scalar = value.item() if isinstance(value, Tensor) else value
                entry.setdefault(series, []).append(_num(scalar))
        if est.input_kind == "ffn_activations":
            # batches where LayerDrop skipped a block: not counted by the estimator
            entry.setdefault("incomplete_batches", []).append(int(incomplete_ffn_batches))
        if est.input_kind == "probe":
            est.commit()
        est.reset()
    return metrics


def _to_cpu(obj: Any) -> Any:
    """`obj` with every tensor detached on the CPU (a checkpoint never pins a device)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_cpu(v) for v in obj]
    return obj


def estimators_state(estimators: Mapping[str, Any]) -> dict[str, Any]:
    """Every estimator's running state on the CPU (`load_estimators_state` restores it)."""
    return {
        "estimators": {
            k: _to_cpu(e.state_dict()) for k, e in estimators.items() if hasattr(e, "state_dict")
        },
        # torchmetrics keeps its update count outside state_dict; record_epoch reads it to tell
        # an epoch without batches (a checkpoint taken mid-epoch must carry it)
        "update_counts": {k: int(getattr(e, "_update_count", 0)) for k, e in estimators.items()},
    }


def load_estimators_state(estimators: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Restore `estimators_state` into `estimators` (unknown keys are ignored)."""
    for key, est_state in state.get("estimators", {}).items():
        if key in estimators and hasattr(estimators[key], "load_state_dict"):
            est = estimators[key]
            est.load_state_dict(est_state, strict=False)
            if isinstance(est, nn.Module) and hasattr(est, "device"):
                est.to(est.device)  # the loaded (CPU) states join the estimator's device
    for key, count in state.get("update_counts", {}).items():
        if key in estimators and hasattr(estimators[key], "_update_count"):
            estimators[key]._update_count = int(count)


class LayerTracker:
    """Tracks every block's estimator values at every epoch of one training stage.

    Args:
        estimators: name -> estimator (see `estimators/base.py::LayerEstimator`).
        stage: label of the stage: the profiles' key and the logged keys' prefix.
        block_ids: the original (unpruned-model) index of each present block; None: 0..L-1.
    """

    def __init__(
        self,
        estimators: Mapping[str, Any],
        stage: str = "finetune",
        block_ids: Sequence[int] | None = None,
    ) -> None:
        self.estimators = check_estimators(estimators, stage)
        self.stage = stage
        self.block_ids = check_block_ids(block_ids)
        # history[stage][estimator key][series] = list over epochs of per-block lists
        self.history: dict[str, dict[str, dict[str, Any]]] = {}
        self.reference_committed: dict[str, bool] = {k: False for k in self.estimators}
        self.tap: ActivationTap | None = None
        self.epochs_recorded = 0
        self.open_epoch_batches = 0  # training batches fed since the last recorded epoch
        self._incomplete_restored = 0  # a restored LayerDrop-hole count, for the next tap

    def kind(self, kind: str) -> dict[str, Any]:
        return {k: e for k, e in self.estimators.items() if e.input_kind == kind}

    def probe_size(self) -> int:
        """Examples the probe set needs (0 without probe estimators)."""
        return max((int(getattr(e, "probe_size", 512)) for e in self.kind("probe").values()), 0)

    # -- the tap
    def attach(self, hf_model: nn.Module, root: nn.Module | None = None) -> None:
        """Hook `hf_model`'s training forwards (`root`: the module that calls it, for peft)."""
        self.detach()
        want_hidden, want_ffn = (
            bool(self.kind("hidden_states")),
            bool(self.kind("ffn_activations")),
        )
        if want_hidden or want_ffn:
            self.tap = ActivationTap(hf_model, want_hidden, want_ffn, self._feed, root=root)
            self.tap.incomplete_ffn_batches = self._incomplete_restored

    def detach(self) -> None:
        if self.tap is not None:
            self.tap.remove()
            self.tap = None

    def start(self) -> None:
        if self.tap is not None:
            self.tap.start()

    def stop(self) -> None:
        if self.tap is not None:
            self.tap.stop()

    def _feed(self, hidden: Any, ffn: Any, mask: Tensor) -> None:
        self.open_epoch_batches += 1
        feed_estimators(self.estimators, hidden, ffn, mask)

    # -- probe passes and epochs
    def commit_reference(self, hf_model: nn.Module, loader: Iterable | None) -> None:
        """X^t for the first epoch: the model's probe pass before this stage trains."""
        pending = [k for k, e in self.kind("probe").items() if not self.reference_committed[k]]
        if not pending:
            return
        run_probe(hf_model, loader, {k: self.estimators[k] for k in pending})
        for key in pending:
            self.estimators[key].commit()
            self.reference_committed[key] = True

    def record_epoch(
        self, hf_model: nn.Module | None = None, loader: Iterable | None = None
    ) -> dict[str, float]:
        """Close the epoch: probe pass, summaries into the profiles, estimators reset.

        Returns:
            `{"<stage>/<name>/layer_07": value}`: this epoch's primary values to log.
        """
        self.stop()  # an epoch ending on a partial accumulation group
        probes = self.kind("probe")
        if probes and hf_model is not None:
            run_probe(hf_model, loader, probes)
        self.epochs_recorded += 1
        incomplete = self.tap.incomplete_ffn_batches if self.tap is not None else 0
        metrics = record_epoch(
            self.history.setdefault(self.stage, {}),
            self.estimators,
            incomplete,
            where=f"{self.stage} epoch {self.epochs_recorded}",
            block_ids=self.block_ids,
        )
        self.drop_open_epoch(reset=False)
        return {f"{self.stage}/{k}": v for k, v in metrics.items()}

    def drop_open_epoch(self, reset: bool = True) -> None:
        """Forget the open epoch's batches (`reset`: also the estimators' partial sums)."""
        if reset:
            for est in self.estimators.values():
                if est.input_kind != "probe":
                    est.reset()
        self.open_epoch_batches = self._incomplete_restored = 0
        if self.tap is not None:
            self.tap.incomplete_ffn_batches = 0

    def profiles(self) -> dict[str, Any]:
        """`profiles` for results.json: {indexing, <stage>: {<estimator>: {layers, <series>}}}."""
        return {"indexing": INDEXING, **self.history}

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed stage needs to record the uninterrupted profiles (CPU only)."""
        return {
            "format": STATE_FORMAT,
            "history": self.history,
            "stage": self.stage,
            "block_ids": self.block_ids,
            "reference_committed": dict(self.reference_committed),
            **estimators_state(self.estimators),
            "epochs_recorded": self.epochs_recorded,
            "open_epoch_batches": self.open_epoch_batches,
            "incomplete_ffn_batches": (
                self.tap.incomplete_ffn_batches if self.tap else self._incomplete_restored
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved_ids = state.get("block_ids")
        if saved_ids is not None and self.block_ids is not None and saved_ids != self.block_ids:
            raise ValueError(
                f"the saved layer-dynamics state tracks blocks {saved_ids} but this tracker "
                f"tracks {self.block_ids}. Fix: resume with the model (and block_ids) the "
                "checkpoint was written with."
            )
        self.history = state.get("history", {})
        committed = state.get("reference_committed", {})
        self.reference_committed.update(
            {k: bool(v) for k, v in committed.items() if k in self.estimators}
        )
        load_estimators_state(self.estimators, state)
        self.epochs_recorded = int(state.get("epochs_recorded", 0))
        self.open_epoch_batches = int(state.get("open_epoch_batches", 0))
        self._incomplete_restored = int(state.get("incomplete_ffn_batches", 0))
        if self.tap is not None:
            self.tap.incomplete_ffn_batches = self._incomplete_restored


class TrackerAdapter:
    """What every training-loop adapter exposes of its `self.tracker` (a `LayerTracker`); the
    adapter itself only wires the loop's hooks to the tracker."""

    tracker: LayerTracker

    @property
    def estimators(self) -> dict[str, Any]:
        return self.tracker.estimators

    @property
    def stage(self) -> str:
        return self.tracker.stage

    @property
    def reference_committed(self) -> dict[str, bool]:
        return self.tracker.reference_committed

    def profiles(self) -> dict[str, Any]:
        """`profiles` for results.json: {indexing, <stage>: {<estimator>: {layers, <series>}}}."""
        return self.tracker.profiles()

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state: history, probe references, the open epoch's running sums."""
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
