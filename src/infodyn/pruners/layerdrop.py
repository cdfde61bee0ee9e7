"""LayerDrop (Fan et al., 2020, "Reducing Transformer Depth on Demand with Structured Dropout").

Two parts:
- `apply_layerdrop` / `remove_layerdrop`: the training-time mechanism. In training mode each
  block is skipped with probability `p` on every forward (it returns its input hidden states);
  eval mode never drops. `LayerDropPruner.prepare_training` / `finish_training` install and
  remove it around fine-tuning.
- `LayerDropPruner.select`: the inference-time rule; it ignores scores and removes `k` blocks
  by Fan et al.'s every-other rule (`every_other`), evenly spread (`spread`) or at random.

Caveat from the authors: LayerDrop applied only during fine-tuning is weaker than a model
*pretrained* with LayerDrop; here it is applied during fine-tuning only.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from infodyn.layers import find_layer_list
from infodyn.pruners.base import (
    PrunerArgs,
    PrunerConfigError,
    check_protect,
    top_k,
    unprotected,
)
from infodyn.pruners.random import random_order

SELECTIONS = ("every_other", "spread", "random")


class _DropState:
    """Drop probability and the RNG shared by all blocks of one model (copy/pickle-safe)."""

    def __init__(self, p: float, seed: int | None) -> None:
        self.p = float(p)
        self.tuple_output: bool | None = None  # whether the blocks return (hidden, ...) tuples
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    def drop(self) -> bool:
        if self.p <= 0.0:
            return False
        if self.p >= 1.0:
            return True
        return bool(torch.rand((), generator=self.generator) < self.p)

    def __getstate__(self) -> dict[str, Any]:
        rng = None if self.generator is None else self.generator.get_state()
        return {"p": self.p, "rng": rng, "tuple_output": self.tuple_output}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.p = state["p"]
        self.tuple_output = state.get("tuple_output")
        self.generator = None
        if state["rng"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["rng"])

    def __deepcopy__(self, memo: dict) -> _DropState:
        new = _DropState.__new__(_DropState)
        new.__setstate__(self.__getstate__())
        return new


def _layerdrop_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Instance `forward` of a LayerDrop block: skip (identity) or run the class's forward."""
    state = self._layerdrop
    if self.training and state.drop():
        hidden = args[0] if args else kwargs["hidden_states"]
        if state.tuple_output is None:
            state.tuple_output = _returns_tuple(self, args, kwargs)
        return (hidden,) if state.tuple_output else hidden
    out = type(self).forward(self, *args, **kwargs)
    state.tuple_output = isinstance(out, tuple)
    return out


