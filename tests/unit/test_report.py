"""infodyn-report on hand-written results.json trees: numbers, problems, figures, W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from infodyn import report

TASKS = {"mrpc": "f1", "rte": "accuracy"}
PRUNERS = ("none", "redundancy", "last_k", "knowledge_entropy")
SEEDS = (0, 1, 2)
BASE = {  # per (task, pruner): final metric of seed 0; other seeds add OFFSETS
    ("mrpc", "none"): 0.90,
    ("mrpc", "redundancy"): 0.86,
    ("mrpc", "last_k"): 0.84,
    ("rte", "none"): 0.70,
    ("rte", "redundancy"): 0.64,
    ("rte", "last_k"): 0.66,
    ("mrpc", "knowledge_entropy"): 0.81,
    ("rte", "knowledge_entropy"): 0.61,
}
OFFSETS = {0: 0.0, 1: 0.013, 2: -0.021}
MISSING = ("rte", "last_k", 2)  # never written
FAILED = ("mrpc", "redundancy", 1)  # status "failed"
TRUNCATED = ("rte", "none", 1)  # half a JSON file
LAYERS, EPOCHS = 12, 6


def final_metric(task: str, pruner: str, seed: int) -> float:
    jitter = ((seed * 7 + len(pruner) * 3) % 5) * 0.002  # seed effects differ per pruner
    return BASE[(task, pruner)] + OFFSETS[seed] + jitter


def profile(seed: int) -> list[list[float]]:
    """∩-shaped redundancy over 12 blocks that rises and sharpens over 6 epochs."""
    x = (np.arange(LAYERS) + 0.5) / LAYERS
    rng = np.random.default_rng(seed)
    return [
        (0.35 + 0.08 * e * np.sin(np.pi * x) ** (1 + 0.3 * e) + 0.01 * rng.standard_normal(LAYERS))
        .round(5)
        .tolist()
        for e in range(EPOCHS)
    ]


def layer_scores(pruner: str, seed: int) -> list[float | None] | None:
    if pruner == "redundancy":
        return [None] + profile(seed)[-1][1:]  # block 0 unscored
    if pruner == "none":
        return None  # the pipeline writes null when nothing was scored
    if pruner == "knowledge_entropy":  # rises with depth, unlike the ∩ of redundancy
        rng = np.random.default_rng(100 + seed)
        return (np.linspace(0.1, 1.0, LAYERS) ** 2 + 0.05 * rng.standard_normal(LAYERS)).tolist()
    return [None] * LAYERS


def job_dir(root: Path, task: str, pruner: str, seed: int) -> Path:
    return root / f"pruner={pruner},task={task}" / f"seed={seed}"


def results(task: str, pruner: str, seed: int, **over) -> dict:
    metric = TASKS[task]
    value = final_metric(task, pruner, seed)
    data = {
        "task": task,
        "model": "roberta_base",
        "seed": seed,
        "pruner": pruner,
        "estimator": "cosine",
        "finetune": "full",
        "sweep": "glue_all_pruners",
        "job_name": f"pruner={pruner},task={task}",
        "status": "complete",
        "main_metric": metric,
        "metrics": {
            "finetune": {metric: value + 0.05},
            "pruned": {metric: value - 0.1},
            "recover": {metric: value},
            "final": {metric: value},
        },
        "num_layers": LAYERS,
        "layer_scores": layer_scores(pruner, seed),
        "pruned_layers": [] if pruner == "none" else [4, 5, 6],
        "profiles": {
            "indexing": "0-based block index",
            "finetune": {"cosine": {"layers": list(range(LAYERS)), "redundancy": profile(seed)}},
        },
        "wall_time_s": 1.0,
        "config_path": "config_resolved.yaml",
    }
    data.update(over)
    return data


def resolved_config(task: str, pruner: str, seed: int, model: str = "roberta_base") -> str:
    """A cut-down config_resolved.yaml as pipeline.run writes it."""
    return (
        f"task: {{name: {task}}}\nmodel: {{name: {model}}}\npruner: {{name: {pruner}}}\n"
        f"seed: {seed}\nrun_dir: null\nsweep_name: glue_all_pruners\n"
        f"paths: {{root: /somewhere/{seed}}}\nrun: {{skip_if_complete: true}}\n"
        "stages: {finetune_epochs: 6, recover_epochs: 5}\ndata: {num_workers: 0}\n"
        "estimator: {cosine: {_target_: infodyn.estimators.cosine.CosineRedundancy}}\n"
    )


def write_job(root: Path, data: dict) -> Path:
    d = job_dir(root, data["task"], data["pruner"], data["seed"])
    d.mkdir(parents=True, exist_ok=True)
    config = resolved_config(data["task"], data["pruner"], data["seed"], data["model"])
    (d / "config_resolved.yaml").write_text(config)
    (d / "results.json").write_text(json.dumps(data))
    return d


def build_sweep(root: Path) -> Path:
    """2 tasks × 4 pruners × 3 seeds; one seed missing, one failed, one truncated."""
    for task in TASKS:
        for pruner in PRUNERS:
            for seed in SEEDS:
                job = (task, pruner, seed)
                if job == MISSING:
                    continue
                status = "failed" if job == FAILED else "complete"
                d = write_job(root, results(task, pruner, seed, status=status))
                if job == TRUNCATED:
                    text = (d / "results.json").read_text()
                    (d / "results.json").write_text(text[: len(text) // 2])
    return root


def complete_values(task: str, pruner: str) -> dict[int, float]:
    bad = {MISSING, FAILED, TRUNCATED}
    return {s: final_metric(task, pruner, s) for s in SEEDS if (task, pruner, s) not in bad}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return build_sweep(tmp_path / "multirun")


def test_collect_separates_failed_jobs(sweep: Path) -> None:
    runs, failed = report.collect([sweep])
    assert len(runs) == 2 * 4 * 3 - 3
    got = {(f.task, f.pruner, f.seed): f.reason for f in failed}
    assert set(got) == {FAILED, TRUNCATED}
    assert "failed" in got[FAILED] and "unreadable" in got[TRUNCATED]


def test_table1_matches_independent_statistics(sweep: Path) -> None:
    runs, _ = report.collect([sweep])
    rows = report.table1(runs, "final")
    assert [r["criterion"] for r in rows[::2]] == [
        "none",
        "redundancy",
        "knowledge_entropy",
        "last_k",
    ]
    assert rows[0]["label"] == "No pruning"
    for r in rows:
        values = list(complete_values(r["task"], r["criterion"]).values())
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert r["n"] == len(values)
        assert r["mean"] == pytest.approx(mean, abs=1e-12)
        assert r["std"] == pytest.approx(std, abs=1e-12)
        assert r["metric"] == TASKS[r["task"]]
    best = {(r["task"], r["criterion"]) for r in rows if r["best"]}
    # none is the unpruned reference, never "best"; mrpc: redundancy > last_k, rte: opposite
    assert best == {("mrpc", "redundancy"), ("rte", "last_k")}


def test_paired_comparison_matches_hand_computation(sweep: Path) -> None:
    runs, _ = report.collect([sweep])
    paired = {(p["criterion"], p["task"]): p for p in report.paired_comparison(runs, "final")}
    assert ("redundancy", "mrpc") not in paired
    for (crit, task), p in paired.items():
        mine, ref = complete_values(task, crit), complete_values(task, "redundancy")
        seeds = sorted(set(mine) & set(ref))
        diffs = [mine[s] - ref[s] for s in seeds]
        assert p["seeds"] == seeds
        assert p["mean"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
        assert p["ci_low"] <= p["mean"] <= p["ci_high"]
    assert paired[("last_k", "mrpc")]["seeds"] == [0, 2]  # redundancy seed 1 failed


def test_bootstrap_single_value_and_determinism() -> None:
    assert report.bootstrap_ci([0.25]) == (0.25, 0.25)
    assert report.bootstrap_ci([0.1, 0.3, 0.2]) == report.bootstrap_ci([0.1, 0.3, 0.2])
    lo, hi = report.bootstrap_ci([0.1, 0.3, 0.2])
    assert 0.1 <= lo < 0.2 < hi <= 0.3


def test_none_falls_back_to_finetune_stage(tmp_path: Path) -> None:
    data = results("mrpc", "none", 0)
    del data["metrics"]["final"]
    write_job(tmp_path, data)
    write_job(tmp_path, results("mrpc", "redundancy", 0))
    runs, _ = report.collect([tmp_path])
    rows = {r["criterion"]: r for r in report.table1(runs, "final")}
    assert rows["none"]["mean"] == pytest.approx(final_metric("mrpc", "none", 0) + 0.05)
    assert rows["none"]["stage"] == "finetune" and rows["none"]["std"] is None


def test_main_reports_failed_and_missing_by_name(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err
    md = (out / "table1.md").read_text()
    for text in (err, md):
        assert str(job_dir(sweep, *FAILED)) in text
        assert str(job_dir(sweep, *TRUNCATED)) in text
        assert "task=rte pruner=last_k: seed(s) 2 missing" in text
        assert "mixes" not in text
    # failed/truncated jobs are not "missing": they are named once, as failed
    assert "task=mrpc pruner=redundancy: seed(s)" not in err
    assert "**" in md and "(n=3)" in md and "(n=2)" in md
    csv_rows = (out / "table1.csv").read_text().splitlines()
    assert csv_rows[0].startswith("criterion,label,task,metric,stage,n,mean,std,best")
    assert sum(line.split(",")[8] == "*" for line in csv_rows[1:]) == 2
    assert report.main([str(sweep), "--out", str(out), "--no-figures", "--strict"]) == 1


def test_expect_seeds_flags_short_tasks(sweep: Path, tmp_path: Path, capsys) -> None:
    report.main([str(sweep), "--out", str(tmp_path / "o"), "--no-figures", "--expect-seeds", "5"])
    assert "2 seed(s) never seen" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["empty", "absent"])
def test_no_runs_exits_2_naming_the_dir(tmp_path: Path, capsys, make: str) -> None:
    target = tmp_path / "nothing_here"
    if make == "empty":
        (target / "sub").mkdir(parents=True)
    assert report.main([str(target)]) == 2
    assert str(target) in capsys.readouterr().err


def test_mixed_models_in_a_cell_are_named(tmp_path: Path, capsys) -> None:
    write_job(tmp_path, results("rte", "none", 0))
    odd = write_job(tmp_path, results("rte", "none", 1, model="bert_base"))
    assert report.main([str(tmp_path), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "mixes model" in err and str(odd) in err and "bert_base" in err
    assert "roberta_base" in err
    assert report.main([str(tmp_path), "--no-figures", "--strict"]) == 1


def test_config_yaml_differences_are_flagged(tmp_path: Path, capsys) -> None:
    write_job(tmp_path, results("rte", "none", 0))
    odd = write_job(tmp_path, results("rte", "none", 1))
    config = resolved_config("rte", "none", 1).replace("finetune_epochs: 6", "finetune_epochs: 3")
    (odd / "config_resolved.yaml").write_text(config.replace("cosine", "gaussian"))
    report.main([str(tmp_path), "--no-figures"])
    err = capsys.readouterr().err
    assert "mixes stages.finetune_epochs" in err and str(odd) in err
    # seeds, paths and (in the `none` cell) the observing estimator legitimately differ
    assert "mixes seed" not in err and "mixes paths" not in err and "estimator" not in err


def test_job_dir_without_results_is_a_named_failure(sweep: Path, capsys) -> None:
    crashed = sweep / "runs" / "rte" / "roberta_base" / "redundancy" / "seed=7"
    crashed.mkdir(parents=True)
    (crashed / "config_resolved.yaml").write_text(resolved_config("rte", "redundancy", 7))
    runs, failed = report.collect([sweep])
    (f,) = [f for f in failed if f.path == crashed]
    assert (f.task, f.pruner, f.seed) == ("rte", "redundancy", 7)
    assert "no results.json" in f.reason
    report.main([str(sweep), "--no-figures"])
    err = capsys.readouterr().err
    assert str(crashed) in err
    # seed 7 now belongs to rte, so every other rte cell is missing it
    assert "task=rte pruner=none: seed(s) 1, 7 missing" not in err  # seed 1 failed: not missing
    assert "task=rte pruner=none: seed(s) 7 missing" in err


PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_render(sweep: Path, tmp_path: Path) -> None:
    runs, _ = report.collect([sweep])
    out = tmp_path / "figs"
    written = report.render_figures(runs, out)
    expected = [f"fig1_{t}.{e}" for t in TASKS for e in ("png", "pdf")]
    expected += ["fig1_grid.png", "fig1_grid.pdf"]
    expected += [f"{k}_{t}.png" for k in ("heatmap", "rankings") for t in TASKS]
    assert sorted(p.name for p in written) == sorted(expected)
    for name in expected:
        head = (out / name).read_bytes()[:8]
        assert (out / name).stat().st_size > 1000
        assert head == PNG if name.endswith(".png") else head.startswith(b"%PDF")


def test_wandb_offline_logs_one_report_run(sweep: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    runs, _ = report.collect([sweep])
    rows, paired = report.table1(runs), report.paired_comparison(runs)
    figures = report.render_figures([r for r in runs if r.task == "mrpc"], tmp_path / "figs")
    run_id = report.log_wandb(rows, paired, figures, "infodyn-test", {}, tmp_path)
    run_dirs = list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1
    assert list(run_dirs[0].glob("*.wandb"))
    media = run_dirs[0] / "files" / "media"
    tables = sorted(p.name.split("_0_")[0] for p in (media / "table").iterdir())
    images = sorted(p.name.split("_0_")[0] for p in (media / "images" / "figures").iterdir())
    assert tables == ["table1", "table1_paired"]
    assert images == sorted(f.stem for f in figures if f.suffix == ".png")


def test_rank_correlation_skips_unscored_criteria(sweep: Path) -> None:
    from scipy.stats import spearmanr

    runs, _ = report.collect([sweep])
    scores = report.criterion_scores(runs, "mrpc")
    assert list(scores) == ["redundancy", "knowledge_entropy"]  # none/last_k: all null
    seeds = [s for s in SEEDS if ("mrpc", "redundancy", s) != FAILED]
    red = np.mean([layer_scores("redundancy", s)[1:] for s in seeds], axis=0)
    ke = np.mean([layer_scores("knowledge_entropy", s)[1:] for s in SEEDS], axis=0)
    assert np.isnan(scores["redundancy"][0])
    names, rho = report.spearman_matrix(scores)
    assert rho[0, 0] == pytest.approx(1.0)
    assert rho[0, 1] == pytest.approx(spearmanr(red, ke).statistic)


def test_estimator_mix_matters_only_when_it_scores(tmp_path: Path, capsys) -> None:
    for pruner in ("none", "redundancy"):
        write_job(tmp_path, results("rte", pruner, 0))
        write_job(tmp_path, results("rte", pruner, 1, estimator="gaussian"))
    report.main([str(tmp_path), "--no-figures"])
    err = capsys.readouterr().err
    assert "task=rte pruner=redundancy mixes estimator" in err
    assert "pruner=none mixes" not in err


def test_single_runs_n1(tmp_path: Path, capsys) -> None:
    a = write_job(tmp_path / "a", results("mrpc", "redundancy", 0))
    b = write_job(tmp_path / "b", results("mrpc", "last_k", 0))
    assert report.main([str(a), str(b)]) == 0
    md = (a / "report" / "table1.md").read_text()
    assert f"± {report.DASH} (n=1)" in md
    assert "(n=1: no interval)" in md
    diff = final_metric("mrpc", "last_k", 0) - final_metric("mrpc", "redundancy", 0)
    assert f"{diff:+.4f} [{diff:+.4f}, {diff:+.4f}] (n=1)" in md
    assert (a / "report" / "fig1_mrpc.png").read_bytes()[:8] == PNG


def test_job_profiles_and_fig1_go_to_its_wandb_run(tmp_path) -> None:
    import wandb

    from infodyn.report import log_job_to_wandb

    class FakeRun:
        def __init__(self) -> None:
            self.logged: dict = {}
            self.summary: dict = {}

        def log(self, data: dict) -> None:
            self.logged.update(data)

    results = {
        "task": "mrpc",
        "model": "minilm_l6",
        "seed": 0,
        "pruned_layers": [2, 3],
        "num_layers_after": 4,
        "metrics": {"final": {"f1": 0.8, "accuracy": 0.7}},
        "profiles": {
            "indexing": "0-based block index",
            "finetune": {
                "cosine": {
                    "layers": [0, 1, 2],
                    "redundancy": [[0.1, 0.3, 0.2], [0.1, 0.35, 0.2]],
                    "num_batches": [5.0, 5.0],
                }
            },
        },
    }
    run = FakeRun()
    log_job_to_wandb(run, results, tmp_path)
    table = run.logged["profiles/finetune/cosine"]
    assert isinstance(table, wandb.Table)
    assert table.columns == ["stage", "epoch", "block", "redundancy"]
    assert len(table.data) == 6 and table.data[4] == ["finetune", 2, 1, 0.35]
    assert isinstance(run.logged["fig1"], wandb.Image)
    assert (tmp_path / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.summary["final/f1"] == 0.8 and run.summary["pruned_layers"] == [2, 3]
