"""Sweeps for real: `cpu_table1` under the joblib launcher, the report on its output, and a sweep
killed halfway that a rerun finishes without redoing the finished jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CONF_DIR

REPO = CONF_DIR.parent
TINY = [
    "model=roberta_tiny",
    "logger=none",
    "seed=0",
    "stages.finetune_epochs=1",
    "stages.recover_epochs=1",
    "data.batch_size=4",
    "data.train_limit=16",
    "data.eval_limit=8",
    "data.calibration_size=8",
    "run.throughput_batches=1",
    "run.throughput_seconds=0",
    "pruner.k=1",
]


def _env(tmp_path: Path, glue_dir: Path) -> dict[str, str]:
    real = os.environ.get("GLUE_DIR")
    return {
        **os.environ,
        "PROJECT_ROOT": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        # real GLUE files when CI provides them (train_limit keeps it small)
        "GLUE_DIR": real if real and Path(real, "MRPC").is_dir() else str(glue_dir),
    }


def _results(root: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text())
        for p in root.rglob("results.json")
    }


def test_cpu_table1_runs_under_local_parallel_and_reports(tmp_path, glue_dir) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "infodyn",
            "-m",
            "sweep=cpu_table1",
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            "task=mrpc,cola",
            "pruner=none,redundancy",
            *TINY,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(tmp_path, glue_dir),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = tmp_path / "outputs/multirun/cpu_table1"
    res = _results(sweep_dir)
    assert len(res) == 4 and all(r["status"] == "complete" for r in res.values())
    assert {(r["task"], r["pruner"]) for r in res.values()} == {
        ("mrpc", "none"),
        ("mrpc", "redundancy"),
        ("cola", "none"),
        ("cola", "redundancy"),
    }
    assert all(r["sweep"] == "cpu_table1" for r in res.values())
    assert all("/seed=0" in key for key in res)
    # the criteria of a (task, seed) shared one fine-tuned model
    red = next(r for r in res.values() if r["task"] == "mrpc" and r["pruner"] == "redundancy")
    base = next(r for r in res.values() if r["task"] == "mrpc" and r["pruner"] == "none")
    assert red["metrics"]["finetune"] == base["metrics"]["finetune"]

    rep = subprocess.run(
        [sys.executable, "-m", "infodyn.report", str(sweep_dir), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    table = (tmp_path / "rep/table1.md").read_text()
    assert "Unpruned" in table and "redundancy" in table
    assert (tmp_path / "rep/fig1_mrpc.png").read_bytes()[:4] == b"\x89PNG"


def test_killed_sweep_rerun_finishes_only_the_missing_jobs(tmp_path, glue_dir) -> None:
    cmd = [
        sys.executable,
        "-m",
        "infodyn",
        "-m",
        "sweep=cpu_table1",
        "task=rte",
        "pruner=none,last_k,random",
        *TINY,
    ]
    env = _env(tmp_path, glue_dir)
    sweep_dir = tmp_path / "outputs/multirun/cpu_table1"
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_results(sweep_dir)) < 1:
            time.sleep(0.2)
        assert len(_results(sweep_dir)) >= 1, "the first job never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the basic launcher runs jobs one after another
        proc.wait()
    done = {k: (sweep_dir / k / "results.json").stat().st_mtime_ns for k in _results(sweep_dir)}
    assert 1 <= len(done) < 3, "the sweep was meant to be killed halfway"

    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = _results(sweep_dir)
    assert len(res) == 3 and all(r["status"] == "complete" for r in res.values())
    for key, stamp in done.items():  # finished jobs were skipped, not redone
        assert (sweep_dir / key / "results.json").stat().st_mtime_ns == stamp


def test_cpu_scale_sizes_each_task_and_a_plain_run_keeps_the_paper_sizes() -> None:
    from conftest import compose_config

    table = {
        t: compose_config(["sweep=cpu_table1", f"task={t}"]) for t in ("sst2", "mrpc", "stsb")
    }
    assert table["sst2"].data.train_limit == 8000 and table["sst2"].data.max_seq_length == 64
    assert table["stsb"].data.train_limit is None and table["stsb"].stages.finetune_epochs == 2
    assert table["mrpc"].data.train_limit is None and table["mrpc"].stages.finetune_epochs == 3
    assert table["sst2"].stages.oracle and table["sst2"].pruner.k == 2
    # each task's unpruned target comes with its size (the report and the gate read it)
    assert dict(table["sst2"].target) == {"accuracy": 0.85}
    assert dict(table["mrpc"].target) == {"f1": 0.85}
    assert dict(table["stsb"].target) == {"pearson": 0.80}
    # the command line still wins over a task's CPU size
    assert (
        compose_config(["sweep=cpu_table1", "task=sst2", "data.train_limit=16"]).data.train_limit
        == 16
    )
    plain = compose_config(["task=sst2", "model=minilm_l6"])
    assert plain.data.train_limit is None and plain.stages.finetune_epochs == 6
    assert plain.target is None
    # a model without a CPU-size file composes at the sweep's own settings
    tiny = compose_config(["sweep=cpu_table1", "task=sst2", "model=roberta_tiny"])
    assert tiny.data.train_limit is None and tiny.data.max_seq_length == 128
    assert tiny.target is None
