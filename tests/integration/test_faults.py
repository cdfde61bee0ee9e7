"""Faults during a run: corrupt outputs found on resume, NaN/inf losses and states, bf16."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infodyn import checkpoints, pipeline
from infodyn.errors import TrainingDivergedError
from infodyn.estimators.callback import feed_estimators
from infodyn.estimators.cosine import CosineRedundancy
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy

RUN = (
    "task=mrpc",
    "pruner=redundancy",
    "pruner.k=2",
    "trainer.enable_progress_bar=false",
    "run.keep_checkpoints=[finetune,recover]",  # a finished run keeps them (slim) to corrupt
)
TIMING = ("wall_time_s", "throughput")


def stable(results: dict) -> dict:
    """results.json without the keys that depend on wall-clock timing."""
    return {k: v for k, v in results.items() if k not in TIMING}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread on a shared 2-core machine (and reduce in order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_run(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete tiny run per module (about 15 s), copied by `finished_run`."""
    from omegaconf import open_dict

    from conftest import TINY, compose_config
    from glue_layout import write_all_tasks

    root = tmp_path_factory.mktemp("reference")
    write_all_tasks(root / "glue", n_train=24, n_dev=12)
    cfg = compose_config(TINY + list(RUN))
    with open_dict(cfg):
        cfg.paths.glue_dir = str(root / "glue")
        cfg.paths.cache_dir = str(root / "cache")
        cfg.run_dir = str(root / "run")
    pipeline.run(cfg)
    return root / "run"


@pytest.fixture
def finished_run(reference_run: Path, tiny_cfg: Callable) -> tuple[Path, dict]:
    """A private copy of the reference run where `tiny_cfg(*RUN)` writes: (run dir, results)."""
    run_dir = Path(tiny_cfg(*RUN).run_dir)
    shutil.copytree(reference_run, run_dir)
    return run_dir, load(run_dir / "results.json")


def _rerun(tiny_cfg: Callable) -> dict:
    cfg = tiny_cfg(*RUN)
    pipeline.run(cfg)
    return load(Path(cfg.run_dir) / "results.json")


