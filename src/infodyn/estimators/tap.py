"""`ActivationTap`: the hidden states (and FFN activations) of an HF model's training forwards.

Hidden states come from the *training* forward itself: a forward hook on the HF model captures
`outputs.hidden_states` (requested per training call by a forward pre-hook; the model's config
is never changed) and the `attention_mask` keyword; no second forward pass. Knowledge entropy
reads the FFN's post-nonlinearity activations through forward-pre-hooks on each block's output
projection. `feed_estimators` hands them to the estimators on the activations' own device.

Nothing here converts a tensor to a Python value or copies one to the host: this runs at every
training step, and on a GPU either would stall the step until the device catches up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn


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
        self.incomplete_ffn_batches = 0  # a Python count: never a tensor read per step
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


def place(estimator: Any, device: torch.device) -> None:
    """Move `estimator`'s state to `device` if it is elsewhere (once per stage, not per step)."""
    if isinstance(estimator, nn.Module) and getattr(estimator, "device", device) != device:
        estimator.to(device)


def feed_estimators(estimators: Mapping[str, Any], hidden: Any, ffn: Any, mask: Tensor) -> None:
    """Hand one training batch's tensors to every estimator that consumes them.

    Estimators run on the activations' device and keep their O(L) state there until the epoch
    ends: copying states to the host each step would synchronise the device every step.
    """
    if hidden is not None:
        for est in estimators.values():
            if est.input_kind == "hidden_states":
                place(est, hidden[0].device)
                est.update(hidden, mask)
    if ffn is not None:
        for est in estimators.values():
            if est.input_kind == "ffn_activations":
                place(est, ffn[0].device)
                est.update(ffn, mask)
