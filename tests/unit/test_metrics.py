"""build_metrics against values computed by hand (formulas) or by scipy on small tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from infodyn.metrics import build_metrics

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"


def task_cfg(name: str):
    return OmegaConf.load(TASK_DIR / f"{name}.yaml")


def one_hot_logits(preds: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.randn(len(preds), num_classes) * 0.1
    logits[torch.arange(len(preds)), torch.tensor(preds)] += 5.0
    return logits


PREDS = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1]
LABELS = [1, 0, 0, 1, 1, 0, 1, 1, 0, 0]
# tp=4 (0,3,6,7), fp=2 (1,9), fn=1 (4), tn=3 (2,5,8)
TP, FP, FN, TN = 4, 2, 1, 3


def test_binary_f1_and_accuracy_by_hand():
    m = build_metrics(task_cfg("mrpc"))
    out = m(one_hot_logits(PREDS, 2), torch.tensor(LABELS))
    assert set(out) == {"f1", "accuracy"}
    assert out["accuracy"].item() == pytest.approx((TP + TN) / 10)
    assert out["f1"].item() == pytest.approx(2 * TP / (2 * TP + FP + FN))


def test_matthews_by_formula_and_accumulates_over_batches():
    m = build_metrics(task_cfg("cola"))
    logits, labels = one_hot_logits(PREDS, 2), torch.tensor(LABELS)
    m.update(logits[:4], labels[:4])
    m.update(logits[4:], labels[4:])
    out = m.compute()
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert out["matthews"].item() == pytest.approx(mcc, abs=1e-6)
    assert out["accuracy"].item() == pytest.approx(0.7)


def glue_mcc(preds: list[int], labels: list[int], n: int) -> float:
    """MCC from the confusion matrix (Gorodkin's R_K), 0 where the denominator is 0 (sklearn's,
    hence GLUE's, convention)."""
    c = torch.zeros(n, n, dtype=torch.float64)
    for y, p in zip(labels, preds, strict=True):
        c[y, p] += 1
    s, t, pk = c.sum(), c.sum(1), c.sum(0)
    den = math.sqrt(float(s**2 - (pk**2).sum())) * math.sqrt(float(s**2 - (t**2).sum()))
    return 0.0 if den == 0 else float(c.trace() * s - (t * pk).sum()) / den


@pytest.mark.parametrize("task", ["cola", "mnli"])
@pytest.mark.parametrize(
    "case", ["constant prediction", "one label only", "both constant", "mixed"]
)
def test_matthews_of_a_constant_prediction_is_zero_as_in_glue(task, case):
    # torchmetrics 1.9 gives an all-"acceptable" CoLA prediction 0.0256 (eps), GLUE gives 0
    n = 3 if task == "mnli" else 2
    gen = torch.Generator().manual_seed(len(case) + n)
    labels = torch.randint(0, n, (40,), generator=gen).tolist()
    preds = torch.randint(0, n, (40,), generator=gen).tolist()
    if case in ("constant prediction", "both constant"):
        preds = [1] * 40
    if case in ("one label only", "both constant"):
        labels = [1] * 40
    cfg = task_cfg(task)
    cfg.metrics = ["accuracy", "matthews"]
    out = build_metrics(cfg)(one_hot_logits(preds, n), torch.tensor(labels))
    assert out["matthews"].item() == pytest.approx(glue_mcc(preds, labels, n), abs=1e-6)
    if case != "mixed":
        assert out["matthews"].item() == 0.0


def test_the_constant_baseline_is_the_best_single_class():
    from infodyn.metrics import constant_baseline

    mrpc = constant_baseline(task_cfg("mrpc"), [1] * 7 + [0] * 3)
    assert mrpc["f1"] == pytest.approx(2 * 7 / (2 * 7 + 3))  # all "equivalent"
    assert mrpc["accuracy"] == pytest.approx(0.7)
    cola = constant_baseline(task_cfg("cola"), [0] * 4 + [1] * 6)
    assert cola == {"matthews": 0.0, "accuracy": pytest.approx(0.6)}  # MCC ties: by accuracy
    assert constant_baseline(task_cfg("stsb"), [0.5, 4.0]) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="no labels"):
        constant_baseline(task_cfg("sst2"), [])


def test_multiclass_accuracy_mnli():
    m = build_metrics(task_cfg("mnli"))
    preds = [0, 1, 2, 2, 1, 0]
    labels = [0, 1, 1, 2, 0, 0]
    out = m(one_hot_logits(preds, 3), torch.tensor(labels))
    assert list(out) == ["accuracy"]
    assert out["accuracy"].item() == pytest.approx(4 / 6)  # micro: plain fraction correct


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_pearson_spearman_match_scipy(shape):
    m = build_metrics(task_cfg("stsb"))
    preds = torch.tensor([0.5, 2.0, 1.0, 4.5, 3.0, 3.9])
    labels = torch.tensor([0.0, 2.5, 1.5, 5.0, 2.0, 4.0])
    out = m(preds if shape == "flat" else preds[:, None], labels)
    assert out["pearson"].item() == pytest.approx(stats.pearsonr(preds, labels)[0], abs=1e-5)
    assert out["spearman"].item() == pytest.approx(stats.spearmanr(preds, labels)[0], abs=1e-5)


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"])
def test_every_task_builds_its_main_metric(task):
    cfg = task_cfg(task)
    m = build_metrics(cfg)
    assert cfg.main_metric in m
    assert sorted(m) == sorted(cfg.metrics)


def test_unknown_metric_names_the_choices():
    cfg = {"name": "rte", "metrics": ["accuracy", "bleu"], "num_labels": 2}
    with pytest.raises(ValueError, match="'bleu'.*accuracy, f1, matthews, pearson, spearman"):
        build_metrics(cfg)


def test_metric_kind_mismatches_are_rejected():
    with pytest.raises(ValueError, match="needs num_labels=2"):
        build_metrics({"name": "mnli", "metrics": ["f1"], "num_labels": 3})
    with pytest.raises(ValueError, match="does not apply to the regression task"):
        build_metrics(
            {"name": "stsb", "metrics": ["accuracy"], "num_labels": 1, "is_regression": True}
        )
