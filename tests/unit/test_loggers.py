"""Stage-namespaced logging on one step, the run summary and the end-of-run table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger

from conftest import compose_config
from infodyn.builders import build_trainer
from infodyn.loggers import (
    RunLoggers,
    StageLogger,
    close_loggers,
    log_run_summary,
    summary_metrics,
    summary_table,
)
from infodyn.results import RunResult, Throughput
from tiny_lightning import ScriptedClassifier, token_loader


def cfg_of(*overrides: str):
    return compose_config(
        ["trainer=cpu", "logger=none", "task=sst2", "trainer.log_every_n_steps=1", *overrides]
    )


def result(**kw) -> RunResult:
    base = dict(
        task="mrpc",
        model="roberta_tiny",
        seed=0,
        pruner="redundancy",
        estimator="cosine",
        finetune="full",
        sweep="manual",
        job_name="job",
        main_metric="f1",
        metrics={
            "finetune": {"f1": 0.8, "accuracy": 0.75, "loss": 0.5},
            "pruned": {"f1": 0.6, "accuracy": 0.5, "loss": 0.9},
            "recover": {"f1": 0.78, "accuracy": 0.7, "loss": 0.55},
            "final": {"f1": 0.78, "accuracy": 0.7, "loss": 0.55},
        },
        num_layers_before=4,
        num_layers_after=3,
        num_parameters_before=2_000_000,
        num_parameters_after=1_500_000,
        pruned_layers=[2],
        throughput=Throughput(before=100.0, after=150.0, speedup=1.5, batches=8),
        profiles={
            "indexing": "0-based block indices",
            "finetune": {
                "cosine": {"layers": [0, 1, 2, 3], "redundancy": [[0.1, 0.2, None, 0.3]] * 2}
            },
        },
        wall_time_s=12.5,
    )
    return RunResult(**{**base, **kw})


def run_stages(loggers: RunLoggers, tmp_path: Path) -> None:
    """finetune (2 epochs) -> eval -> pruned eval -> recover (1 epoch) -> final eval."""
    cfg = cfg_of()
    module = ScriptedClassifier(script=[0.5, 0.6])
    train, dev = token_loader(), token_loader(seed=1)
    fit = build_trainer(cfg, 2, [], loggers.stage("finetune"), tmp_path / "ft")
    fit.fit(module, train_dataloaders=train, val_dataloaders=dev)
    for stage in ("finetune", "pruned"):
        build_trainer(cfg, 1, [], loggers.stage(stage), None, evaluation=True).validate(
            module, dataloaders=dev, verbose=False
        )
    rec = build_trainer(cfg, 1, [], loggers.stage("recover"), tmp_path / "rc")
    rec.fit(ScriptedClassifier(script=[0.7]), train_dataloaders=train, val_dataloaders=dev)
    build_trainer(cfg, 1, [], loggers.stage("final"), None, evaluation=True).validate(
        module, dataloaders=dev, verbose=False
    )


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_stages_log_under_their_name_on_one_monotonic_step(tmp_path) -> None:
    base = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    loggers = RunLoggers([base])
    run_stages(loggers, tmp_path)
    log_run_summary(loggers, result())
    close_loggers(loggers)
    rows = csv_rows(tmp_path / "csv" / "metrics.csv")
    keys = {k for r in rows for k, v in r.items() if v and k != "step"}
    prefixes = ("finetune/", "pruned/", "recover/", "final/", "throughput/", "num_", "wall")
    assert all(k.startswith(prefixes) for k in keys), sorted(keys)
    assert {"finetune/train/loss_step", "finetune/val/accuracy", "recover/val/accuracy"} <= keys
    staged = [r for r in rows if not r.get("final/f1")]  # all but the run summary's row

    def steps(prefix: str) -> list[int]:
        return [
            int(r["step"]) for r in staged if any(k.startswith(prefix) and v for k, v in r.items())
        ]

    # one step across stages: recovery continues after everything the fine-tune logged
    assert max(steps("finetune/")) < min(steps("pruned/")) < min(steps("recover/"))
    assert max(steps("recover/")) < min(steps("final/"))
    # validation every epoch of the fit, and each evaluation once at its own step (not at 0)
    assert len(steps("finetune/val/accuracy")) == 3  # 2 epochs + the evaluation trainer
    assert len(steps("pruned/val/accuracy")) == 1 and len(steps("final/val/accuracy")) == 1
    assert min(steps("pruned/val/accuracy")) > 0
    order = [int(r["step"]) for r in rows]
    assert order == sorted(order)
    # the run summary is the last row, after every stage
    (last,) = [r for r in rows if r.get("final/f1")]
    assert int(last["step"]) == max(order) and float(last["throughput/speedup"]) == 1.5
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "finetune:" in hparams and "recover:" in hparams  # each stage's module hparams


def test_stage_logger_forwards_to_any_logger(tmp_path) -> None:
    base = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    loggers = RunLoggers([base])
    (lg,) = loggers.stage("recover", start_step=100)
    assert isinstance(lg, StageLogger) and lg.inner is base
    assert lg.save_dir == base.save_dir and lg.name == "csv" and lg.log_dir == base.log_dir
    lg.log_metrics({"a": 1.0, "recover/redundancy/layer_02": 0.5}, step=5)
    assert loggers.next_step == 106
    lg.save()
    (row,) = csv_rows(tmp_path / "csv" / "metrics.csv")
    assert {k for k, v in row.items() if v} == {"step", "recover/a", "recover/redundancy/layer_02"}
    assert list(loggers) == [base] and len(loggers) == 1
    with pytest.raises(ValueError, match="stage name"):
        loggers.stage("a/b")


def test_summary_metrics_hold_speed_sizes_and_wall_time() -> None:
    flat = summary_metrics(result(metrics={"final": {"f1": 0.7, "bad": math.nan}}))
    assert flat == {
        "final/f1": 0.7,
        "throughput/before": 100.0,
        "throughput/after": 150.0,
        "throughput/speedup": 1.5,
        "num_layers_before": 4,
        "num_layers_after": 3,
        "num_parameters_before": 2_000_000,
        "num_parameters_after": 1_500_000,
        "wall_time_s": 12.5,
    }


def test_summary_table_says_what_the_run_did_and_where_it_is(tmp_path) -> None:
    (tmp_path / "model").mkdir()
    text = summary_table(result(), tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("mrpc · roberta_tiny · pruner redundancy")
    header = next(line for line in lines if line.strip().startswith("stage"))
    assert header.split()[:4] == ["stage", "f1*", "accuracy", "loss"]  # main metric first
    pruned = next(line for line in lines if line.strip().startswith("pruned "))
    assert pruned.split()[1:] == ["0.6000", "0.5000", "0.9000"]
    assert "pruned blocks: 2 (0-based); 4 -> 3 blocks" in text
    assert "parameters: 2.00M -> 1.50M (-25.0%)" in text
    assert "speed-up: 1.50x (eval 100 -> 150 examples/s, 8 batches)" in text
    assert f"results: {tmp_path / 'results.json'}" in text
    assert f"model:   {tmp_path / 'model'}" in text
    bare = summary_table(result(throughput=None, metrics={}, pruned_layers=[]), tmp_path / "x")
    assert "speed-up" not in bare and "pruned blocks: none" in bare and "model:" not in bare


def test_a_failing_logger_never_sinks_the_summary(tmp_path, caplog) -> None:
    class Broken(CSVLogger):
        def log_metrics(self, metrics, step=None):
            raise RuntimeError("disk full")

    good = CSVLogger(save_dir=str(tmp_path), name="good", version="")
    log_run_summary(RunLoggers([Broken(save_dir=str(tmp_path)), good]), result())
    assert "disk full" in caplog.text
    rows = csv_rows(tmp_path / "good" / "metrics.csv")
    assert float(rows[-1]["final/f1"]) == 0.78


def test_offline_wandb_run_gets_summary_tables_and_fig1(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = WandbLogger(save_dir=str(tmp_path), project="infodyn-test", mode="offline")
    loggers = RunLoggers([base])
    (lg,) = loggers.stage("finetune")
    lg.log_metrics({"val/accuracy": 0.5}, step=3)
    log_run_summary(loggers, result())
    summary = dict(base.experiment.summary)
    assert summary["finetune/val/accuracy"] == 0.5
    assert summary["final/f1"] == 0.78 and summary["throughput/speedup"] == 1.5
    assert summary["num_parameters_after"] == 1_500_000 and summary["wall_time_s"] == 12.5
    assert summary["pruned_layers"] == [2] and summary["trainer/global_step"] == 4
    assert "profiles/finetune/cosine" in summary and "fig1_table" in summary
    close_loggers(loggers)
    assert wandb.run is None
