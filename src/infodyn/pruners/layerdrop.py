"""LayerDrop (Fan et al., 2020, "Reducing Transformer Depth on Demand with Structured Dropout").

Two parts:
- `apply_layerdrop` / `remove_layerdrop`: the training-time mechanism. In training mode each
  block is skipped with probability `p` on every forward (it returns its input hidden states);
  eval mode never drops.
- `LayerDropPruner`: the inference-time pruning rule; it ignores scores and removes `k` blocks
  spread evenly over depth (`every_other`) or at random (`random`).

Caveat from the authors: LayerDrop applied only during fine-tuning is weaker than a model
*pretrained* with LayerDrop; here it is applied during fine-tuning only.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from infodyn.layers import find_layer_list
from infodyn.pruners.base import PrunerArgs, PrunerConfigError, unprotected
from infodyn.pruners.random import draw

SELECTIONS = ("every_other", "random")


class _DropState:
    """Drop probability and the RNG shared by all blocks of one model (copy/pickle-safe)."""

    def __init__(self, p: float, seed: int | None) -> None:
        self.p = float(p)
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
        return {"p": self.p, "rng": rng}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.p = state["p"]
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
    if self.training and self._layerdrop.drop():
        # In transformers v5 every supported block returns the hidden-states Tensor itself.
        return args[0] if args else kwargs["hidden_states"]
    return type(self).forward(self, *args, **kwargs)


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
    """`k` blocks spread evenly over depth: `floor((j + 0.5) * L / k)` for j = 0..k-1.

    The middle of each of k equal strata, e.g. L=12, k=4 -> [1, 4, 7, 10]; L=6, k=3 -> [1, 3, 5]
    (every other block, the first kept); L=6, k=2 -> [1, 4].
    """
    return [math.floor((j + 0.5) * num_layers / k) for j in range(k)]


class LayerDropPruner(PrunerArgs):
    """Fine-tune with LayerDrop rate `p`, then remove `k` blocks without looking at scores.

    Args:
        p: drop probability per block and forward during fine-tuning (pipeline applies it).
        selection: `every_other` (`every_other(L, k)`; a protected target moves to the nearest
            free block, lower first on ties) or `random` (seeded).
        seed: seeds the `random` selection and the training-time drop pattern.
        k, fraction, protect: see `PrunerArgs`.
    """

    source = "none"

    def __init__(
        self,
        k: int | None = 4,
        fraction: float | None = None,
        protect: Iterable[int] = (),
        p: float = 0.2,
        selection: Literal["every_other", "random"] = "every_other",
        seed: int = 0,
    ) -> None:
        super().__init__(k, fraction, protect)
        if not 0.0 <= float(p) <= 1.0:
            raise PrunerConfigError(f"pruner.p={p} is outside [0, 1]. Fix: e.g. pruner.p=0.2.")
        if selection not in SELECTIONS:
            raise PrunerConfigError(
                f"pruner.selection='{selection}' is unknown. Fix: use one of "
                f"{', '.join(SELECTIONS)}."
            )
        self.p = float(p)
        self.selection = selection
        self.seed = int(seed)

    def apply(self, model: nn.Module) -> nn.Module:
        """`apply_layerdrop(model, self.p, self.seed)`."""
        return apply_layerdrop(model, self.p, self.seed)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """`k` blocks by `selection`, sorted; scores are ignored except for their length."""
        num_layers = len(scores)
        cands = unprotected(num_layers, k, self.protect)
        if k == 0:
            return []
        if self.selection == "random":
            return draw(cands, k, self.seed)
        chosen: list[int] = []
        for target in every_other(num_layers, k):
            free = [c for c in cands if c not in chosen]
            chosen.append(min(free, key=lambda c: (abs(c - target), c)))
        return sorted(chosen)
