"""The whole pipeline on `roberta_tiny` with GLUE-layout files: every stage, every pruner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CONF_DIR, run_cli
from infodyn.pipeline import run

RESULT_KEYS = {
    "task",
    "model",
    "seed",
    "pruner",
    "metrics",
    "wall_time_s",
    "config_path",
    "layer_scores",
    "pruned_layers",
    "num_layers_before",
    "num_layers_after",
    "num_parameters_before",
    "num_parameters_after",
    "throughput",
    "profiles",
    "status",
    "main_metric",
    "layer_prunability",
    "config_hash",
    "schema_version",
}
PRUNERS = sorted(p.stem for p in (CONF_DIR / "pruner").glob("*.yaml"))


def results(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.mark.parametrize(
    ("task", "metrics"),
    [
        ("sst2", {"accuracy"}),
        ("stsb", {"pearson", "spearman"}),
        ("mrpc", {"f1", "accuracy"}),
    ],
)
def test_fast_dev_run_classification_and_regression(tiny_cfg, task, metrics) -> None:
    cfg = tiny_cfg(
        f"task={task}",
        "pruner=none",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
    )
    value = run(cfg)
    res = results(cfg.run_dir)
    assert RESULT_KEYS <= set(res)
    assert res["status"] == "complete" and res["task"] == task and res["seed"] == 0
    assert metrics <= set(res["metrics"]["finetune"])
    assert all(math.isfinite(v) for v in res["metrics"]["finetune"].values())
    assert value == res["metrics"]["final"][res["main_metric"]]
    assert (Path(cfg.run_dir) / res["config_path"]).is_file()
    prof = res["profiles"]["finetune"]["cosine"]
    assert len(prof["redundancy"]) == 2 and len(prof["redundancy"][0]) == 4  # 2 epochs x 4 blocks
    # block 0 pairs the embeddings with its output: no score (the paper scores from layer 2)
    assert prof["redundancy"][-1][0] is None
    assert all(0.0 <= r <= 0.5 for r in prof["redundancy"][-1][1:])
    assert "0-based" in res["profiles"]["indexing"]


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_runs_all_stages(tiny_cfg, pruner) -> None:
    extra = ["pruner.k=2"] if pruner != "none" else []
    cfg = tiny_cfg("task=mrpc", f"pruner={pruner}", *extra)
    run(cfg)
    res = results(cfg.run_dir)
    assert RESULT_KEYS <= set(res) and res["pruner"] == pruner
    if pruner == "none":
        assert res["pruned_layers"] == [] and res["num_layers_after"] == 4
        assert res["metrics"]["final"] == res["metrics"]["finetune"]
        return
    assert set(res["metrics"]) == {"finetune", "pruned", "recover", "final"}
    assert len(res["pruned_layers"]) == 2 and res["pruned_layers"] == sorted(res["pruned_layers"])
    assert all(0 <= i < 4 for i in res["pruned_layers"])
    assert res["num_layers_before"] == 4 and res["num_layers_after"] == 2
    assert res["num_parameters_after"] < res["num_parameters_before"]
    assert len(res["layer_scores"]) == 4
    assert res["throughput"]["before"] > 0 and res["throughput"]["after"] > 0
    assert len(res["profiles"]["recover"]["cosine"]["redundancy"][0]) == 2  # pruned model's blocks
    if pruner == "redundancy":  # the k highest scores of the last fine-tuning epoch go
        last = res["profiles"]["finetune"]["cosine"]["redundancy"][-1]
        top = sorted((i for i in range(4) if last[i] is not None), key=lambda i: -last[i])[:2]
        assert res["pruned_layers"] == sorted(top)
        assert res["layer_scores"] == pytest.approx(last)
    # the exported model loads with plain transformers and has the pruned depth
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(cfg.run_dir) / "model"
    assert (model_dir / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_hidden_layers == 2
    with torch.no_grad():
        logits = model(**tok(["a test", "another"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_same_command_twice_gives_same_results(tiny_cfg, tmp_path) -> None:
    outs = []
    for i in range(2):
        cfg = tiny_cfg("task=rte", "pruner=slimllm", "pruner.k=1", f"run_dir={tmp_path / str(i)}")
        run(cfg)
        outs.append(results(cfg.run_dir))
    a, b = outs
    assert a["pruned_layers"] == b["pruned_layers"]
    assert a["metrics"] == b["metrics"]
    assert a["profiles"] == b["profiles"]


def test_pretrained_model_head_is_a_function_of_the_seed(tiny_cfg, tmp_path) -> None:
    # from_pretrained draws the new classification head from the global RNG: whatever ran
    # before in the process (here: 1000 draws) must not change it; the run's seed must
    from omegaconf import open_dict

    from infodyn.builders import build_module
    from tiny_models import tiny

    tiny("roberta").roberta.save_pretrained(tmp_path / "pretrained")  # no head: drawn anew

    def head(seed: int, draws: int) -> torch.Tensor:
        cfg = tiny_cfg("task=rte", f"seed={seed}")
        with open_dict(cfg):
            cfg.model.source, cfg.model.name_or_path = "hub", str(tmp_path / "pretrained")
        torch.rand(draws)
        return build_module(cfg, ["validation"]).model.classifier.out_proj.weight.detach()

    assert torch.equal(head(0, 0), head(0, 1000))
    assert not torch.equal(head(0, 0), head(1, 0))


def test_complete_job_is_skipped(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "task=sst2", "pruner=none", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2"
    )
    first = run(cfg)
    path = Path(cfg.run_dir) / "results.json"
    stamp = path.stat().st_mtime_ns
    assert run(cfg) == first
    assert path.stat().st_mtime_ns == stamp


def test_lora_tracks_profiles_too(tiny_cfg) -> None:
    cfg = tiny_cfg("task=sst2", "finetune=lora", "pruner=redundancy", "pruner.k=1")
    run(cfg)
    res = results(cfg.run_dir)
    assert res["finetune"] == "lora"
    assert len(res["profiles"]["finetune"]["cosine"]["redundancy"][0]) == 4
    assert len(res["profiles"]["finetune"]["knowledge_entropy"]["knowledge_entropy"]) == 2
    assert res["num_layers_after"] == 3


def test_cli_writes_results_in_the_hydra_dir(tmp_path, glue_dir) -> None:
    out = run_cli(
        [
            "task=cola",
            "model=roberta_tiny",
            "trainer=cpu",
            "logger=csv",
            "pruner=last_k",
            "pruner.k=1",
            "data.batch_size=4",
            "stages.finetune_epochs=1",
            "stages.recover_epochs=1",
            "run.throughput_batches=1",
            "run.throughput_seconds=0",
        ],
        tmp_path,
        glue_dir,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the default run dir names task, model, pruner, seed and a hash of the config
    (found,) = (tmp_path / "outputs/runs/cola/roberta_tiny").rglob("results.json")
    run_dir = found.parent
    assert "last_k" in str(run_dir) and "seed=0" in str(run_dir)
    res = results(run_dir)
    assert res["pruned_layers"] == [3]
    assert {"matthews", "accuracy"} <= set(res["metrics"]["final"])
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_criteria_share_one_finetune_stage(tiny_cfg, tmp_path, monkeypatch) -> None:
    import infodyn.training as training

    common = ["task=mrpc", "run.share_finetune=true", f"paths.finetune_cache={tmp_path / 'ft'}"]
    run(tiny_cfg(*common, "pruner=none", f"run_dir={tmp_path / 'none'}"))
    entries = [p for p in (tmp_path / "ft").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "checkpoints/finetune/last.ckpt").is_file()

    real_fit = training.fit_stage

    def no_second_finetune(cfg, run_dir, stage, *args, **kwargs):
        assert stage != "finetune", "the shared finetune stage was trained again"
        return real_fit(cfg, run_dir, stage, *args, **kwargs)

    monkeypatch.setattr(training, "fit_stage", no_second_finetune)
    run(tiny_cfg(*common, "pruner=redundancy", "pruner.k=1", f"run_dir={tmp_path / 'red'}"))
    base, red = results(tmp_path / "none"), results(tmp_path / "red")
    assert red["metrics"]["finetune"] == base["metrics"]["finetune"]
    assert red["profiles"]["finetune"] == base["profiles"]["finetune"]

    # LayerDrop changes training (its training_signature says so): never the plain fine-tune
    from infodyn.builders import build_pruner
    from infodyn.reuse import config_hash, stage_config

    def key(*overrides: str) -> str:
        cfg = tiny_cfg(*common, *overrides)
        return config_hash(
            stage_config(cfg, "finetune", build_pruner(cfg)[1].training_signature())
        )

    assert key("pruner=layerdrop") != key("pruner=none")
    assert key("pruner=layerdrop") != key("pruner=layerdrop", "pruner.p=0.5")
    assert key("pruner=none") == key("pruner=slimllm") == key("pruner=redundancy", "pruner.k=2")


def test_criteria_share_one_oracle_analysis(tiny_cfg, tmp_path, monkeypatch) -> None:
    import infodyn.oracle as oracle

    common = [
        "task=mrpc",
        "stages.oracle=true",
        "run.share_finetune=true",
        f"paths.finetune_cache={tmp_path / 'ft'}",
    ]
    run(tiny_cfg(*common, "pruner=last_k", "pruner.k=1", f"run_dir={tmp_path / 'last'}"))
    real = oracle.evaluate_subsets

    def no_second_oracle(*args, **kwargs):
        raise AssertionError("the shared oracle analysis was evaluated again")

    monkeypatch.setattr(oracle, "evaluate_subsets", no_second_oracle)
    run(tiny_cfg(*common, "pruner=redundancy", "pruner.k=1", f"run_dir={tmp_path / 'red'}"))
    last, red = results(tmp_path / "last"), results(tmp_path / "red")
    assert red["oracle"] == last["oracle"] and len(red["oracle"]["subsets"]) == 4

    # another k (or LayerDrop's training) is another ground truth: evaluated, never shared
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("k", args[2] if len(args) > 2 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(oracle, "evaluate_subsets", counted)
    run(tiny_cfg(*common, "pruner=last_k", "pruner.k=2", f"run_dir={tmp_path / 'k2'}"))
    assert calls == [2]
    assert len(results(tmp_path / "k2")["oracle"]["subsets"]) == 6


def test_progress_bar_on_a_terminal(tiny_cfg) -> None:
    # enable_progress_bar=true is what a TTY selects; the bar shows stage and epoch
    cfg = tiny_cfg("task=sst2", "pruner=last_k", "pruner.k=1", "trainer.enable_progress_bar=true")
    run(cfg)
    assert results(cfg.run_dir)["status"] == "complete"


def test_a_fetched_shared_stage_is_a_link_that_a_rewrite_never_reaches(tmp_path) -> None:
    from infodyn.checkpoints import slim_checkpoint
    from infodyn.finetune_cache import FILES, SharedFinetune

    entry = SharedFinetune(tmp_path / "ft", "key")
    for name in FILES:
        (entry.dir / name).parent.mkdir(parents=True, exist_ok=True)
    (entry.dir / FILES[0]).write_text('{"metrics": {"accuracy": 0.5}}')
    torch.save(
        {"state_dict": {}, "optimizer_states": [1], "lr_schedulers": [1]}, entry.dir / FILES[1]
    )
    run_dir = tmp_path / "run"
    assert entry.fetch(run_dir)
    cached, fetched = entry.dir / FILES[1], run_dir / FILES[1]
    assert fetched.stat().st_ino == cached.stat().st_ino  # twelve criteria, one file on disk
    before = cached.read_bytes()
    slim_checkpoint(fetched)  # every writer replaces the file: the cache keeps its own
    assert fetched.stat().st_ino != cached.stat().st_ino and cached.read_bytes() == before
    assert entry.metrics() == {"accuracy": 0.5}
