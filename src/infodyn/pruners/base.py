"""The pruner protocol and the validation every pruner shares.

A pruner only *chooses* blocks (`select`, pure); `surgery.remove_layers` is what edits a model.
Scores are indexed by 0-based block index; NaN entries and `protect`ed blocks are never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Source = Literal["estimator", "calibration", "none"]


class PrunerConfigError(ValueError):
    """A pruner argument that cannot work; the message names the input and the fix."""


@runtime_checkable
class LayerPruner(Protocol):
    """Chooses which transformer blocks to remove.

    `source` says where `scores` come from: `"estimator"` (a training profile, reduced by the
    pipeline), `"calibration"` (the pruner's own `calibrate(model, batches, k) -> Tensor [L]`), or
    `"none"` (scores are ignored; pass e.g. `torch.full((L,), nan)`).
    """

    source: Source

    def select(self, scores: Tensor, k: int) -> list[int]:
        """Sorted 0-based indices of the `k` blocks to remove."""
        ...


def check_args(k: int | None, fraction: float | None) -> None:
    """Exactly one of `k` (>= 0) / `fraction` (in (0, 1)) is set."""
    if (k is None) == (fraction is None):
        raise PrunerConfigError(
            f"pruner needs exactly one of k / fraction, got k={k}, fraction={fraction}. "
            "Fix: e.g. `pruner.k=4`, or `pruner.k=null pruner.fraction=0.25`."
        )
    if k is not None and int(k) < 0:
        raise PrunerConfigError(f"pruner.k={k} is negative. Fix: pruner.k >= 0.")
    if fraction is not None and not 0.0 < float(fraction) < 1.0:
        raise PrunerConfigError(
            f"pruner.fraction={fraction} is outside (0, 1). Fix: e.g. pruner.fraction=0.25."
        )


def resolve_k(num_layers: int, k: int | None, fraction: float | None) -> int:
    """How many blocks to remove out of `num_layers`, from exactly one of `k` / `fraction`.

    `fraction` rounds to the nearest whole block.
    """
    check_args(k, fraction)
    if fraction is not None:
        k = int(round(float(fraction) * num_layers))
    return check_k(int(k), num_layers)  # type: ignore[arg-type]


def check_k(k: int, num_layers: int) -> int:
    """`k` itself if 0 <= k < num_layers, else a `PrunerConfigError`."""
    if k < 0:
        raise PrunerConfigError(f"pruner.k={k} is negative. Fix: pruner.k >= 0.")
    if k >= num_layers:
        raise PrunerConfigError(
            f"pruner.k={k} would remove all {num_layers} blocks (at least one must stay). "
            f"Fix: pruner.k <= {num_layers - 1} (or a smaller pruner.fraction)."
        )
    return k


def check_protect(protect: Iterable[int], num_layers: int) -> set[int]:
    """`protect` as a set, every index within [0, num_layers)."""
    out = set()
    for p in protect:
        if not 0 <= int(p) < num_layers:
            raise PrunerConfigError(
                f"pruner.protect contains {p}, outside the model's blocks 0..{num_layers - 1}. "
                "Fix: use 0-based block indices that exist."
            )
        out.add(int(p))
    return out


def candidates(scores: Tensor, protect: Iterable[int] = ()) -> list[int]:
    """Block indices that may be removed: finite score and not protected."""
    keep = check_protect(protect, len(scores))
    return [i for i, s in enumerate(scores.tolist()) if i not in keep and not math.isnan(float(s))]


def enough(cands: list[int], k: int, num_layers: int, protect: Iterable[int]) -> None:
    """Raise unless `cands` holds at least `k` blocks."""
    check_k(k, num_layers)
    if len(cands) < k:
        raise PrunerConfigError(
            f"only {len(cands)} of {num_layers} blocks can be removed (protect={sorted(protect)}, "
            f"NaN scores excluded) but k={k}. Fix: protect fewer blocks or lower pruner.k."
        )


def unprotected(num_layers: int, k: int, protect: Iterable[int]) -> list[int]:
    """The blocks not in `protect`, checked to hold at least `k` (scores play no part)."""
    keep = check_protect(protect, num_layers)
    cands = [i for i in range(num_layers) if i not in keep]
    enough(cands, k, num_layers, protect)
    return cands


def top_k(scores: Tensor, k: int, protect: Iterable[int] = ()) -> list[int]:
    """The `k` highest-scoring removable blocks, sorted by index (ties -> lower index)."""
    protect = list(protect)
    cands = candidates(scores, protect)
    enough(cands, k, len(scores), protect)
    vals = scores.detach().double().cpu()
    order = sorted(cands, key=lambda i: (-float(vals[i]), i))
    return sorted(order[:k])


def as_protect(protect: Iterable[int] | None) -> tuple[int, ...]:
    """Hydra hands lists over as ListConfig; pruners keep a tuple of ints."""
    return tuple(int(p) for p in (protect or ()))


def nan_scores(num_layers: int) -> Tensor:
    """Scores for a `source="none"` pruner: L NaNs (nothing to report)."""
    return torch.full((num_layers,), float("nan"), dtype=torch.float64)


class PrunerArgs:
    """The arguments every pruner takes (validated here, as early as possible).

    Args:
        k: number of blocks to remove; `null` when `fraction` is given.
        fraction: share of blocks to remove, in (0, 1); rounds to the nearest block.
        protect: 0-based blocks that are never removed.
    """

    source: Source = "none"

    def __init__(
        self, k: int | None = 4, fraction: float | None = None, protect: Iterable[int] = ()
    ) -> None:
        check_args(k, fraction)
        self.k = None if k is None else int(k)
        self.fraction = None if fraction is None else float(fraction)
        self.protect = as_protect(protect)

    def num_to_remove(self, num_layers: int) -> int:
        """`k` for a model with `num_layers` blocks (from `k` or `fraction`); validates both."""
        k = resolve_k(num_layers, self.k, self.fraction)
        check_protect(self.protect, num_layers)
        return k

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={v!r}" for n, v in vars(self).items() if not n.startswith("_"))
        return f"{type(self).__name__}({args})"


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "labels")


def model_inputs(batch: dict, device: torch.device, labels: bool = False) -> dict[str, Tensor]:
    """The tensors of a tokenized batch the HF model accepts, on `device`."""
    keys = MODEL_INPUTS if labels else MODEL_INPUTS[:-1]
    return {k: v.to(device) for k, v in batch.items() if k in keys and isinstance(v, Tensor)}


@torch.no_grad()
def calibration_hidden_states(model: torch.nn.Module, batches: list[dict]):
    """Yield `(hidden_states, attention_mask)` per batch: eval mode, no grad, mode restored.

    `hidden_states` is HF's L+1 tuple; padding is marked 0 in `attention_mask` `[B, T]`.
    """
    if not batches:
        raise PrunerConfigError(
            "calibration got no batches. Fix: give the pruner at least one calibration batch."
        )
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            inputs = model_inputs(batch, device)
            out = model(**inputs, output_hidden_states=True)
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.ones(inputs["input_ids"].shape, device=device)
            yield out.hidden_states, mask
    finally:
        model.train(was_training)
