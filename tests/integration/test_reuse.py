"""A run dir is reused only by the config that made it: stale results can never come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infodyn.errors import ConfigError
from infodyn.pipeline import run
from infodyn.reuse import differences, flat_config, stage_config

FAST = ["task=mrpc", "pruner=last_k", "pruner.k=1", "stages.finetune_epochs=1"]


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def finished(tiny_cfg):
    cfg = tiny_cfg(*FAST)
    run(cfg)
    return cfg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=5e-4", "optim.lr"),
        ("pruner.k=2", "pruner.k"),
        ("seed=1", "seed"),
        ("data.train_limit=10", "data.train_limit"),
        ("stages.recover_epochs=2", "stages.recover_epochs"),
    ],
)
def test_a_finished_run_is_not_reused_by_another_config(tiny_cfg, finished, override, key):
    run_dir = Path(finished.run_dir)
    before = _mtimes(run_dir)
    with pytest.raises(ConfigError, match=key) as err:
        run(tiny_cfg(*FAST, override))
    assert "run.overwrite=true" in str(err.value) and "new run dir" in str(err.value)
    assert _mtimes(run_dir) == before  # nothing trained, nothing written


def test_stale_stages_are_refused_when_results_are_gone(tiny_cfg, finished):
    run_dir = Path(finished.run_dir)
    (run_dir / "results.json").unlink()
    with pytest.raises(ConfigError, match=r"stage 'score'.*pruner\.k: 1 -> 2"):
        run(tiny_cfg(*FAST, "pruner.k=2"))
    assert not (run_dir / "results.json").exists()  # no results of the old run under the new


def test_same_config_skips_and_inert_keys_do_not_block(tiny_cfg, finished):
    run_dir = Path(finished.run_dir)
    before = _mtimes(run_dir)
    value = run(tiny_cfg(*FAST, "logger=csv", "trainer.log_every_n_steps=1"))
    assert _mtimes(run_dir) == before
    res = json.loads((run_dir / "results.json").read_text())
    assert value == res["metrics"]["final"][res["main_metric"]]


def test_overwrite_discards_and_reruns(tiny_cfg, finished):
    run_dir = Path(finished.run_dir)
    run(tiny_cfg(*FAST, "pruner.k=2", "run.overwrite=true"))
    res = json.loads((run_dir / "results.json").read_text())
    assert len(res["pruned_layers"]) == 2 and res["num_layers_after"] == 2


def test_a_finished_run_keeps_its_export_and_no_training_state(tiny_cfg, finished):
    run_dir = Path(finished.run_dir)
    assert not (run_dir / "checkpoints").exists()  # the export holds the final model
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    export = sum(p.stat().st_size for p in files if p.is_relative_to(run_dir / "model"))
    assert export and sum(p.stat().st_size for p in files) <= 2 * export


def test_keep_checkpoints_keeps_weights_only_and_they_load(tiny_cfg):
    from infodyn.checkpoints import is_slim, load_module

    cfg = tiny_cfg(*FAST, "run.keep_checkpoints=[finetune]")
    run(cfg)
    root = Path(cfg.run_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["finetune"]  # recover went
    assert is_slim(torch.load(root / "finetune" / "last.ckpt", weights_only=True))
    assert load_module(root / "finetune" / "last.ckpt") is not None


def test_a_record_without_its_config_is_not_trusted(tiny_cfg, finished):
    run_dir = Path(finished.run_dir)
    (run_dir / "results.json").unlink()
    path = run_dir / "stages" / "finetune.json"
    record = json.loads(path.read_text())
    del record["config"]
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="stores no config"):
        run(tiny_cfg(*FAST))


def test_what_affects_which_stage(tiny_cfg):
    cfg = tiny_cfg(*FAST)
    other = tiny_cfg(*FAST, "pruner.k=2", "stages.recover_epochs=3", "data.calibration_size=4")
    # the fine-tune does not depend on the pruner (training signature aside) or later stages
    assert differences(stage_config(cfg, "finetune"), stage_config(other, "finetune")) == []
    score = differences(stage_config(cfg, "score"), stage_config(other, "score"))
    assert [d.split(":")[0] for d in score] == ["data.calibration_size", "pruner.k"]
    assert "stages.recover_epochs: 1 -> 3" in differences(
        stage_config(cfg, "recover"), stage_config(other, "recover")
    )
    # a LayerDrop-style training signature is part of the fine-tune's identity
    assert stage_config(cfg, "finetune", {"p": 0.2}) != stage_config(cfg, "finetune")
    assert "logger.name" not in flat_config(tiny_cfg(*FAST, "logger=csv"))


def test_a_record_made_before_a_metric_fix_is_not_reused(tiny_cfg):
    # CoLA's MCC of a constant prediction changed (eps value -> 0): its old records are stale
    cola = stage_config(tiny_cfg("task=cola"), "finetune")
    assert cola["metric_revision.matthews"].startswith("undefined-is-0")
    assert not any(k.startswith("metric_revision") for k in flat_config(tiny_cfg("task=mrpc")))
    old = {k: v for k, v in cola.items() if not k.startswith("metric_revision")}
    assert differences(old, cola) == [
        "metric_revision.matthews: (unset) -> 'undefined-is-0 (GLUE/sklearn)'"
    ]
