"""What the report calls things: task and criterion order, display names, the paper's metrics."""

from __future__ import annotations

GLUE_ORDER = ("mnli", "mrpc", "sst2", "cola", "qnli", "qqp", "rte", "stsb")
BASELINE = "none"  # the unpruned row every criterion is compared with
REFERENCE = "redundancy"  # the paper's criterion
ORACLE = "oracle"  # the best subset on a selection split: an upper bound, not a contender
CONSTANT = "constant"  # the best label-blind prediction: the floor a model must clear
# Rows that are references, never "best": the unpruned model, the oracle's upper bound and the
# constant predictor's floor.
NOT_CONTENDERS = frozenset({BASELINE, ORACLE, CONSTANT})

CRITERION_LABELS = {
    "redundancy": "Redundancy (ours)",
    "knowledge_entropy": "Knowledge entropy",
    "layerdrop": "LayerDrop (every other)",
    "layerdrop_random": "LayerDrop (random)",
    "slimllm": "SlimLLM",
    "last_k": "Last-k",
    ORACLE: "Oracle (best subset)",
    BASELINE: "Unpruned",
    CONSTANT: "Constant predictor",
}
TASK_LABELS = {
    "mnli": "MNLI",
    "mrpc": "MRPC",
    "sst2": "SST-2",
    "cola": "CoLA",
    "qnli": "QNLI",
    "qqp": "QQP",
    "rte": "RTE",
    "stsb": "STS-B",
}
# The metrics the paper's Table 1 reports per task (first = the task's main metric there).
PAPER_METRICS = {
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "cola": ("matthews",),
}
METRIC_LABELS = {
    "f1": "F1",
    "accuracy": "Acc",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "matthews": "MCC",
}


def label(criterion: str) -> str:
    """The display name of a criterion; unknown names are shown as they are."""
    return CRITERION_LABELS.get(criterion, criterion)


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def task_metrics(task: str, main_metric: str) -> tuple[str, ...]:
    """The metrics shown for `task`: the paper's pair, else the run's main metric alone."""
    return PAPER_METRICS.get(task, (main_metric,) if main_metric else ("accuracy",))


def task_key(task: str) -> tuple[int, str]:
    return (GLUE_ORDER.index(task) if task in GLUE_ORDER else len(GLUE_ORDER), task)


def criterion_key(name: str) -> tuple[int, str]:
    """`none`, the constant predictor, `redundancy`, the rest alphabetically, the oracle last."""
    return ({BASELINE: 0, CONSTANT: 1, REFERENCE: 2, ORACLE: 4}.get(name, 3), name)
