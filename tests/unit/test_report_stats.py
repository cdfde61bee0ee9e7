"""Statistics that mean what they say: t-intervals with n, no small-n bootstrap, honest "best"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from infodyn import report
from infodyn.errors import ConfigError
from infodyn.report import checks, stats
from report_runs import results, write_job

DIFFS = [0.010, 0.030, 0.026]


def test_t_interval_is_student_t_with_its_n() -> None:
    from scipy.stats import t

    ci = stats.t_interval(DIFFS)
    x = np.array(DIFFS)
    half = t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert (ci.low, ci.high) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-15)
    assert ci.describe() == "Student-t 95%, n=3"
    # the old "bootstrap interval" over three values lay inside [min, max] (coverage ~74%)
    assert ci.low < min(DIFFS) and ci.high > max(DIFFS)
    assert stats.t_interval([0.2]) is None


def test_no_bootstrap_under_ten() -> None:
    with pytest.raises(ValueError, match="n >= 10"):
        stats.bootstrap_ci(DIFFS)
    p = stats.paired({s: v for s, v in enumerate(DIFFS)}, {s: 0.0 for s in range(3)})
    assert p["boot"] is None and p["ci"].method == stats.T_METHOD
    rng = np.random.default_rng(0)
    many = rng.normal(0.02, 0.01, 12)
    p = stats.paired(dict(enumerate(many)), dict.fromkeys(range(12), 0.0))
    assert p["boot"].n == 12 and "bootstrap" in p["boot"].method
    assert stats.bootstrap_ci(many) == stats.bootstrap_ci(many)  # fixed seed
    assert p["boot"].low < many.mean() < p["boot"].high


def _cell(root: Path, pruner: str, values: dict[int, float], task: str = "rte") -> None:
    for seed, v in values.items():
        data = results(task, pruner, seed)
        data["metrics"] = {"finetune": {"accuracy": 0.7}, "final": {"accuracy": v}}
        write_job(root, data)


def test_best_needs_the_same_n_and_an_interval_that_excludes_zero(tmp_path: Path) -> None:
    _cell(tmp_path, "none", {0: 0.70, 1: 0.71, 2: 0.69})
    _cell(tmp_path, "slimllm", {0: 0.99})  # one lucky seed: the highest mean, n=1
    _cell(tmp_path, "redundancy", {0: 0.66, 1: 0.67, 2: 0.655})
    _cell(tmp_path, "last_k", {0: 0.62, 1: 0.625, 2: 0.61})
    runs, _ = report.collect([tmp_path])
    rows = {r["criterion"]: r for r in stats.table1(runs)}
    assert not rows["slimllm"]["best"] and rows["slimllm"]["few"]  # old code bolded it
    assert rows["redundancy"]["best"] and not rows["none"]["best"]
    (cmp,) = stats.runner_up_comparisons(runs)
    assert (cmp["criterion"], cmp["runner_up"], cmp["n"]) == ("redundancy", "last_k", 3)
    assert cmp["ci"].low > 0


def test_no_best_when_the_runner_up_is_within_noise(tmp_path: Path) -> None:
    _cell(tmp_path, "redundancy", {0: 0.66, 1: 0.60, 2: 0.65})
    _cell(tmp_path, "last_k", {0: 0.62, 1: 0.64, 2: 0.64})  # mean 0.633 < 0.637, diffs ±
    runs, _ = report.collect([tmp_path])
    rows = stats.table1(runs)
    assert not any(r["best"] for r in rows)  # old code bolded the higher mean
    (cmp,) = stats.runner_up_comparisons(runs)
    assert cmp["ci"].low < 0 < cmp["ci"].high and "includes 0" in cmp["note"]


def _pasteable(tmp_path: Path) -> Path:
    for pruner, task in [
        (p, t) for p in ("none", "redundancy", "slimllm", "odd_one") for t in ("mrpc", "stsb")
    ]:
        for seed in (0, 1, 2):
            data = results(task, pruner, seed)
            if task == "stsb":
                v = {"none": 0.88, "redundancy": 0.85, "slimllm": 0.80, "odd_one": 0.7}[pruner]
                data["main_metric"] = "pearson"
                m = {"pearson": v + seed / 1000, "spearman": v - 0.01}
                data["metrics"] = {"finetune": m, "final": m}
            write_job(tmp_path / "sweep", data)
    return tmp_path / "sweep"


def test_table1_is_the_table_a_researcher_pastes(tmp_path: Path) -> None:
    sweep = _pasteable(tmp_path)
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out), "--no-figures", "--percent"]) == 0
    md = (out / "table1.md").read_text()
    head = "| Criterion | MRPC (F1/Acc) | STS-B (Pearson/Spearman) | Avg | Params | Speed-up |"
    assert head in md
    for name in ("Unpruned", "Redundancy (ours)", "SlimLLM", "| odd_one |"):
        assert name in md
    row = next(line for line in md.splitlines() if line.startswith("| Redundancy (ours) |"))
    # params after removing 3 blocks, mean measured speed-up over seeds 0-2 (1.25..1.27)
    assert "103.4M" in row and "1.26×" in row
    unpruned = next(line for line in md.splitlines() if line.startswith("| Unpruned |"))
    assert "124.6M" in unpruned and "1.00×" in unpruned
    mrpc = np.mean([0.86 + o + j for o, j in ((0, 0), (0.013, 0.004), (-0.021, 0.008))])
    stsb = np.mean([0.85 + s / 1000 for s in range(3)])
    assert f"| {100 * (mrpc + stsb) / 2:.2f} |" in row  # the average column
    tex = (out / "table1.tex").read_text()
    assert "\\toprule" in tex and "Redundancy (ours)" in tex and "odd\\_one" in tex
    assert "$\\pm$" in tex and "STS-B (Pearson/Spearman)" in tex


def test_targets_leave_a_task_out_with_the_reason(tmp_path: Path) -> None:
    sweep = _pasteable(tmp_path)
    out = tmp_path / "out"
    targets = "stsb:pearson=0.90,mrpc:f1=0.85"
    assert report.main([str(sweep), "--out", str(out), "--no-figures", "--targets", targets]) == 0
    md = (out / "table1.md").read_text()
    assert "STS-B (Pearson" not in md.split("Left out")[0]
    assert "- STS-B: unpruned pearson 0.8810 (mean, n=3) is below the target 0.9" in md
    yaml_file = tmp_path / "targets.yaml"
    yaml_file.write_text("stsb: {pearson: 0.5}\n")
    assert checks.parse_targets(str(yaml_file)) == {"stsb": {"pearson": 0.5}}
    with pytest.raises(ConfigError, match="task:metric=value"):
        checks.parse_targets("stsb=0.9")
    assert report.main([str(sweep), "--targets", "nonsense"]) == 2
