"""GLUE task metrics as a `torchmetrics.MetricCollection`, keyed by the task config's names.

Every metric takes the model's raw output: logits `[B, C]` for classification (argmax is taken
inside), `[B]` or `[B, 1]` for regression (STS-B), and the labels the data module yields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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


# Module-level functions, not lambdas, so that the collection can be pickled (checkpoints, DDP).
def _argmax(logits: Tensor) -> Tensor:
    return logits.argmax(dim=-1) if logits.ndim > 1 else logits


def _flatten_float(preds: Tensor) -> Tensor:
    return preds.reshape(-1).float()


def _long(target: Tensor) -> Tensor:
    return target.long()


def _float(target: Tensor) -> Tensor:
    return target.reshape(-1).float()


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
    return BinaryMatthewsCorrCoef() if binary else MulticlassMatthewsCorrCoef(num_labels)


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
