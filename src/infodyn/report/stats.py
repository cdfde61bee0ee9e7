"""Statistics over seeds: summaries, paired differences with Student-t intervals, "best" cells.

Intervals are Student-t 95% over the paired per-seed differences (scipy.stats.t); a percentile
bootstrap is added only from n >= 10, where it has a chance of covering; "best" needs the same n
as its runner-up and a paired interval against it that excludes 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infodyn.report.discovery import Run, criteria_of, tasks_of
from infodyn.report.names import (
    BASELINE,
    NOT_CONTENDERS,
    criterion_key,
    label,
    task_key,
    task_metrics,
)

LEVEL = 0.95
FEW_SEEDS = 3  # cells with fewer seeds are flagged: their spread says little
BOOTSTRAP_MIN_N = 10  # under this a percentile bootstrap of the mean undercovers badly
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
T_METHOD = "Student-t 95%"
BOOTSTRAP_METHOD = f"percentile bootstrap 95% ({BOOTSTRAP_RESAMPLES} resamples)"

Seed = int | None


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a mean, with the n and the method that made it."""

    low: float
    high: float
    n: int
    method: str

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        return f"{self.method}, n={self.n}"


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is None under two values."""
    if not values:
        return None, None
    x = np.asarray(values, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n-1} · s/√n; None under n = 2."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    half = float(t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    m = float(x.mean())
    return Interval(m - half, m + half, int(x.size), T_METHOD)


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap interval of the mean.

    Raises:
        ValueError: fewer than `BOOTSTRAP_MIN_N` values (use `t_interval`).
    """
    x = np.asarray(values, dtype=float)
    if x.size < BOOTSTRAP_MIN_N:
        raise ValueError(
            f"bootstrap of {x.size} values: needs n >= {BOOTSTRAP_MIN_N} (with fewer it is "
            "about the [min, max] of the values); use t_interval"
        )
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), int(x.size), BOOTSTRAP_METHOD)


def _seed_key(s: Seed) -> tuple[bool, int]:
    return (s is None, s if s is not None else 0)


def cell_values(
    runs: Sequence[Run], stage: str, metric: str | None = None
) -> dict[tuple[str, str], dict[Seed, float]]:
    """`(criterion, task) -> {seed: value}` of `metric` (default: each run's main metric)."""
    cells: dict[tuple[str, str], dict[Seed, float]] = defaultdict(dict)
    for r in sorted(runs, key=lambda r: str(r.path)):
        got = r.metric(stage, metric)
        if got is not None:
            cells[(r.pruner, r.task)][r.seed] = got[0]
    return cells


def paired(mine: Mapping[Seed, float], ref: Mapping[Seed, float]) -> dict[str, Any]:
    """`mine - ref` matched by seed: seeds, diffs, mean, std, `ci` (t), `boot` (n >= 10), note."""
    seeds = sorted(set(mine) & set(ref), key=_seed_key)
    diffs = [mine[s] - ref[s] for s in seeds]
    mean, std = mean_std(diffs)
    out = {"seeds": seeds, "diffs": diffs, "n": len(diffs), "mean": mean, "std": std}
    out["ci"] = t_interval(diffs)
    out["boot"] = bootstrap_ci(diffs) if len(diffs) >= BOOTSTRAP_MIN_N else None
    out["note"] = ""
    if len(diffs) == 1:
        out["note"] = "n=1: no interval"
    elif not diffs and (mine or ref):
        out["note"] = "no seed in common"
    elif 0 < len(diffs) < FEW_SEEDS:
        out["note"] = f"n={len(diffs)} < {FEW_SEEDS}: interval very wide"
    return out


def paired_comparison(
    runs: Sequence[Run], stage: str = "final", reference: str = BASELINE
) -> list[dict[str, Any]]:
    """Per task, each criterion minus `reference` (main metric), matched by seed.

    Keys: criterion, label, reference, task, n, seeds, diffs, mean, std, ci (Interval or None),
    ci_low, ci_high, method, boot (Interval from n >= 10, else None), note.
    """
    cells = cell_values(runs, stage)
    out = []
    for crit in criteria_of(runs):
        if crit == reference:
            continue
        for task in tasks_of(runs):
            mine, ref = cells.get((crit, task), {}), cells.get((reference, task), {})
            p = paired(mine, ref)
            if not p["n"] and not p["note"]:
                continue
            if not p["n"] and not ref:
                p["note"] = f"no {reference} runs"
            ci = p["ci"]
            p.update(
                criterion=crit,
                label=label(crit),
                reference=reference,
                task=task,
                ci_low=ci.low if ci else None,
                ci_high=ci.high if ci else None,
                method=ci.describe() if ci else "",
            )
            out.append(p)
    return out


def summarize(by_seed: Mapping[Seed, float]) -> dict[str, Any]:
    """n, seeds, values (in seed order), mean and sample std of `{seed: value}`."""
    seeds = sorted(by_seed, key=_seed_key)
    values = [by_seed[s] for s in seeds]
    mean, std = mean_std(values)
    return {"n": len(values), "seeds": seeds, "values": values, "mean": mean, "std": std}


