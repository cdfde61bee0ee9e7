"""`LayerDynamicsCallback`: runs layer estimators live during training, in any Lightning project.

Hidden states come from the *training* forward itself: a forward hook on the HF model captures
`outputs.hidden_states` (requested per training call by a forward pre-hook; the model's config
is never changed) and the `attention_mask` keyword; no second forward pass. Knowledge entropy
reads the FFN's post-nonlinearity activations through forward-pre-hooks on each block's output
projection.
Probe estimators (`gaussian`, `exact`) run a fixed probe set once before training (the reference
X^0, i.e. the pretrained model) and once at every epoch end.

Conventions: hidden states z_0..z_L (z_0 = embedding output); every per-layer output is indexed by
0-based block index b, scoring block b from (z_b, z_{b+1}). With gradient accumulation each
micro-batch is one estimator batch (B = the dataloader's batch size; under DDP the cosine
estimator's default ``batch_scope="global"`` makes it the global batch, B x processes).

Requirements on the host LightningModule: it holds an HF `PreTrainedModel` somewhere among its
modules (found automatically, or name it with `model_attr`) and calls it with `attention_mask=`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from infodyn.estimators.distributed import sum_over_processes
from infodyn.forward import eval_hidden_states
from infodyn.models import find_hf_model

log = logging.getLogger("infodyn")

INDEXING = (
    "0-based transformer block index b; the value for block b is computed from the pair "
    "(z_b, z_{b+1}) where z_0 is the embedding output and z_{b+1} the output of block b "
    "(the paper's 'layer b+1')"
)


def _called_module(root: nn.Module, hf_model: nn.Module) -> nn.Module:
    """The module whose `__call__` runs `hf_model` inside `root`: peft's tuner calls
    `self.model.forward(...)` directly, which bypasses hooks on the HF model itself, so the
    tuner (which returns the HF output unchanged) is hooked instead."""
    for name, module in root.named_modules():
        if module is hf_model and "." in name:
            parent = root.get_submodule(name.rpartition(".")[0])
            if hasattr(parent, "peft_config") and getattr(parent, "model", None) is hf_model:
                return parent
    return hf_model


class ActivationTap:
    """Feeds the hidden states (and FFN activations) of an HF model's training forwards onward.

    Each training forward (module in train mode, tap started) calls `consumer(hidden, ffn, mask)`
    right after the model's forward, so every micro-batch counts once (gradient accumulation
    included) and nothing is kept after the call: O(1) batches of memory.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        want_hidden: bool,
        want_ffn: bool,
        consumer: Callable[[Any, Any, Tensor], None],
        root: nn.Module | None = None,
    ) -> None:
        self.hf_model = hf_model
        self.want_hidden, self.want_ffn = want_hidden, want_ffn
        self.consumer = consumer
        self.active = False
        self.incomplete_ffn_batches = 0
        self.ffn: dict[int, Tensor] = {}
        self.num_blocks = 0
        self._handles: list[Any] = []
        target = _called_module(root, hf_model) if root is not None else hf_model
        self._handles.append(target.register_forward_hook(self._on_model, with_kwargs=True))
        self._handles.append(
            target.register_forward_pre_hook(self._request_hidden, with_kwargs=True)
        )
        if want_ffn:
            from infodyn.layers import ffn_output_projection, find_layer_list

            _, _, blocks = find_layer_list(hf_model)
            self.num_blocks = len(blocks)
            for idx, block in enumerate(blocks):
                proj = ffn_output_projection(block)
                self._handles.append(proj.register_forward_pre_hook(self._ffn_hook(idx)))

    def _on_model(self, module: nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        if not (self.active and module.training):
            self.ffn = {}
            return
        mask = kwargs.get("attention_mask")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is None and input_ids is not None:
            mask = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        hs = getattr(output, "hidden_states", None)
        hidden = tuple(h.detach() for h in hs) if self.want_hidden and hs is not None else None
        # A block skipped by LayerDrop leaves a hole: such a batch has no complete FFN profile.
        complete = bool(self.ffn) and len(self.ffn) == self.num_blocks
        ffn = [self.ffn[i] for i in sorted(self.ffn)] if complete else None
        self.incomplete_ffn_batches += int(bool(self.ffn) and not complete)
        self.ffn = {}
        if mask is not None:
            self.consumer(hidden, ffn, mask.detach())

    def _request_hidden(self, module: nn.Module, args: Any, kwargs: dict) -> Any:
        # Per call, not via config.output_hidden_states: peft passes the flag explicitly
        # (None), which would override the config, and eval forwards must not return states.
        if self.active and self.want_hidden and module.training:
            return args, {**kwargs, "output_hidden_states": True}
        return None

    def _ffn_hook(self, idx: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self.active and module.training:
                self.ffn[idx] = args[0].detach()

        return hook

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stop()


def feed_estimators(estimators: Mapping[str, Any], hidden: Any, ffn: Any, mask: Tensor) -> None:
    """Hand one training batch's tensors to every estimator that consumes them.

    The tensors stay on the model's device: the estimators reduce them there (pooling, sums of
    |a|) and move only the O(L * D) result to their CPU state, instead of copying every
    `[B, T, D]` state to the host each step.
    """
    if hidden is not None:
        for est in estimators.values():
            if est.input_kind == "hidden_states":
                est.update(hidden, mask)
    if ffn is not None:
        for est in estimators.values():
            if est.input_kind == "ffn_activations":
                est.update(ffn, mask)


@torch.no_grad()
def run_probe(
    hf_model: nn.Module, loader: Iterable, probes: Mapping[str, Any], device: Any
) -> None:
    """One probe pass: the HF model in eval mode over `loader`, hidden states to every probe."""
    for hidden_states, mask in eval_hidden_states(hf_model, loader):
        hidden = [h.float().cpu() for h in hidden_states]
        for est in probes.values():
            est.update(hidden, mask.cpu())


def record_epoch(
    stage_hist: dict[str, dict[str, Any]],
    estimators: Mapping[str, Any],
    incomplete_ffn_batches: int = 0,
    where: str = "",
) -> dict[str, float]:
    """Append this epoch's `summary()` of every estimator to `stage_hist`, then commit/reset.

    Args:
        stage_hist: estimator key -> {"layers": [...], <series>: [per-epoch values]} (mutated).
        estimators: name -> estimator; probe estimators must already hold this epoch's pass.
        incomplete_ffn_batches: this process's batches whose FFN profile had a LayerDrop hole
            this epoch (summed over DDP processes here, like the estimators' own counters).
        where: label for the warning, e.g. "finetune epoch 2".

    Returns:
        The per-layer primary values to log, `{"<name>/layer_03": value}` (finite ones only).
    """
    incomplete_ffn_batches = sum_over_processes(incomplete_ffn_batches)  # collective: first
    metrics: dict[str, float] = {}
    for key, est in estimators.items():
        if est.input_kind != "probe" and getattr(est, "_update_count", 1) == 0:
            # e.g. every batch of the epoch had a LayerDrop hole: record a gap, not a crash
            log.warning("estimator %s saw no batch in %s; its values are null.", key, where)
            entry = stage_hist.setdefault(key, {"layers": None})
            for series, values in entry.items():  # keep one entry per epoch in every series
                if series != "layers":
                    values.append(None)
            continue
        summary = est.summary()
        entry = stage_hist.setdefault(key, {"layers": None})
        for series, value in summary.items():
            if isinstance(value, Tensor) and value.ndim == 1:
                values = [_num(v) for v in value.tolist()]
                entry.setdefault(series, []).append(values)
                if entry["layers"] is None:
                    entry["layers"] = list(range(len(values)))
                if series == est.name:
                    for idx, v in enumerate(values):
                        if v is not None:
                            metrics[f"{est.name}/layer_{idx:02d}"] = v
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


INPUT_KINDS = ("hidden_states", "ffn_activations", "probe")


def check_estimators(estimators: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """A callback's `estimators` as a dict, each with a known `input_kind`; `stage` non-empty."""
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


class LayerDynamicsCallback(pl.Callback):
    """Tracks every layer's estimator values at every epoch of a training stage.

    Args:
        estimators: name -> estimator (see `estimators/base.py::LayerEstimator`).
        stage: label under which epochs are recorded (`finetune`, `recover`, ...).
        model_attr: dotted attribute of the LightningModule that holds the HF model (optional).
        probe_dataloader: a fixed, unshuffled dataloader for probe estimators; if None the
            callback asks `trainer.datamodule.probe_dataloader(n)`.
    """

    def __init__(
        self,
        estimators: Mapping[str, Any],
        stage: str = "finetune",
        model_attr: str | None = None,
        probe_dataloader: Iterable | None = None,
    ) -> None:
        super().__init__()
        self.estimators = check_estimators(estimators, stage)
        self.stage = stage
        self.model_attr = model_attr
        self.probe_dataloader = probe_dataloader
        # history[stage][estimator key][series] = list over epochs of per-layer lists
        self.history: dict[str, dict[str, dict[str, Any]]] = {}
        self.reference_committed: dict[str, bool] = {k: False for k in self.estimators}
        self._tap: ActivationTap | None = None

    # -- wiring
    def _kind(self, kind: str) -> dict[str, Any]:
        return {k: e for k, e in self.estimators.items() if e.input_kind == kind}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._tap is not None:
            return
        for est in self.estimators.values():
            if isinstance(est, nn.Module):
                est.to("cpu")
        hf_model = find_hf_model(pl_module, self.model_attr)
        self._tap = ActivationTap(
            hf_model,
            want_hidden=bool(self._kind("hidden_states")),
            want_ffn=bool(self._kind("ffn_activations")),
            consumer=lambda hidden, ffn, mask: feed_estimators(self.estimators, hidden, ffn, mask),
            root=pl_module,
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    # -- per batch
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._tap is not None:
            self._tap.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._tap is not None:
            self._tap.stop()

    # -- probe passes
    def _probe_loader(self, trainer: pl.Trainer, size: int) -> Iterable:
        if self.probe_dataloader is not None:
            return self.probe_dataloader
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "probe_dataloader"):
            raise ValueError(
                "a probe estimator (gaussian/exact) needs a fixed probe set. Fix: pass "
                "probe_dataloader=... to LayerDynamicsCallback, or use a datamodule with "
                "probe_dataloader(n)."
            )
        return dm.probe_dataloader(size)

    def _run_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probes = self._kind("probe")
        if not probes:
            return
        size = max(int(getattr(e, "probe_size", 512)) for e in probes.values())
        hf_model = find_hf_model(pl_module, self.model_attr)
        run_probe(hf_model, self._probe_loader(trainer, size), probes, pl_module.device)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending = [k for k, e in self._kind("probe").items() if not self.reference_committed[k]]
        if not pending:
            return
        # X^t for the first epoch: the model's representations before this stage trains.
        self._run_probe(trainer, pl_module)
        for key in pending:
            self.estimators[key].commit()
            self.reference_committed[key] = True

    # -- per epoch
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_probe(trainer, pl_module)
        metrics = record_epoch(
            self.history.setdefault(self.stage, {}),
            self.estimators,
            self._tap.incomplete_ffn_batches if self._tap is not None else 0,
            where=f"{self.stage} epoch {trainer.current_epoch + 1}",
        )
        if self._tap is not None:
            self._tap.incomplete_ffn_batches = 0
        for name, value in metrics.items():
            # already reduced across ranks by summary()'s sync: no second sync
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    # -- results and checkpoints
    def profiles(self) -> dict[str, Any]:
        """`profiles` for results.json: {indexing, <stage>: {<estimator>: {layers, <series>}}}."""
        return {"indexing": INDEXING, **self.history}

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "stage": self.stage,
            "reference_committed": dict(self.reference_committed),
            **estimators_state(self.estimators),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict.get("history", {})
        self.reference_committed.update(state_dict.get("reference_committed", {}))
        load_estimators_state(self.estimators, state_dict)


def estimators_state(estimators: Mapping[str, Any]) -> dict[str, Any]:
    """Every estimator's running state, for a checkpoint (`load_estimators_state` restores it)."""
    return {
        "estimators": {
            k: e.state_dict() for k, e in estimators.items() if hasattr(e, "state_dict")
        },
        # torchmetrics keeps its update count outside state_dict; record_epoch reads it to tell
        # an epoch without batches (a checkpoint taken mid-epoch must carry it)
        "update_counts": {k: int(getattr(e, "_update_count", 0)) for k, e in estimators.items()},
    }


def load_estimators_state(estimators: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Restore `estimators_state` into `estimators` (unknown keys are ignored)."""
    for key, est_state in state.get("estimators", {}).items():
        if key in estimators and hasattr(estimators[key], "load_state_dict"):
            estimators[key].load_state_dict(est_state, strict=False)
    for key, count in state.get("update_counts", {}).items():
        if key in estimators and hasattr(estimators[key], "_update_count"):
            estimators[key]._update_count = int(count)


def _num(v: Any) -> float | None:
    """JSON-safe number: NaN/inf -> None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
