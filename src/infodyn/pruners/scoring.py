"""Scores from an estimator: its fine-tuning profile reduced over epochs, or re-scored on
calibration data. The one home of the score reduction (`reduce_profile`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from infodyn.forward import eval_hidden_states
from infodyn.pruners.base import PrunerConfigError, as_scores, require_batches

# `calibration`: the estimator re-scores the fine-tuned model on calibration data instead
REDUCTIONS = ("last", "mean", "calibration")
CALIBRATION_KIND = "hidden_states"  # what `reduce=calibration` can feed an estimator


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise PrunerConfigError(
            f"pruner.reduce='{reduce}' is unknown. Fix: use one of {', '.join(REDUCTIONS)}."
        )
    return reduce


def reduce_profile(epochs: Tensor | Sequence[Sequence[float | None]], reduce: str) -> Tensor:
    """Per-epoch scores `[E, L]` (or `[L]`; None = no value) -> `[L]` float64 by `reduce`:
    the `last` epoch or the NaN-aware `mean` over epochs (a column without values stays NaN)."""
    if isinstance(epochs, Tensor):
        table = epochs.detach().to(torch.float64)
    else:
        rows = [[math.nan if v is None else float(v) for v in row] for row in epochs if row]
        table = torch.tensor(rows, dtype=torch.float64)
    if table.numel() == 0:
        raise PrunerConfigError("the profile holds no epoch; the pruner has nothing to rank.")
    if table.ndim == 1:
        return table
    if reduce == "last":
        return table[-1].clone()
    if reduce == "mean":
        return table.nanmean(dim=0)
    raise PrunerConfigError(
        f"reduce='{reduce}' does not reduce a profile. Fix: use last or mean here; "
        "calibration scores come from the estimator run on calibration data."
    )


def profile_scores(
    profiles: Mapping[str, Any], estimators: Mapping[str, Any], key: str, reduce: str
) -> Tensor:
    """`[L]` from the fine-tuning profile of estimator `key`: its primary series (named by the
    estimator's `name`), one row per epoch, reduced by `reduce`."""
    est = built_estimator(estimators, key)
    series = str(est.name)
    epochs = (profiles.get(key) or {}).get(series) or []
    epochs = [row for row in epochs if row is not None]  # an epoch that saw no batch
    if not epochs:
        raise PrunerConfigError(
            f"no '{series}' values of estimator '{key}' were recorded during fine-tuning; the "
            "pruner has nothing to rank. Fix: fine-tune at least one epoch with that estimator "
            "(stages.finetune_epochs >= 1), or pruner.reduce=calibration."
        )
    return reduce_profile(epochs, reduce)


@torch.no_grad()
def calibration_scores(estimator: Any, model: nn.Module, batches: list[dict]) -> Tensor:
    """`[L]`: a hidden-state estimator fed eval forwards over `batches` (no training).

    Runs on a fresh copy of the estimator, so the fine-tuning state it holds is left alone.
    """
    check_calibration_kind(estimator, "the estimator")
    est = copy.deepcopy(estimator)
    est.reset()
    for hidden_states, mask in eval_hidden_states(model, require_batches(batches)):
        est.update([h.float() for h in hidden_states], mask)
    return as_scores(est.compute())


def built_estimator(estimators: Mapping[str, Any], key: str) -> Any:
    if key not in estimators:
        raise PrunerConfigError(
            f"pruner.estimator='{key}' is not among the built estimators "
            f"({', '.join(sorted(estimators)) or 'none'}). Fix: a conf/estimator entry name, "
            f"e.g. pruner.estimator=cosine, or add it: estimator=[cosine,{key}]."
        )
    return estimators[key]


def check_calibration_kind(estimator: Any, key: str) -> None:
    kind = getattr(estimator, "input_kind", None)
    if kind != CALIBRATION_KIND:
        raise PrunerConfigError(
            f"pruner.reduce=calibration re-scores with estimator '{key}', whose input_kind is "
            f"{kind!r}: only '{CALIBRATION_KIND}' estimators can be fed calibration forwards. "
            "Fix: pruner.reduce=last (or mean), or an estimator such as cosine."
        )
