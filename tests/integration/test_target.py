"""`target`: a criterion runs only where the plain fine-tune of its (task, seed) reaches it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infodyn.errors import ConfigError
from infodyn.pipeline import run

UNREACHABLE = "target={accuracy:1.01}"  # accuracy never exceeds 1
REACHED = "target={accuracy:0.0}"


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def shared(tmp_path):
    return ["task=sst2", "run.share_finetune=true", f"paths.finetune_cache={tmp_path / 'ft'}"]


def test_a_criterion_on_a_fine_tune_below_target_is_skipped_with_the_numbers(
    tiny_cfg, tmp_path, shared
) -> None:
    run(tiny_cfg(*shared, "pruner=none", UNREACHABLE, f"run_dir={tmp_path / 'none'}"))
    base = results(tmp_path / "none")
    assert base["status"] == "complete"  # the unpruned job is the evidence: never held back

    red_dir = tmp_path / "red"
    run(tiny_cfg(*shared, "pruner=redundancy", "pruner.k=1", UNREACHABLE, f"run_dir={red_dir}"))
    red = results(red_dir)
    assert red["status"] == "below_target"
    got = base["metrics"]["finetune"]["accuracy"]
    assert f"accuracy {got:.4f} < target 1.01" in red["reason"]
    assert "seed=0" in red["reason"] and "Fix:" in red["reason"]
    assert not (red_dir / "stages" / "score.json").exists()  # stopped before scoring
    assert red["pruned_layers"] == [] and "pruned" not in red["metrics"]
    assert not list(red_dir.rglob("*.ckpt"))  # the fetched checkpoint does not linger

    # a lower target is judged afresh: the same run dir now runs the criterion
    run(tiny_cfg(*shared, "pruner=redundancy", "pruner.k=1", REACHED, f"run_dir={red_dir}"))
    again = results(red_dir)
    assert again["status"] == "complete" and len(again["pruned_layers"]) == 1


def test_layerdrop_is_gated_before_its_own_fine_tune(
    tiny_cfg, tmp_path, shared, monkeypatch
) -> None:
    import infodyn.training as training

    run(tiny_cfg(*shared, "pruner=none", f"run_dir={tmp_path / 'none'}"))

    def no_training(*args, **kwargs):
        raise AssertionError("LayerDrop trained although the plain fine-tune missed the target")

    monkeypatch.setattr(training, "fit_stage", no_training)
    ld = tmp_path / "ld"
    run(tiny_cfg(*shared, "pruner=layerdrop", "pruner.k=1", UNREACHABLE, f"run_dir={ld}"))
    assert results(ld)["status"] == "below_target"
    monkeypatch.undo()

    # reached: LayerDrop trains its own model as always
    run(tiny_cfg(*shared, "pruner=layerdrop", "pruner.k=1", REACHED, f"run_dir={ld}"))
    assert results(ld)["status"] == "complete"


def test_without_a_plain_fine_tune_to_judge_the_job_runs(tiny_cfg, tmp_path) -> None:
    # no shared cache: a LayerDrop job has no plain fine-tune to look at, so it is not held back
    cfg = tiny_cfg("task=sst2", "pruner=layerdrop", "pruner.k=1", UNREACHABLE)
    run(cfg)
    assert results(cfg.run_dir)["status"] == "complete"


def test_a_target_on_a_metric_the_task_does_not_compute_stops_before_work(
    tiny_cfg, tmp_path
) -> None:
    cfg = tiny_cfg("task=sst2", "pruner=last_k", "pruner.k=1", "target={pearson:0.8}")
    with pytest.raises(ConfigError, match=r"target.pearson: task sst2 computes accuracy"):
        run(cfg)
    assert not Path(cfg.run_dir).exists()


def test_the_report_lists_skipped_criteria_and_reads_the_target_from_the_runs(
    tiny_cfg, tmp_path, shared, capsys
) -> None:
    from infodyn.report.cli import main as report

    sweep = tmp_path / "sweep"
    for pruner in ("none", "last_k"):
        run_dir = sweep / f"pruner={pruner}" / "seed=0"
        run(
            tiny_cfg(
                *shared, f"pruner={pruner}", "pruner.k=1", UNREACHABLE, f"run_dir='{run_dir}'"
            )
        )
    assert report([str(sweep), "--no-figures", "--strict"]) == 0  # skipped is no failure
    out = capsys.readouterr()
    assert "SKIPPED criteria" in out.err and "FAILED" not in out.err
    table = (sweep / "report" / "table1.md").read_text()
    assert "is below the target 1.01" in table  # the task is left out, with the reason
