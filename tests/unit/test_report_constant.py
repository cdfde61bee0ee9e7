"""The constant predictor's row: read from each run's own config and dev labels, it marks the
cells no better than one class for everything and leaves out a task whose model is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from glue_layout import write_glue_task
from infodyn.report.cli import main
from report_runs import job_dir, results

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"


def write_runs(root: Path, glue: Path, task: str, values: dict[str, float], eval_limit=None):
    cfg_task = OmegaConf.to_container(OmegaConf.load(TASK_DIR / f"{task}.yaml"))
    for pruner, value in values.items():
        for seed in (0, 1, 2):
            data = results(task, pruner, seed, main_metric=cfg_task["main_metric"])
            data["metrics"] = {
                "finetune": {cfg_task["main_metric"]: value},
                "final": {cfg_task["main_metric"]: value},
            }
            d = job_dir(root, task, pruner, seed)
            d.mkdir(parents=True, exist_ok=True)
            config = {
                "task": cfg_task, "seed": seed, "paths": {"glue_dir": str(glue)},
                "data": {"eval_limit": eval_limit}, "model": {"name": "m"},
                "pruner": {"name": pruner},
            }  # fmt: skip
            (d / "config_resolved.yaml").write_text(yaml.safe_dump(config))
            (d / "results.json").write_text(json.dumps(data))


def test_the_constant_row_marks_the_floor_and_leaves_out_a_model_below_it(tmp_path, capsys):
    glue = tmp_path / "glue"
    labels = {
        t: write_glue_task(glue, t, n_dev=10)["validation"]["labels"] for t in ("mrpc", "rte")
    }
    pos = sum(labels["mrpc"])
    f1_all_positive = 2 * pos / (2 * pos + (len(labels["mrpc"]) - pos))
    majority = max(labels["rte"].count(0), labels["rte"].count(1)) / len(labels["rte"])
    runs = tmp_path / "runs"
    write_runs(runs, glue, "mrpc", {"none": 0.95, "redundancy": f1_all_positive, "last_k": 0.99})
    write_runs(runs, glue, "rte", {"none": majority - 0.01, "redundancy": 0.2})
    assert main([str(runs), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    md = (tmp_path / "rep" / "table1.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Constant predictor |"))
    assert f"{f1_all_positive:.4f} ± 0.0000" in row and "(n=3)" in row
    table = md.split("\n\n")[2].splitlines()  # the main table, before the per-seed values
    cells = {line.split(" | ")[0]: line for line in table if line.startswith("| ")}
    assert cells["| Redundancy (ours)"].split(" | ")[1].endswith("°")  # exactly the floor
    assert not cells["| Last-k"].split(" | ")[1].endswith("°")
    paired = md.split("## Paired differences")[1]
    assert "Constant predictor" not in paired  # a floor, not a criterion to pair by seed
    assert f"RTE: unpruned Acc {majority - 0.01:.4f} (mean, n=3) does not beat the constant" in md
    csv = (tmp_path / "rep" / "table1.csv").read_text().splitlines()
    assert any(line.startswith("constant,Constant predictor,mrpc,f1,") for line in csv)


def test_without_the_data_the_row_says_why_and_the_report_goes_on(tmp_path):
    glue = tmp_path / "glue"
    write_glue_task(glue, "mrpc")
    runs = tmp_path / "runs"
    write_runs(runs, glue, "mrpc", {"none": 0.9, "redundancy": 0.5})
    (glue / "MRPC" / "dev.tsv").unlink()
    assert main([str(runs), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert "Constant predictor not computed for:" in md
    assert "- MRPC: seed 0: dev labels not readable (DataConfigError: " in md
    assert "set GLUE_DIR to the data the runs used" in md


@pytest.mark.parametrize("limit", [4, None])
def test_the_floor_is_read_on_the_same_seeded_subset_as_the_runs(tmp_path, limit):
    from infodyn.data import GlueDataModule
    from infodyn.report.constant import constant_cells
    from infodyn.report.discovery import collect

    glue = tmp_path / "glue"
    write_glue_task(glue, "mrpc", n_dev=12)
    write_runs(tmp_path / "runs", glue, "mrpc", {"none": 0.9}, eval_limit=limit)
    cells, notes = constant_cells(collect([tmp_path / "runs"])[0])
    assert not notes
    task = OmegaConf.to_container(OmegaConf.load(TASK_DIR / "mrpc.yaml"))
    for seed in (0, 1, 2):
        ys = GlueDataModule(task, None, str(glue), eval_limit=limit, seed=seed).eval_labels()
        assert len(ys) == (limit or 12)
        pos = sum(ys)
        assert cells["mrpc"][seed]["f1"] == pytest.approx(2 * pos / (2 * pos + len(ys) - pos))