def _truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: min(keep, len(data) // 2)])


# -- atomic outputs and corrupt files found on resume
def test_outputs_leave_no_temp_files(finished_run: tuple[Path, dict]) -> None:
    run_dir, results = finished_run
    assert results["status"] == "complete"
    leftovers = [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    for stage in ("finetune", "recover"):
        assert sorted(p.name for p in (run_dir / "checkpoints" / stage).iterdir()) == ["last.ckpt"]
        kept = torch.load(run_dir / "checkpoints" / stage / "last.ckpt", weights_only=True)
        assert checkpoints.is_slim(kept), f"{stage}: a finished stage kept its optimizer state"


def test_atomic_write_json_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    checkpoints.atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        checkpoints.atomic_write_json(path, {"a": math.nan})  # allow_nan=False
    assert load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_corrupt_results_json_is_reported_and_the_job_finishes(
    finished_run: tuple[Path, dict], tiny_cfg: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, before = finished_run
    _truncate(run_dir / "results.json")
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        after = _rerun(tiny_cfg)
    assert any("results.json" in r.getMessage() for r in caplog.records)
    assert stable(after) == stable(before)


@pytest.mark.parametrize(
    ("stage", "damage"),
    [
        ("finetune", "truncated"),
        ("score", "truncated"),
        ("prune", "truncated"),
        ("recover", "truncated"),
        ("finetune", "not an object"),
    ],
)
def test_corrupt_stage_json_is_reported_and_redone(
    finished_run: tuple[Path, dict],
    tiny_cfg: Callable,
    caplog: pytest.LogCaptureFixture,
    stage: str,
    damage: str,
) -> None:
    run_dir, before = finished_run
    (run_dir / "results.json").unlink()
    record = run_dir / "stages" / f"{stage}.json"
    if damage == "truncated":
        _truncate(record, keep=20)
    else:
        record.write_text("[1, 2]")  # valid JSON, but no record
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        after = _rerun(tiny_cfg)
    assert any(f"{stage}.json" in r.getMessage() for r in caplog.records)
    assert load(run_dir / "stages" / f"{stage}.json")  # rewritten whole
    assert stable(after) == stable(before)


@pytest.mark.parametrize("stage", ["finetune", "recover"])
def test_corrupt_checkpoint_is_reported_and_the_stage_redone(
    finished_run: tuple[Path, dict],
    tiny_cfg: Callable,
    caplog: pytest.LogCaptureFixture,
    stage: str,
) -> None:
    run_dir, before = finished_run
    (run_dir / "results.json").unlink()
    ckpt = run_dir / "checkpoints" / stage / "last.ckpt"
    _truncate(ckpt, keep=4096)
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        after = _rerun(tiny_cfg)
    assert any(str(ckpt) in r.getMessage() for r in caplog.records)
    assert stable(after) == stable(before)
    torch.load(ckpt, weights_only=True)  # rewritten whole


def test_usable_checkpoint_removes_garbage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        assert checkpoints.usable_checkpoint(bad) is None
    assert not bad.exists()
    assert str(bad) in caplog.text
    assert checkpoints.usable_checkpoint(tmp_path / "absent.ckpt") is None


# -- NaN / inf
def _nan_from_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    from infodyn.module import GlueClassifier

    forward = GlueClassifier.forward

    def poisoned(self, batch):
        out = forward(self, batch)
        if self.training and self.global_step >= step:
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(GlueClassifier, "forward", poisoned)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    tiny_cfg: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_from_step(monkeypatch, 8)  # 24 rows / batch 4 = 6 steps per epoch: step 8 is epoch 1
    cfg = tiny_cfg(*RUN)
    with pytest.raises(TrainingDivergedError) as info:
        pipeline.run(cfg)
    text = str(info.value)
    assert "stage finetune" in text and "global step 8" in text and "last.ckpt" in text
    run_dir = Path(cfg.run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "finetune" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # the end of epoch 0, the last good one
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_nan_loss_cli_exits_3_with_one_paragraph(tmp_path: Path, glue_dir: Path) -> None:
    script = (
        "import math, sys\n"
        "from infodyn.module import GlueClassifier\n"
        "f = GlueClassifier.forward\n"
        "def g(self, batch):\n"
        "    out = f(self, batch)\n"
        "    if self.training and self.global_step >= 2:\n"
        "        out.loss = out.loss * math.inf\n"
        "    return out\n"
        "GlueClassifier.forward = g\n"
        "import runpy\n"
        "sys.argv = ['infodyn', *sys.argv[1:]]\n"
        "runpy.run_module('infodyn', run_name='__main__', alter_sys=True)\n"
    )
    env = dict(os.environ, GLUE_DIR=str(glue_dir), PROJECT_ROOT=str(tmp_path))
    args = ["model=roberta_tiny", "trainer=cpu", "logger=none", *RUN, f"run_dir={tmp_path}/run"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "global step 2" in errors[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_nonfinite_hidden_states_never_reach_estimator_state() -> None:
    torch.manual_seed(0)
    estimators = {"cosine": CosineRedundancy(), "ke": KnowledgeEntropy()}
    mask = torch.ones(4, 6, dtype=torch.long)
    good = [torch.randn(4, 6, 8) for _ in range(4)]
    ffn = [torch.rand(4, 6, 10) for _ in range(3)]
    feed_estimators(estimators, good, ffn, mask)
    clean = {k: e.compute().clone() for k, e in estimators.items()}
    for poison in (math.nan, math.inf):
        bad = [h.clone() for h in good]
        bad[2][1, 3, 0] = poison
        bad_ffn = [a.clone() for a in ffn]
        bad_ffn[1][0, 0, 0] = poison
        feed_estimators(estimators, bad, bad_ffn, mask)
    for key, est in estimators.items():
        assert int(est.nonfinite_batches) == 2, key
        torch.testing.assert_close(est.compute(), clean[key], equal_nan=True)
        for name, value in est.metric_state.items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), (key, name)


def test_bf16_scores_match_fp32(tiny_cfg: Callable) -> None:
    scores = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = tiny_cfg(
            *RUN,
            f"trainer.precision={precision}",
            "optim.lr=1e-5",
            f"run_dir={Path(tiny_cfg().run_dir).parent / precision}",
        )
        pipeline.run(cfg)
        # block 0 has no score (the paper scores from layer 2)
        scores[precision] = load(Path(cfg.run_dir) / "results.json")["layer_scores"][1:]
    fp32, bf16 = (torch.tensor(scores[p], dtype=torch.float64) for p in scores)
    assert torch.isfinite(fp32).all()
    assert not torch.equal(bf16, fp32), "bf16-mixed changed nothing: was it applied?"
    torch.testing.assert_close(bf16, fp32, atol=1e-2, rtol=0)
