"""GLUE task metrics as a `torchmetrics.MetricCollection`, keyed by the task config's names.

Every metric takes the model's raw output: logits `[B, C]` for classification (argmax is taken
inside), `[B]` or `[B, 1]` for regression (STS-B), and the labels the data module yields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.wrappers import LambdaInputTransformer

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
METRIC_NAMES = CLASSIFICATION_METRICS + REGRESSION_METRICS
# A metric whose definition changed: a stored result of a task using it was computed the old way
# and must not be reused (`reuse.flat_config` adds these to every record's config).
METRIC_REVISIONS = {"matthews": "undefined-is-0 (GLUE/sklearn)"}


# Module-level functions, not lambdas, so that the collection can be pickled (checkpoints, DDP).
def _argmax(logits: Tensor) -> Tensor:
    return logits.argmax(dim=-1) if logits.ndim > 1 else logits


def _flatten_float(preds: Tensor) -> Tensor:
    return preds.reshape(-1).float()


def _long(target: Tensor) -> Tensor:
    return target.long()


def _float(target: Tensor) -> Tensor:
    return target.reshape(-1).float()


def _undefined_mcc_is_zero(confmat: Tensor) -> bool:
    """True when a row or column of the confusion matrix is empty: MCC's denominator is 0."""
    c = confmat.double()
    s = c.sum()
    return bool((s**2 - (c.sum(0) ** 2).sum()) * (s**2 - (c.sum(1) ** 2).sum()) == 0)


# Hand-written: torchmetrics 1.9 gives a constant prediction an eps-made MCC (CoLA dev, all
# "acceptable": 0.0256, not 0; Lightning-AI/torchmetrics#3355), where GLUE's metric (sklearn)
# gives 0. A collapsed model must score exactly what the constant predictor scores.
class BinaryMatthews(BinaryMatthewsCorrCoef):
    def compute(self) -> Tensor:
        if _undefined_mcc_is_zero(self.confmat):
            return torch.zeros((), dtype=torch.float32, device=self.confmat.device)
        return super().compute()


class MulticlassMatthews(MulticlassMatthewsCorrCoef):
    def compute(self) -> Tensor:
        if _undefined_mcc_is_zero(self.confmat):
            return torch.zeros((), dtype=torch.float32, device=self.confmat.device)
        return super().compute()


def _classification_metric(name: str, num_labels: int) -> Metric:
    binary = num_labels == 2
    if name == "accuracy":
        return BinaryAccuracy() if binary else MulticlassAccuracy(num_labels, average="micro")
    if name == "f1":
        if not binary:
            raise ValueError(
                f"metric 'f1' is the binary F1 of the positive class (MRPC, QQP) and needs "
                f"num_labels=2, got {num_labels}. Fix: use accuracy or matthews for this task."
            )
        return BinaryF1Score()
    return BinaryMatthews() if binary else MulticlassMatthews(num_labels)


def build_metrics(task: Mapping[str, Any]) -> MetricCollection:
    """The task's metrics (`task.metrics`) as one collection; `compute()` returns them by name.

    Args:
        task: a `conf/task/*.yaml` entry; uses `metrics`, `num_labels` and `is_regression`.

    Raises:
        ValueError: a metric name that is unknown or does not fit the task kind.
    """
    names = list(task["metrics"])
    regression = bool(task.get("is_regression", False))
    num_labels = int(task["num_labels"])
    metrics: dict[str, Metric] = {}
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(
                f"task '{task.get('name')}' asks for metric '{name}', which is unknown. "
                f"Fix: use one of {', '.join(METRIC_NAMES)} in conf/task/*.yaml `metrics`."
            )
        allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
        if name not in allowed:
            kind = "regression" if regression else "classification"
            raise ValueError(
                f"metric '{name}' does not apply to the {kind} task '{task.get('name')}'. "
                f"Fix: use one of {', '.join(allowed)}."
            )
        pred_fn: Callable[[Tensor], Tensor]
        if regression:
            base: Metric = PearsonCorrCoef() if name == "pearson" else SpearmanCorrCoef()
            pred_fn, target_fn = _flatten_float, _float
        else:
            base = _classification_metric(name, num_labels)
            pred_fn, target_fn = _argmax, _long
        metrics[name] = LambdaInputTransformer(
            base, transform_pred=pred_fn, transform_target=target_fn
        )
    return MetricCollection(metrics)


def constant_baseline(task: Mapping[str, Any], labels: Sequence[float]) -> dict[str, float]:
    """The task's metrics of the best label-blind prediction on `labels` (the trivial row a
    model must beat before its pruning means anything).

    Classification: one class for every example, the class with the highest main metric, ties
    broken by the task's other metrics in order, then the lower class id (CoLA: every constant
    has MCC 0, so the majority class by accuracy) - on MRPC that is "equivalent" for all.
    Regression: a constant correlates with nothing, so Pearson and Spearman are 0 (torchmetrics
    would give NaN).
    """
    names = list(task["metrics"])
    if bool(task.get("is_regression", False)):
        return dict.fromkeys(names, 0.0)
    if not labels:
        raise ValueError(f"task '{task.get('name')}': no labels to score a constant against")
    target = torch.as_tensor([int(y) for y in labels])
    order = [task["main_metric"], *(m for m in names if m != task["main_metric"])]
    scores = []
    for c in range(int(task["num_labels"])):
        logits = torch.nn.functional.one_hot(torch.full_like(target, c), int(task["num_labels"]))
        got = {k: float(v) for k, v in build_metrics(task)(logits.float(), target).items()}
        scores.append((tuple(got[m] for m in order), -c, got))
    return max(scores, key=lambda s: s[:2])[2]