def _returns_tuple(block: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether `block` returns a tuple (MPNet) rather than the hidden-states Tensor (BERT,
    RoBERTa, GPT-2, Llama in transformers v5): from its annotation, else from one forward run
    without gradient and with the RNG state restored, so training randomness is unchanged."""
    if inspect.signature(type(block).forward).return_annotation is Tensor:
        return False
    hidden = args[0] if args else kwargs["hidden_states"]
    devices = [hidden.device.index or 0] if hidden.is_cuda else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        return isinstance(type(block).forward(block, *args, **kwargs), tuple)


def apply_layerdrop(model: nn.Module, p: float, seed: int | None = None) -> nn.Module:
    """Make every block of `model` skip itself with probability `p` in training mode.

    Patches each block's `forward` on the instance (no new modules or parameters), so
    `state_dict` keys and the `hidden_states` recorders stay as they are; a skipped block
    contributes its input as its output to `hidden_states`. One RNG serves all blocks: with
    `seed` the drop pattern is reproducible, without it the global torch RNG is used.
    Calling it again replaces `p` / `seed`.

    Under DDP, set `find_unused_parameters=True`: a skipped block's parameters get no gradient.
    """
    if not 0.0 <= float(p) <= 1.0:
        raise PrunerConfigError(f"layerdrop p={p} is outside [0, 1]. Fix: e.g. pruner.p=0.2.")
    state = _DropState(p, seed)
    for block in find_layer_list(model)[2]:
        block._layerdrop = state
        block.forward = types.MethodType(_layerdrop_forward, block)
    return model


def remove_layerdrop(model: nn.Module) -> nn.Module:
    """Undo `apply_layerdrop` (no-op on blocks without it)."""
    for block in find_layer_list(model)[2]:
        if "forward" in vars(block):
            del block.forward
        if "_layerdrop" in vars(block):
            del block._layerdrop
    return model


def has_layerdrop(model: nn.Module) -> bool:
    """Whether any block currently has LayerDrop applied."""
    return any("_layerdrop" in vars(b) for b in find_layer_list(model)[2])


def every_other(num_layers: int, k: int) -> list[int]:
    """Fan et al.'s rule: drop the depths d = 1..L with d = 0 (mod floor(L / k)).

    0-based blocks, e.g. L=12, k=4 -> [2, 5, 8, 11]; L=6, k=2 -> [2, 5]. When the rule yields
    more than k depths (L=12, k=5: every 2nd of 12 gives 6), the first k (shallowest) are
    taken; for k > L / 2 the period is 1 and the rule degenerates to the first k blocks.
    """
    period = num_layers // k
    return [j * period - 1 for j in range(1, k + 1)]


def spread(num_layers: int, k: int) -> list[int]:
    """`k` blocks spread evenly over depth: `floor((j + 0.5) * L / k)` for j = 0..k-1.

    The middle of each of k equal strata, e.g. L=12, k=4 -> [1, 4, 7, 10]; L=6, k=2 -> [1, 4].
    """
    return [math.floor((j + 0.5) * num_layers / k) for j in range(k)]


class LayerDropPruner(PrunerArgs):
    """Fine-tune with LayerDrop rate `p`, then remove `k` blocks without looking at scores.

    Args:
        p: drop probability per block and forward during fine-tuning (`prepare_training`).
        selection: `every_other` (Fan et al., `every_other(L, k)`), `spread`
            (`spread(L, k)`) or `random` (seeded, as `RandomPruner`). A protected target of a
            rule is replaced by the nearest block that is neither protected nor a target
            (lower first on ties).
        seed: seeds the `random` selection and the training-time drop pattern.
        k, fraction, protect: see `PrunerArgs`.
    """

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        p: float = 0.2,
        selection: Literal["every_other", "spread", "random"] = "every_other",
        seed: int = 0,
    ) -> None:
        super().__init__(k, fraction, protect)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise PrunerConfigError(f"pruner.p={p} is outside [0, 1]. Fix: e.g. pruner.p=0.2.")
        if selection not in SELECTIONS:
            raise PrunerConfigError(
                f"pruner.selection='{selection}' is unknown. Fix: use one of "
                f"{', '.join(SELECTIONS)}."
            )
        self.p = float(p)
        self.selection = selection
        self.seed = int(seed)

    def training_signature(self) -> dict[str, Any]:
        """p and the drop stream's seed; {} for p=0 (training is then plain fine-tuning)."""
        return {"layerdrop_p": self.p, "layerdrop_seed": self.seed} if self.p > 0 else {}

    def prepare_training(self, model: nn.Module, seed: int) -> None:
        """Install LayerDrop (rate `p`, drop stream seeded by this pruner's `seed`)."""
        if self.p > 0:
            apply_layerdrop(model, self.p, self.seed)

    def finish_training(self, model: nn.Module) -> None:
        remove_layerdrop(model)

    def prunability(self, scores: Tensor) -> Tensor:
        """`random`: the seeded order; a rule: 1 for the blocks it removes, 0 for the others
        (protected blocks NaN)."""
        num_layers = len(scores)
        if self.selection == "random":
            return random_order(num_layers, self.protect, self.seed)
        out = torch.zeros(num_layers, dtype=torch.float64)
        out[self.select(scores, self.num_to_remove(num_layers))] = 1.0
        out[sorted(check_protect(self.protect, num_layers))] = float("nan")
        return out

    def select(self, scores: Tensor, k: int) -> list[int]:
        """`k` blocks by `selection`, sorted; scores are ignored except for their length."""
        num_layers = len(scores)
        cands = unprotected(num_layers, k, self.protect)
        if k == 0:
            return []
        if self.selection == "random":
            return top_k(random_order(num_layers, self.protect, self.seed), k, self.protect)
        rule = every_other if self.selection == "every_other" else spread
        targets = rule(num_layers, k)
        chosen = [t for t in targets if t in cands]
        for t in targets:
            if t not in cands:  # protected: the nearest free block that no target claims
                free = [c for c in cands if c not in chosen and c not in targets]
                free = free or [c for c in cands if c not in chosen]
                chosen.append(min(free, key=lambda c: (abs(c - t), c)))
        return sorted(chosen)
