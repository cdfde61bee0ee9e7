"""Prune a model you already have: `stages.finetune_epochs=0` takes `model.name_or_path` as the
fine-tuned model (score, prune, recover, evaluate), and evaluate-only runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infodyn.errors import ConfigError
from infodyn.pipeline import run

TASK = ["task=mrpc", "stages.finetune_epochs=1"]


def _results(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def exported(tiny_cfg, tmp_path) -> tuple[Path, dict]:
    cfg = tiny_cfg(*TASK, "pruner=none", f"run_dir={tmp_path / 'trained'}")
    run(cfg)
    return tmp_path / "trained" / "model", _results(cfg.run_dir)


def _given(tiny_cfg, folder, *overrides):
    return tiny_cfg(
        "task=mrpc",
        "model=local",
        f"model.name_or_path={folder}",
        "stages.finetune_epochs=0",
        *overrides,
    )


def test_evaluate_only(tiny_cfg, exported, tmp_path):
    folder, trained = exported
    cfg = _given(tiny_cfg, folder, "pruner=none", f"run_dir={tmp_path / 'eval'}")
    run(cfg)
    res = _results(cfg.run_dir)
    # the same model on the same dev set: the numbers the training run ended with
    assert res["metrics"]["finetune"] == trained["metrics"]["final"]
    assert res["pruned_layers"] == [] and not (tmp_path / "eval" / "checkpoints").exists()


def test_prune_and_recover_a_given_model(tiny_cfg, exported, tmp_path):
    folder, trained = exported
    cfg = _given(tiny_cfg, folder, "pruner=slimllm", "pruner.k=1", f"run_dir={tmp_path / 'p'}")
    run(cfg)
    res = _results(cfg.run_dir)
    assert res["metrics"]["finetune"] == trained["metrics"]["final"]
    assert len(res["pruned_layers"]) == 1 and res["num_layers_after"] == 3
    assert {"pruned", "recover", "final"} <= set(res["metrics"])
    assert not (tmp_path / "p" / "checkpoints" / "finetune").exists()


def test_profile_criteria_say_which_pass_they_need(tiny_cfg, exported, tmp_path):
    folder, _ = exported
    cfg = _given(tiny_cfg, folder, "pruner=redundancy", "pruner.k=1", f"run_dir={tmp_path / 'r'}")
    with pytest.raises(ConfigError, match="pruner.reduce=calibration"):
        run(cfg)
    assert not (tmp_path / "r").exists()
    ok = _given(
        tiny_cfg,
        folder,
        "pruner=redundancy",
        "pruner.k=1",
        "pruner.reduce=calibration",
        f"run_dir={tmp_path / 'rc'}",
    )
    run(ok)
    assert len(_results(ok.run_dir)["pruned_layers"]) == 1