def _mean_of(values: Sequence[float | None]) -> float | None:
    got = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(got)) if got else None


def table1(runs: Sequence[Run], stage: str = "final") -> list[dict[str, Any]]:
    """One dict per (criterion, task): the main metric over seeds, the paper's other metrics.

    Keys: criterion, label, task, metric (main), stage (stages used), n, seeds, values, mean,
    std, few (n < FEW_SEEDS), metrics ({name: summary} for the task's displayed metrics),
    params (mean num_parameters_after), speedup (mean throughput.speedup; 1.0 for `none`),
    best (see `best_vs_runner_up`).
    """
    cells = cell_values(runs, stage)
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in runs:
        got = r.metric(stage)
        if got is not None:
            used[(r.pruner, r.task)].add(got[1])
    rows: list[dict[str, Any]] = []
    for task in tasks_of(runs):
        main = _main_metric(runs, task)
        extra = {m: cell_values(runs, stage, m) for m in task_metrics(task, main) if m != main}
        for crit in criteria_of(runs):
            mine = [r for r in runs if r.task == task and r.pruner == crit]
            row = {"criterion": crit, "label": label(crit), "task": task, "metric": main}
            row["stage"] = ",".join(sorted(used.get((crit, task), {stage})))
            row.update(summarize(cells.get((crit, task), {})))
            row["few"] = 0 < row["n"] < FEW_SEEDS
            row["metrics"] = {main: summarize(cells.get((crit, task), {}))}
            for m in task_metrics(task, main):
                if m != main:
                    row["metrics"][m] = summarize(extra[m].get((crit, task), {}))
            params = [
                r.result.num_parameters_after
                if r.result.num_parameters_after is not None or crit != BASELINE
                else r.result.num_parameters_before
                for r in mine
            ]
            row["params"] = _mean_of(params)
            row["speedup"] = _mean_of(
                [r.result.throughput.speedup for r in mine if r.result.throughput]
            )
            if row["speedup"] is None and crit == BASELINE and mine:
                row["speedup"] = 1.0
            row["best"] = False
            rows.append(row)
    for cmp in best_vs_runner_up(rows, cells):
        if cmp["best"]:
            for r in rows:
                if (r["criterion"], r["task"]) == (cmp["criterion"], cmp["task"]):
                    r["best"] = True
    rows.sort(key=lambda r: (criterion_key(r["criterion"]), task_key(r["task"])))
    return rows


def runner_up_comparisons(runs: Sequence[Run], stage: str = "final") -> list[dict[str, Any]]:
    """`best_vs_runner_up` of the runs' Table 1 at `stage`."""
    return best_vs_runner_up(table1(runs, stage), cell_values(runs, stage))


def _main_metric(runs: Sequence[Run], task: str) -> str:
    from collections import Counter

    names = Counter(str(r.result.main_metric) for r in runs if r.task == task)
    return names.most_common(1)[0][0] if names else "?"


def best_vs_runner_up(
    rows: Sequence[dict[str, Any]], cells: Mapping[tuple[str, str], Mapping[Seed, float]]
) -> list[dict[str, Any]]:
    """Per task: the top contender against the runner-up among cells with the same (largest) n.

    `none` and `oracle` are references, not contenders; cells with fewer seeds than the fullest
    contender are not eligible. The top is "best" only when the paired t-interval of
    (top - runner-up) excludes 0.

    Returns:
        One dict per task with contenders: task, criterion (top), runner_up, n, eligible, mean,
        ci, best, note.
    """
    out = []
    for task in sorted({r["task"] for r in rows}, key=task_key):
        cand = [
            r
            for r in rows
            if r["task"] == task and r["n"] and r["criterion"] not in NOT_CONTENDERS
        ]
        if not cand:
            continue
        n_full = max(r["n"] for r in cand)
        eligible = sorted(
            (r for r in cand if r["n"] == n_full), key=lambda r: (-r["mean"], r["criterion"])
        )
        top = eligible[0]
        res = {"task": task, "criterion": top["criterion"], "runner_up": None, "n": 0}
        res.update(eligible=[r["criterion"] for r in eligible], mean=None, ci=None, best=False)
        if len(eligible) < 2:
            res["note"] = f"no runner-up with n={n_full}: nothing to be best against"
            out.append(res)
            continue
        runner = eligible[1]
        p = paired(cells[(top["criterion"], task)], cells[(runner["criterion"], task)])
        res.update(runner_up=runner["criterion"], n=p["n"], mean=p["mean"], ci=p["ci"])
        res["best"] = bool(p["ci"] and p["ci"].low > 0)
        res["note"] = (
            "" if res["best"] else "interval includes 0: no best" if p["ci"] else p["note"]
        )
        out.append(res)
    return out
