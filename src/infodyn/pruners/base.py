"""The pruner protocol and the validation every pruner shares.

A pruner only *chooses* blocks (`select`, pure); `surgery.remove_layers` is what edits a model.
Scores are indexed by 0-based block index; NaN entries and `protect`ed blocks are never chosen.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from infodyn.errors import ConfigError


class PrunerConfigError(ConfigError):
    """A pruner argument that cannot work; the message names the input and the fix."""


@dataclass
class ScoringContext:
    """What a pruner may use to score blocks, built by the score stage.

    `calibration()` and `evaluate(...)` are lazy: a pruner that does not call them costs nothing.
    """

    model: nn.Module  # the fine-tuned HF model (PreTrainedModel, LoRA merged), eval mode
    num_layers: int
    k: int
    seed: int
    profiles: Mapping[str, Any]  # the fine-tuning stage's estimator profiles, by estimator key
    estimators: Mapping[str, Any]  # built estimators (re-scoring on calibration data)
    calibration: Callable[[], list[dict]]  # tokenized batches with labels, from the train split
    # (model, batches) -> {"metric": main metric, "loss": mean loss}: how the task judges a model
    evaluate: Callable[[nn.Module, list[dict]], dict[str, float]]
    main_metric: str = "accuracy"


@runtime_checkable
class LayerPruner(Protocol):
    """Everything the pipeline asks of a pruner; no pipeline code looks at a pruner's name.

    Scores are per 0-based block. `score` returns the criterion's raw values (what a paper
    reports); `prunability` maps them to "higher = remove first", which everything that ranks
    uses; `select` chooses the blocks.
    """

    k: int | None
    fraction: float | None
    protect: tuple[int, ...]

    def needs_estimator(self) -> str | None:
        """The conf/estimator entry `score` uses (its fine-tuning profile, or re-scoring), or
        None."""
        ...

    def needs_profile(self) -> bool:
        """Whether `score` reads that estimator's fine-tuning profile (so a run must fine-tune
        with it: `stages.finetune_epochs=0` records none)."""
        ...

    def num_to_remove(self, num_layers: int) -> int:
        """How many blocks go from a model with `num_layers` blocks (0: keep all); validates."""
        ...

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        """Raise `PrunerConfigError` for anything knowable before training (k, protect, the
        estimator's kind); `estimators` are the built ones, keyed as in the config."""
        ...

    def training_signature(self) -> dict[str, Any]:
        """What of this pruner changes fine-tuning ({} for most): part of the fine-tune's
        identity, so a run that trains differently never shares or reuses another's stage."""
        ...

    def prepare_training(self, model: nn.Module, seed: int) -> None:
        """Called on the HF model before fine-tuning (LayerDrop installs its layer dropout)."""
        ...

    def finish_training(self, model: nn.Module) -> None:
        """Called on the HF model after fine-tuning; undoes `prepare_training`."""
        ...

    def score(self, ctx: ScoringContext) -> Tensor:
        """Raw per-block values `[L]` (float64; NaN = no score for that block)."""
        ...

    def prunability(self, scores: Tensor) -> Tensor:
        """`scores` oriented so that higher = remove first (NaN stays NaN)."""
        ...

    def select(self, scores: Tensor, k: int) -> list[int]:
        """Sorted 0-based indices of the `k` blocks to remove, from raw `scores`."""
        ...


# ---------- argument types (checked at construction: Hydra hands over what the user typed) ----


def as_k(k: Any) -> int | None:
    """`k` as an int (None stays None); a fractional, boolean or text `k` is refused."""
    if k is None:
        return None
    whole = isinstance(k, numbers.Integral) or (
        isinstance(k, numbers.Real) and math.isfinite(float(k)) and float(k).is_integer()
    )
    if isinstance(k, bool) or not whole:
        raise PrunerConfigError(
            f"pruner.k={k!r} is not a whole number of blocks. Fix: an integer such as "
            "pruner.k=2, or pruner.k=null pruner.fraction=0.25 for a share of the blocks."
        )
    return int(k)


def as_fraction(fraction: Any) -> float | None:
    """`fraction` as a float in (0, 1) (None stays None)."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise PrunerConfigError(
            f"pruner.fraction={fraction!r} is not a number. Fix: e.g. pruner.fraction=0.25."
        )
    if not 0.0 < float(fraction) < 1.0:
        raise PrunerConfigError(
            f"pruner.fraction={fraction} is outside (0, 1). Fix: e.g. pruner.fraction=0.25."
        )
    return float(fraction)


def as_protect(protect: Any) -> tuple[int, ...]:
    """`protect` as a tuple of ints; a bare number (`protect=0`) or text is refused."""
    if protect is None:
        return ()
    if isinstance(protect, (str, bytes)) or not isinstance(protect, (Sequence, Iterable)):
        raise PrunerConfigError(
            f"pruner.protect={protect!r} is not a list of block indices. Fix: a list, e.g. "
            f"pruner.protect=[{protect}] to protect that block, or pruner.protect=[] for none."
        )
    out = []
    for p in protect:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise PrunerConfigError(
                f"pruner.protect contains {p!r}, which is not a 0-based block index. Fix: "
                "whole numbers only, e.g. pruner.protect=[0,1]."
            )
        out.append(int(p))
    return tuple(out)


def check_args(k: int | None, fraction: float | None) -> None:
    """Exactly one of `k` (>= 0) / `fraction` (in (0, 1)) is set."""
    k, fraction = as_k(k), as_fraction(fraction)
    if (k is None) == (fraction is None):
        raise PrunerConfigError(
            f"pruner needs exactly one of k / fraction, got k={k}, fraction={fraction}. "
            "Fix: e.g. `pruner.k=4`, or `pruner.k=null pruner.fraction=0.25`."
        )
    if k is not None and k < 0:
        raise PrunerConfigError(f"pruner.k={k} is negative. Fix: pruner.k >= 0.")


# ---------- ranges (need the model's depth) ----------


def resolve_k(num_layers: int, k: int | None, fraction: float | None) -> int:
    """How many blocks to remove out of `num_layers`, from exactly one of `k` / `fraction`.

    `fraction` rounds to the nearest whole block; one that rounds to 0 blocks is refused.
    """
    check_args(k, fraction)
    if fraction is not None:
        k = int(round(float(fraction) * num_layers))
        if k == 0:
            raise PrunerConfigError(
                f"pruner.fraction={fraction} of {num_layers} blocks rounds to 0 blocks: nothing "
                f"would be removed. Fix: pruner.fraction >= {1 / num_layers:.3g} (one block), "
                "or pruner.k=1 (pruner=none keeps every block on purpose)."
            )
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
    for p in as_protect(protect):
        if not 0 <= p < num_layers:
            raise PrunerConfigError(
                f"pruner.protect contains {p}, outside the model's blocks 0..{num_layers - 1}. "
                "Fix: use 0-based block indices that exist."
            )
        out.add(p)
    return out


def check_removable(k: int, num_layers: int, protect: Iterable[int]) -> None:
    """Raise unless `num_layers - len(protect)` blocks leave room for `k`."""
    keep = check_protect(protect, num_layers)
    free = num_layers - len(keep)
    if k > free:
        raise PrunerConfigError(
            f"pruner.protect={sorted(keep)} leaves {free} of {num_layers} blocks removable "
            f"but pruner.k={k}. Fix: protect fewer blocks or lower pruner.k to {free} or less."
        )


def candidates(scores: Tensor, protect: Iterable[int] = ()) -> list[int]:
    """Block indices that may be removed: finite score and not protected."""
    keep = check_protect(protect, len(scores))
    return [i for i, s in enumerate(scores.tolist()) if i not in keep and not math.isnan(float(s))]


def enough(cands: list[int], k: int, num_layers: int, protect: Iterable[int]) -> None:
    """Raise unless `cands` holds at least `k` blocks."""
    check_k(k, num_layers)
    if len(cands) < k:
        raise PrunerConfigError(
            f"only {len(cands)} of {num_layers} blocks can be removed (protect="
            f"{sorted(as_protect(protect))}, NaN scores excluded) but k={k}. Fix: protect fewer "
            "blocks or lower pruner.k."
        )


def unprotected(num_layers: int, k: int, protect: Iterable[int]) -> list[int]:
    """The blocks not in `protect`, checked to hold at least `k` (scores play no part)."""
    keep = check_protect(protect, num_layers)
    cands = [i for i in range(num_layers) if i not in keep]
    enough(cands, k, num_layers, protect)
    return cands


def top_k(scores: Tensor, k: int, protect: Iterable[int] = ()) -> list[int]:
    """The `k` highest-scoring removable blocks, sorted by index (ties -> lower index)."""
    protect = as_protect(protect)
    cands = candidates(scores, protect)
    enough(cands, k, len(scores), protect)
    vals = scores.detach().double().cpu()
    order = sorted(cands, key=lambda i: (-float(vals[i]), i))
    return sorted(order[:k])


def nan_scores(num_layers: int) -> Tensor:
    """Scores of a pruner that measures nothing: L NaNs."""
    return torch.full((num_layers,), float("nan"), dtype=torch.float64)


def as_scores(values: Tensor) -> Tensor:
    """`values` as a float64 CPU vector (the one dtype scores travel in)."""
    return values.detach().to(device="cpu", dtype=torch.float64).reshape(-1)


class PrunerArgs:
    """The arguments every pruner takes (validated here, as early as possible), and the
    protocol's defaults: no estimator, training untouched, scores ranked highest-first.

    Args:
        k: number of blocks to remove; `null` when `fraction` is given.
        fraction: share of blocks to remove, in (0, 1); rounds to the nearest block.
        protect: 0-based blocks that are never removed.
    """

    def __init__(
        self, k: int | None = 4, fraction: float | None = None, protect: Iterable[int] = ()
    ) -> None:
        check_args(k, fraction)
        self.k = as_k(k)
        self.fraction = as_fraction(fraction)
        self.protect = as_protect(protect)

    def needs_estimator(self) -> str | None:
        return None

    def needs_profile(self) -> bool:
        return False

    def num_to_remove(self, num_layers: int) -> int:
        """`k` for a model with `num_layers` blocks (from `k` or `fraction`); validates both
        and that `protect` leaves `k` blocks removable."""
        k = resolve_k(num_layers, self.k, self.fraction)
        check_removable(k, num_layers, self.protect)
        return k

    def check(self, num_layers: int, estimators: Mapping[str, Any]) -> None:
        self.num_to_remove(num_layers)

    def training_signature(self) -> dict[str, Any]:
        return {}

    def prepare_training(self, model: nn.Module, seed: int) -> None:
        return None

    def finish_training(self, model: nn.Module) -> None:
        return None

    def score(self, ctx: ScoringContext) -> Tensor:
        return nan_scores(ctx.num_layers)

    def prunability(self, scores: Tensor) -> Tensor:
        """Raw scores as they are: for this criterion higher already means remove first."""
        return as_scores(scores)

    def select(self, scores: Tensor, k: int) -> list[int]:
        """The `k` most prunable blocks (NaN and protected never chosen), sorted."""
        return top_k(self.prunability(scores), k, self.protect)

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={v!r}" for n, v in vars(self).items() if not n.startswith("_"))
        return f"{type(self).__name__}({args})"


def require_batches(batches: list[dict]) -> list[dict]:
    """`batches`, refused when empty: a calibration criterion has nothing to measure."""
    if not batches:
        raise PrunerConfigError(
            "calibration got no batches. Fix: give the pruner at least one calibration batch "
            "(data.calibration_size >= 1)."
        )
    return batches


def require_labels(batches: list[dict], who: str) -> None:
    """Refuse calibration batches without `labels` for a criterion that needs a loss."""
    if any("labels" not in b for b in batches):
        raise PrunerConfigError(
            f"{who} needs `labels` in the calibration batches (it measures the task loss). "
            "Fix: build the calibration batches from a labelled split (the train split)."
        )
