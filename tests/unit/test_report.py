"""infodyn-report on hand-written results.json trees: discovery, problems, figures, W&B, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from infodyn import report
from infodyn.report import figures, profiles, stats
from infodyn.report.tables import DASH
from report_runs import (
    FAILED,
    SEEDS,
    TASKS,
    TRUNCATED,
    build_sweep,
    complete_values,
    final_metric,
    job_dir,
    layer_scores,
    resolved_config,
    results,
    write_job,
)


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
    rows = stats.table1(runs, "final")
    assert [r["criterion"] for r in rows[::2]] == [
        "none",
        "redundancy",
        "knowledge_entropy",
        "last_k",
    ]
    assert rows[0]["label"] == "Unpruned"
    for r in rows:
        values = list(complete_values(r["task"], r["criterion"]).values())
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert r["n"] == len(values)
        assert r["mean"] == pytest.approx(mean, abs=1e-12)
        assert r["std"] == pytest.approx(std, abs=1e-12)
        assert r["metric"] == TASKS[r["task"]]
    best = {(r["task"], r["criterion"]) for r in rows if r["best"]}
    # none is a reference, never "best"; a cell with fewer seeds is not eligible: mrpc's
    # redundancy (n=2, the higher mean) and rte's last_k (n=2) lose to the 3-seed cells
    assert best == {("mrpc", "last_k"), ("rte", "redundancy")}


def test_paired_comparison_matches_hand_computation(sweep: Path) -> None:
    from scipy.stats import t

    runs, _ = report.collect([sweep])
    rows = stats.paired_comparison(runs, "final", "redundancy")
    paired = {(p["criterion"], p["task"]): p for p in rows}
    assert ("redundancy", "mrpc") not in paired
    for (crit, task), p in paired.items():
        mine, ref = complete_values(task, crit), complete_values(task, "redundancy")
        seeds = sorted(set(mine) & set(ref))
        diffs = np.array([mine[s] - ref[s] for s in seeds])
        assert p["seeds"] == seeds and p["reference"] == "redundancy"
        assert p["mean"] == pytest.approx(diffs.mean(), abs=1e-12)
        half = t.ppf(0.975, diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size)
        assert (p["ci_low"], p["ci_high"]) == pytest.approx(
            (diffs.mean() - half, diffs.mean() + half), abs=1e-12
        )
        assert p["method"] == f"Student-t 95%, n={diffs.size}" and p["boot"] is None
    assert paired[("last_k", "mrpc")]["seeds"] == [0, 2]  # redundancy seed 1 failed
    # the default reference is the unpruned row
    assert {p["reference"] for p in stats.paired_comparison(runs)} == {"none"}


def test_none_falls_back_to_finetune_stage(tmp_path: Path) -> None:
    data = results("mrpc", "none", 0)
    del data["metrics"]["final"]
    write_job(tmp_path, data)
    write_job(tmp_path, results("mrpc", "redundancy", 0))
    runs, _ = report.collect([tmp_path])
    rows = {r["criterion"]: r for r in stats.table1(runs, "final")}
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
    for name in ("table1.tex", "table1_paired.csv", "fidelity.md", "fidelity.csv", "claims.md"):
        assert (out / name).stat().st_size > 0
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
    written = figures.render_figures(runs, out)
    expected = [f"fig1_{t}.{e}" for t in TASKS for e in ("png", "pdf")]
    expected += ["fig1_grid.png", "fig1_grid.pdf"]
    expected += [f"{k}_{t}.png" for k in ("heatmap", "rankings") for t in TASKS]
    assert sorted(p.name for p in written) == sorted(expected)
    for name in expected:
        head = (out / name).read_bytes()[:8]
        assert (out / name).stat().st_size > 1000
        assert head == PNG if name.endswith(".png") else head.startswith(b"%PDF")


def test_wandb_offline_logs_one_report_run(sweep: Path, tmp_path: Path, monkeypatch) -> None:
    import wandb

    from infodyn.report.wandb_run import log_wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    init_kwargs = {}
    real_init = wandb.init

    def spy(**kw):
        init_kwargs.update(kw)
        return real_init(**kw)

    monkeypatch.setattr(wandb, "init", spy)
    runs, _ = report.collect([sweep])
    rows, paired = stats.table1(runs), stats.paired_comparison(runs)
    figs = figures.render_figures([r for r in runs if r.task == "mrpc"], tmp_path / "figs")
    tables = {"table1": rows, "table1_paired": paired}
    run_id = log_wandb(tables, figs, "infodyn-test", "glue_all_pruners", {}, tmp_path)
    assert init_kwargs["group"] == "glue_all_pruners"  # beside the sweep's job runs
    run_dirs = list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1
    assert list(run_dirs[0].glob("*.wandb"))
    media = run_dirs[0] / "files" / "media"
    tables = sorted(p.name.split("_0_")[0] for p in (media / "table").iterdir())
    images = sorted(p.name.split("_0_")[0] for p in (media / "images" / "figures").iterdir())
    assert tables == ["table1", "table1_paired"]
    assert images == sorted(f.stem for f in figs if f.suffix == ".png")


def test_cli_wandb_run_joins_the_sweep_group(sweep: Path, tmp_path: Path, monkeypatch) -> None:
    import wandb

    seen = {}

    class FakeRun:
        id = "abc"

        def log(self, data):
            seen["logged"] = sorted(data)

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or FakeRun())
    out = tmp_path / "o"
    assert report.main([str(sweep), "--out", str(out), "--no-figures", "--wandb"]) == 0
    assert seen["group"] == "glue_all_pruners" and seen["job_type"] == "report"
    assert seen["logged"] == ["claims", "fidelity", "table1", "table1_paired"]


def test_rank_correlation_skips_unscored_criteria(sweep: Path) -> None:
    from scipy.stats import spearmanr

    runs, _ = report.collect([sweep])
    scores = profiles.criterion_prunability(runs, "mrpc")
    assert list(scores) == ["redundancy", "knowledge_entropy"]  # none/last_k: all null
    seeds = [s for s in SEEDS if ("mrpc", "redundancy", s) != FAILED]
    red = np.mean([layer_scores("redundancy", s)[1:] for s in seeds], axis=0)
    ke = np.mean([layer_scores("knowledge_entropy", s)[1:] for s in SEEDS], axis=0)
    assert np.isnan(scores["redundancy"][0])
    names, rho = profiles.spearman_matrix(scores)
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
    assert f"± {DASH} / " in md and "(n=1)†" in md  # std undefined; n < 3 flagged
    diff = final_metric("mrpc", "last_k", 0) - final_metric("mrpc", "redundancy", 0)
    assert f"{diff:+.4f} (n=1: no interval)" in md  # not the degenerate [d, d] of old
    assert (a / "report" / "fig1_mrpc.png").read_bytes()[:8] == PNG


def test_rankings_use_prunability_not_raw_orientation(tmp_path: Path, capsys) -> None:
    """A distance criterion (lower = remove first) and a score criterion that pick the same
    blocks agree on prunability; their raw values are perfectly anti-correlated."""
    score = [0.1, 0.5, 0.2, 0.9, 0.8, 0.3]
    distance = [1 - v for v in score]  # angular-like: raw low = remove first
    for seed in (0, 1):
        write_job(tmp_path, results("rte", "redundancy", seed, layer_scores=score,
                                    layer_prunability=score))  # fmt: skip
        write_job(tmp_path, results("rte", "angular", seed, layer_scores=distance,
                                    layer_prunability=[-d for d in distance]))  # fmt: skip
        old = results("rte", "knowledge_entropy", seed, layer_scores=score)
        del old["layer_prunability"]  # a schema-1 record
        write_job(tmp_path, old)
    runs, _ = report.collect([tmp_path])
    scores = profiles.criterion_prunability(runs, "rte")
    assert sorted(scores) == ["angular", "redundancy"]
    assert "NOTE" in capsys.readouterr().err and "knowledge_entropy" not in scores
    _, rho = profiles.spearman_matrix(scores)
    assert rho[0, 1] == pytest.approx(1.0)
    raw = {"a": np.array(score), "b": np.array(distance)}
    assert profiles.spearman_matrix(raw)[1][0, 1] == pytest.approx(-1.0)  # what raw would say
    mixed = {"a": np.array(score), "b": np.arange(12.0)}  # depths differ: no common layers
    assert np.isnan(profiles.spearman_matrix(mixed)[1][0, 1])
    written = figures.render_figures(runs, tmp_path / "r")
    assert (tmp_path / "r" / "rankings_rte.png") in written


def test_python_dash_m_and_the_console_script_entry(sweep: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import tomllib

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["infodyn-report"] == "infodyn.report:main" and report.main is not None
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "infodyn.report", str(sweep), "--out", str(out), "--no-figures"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "claims.md").exists()


def test_a_running_job_is_listed_as_running_not_failed(sweep: Path, tmp_path: Path, capsys):
    import json
    import os
    import socket

    job = sweep / "pruner=redundancy,task=mrpc" / "seed=7"
    job.mkdir(parents=True)
    (job / "config_resolved.yaml").write_text("task: {name: mrpc}\npruner: {name: redundancy}\n")
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "since": "t0"}
    (job / ".lock").write_text(json.dumps(lock))
    runs, failed = report.collect([sweep])
    (entry,) = [f for f in failed if f.seed == 7]
    assert entry.running and entry.reason.startswith("running (pid")
    report.main([str(sweep), "--out", str(tmp_path / "o"), "--no-figures"])
    err = capsys.readouterr().err
    running = err.split("RUNNING jobs")[1].split("!!! ")[0:3]
    assert "seed=7" in "".join(running)
    assert "seed=7" not in err.split("FAILED jobs")[1].split("RUNNING jobs")[0]
