"""Aggregate sweep results into Table 1 and the redundancy figures.

    infodyn-report multirun/2026-11-29/12-00-00 [--out DIR] [--stage final] [--wandb]

Reads every ``results.json`` under the given dirs (schema: docs/architecture.md). Failed jobs,
missing seeds and cells that mix configs are printed to stderr and written into the markdown;
they are never averaged in.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GLUE_ORDER = ("mnli", "mrpc", "sst2", "cola", "qnli", "qqp", "rte", "stsb")
BASELINE = "none"
REFERENCE = "redundancy"
LABELS = {BASELINE: "No pruning"}
STAGES = ("finetune", "pruned", "recover", "final")
DASH = "–"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Resolved-config keys that legitimately differ between the seeds of one cell.
IGNORED_CONFIG_KEYS = re.compile(
    r"^(run|project|sweep_name|sweep|experiment)(\.|$)|"  # bookkeeping (conf/config.yaml)
    r"(^|\.)(seed|hydra|paths|logger|wandb|job_name|output_dir|default_root_dir|devices|"
    r"accelerator|num_nodes|strategy|num_workers|eval_batch_size|enable_progress_bar|"
    r"log_every_n_steps|.*_dir|.*_path)(\.|$)"
)
# Files a job writes before training: a job dir holding one but no results.json did not finish.
JOB_MARKERS = (".hydra", "config_resolved.yaml")


class NoRunsError(FileNotFoundError):
    """A run dir holds no results.json at all."""


@dataclass
class Run:
    """One complete job: its results.json and where it came from."""

    path: Path  # the job dir (holds results.json)
    data: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved config, if any

    @property
    def task(self) -> str:
        return str(self.data.get("task"))

    @property
    def pruner(self) -> str:
        return str(self.data.get("pruner"))

    @property
    def seed(self) -> int | None:
        return self.data.get("seed")

    @property
    def model(self) -> str:
        return _name(self.data.get("model"))

    def metric(self, stage: str) -> tuple[float, str] | None:
        """``(metrics[stage][main_metric], stage used)``; ``none`` falls back to ``finetune``."""
        metrics = self.data.get("metrics") or {}
        key = self.data.get("main_metric")
        stages = [stage] + (
            ["finetune"] if self.pruner == BASELINE and stage != "finetune" else []
        )
        for s in stages:
            value = (metrics.get(s) or {}).get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value), s
        return None


@dataclass
class Failed:
    """A job that did not produce a usable results.json."""

    path: Path
    reason: str
    task: str | None = None
    pruner: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        who = ", ".join(
            f"{k}={v}"
            for k, v in (("task", self.task), ("pruner", self.pruner), ("seed", self.seed))
            if v is not None
        )
        return f"{self.path} [{who or 'unknown job'}]: {self.reason}"


def _name(value: Any) -> str:
    """A readable name for a config group stored as a string or a dict."""
    if isinstance(value, dict):
        for key in ("name", "_name_", "pretrained_model_name_or_path", "method"):
            if key in value:
                return str(value[key])
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        return {prefix: json.dumps(obj, sort_keys=True, default=str)}
    return {prefix: obj}


def _path_overrides(path: Path) -> dict[str, str]:
    """``k=v`` pairs from Hydra's ``<override_dirname>/seed=<n>`` folder names."""
    found: dict[str, str] = {}
    for part in path.parts:
        for item in part.split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                found[k.split(".")[-1].lstrip("+~")] = v
    return found


def _failed_from_path(path: Path, reason: str) -> Failed:
    """Name a job without a usable results.json from its resolved config, overrides or path."""
    import yaml

    found: dict[str, Any] = {}
    for name in ("config_resolved.yaml", ".hydra/config.yaml"):
        try:
            cfg = yaml.safe_load((path / name).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for key in ("task", "pruner"):
            sub = cfg.get(key)
            found.setdefault(key, sub.get("name") if isinstance(sub, dict) else sub)
        found.setdefault("seed", cfg.get("seed"))
    try:
        overrides = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        overrides = []
    pairs = [o.split("=", 1) for o in overrides if isinstance(o, str) and "=" in o]
    for k, v in pairs + list(_path_overrides(path).items()):
        key = k.split(".")[-1].lstrip("+~")
        if found.get(key) is None:
            found[key] = v
    seed = found.get("seed")
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        seed = None
    task, pruner = found.get("task"), found.get("pruner")
    return Failed(path, reason, task and str(task), pruner and str(pruner), seed)


def _read_config(job_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    rel = data.get("config_path")
    if not rel:
        return {}
    path = job_dir / rel
    try:
        import yaml

        return _flatten(yaml.safe_load(path.read_text()) or {})
    except Exception:  # an unreadable config only weakens the mixing check
        return {}


def collect(run_dirs: Iterable[str | os.PathLike[str]]) -> tuple[list[Run], list[Failed]]:
    """Read every results.json under ``run_dirs``.

    Returns:
        ``(runs, failed)``: complete runs, and jobs whose results.json is unreadable, not
        ``status == "complete"``, or absent from a job dir (one holding ``.hydra/`` or
        ``config_resolved.yaml``: the pipeline writes those before training).

    Raises:
        NoRunsError: a dir does not exist or holds no results.json at all.
    """
    runs: list[Run] = []
    failed: list[Failed] = []
    seen: set[Path] = set()
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise NoRunsError(f"{run_dir}: no such directory")
        files = sorted(run_dir.rglob("results.json"))
        if not files:
            raise NoRunsError(f"{run_dir}: no results.json found under this directory")
        for file in files:
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            job = file.parent
            try:
                data = json.loads(file.read_text())
                if not isinstance(data, dict):
                    raise ValueError("top level is not an object")
            except (OSError, ValueError) as err:
                failed.append(_failed_from_path(job, f"unreadable results.json ({err})"))
                continue
            if data.get("status") != "complete":
                f = _failed_from_path(job, f"status={data.get('status')!r}")
                f.task = data.get("task", f.task)
                f.pruner = data.get("pruner", f.pruner)
                f.seed = data.get("seed", f.seed)
                failed.append(f)
                continue
            runs.append(Run(job, data, _read_config(job, data)))
        markers = (p for m in JOB_MARKERS for p in run_dir.rglob(m))
        for job in sorted({p.parent for p in markers}):
            if job.resolve() in seen or (job / "results.json").exists():
                continue
            seen.add(job.resolve())
            failed.append(
                _failed_from_path(job, "no results.json (job crashed, was killed or is running)")
            )
    return runs, failed


def _task_key(task: str) -> tuple[int, str]:
    return (GLUE_ORDER.index(task) if task in GLUE_ORDER else len(GLUE_ORDER), task)


def _criterion_key(name: str) -> tuple[int, str]:
    return ({BASELINE: 0, REFERENCE: 1}.get(name, 2), name)


def tasks_of(runs: Sequence[Run]) -> list[str]:
    """Tasks present, in GLUE order (unknown tasks last, alphabetically)."""
    return sorted({r.task for r in runs}, key=_task_key)


def criteria_of(runs: Sequence[Run]) -> list[str]:
    """Pruners present: ``none``, ``redundancy``, then the rest alphabetically."""
    return sorted({r.pruner for r in runs}, key=_criterion_key)


def _cells(runs: Sequence[Run], stage: str) -> dict[tuple[str, str], dict[int | None, float]]:
    """``(criterion, task) -> {seed: value}``; runs without the metric are left out."""
    cells: dict[tuple[str, str], dict[Any, float]] = defaultdict(dict)
    for r in sorted(runs, key=lambda r: str(r.path)):
        got = r.metric(stage)
        if got is not None:
            cells[(r.pruner, r.task)][r.seed] = got[0]
    return cells


def _main_metric(runs: Sequence[Run], task: str) -> str:
    names = Counter(str(r.data.get("main_metric")) for r in runs if r.task == task)
    return names.most_common(1)[0][0] if names else "?"


def table1(runs: Sequence[Run], stage: str = "final") -> list[dict[str, Any]]:
    """Mean ± sample std over seeds of the main metric, one dict per (criterion, task).

    Keys: criterion, label, task, metric, stage (stages used, e.g. ``finetune`` for ``none``
    without a final stage), n, seeds, values, mean, std (None when n < 2), best. ``best`` marks
    the highest mean among pruning criteria (``none`` excluded) per task; ties all marked.
    """
    cells = _cells(runs, stage)
    stages_used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in runs:
        got = r.metric(stage)
        if got is not None:
            stages_used[(r.pruner, r.task)].add(got[1])
    rows: list[dict[str, Any]] = []
    for task in tasks_of(runs):
        task_rows = []
        for crit in criteria_of(runs):
            by_seed = cells.get((crit, task), {})
            seeds = sorted(by_seed, key=lambda s: (s is None, s))
            values = [by_seed[s] for s in seeds]
            n = len(values)
            task_rows.append(
                {
                    "criterion": crit,
                    "label": LABELS.get(crit, crit),
                    "task": task,
                    "metric": _main_metric(runs, task),
                    "stage": ",".join(sorted(stages_used.get((crit, task), {stage}))),
                    "n": n,
                    "seeds": seeds,
                    "values": values,
                    "mean": float(np.mean(values)) if n else None,
                    "std": float(np.std(values, ddof=1)) if n > 1 else None,
                    "best": False,
                }
            )
        means = [r["mean"] for r in task_rows if r["criterion"] != BASELINE and r["n"]]
        if means:
            for r in task_rows:
                if (
                    r["criterion"] != BASELINE
                    and r["n"]
                    and math.isclose(r["mean"], max(means), rel_tol=0, abs_tol=1e-12)
                ):
                    r["best"] = True
        rows.extend(task_rows)
    rows.sort(key=lambda r: (_criterion_key(r["criterion"]), _task_key(r["task"])))
    return rows


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; a single value is its own interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_comparison(
    runs: Sequence[Run], stage: str = "final", reference: str = REFERENCE
) -> list[dict[str, Any]]:
    """Per task, each criterion minus ``reference``, matched by seed.

    Keys: criterion, label, task, n, seeds, diffs, mean, ci_low, ci_high (bootstrap 95%, 10k
    resamples, fixed seed; equal to the value when n == 1; None when n == 0), note.
    """
    cells = _cells(runs, stage)
    out = []
    for crit in criteria_of(runs):
        if crit == reference:
            continue
        for task in tasks_of(runs):
            mine, ref = cells.get((crit, task), {}), cells.get((reference, task), {})
            seeds = sorted(set(mine) & set(ref), key=lambda s: (s is None, s))
            diffs = [mine[s] - ref[s] for s in seeds]
            row: dict[str, Any] = {
                "criterion": crit,
                "label": LABELS.get(crit, crit),
                "task": task,
                "n": len(diffs),
                "seeds": seeds,
                "diffs": diffs,
                "mean": None,
                "ci_low": None,
                "ci_high": None,
                "note": "",
            }
            if diffs:
                row["mean"] = float(np.mean(diffs))
                row["ci_low"], row["ci_high"] = bootstrap_ci(diffs)
                if len(diffs) == 1:
                    row["note"] = "n=1: interval is the single difference"
            elif mine or ref:
                row["note"] = f"no seed shared with {reference}"
            out.append(row)
    return out


def missing_jobs(
    runs: Sequence[Run], failed: Sequence[Failed], expect_seeds: int | None = None
) -> list[str]:
    """Cells × seeds expected but absent (failed jobs are reported as failed, not missing).

    A task's expected seeds are all seeds seen for it in any cell; its expected criteria are all
    criteria seen anywhere. With ``expect_seeds``, cells with fewer seeds say how many are unseen.
    """
    jobs = [(r.task, r.pruner, r.seed) for r in runs]
    jobs += [(f.task, f.pruner, f.seed) for f in failed if f.task and f.pruner]
    crits = sorted({p for _, p, _ in jobs}, key=_criterion_key)
    tasks = sorted({t for t, _, _ in jobs}, key=_task_key)
    present = {(t, p, s) for t, p, s in jobs}
    lines = []
    for task in tasks:
        seeds = sorted({s for t, _, s in jobs if t == task and s is not None})
        for crit in crits:
            have = {s for t, p, s in present if t == task and p == crit}
            absent = [s for s in seeds if s not in have]
            if absent:
                lines.append(
                    f"task={task} pruner={crit}: seed(s) {', '.join(map(str, absent))} missing"
                    f" (have {len(have)} of {len(seeds)})"
                )
            if expect_seeds is not None and len(seeds) < expect_seeds:
                lines.append(
                    f"task={task} pruner={crit}: {expect_seeds - len(seeds)} seed(s) never seen"
                    f" for this task (have {len(have)}, --expect-seeds {expect_seeds})"
                )
    return lines


def mixed_configs(runs: Sequence[Run]) -> list[str]:
    """Cells whose runs differ in model, finetune or a resolved-config key; tasks mixing models.

    Seeds, paths, loggers and device settings are ignored (``IGNORED_CONFIG_KEYS``), and so is
    the estimator in ``none`` cells (it only observes); elsewhere it is compared.
    """
    by_cell: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        by_cell[(r.task, r.pruner)].append(r)
    lines = []
    for (task, crit), cell in sorted(by_cell.items()):
        views = [_comparable(r) for r in cell]
        keys = sorted(set().union(*views))
        for key in keys:
            groups: dict[str, list[str]] = defaultdict(list)
            for r, view in zip(cell, views, strict=True):
                if key in ("model", "finetune") or key in view:
                    groups[repr(view.get(key))].append(str(r.path))
            if len(groups) > 1:
                detail = "; ".join(f"{v}: {', '.join(p)}" for v, p in sorted(groups.items()))
                lines.append(f"task={task} pruner={crit} mixes {key}: {detail}")
    for task in tasks_of(runs):
        for key in ("model", "finetune"):
            groups = defaultdict(list)
            for r in runs:
                if r.task == task:
                    groups[_name(r.data.get(key))].append(r.pruner)
            if len(groups) > 1:
                detail = "; ".join(
                    f"{v}: pruners {', '.join(sorted(set(p)))}" for v, p in sorted(groups.items())
                )
                lines.append(f"task={task} compares criteria across different {key}: {detail}")
    return lines


def _comparable(run: Run) -> dict[str, Any]:
    view = {k: v for k, v in run.config.items() if not IGNORED_CONFIG_KEYS.search(k)}
    if run.pruner == BASELINE:  # estimators only observe training: they cannot change `none`
        view = {k: v for k, v in view.items() if k.split(".")[0] != "estimator"}
    else:
        view["estimator"] = json.dumps(run.data.get("estimator"), sort_keys=True, default=str)
    for key in ("model", "finetune"):
        view[key] = json.dumps(run.data.get(key), sort_keys=True, default=str)
    return view


# ---------------------------------------------------------------- rendering: tables


def _fmt(x: float | None, scale: float, digits: int, sign: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x * scale:{'+' if sign else ''}.{digits}f}"


def _cell_text(row: dict[str, Any], scale: float, digits: int) -> str:
    if not row["n"]:
        return DASH
    return f"{_fmt(row['mean'], scale, digits)} ± {_fmt(row['std'], scale, digits)} (n={row['n']})"


def write_table1(
    rows: Sequence[dict[str, Any]],
    paired: Sequence[dict[str, Any]],
    out_dir: Path,
    stage: str,
    problems: dict[str, list[str]],
    percent: bool = False,
) -> tuple[Path, Path]:
    """Write ``table1.md`` (with problems and the paired comparison) and ``table1.csv``."""
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    tasks = sorted({r["task"] for r in rows}, key=_task_key)
    crits = sorted({r["criterion"] for r in rows}, key=_criterion_key)
    at = {(r["criterion"], r["task"]): r for r in rows}
    metric = {r["task"]: r["metric"] for r in rows}
    unit = " (×100)" if percent else ""
    md = [
        f"# Table 1: main metric at stage `{stage}`{unit}",
        "",
        "Mean ± sample std (ddof=1) over seeds; n = seeds averaged; "
        f"{DASH} = std undefined (n=1) or no runs. **Bold** = best pruning criterion per task "
        f"(`{BASELINE}` excluded). `{BASELINE}` falls back to stage `finetune` when it has no "
        f"`{stage}` metrics.",
        "",
        "| Criterion | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for crit in crits:
        cells = []
        for t in tasks:
            r = at[(crit, t)]
            text = _cell_text(r, scale, digits)
            cells.append(f"**{text}**" if r["best"] else text)
        md.append(f"| {LABELS.get(crit, crit)} | " + " | ".join(cells) + " |")
    md += ["", "## Problems", ""]
    if not any(problems.values()):
        md.append("None: every job complete, every cell has every seed, no mixed configs.")
    for title, lines in problems.items():
        if lines:
            md += [f"**{title}** ({len(lines)}):", ""] + [f"- {x}" for x in lines] + [""]
    md += [
        "",
        f"## Paired comparison vs `{REFERENCE}`",
        "",
        f"Per task: mean over seeds of (criterion − {REFERENCE}), matched by seed, with a "
        f"percentile bootstrap 95% interval ({BOOTSTRAP_RESAMPLES} resamples, numpy seed "
        f"{BOOTSTRAP_SEED}). With n=1 the interval is the single difference (no uncertainty "
        "estimate). Positive = criterion better.",
        "",
    ]
    if any(r["criterion"] == REFERENCE for r in rows):
        pat = {(p["criterion"], p["task"]): p for p in paired}
        md += [
            "| Criterion | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for crit in (c for c in crits if c != REFERENCE):
            cells = []
            for t in tasks:
                p = pat[(crit, t)]
                if not p["n"]:
                    cells.append(DASH)
                    continue
                text = (
                    f"{_fmt(p['mean'], scale, digits, True)} "
                    f"[{_fmt(p['ci_low'], scale, digits, True)}, "
                    f"{_fmt(p['ci_high'], scale, digits, True)}] (n={p['n']})"
                )
                cells.append(text + (" (n=1: no interval)" if p["n"] == 1 else ""))
            md.append(f"| {LABELS.get(crit, crit)} | " + " | ".join(cells) + " |")
    else:
        md.append(f"No `{REFERENCE}` runs: nothing to compare against.")
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "table1.md", out_dir / "table1.csv"
    md_path.write_text("\n".join(md) + "\n")
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["criterion", "label", "task", "metric", "stage", "n", "mean", "std", "best", "seeds"]
        )
        for r in rows:
            w.writerow(
                [
                    r["criterion"],
                    r["label"],
                    r["task"],
                    r["metric"],
                    r["stage"],
                    r["n"],
                    _csv_num(r["mean"]),
                    _csv_num(r["std"]),
                    "*" if r["best"] else "",
                    " ".join(map(str, r["seeds"])),
                ]
            )
    with (out_dir / "table1_paired.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "criterion",
                "reference",
                "task",
                "n",
                "mean_diff",
                "ci_low",
                "ci_high",
                "seeds",
                "note",
            ]
        )
        for p in paired:
            w.writerow(
                [
                    p["criterion"],
                    REFERENCE,
                    p["task"],
                    p["n"],
                    _csv_num(p["mean"]),
                    _csv_num(p["ci_low"]),
                    _csv_num(p["ci_high"]),
                    " ".join(map(str, p["seeds"])),
                    p["note"],
                ]
            )
    return md_path, csv_path


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


# ---------------------------------------------------------------- rendering: figures


def _style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "figure.dpi": 150,
            "savefig.dpi": 200,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "pdf.fonttype": 42,
        }
    )


def _float_array(x: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in x], dtype=float)


def profile_stack(
    runs: Sequence[Run], task: str, estimator: str = "cosine", series: str = "redundancy"
) -> tuple[np.ndarray, np.ndarray, list[Run]] | None:
    """Seeds × epochs × layers of ``profiles.finetune.<estimator>.<series>`` for one task.

    Uses the task's ``none`` runs, or all its runs when it has none. Epochs are cut to the
    shortest run; runs whose layer list differs from the first are dropped.

    Returns:
        ``(stack, layers, runs used)`` or None when no run has the profile.
    """
    pool = [r for r in runs if r.task == task]
    pool = [r for r in pool if r.pruner == BASELINE] or pool
    arrays, layers, used = [], None, []
    for r in sorted(pool, key=lambda r: (r.seed is None, r.seed, str(r.path))):
        prof = ((r.data.get("profiles") or {}).get("finetune") or {}).get(estimator) or {}
        if not prof.get(series):
            continue
        arr = _float_array(prof[series])
        lay = np.asarray(prof.get("layers", range(arr.shape[1])), dtype=int)
        if arr.ndim != 2 or arr.shape[1] != lay.size:
            continue
        if layers is None:
            layers = lay
        if not np.array_equal(lay, layers):
            print(
                f"WARNING: {r.path}: profile layers {lay.tolist()} differ; left out of "
                f"the {task} figure",
                file=sys.stderr,
            )
            continue
        arrays.append(arr)
        used.append(r)
    if not arrays:
        return None
    epochs = min(a.shape[0] for a in arrays)
    if any(a.shape[0] != epochs for a in arrays):
        print(
            f"WARNING: {task}: runs have different epoch counts; figure uses the first {epochs}",
            file=sys.stderr,
        )
    return np.stack([a[:epochs] for a in arrays]), layers, used


def _models(used: Sequence[Run]) -> str:
    return ", ".join(sorted({r.model for r in used}))


def _plot_profile(ax, stack: np.ndarray, layers: np.ndarray, legend: bool) -> None:
    import matplotlib.pyplot as plt

    n, epochs = stack.shape[0], stack.shape[1]
    x = layers + 1  # the paper's layer l+1 is our block index l
    cmap = plt.get_cmap("viridis")
    colors = [cmap(0.9 * e / max(epochs - 1, 1)) for e in range(epochs)]
    with _quiet_nan():
        mean = np.nanmean(stack, axis=0)
        std = np.nanstd(stack, axis=0, ddof=1) if n > 1 else None
    for e in range(epochs):
        ax.plot(x, mean[e], marker="o", ms=3, lw=1.5, color=colors[e], label=f"{e + 1}")
        if std is not None:
            ax.fill_between(
                x, mean[e] - std[e], mean[e] + std[e], color=colors[e], alpha=0.15, lw=0
            )
    ax.set_xticks(x if x.size <= 16 else x[:: max(1, x.size // 12)])
    ax.grid(alpha=0.3, lw=0.5)
    if legend:
        ax.legend(
            title="epoch",
            ncols=2 if epochs > 6 else 1,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
        )


@contextlib.contextmanager
def _quiet_nan() -> Iterator[None]:
    """Silence numpy's all-NaN-slice warnings: unscored blocks are NaN by contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


XLABEL = "layer (1-based as in the paper = block index + 1)"
YLABEL = "redundancy score R"


def _save(fig, path: Path, pdf: bool = True) -> list[Path]:
    import matplotlib.pyplot as plt

    out = [path.with_suffix(".png")]
    fig.savefig(out[0], bbox_inches="tight")
    if pdf:
        out.append(path.with_suffix(".pdf"))
        fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    return out


def render_figures(
    runs: Sequence[Run],
    out_dir: str | os.PathLike[str],
    estimator: str = "cosine",
    series: str = "redundancy",
) -> list[Path]:
    """Write fig1_<task>, fig1_grid (png+pdf), heatmap_<task> and rankings_<task> (png).

    Returns:
        The files written.
    """
    _style()
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stacks = {}
    for task in tasks_of(runs):
        got = profile_stack(runs, task, estimator, series)
        if got is None:
            print(
                f"WARNING: {task}: no profiles.finetune.{estimator}.{series}; no fig1/heatmap",
                file=sys.stderr,
            )
            continue
        stacks[task] = got
        stack, layers, used = got
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        _plot_profile(ax, stack, layers, legend=True)
        band = f", mean ± std over {stack.shape[0]} seeds" if stack.shape[0] > 1 else ", 1 seed"
        ax.set(xlabel=XLABEL, ylabel=YLABEL, title=f"{task.upper()} · {_models(used)}{band}")
        written += _save(fig, out_dir / f"fig1_{task}")
        written += _heatmap(stack, layers, used, task, out_dir)
    if stacks:
        n = len(stacks)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.6 * cols + 0.8, 2.9 * rows), squeeze=False, sharey=True
        )
        for ax, (task, (stack, layers, used)) in zip(axes.flat, stacks.items(), strict=False):
            _plot_profile(ax, stack, layers, legend=False)
            ax.set_title(f"{task.upper()} · {_models(used)} (n={stack.shape[0]})")
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel(YLABEL)
        for ax in axes[-1, :]:
            ax.set_xlabel(XLABEL if cols == 1 else "layer (1-based)")
        for c in range(cols):  # hidden panels leave the bottom row short
            last = max(r for r in range(rows) if r * cols + c < n)
            axes[last, c].set_xlabel(XLABEL if cols == 1 else "layer (1-based)")
            axes[last, c].tick_params(labelbottom=True)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            title="epoch",
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )
        fig.tight_layout()
        written += _save(fig, out_dir / "fig1_grid")
    for task in tasks_of(runs):
        written += _rankings(runs, task, out_dir)
    return written


def _heatmap(stack, layers, used, task: str, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    with _quiet_nan():
        mean = np.nanmean(stack, axis=0)  # epochs × layers
    epochs = mean.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * epochs + 1.2, 0.8 + 0.28 * layers.size + 0.6))
    im = ax.imshow(
        mean.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.5, epochs + 0.5, layers[0] + 0.5, layers[-1] + 1.5),
    )
    ax.set_xticks(range(1, epochs + 1))
    ax.set_yticks(layers + 1)
    ax.set(
        xlabel="epoch",
        ylabel="layer (1-based = block index + 1)",
        title=f"{task.upper()} · {_models(used)} (n={stack.shape[0]})",
    )
    ax.spines[["top", "right"]].set_visible(True)
    fig.colorbar(im, ax=ax, label=YLABEL)
    fig.tight_layout()
    return _save(fig, out_dir / f"heatmap_{task}", pdf=False)


def criterion_scores(runs: Sequence[Run], task: str) -> dict[str, np.ndarray]:
    """Per criterion, its ``layer_scores`` averaged over seeds (NaN where null).

    Criteria without usable scores (all null, fewer than two finite, constant, or lengths that
    differ between seeds) are left out: ``none``, ``last_k``, ``random`` typically.
    """
    scores: dict[str, np.ndarray] = {}
    for crit in criteria_of([r for r in runs if r.task == task]):
        rows = [
            _float_array([r.data["layer_scores"]])[0]
            for r in runs
            if r.task == task and r.pruner == crit and r.data.get("layer_scores")
        ]
        if not rows or len({a.size for a in rows}) > 1:
            continue
        with _quiet_nan():
            mean = np.nanmean(np.stack(rows), axis=0)
        if np.sum(np.isfinite(mean)) < 2 or np.nanmax(mean) == np.nanmin(mean):
            continue
        scores[crit] = mean
    return scores


def spearman_matrix(scores: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Spearman rank correlation between criteria over the layers both score."""
    from scipy.stats import spearmanr

    names = list(scores)
    rho = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(scores.values()):
        for j, b in enumerate(scores.values()):
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() >= 2:
                with _quiet_nan():
                    rho[i, j] = spearmanr(a[ok], b[ok]).statistic
    return names, rho


def _rankings(runs: Sequence[Run], task: str, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    scores = criterion_scores(runs, task)
    if not scores:
        return []
    names = list(scores)
    k = len(names)
    if k > 1:
        fig, (ax, axc) = plt.subplots(
            1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.5, 1]}
        )
    else:  # one criterion: nothing to correlate
        fig, ax = plt.subplots(figsize=(6, 3.6))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        s = scores[name]
        norm = (s - np.nanmin(s)) / (np.nanmax(s) - np.nanmin(s))
        ax.plot(
            np.arange(s.size) + 1,
            norm,
            marker="o",
            ms=3,
            lw=1.4,
            color=cmap(i % 10),
            label=LABELS.get(name, name),
        )
    size = max(s.size for s in scores.values())
    ax.set_xticks(np.arange(1, size + 1) if size <= 16 else np.arange(1, size + 1, size // 12))
    ax.set(
        xlabel=XLABEL,
        ylabel="layer score (min-max normalised)",
        ylim=(-0.05, 1.05),
        title=f"{task.upper()}: layer scores per criterion (mean over seeds)",
    )
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="best", framealpha=0.85, title="criterion")
    if k == 1:
        fig.tight_layout()
        return _save(fig, out_dir / f"rankings_{task}", pdf=False)
    _, rho = spearman_matrix(scores)
    im = axc.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [LABELS.get(n, n) for n in names]
    axc.set_xticks(range(k), labels, rotation=30, ha="right")
    axc.set_yticks(range(k), labels)
    for i in range(k):
        for j in range(k):
            if np.isfinite(rho[i, j]):
                axc.text(
                    j,
                    i,
                    f"{rho[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if abs(rho[i, j]) > 0.6 else "black",
                )
    axc.set_title("Spearman ρ between criteria")
    axc.spines[["top", "right"]].set_visible(True)
    fig.colorbar(im, ax=axc, fraction=0.046, pad=0.04, label="ρ")
    fig.tight_layout()
    return _save(fig, out_dir / f"rankings_{task}", pdf=False)


# ---------------------------------------------------------------- W&B and CLI


def log_job_to_wandb(
    run: Any, results: Mapping[str, Any], out_dir: str | os.PathLike[str]
) -> None:
    """Log one job's per-epoch profiles (a `wandb.Table` per estimator) and its Fig. 1 plot
    to that job's W&B run, and put the final metrics in the run summary."""
    import wandb

    for stage, per_est in (results.get("profiles") or {}).items():
        if not isinstance(per_est, Mapping):
            continue  # the "indexing" note
        for est, prof in per_est.items():
            layers = prof.get("layers") or []
            series = [k for k, v in prof.items() if k != "layers" and v and isinstance(v[0], list)]
            rows = [
                [stage, epoch + 1, block, *[prof[k][epoch][i] for k in series]]
                for epoch in range(len(prof[series[0]]) if series else 0)
                for i, block in enumerate(layers)
            ]
            if rows:
                table = wandb.Table(columns=["stage", "epoch", "block", *series], data=rows)
                run.log({f"profiles/{stage}/{est}": table})
    prof = ((results.get("profiles") or {}).get("finetune") or {}).get("cosine") or {}
    if prof.get("redundancy"):
        _style()
        import matplotlib.pyplot as plt

        stack = _float_array(prof["redundancy"])[None]
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        _plot_profile(ax, stack, np.asarray(prof["layers"], dtype=int), legend=True)
        ax.set(
            xlabel=XLABEL,
            ylabel=YLABEL,
            title=f"{results.get('task')} · {results.get('model')} (seed {results.get('seed')})",
        )
        path = _save(fig, Path(out_dir) / "fig1", pdf=False)[0]
        run.log({"fig1": wandb.Image(str(path))})
    final = (results.get("metrics") or {}).get("final") or {}
    run.summary.update({f"final/{k}": v for k, v in final.items()})
    run.summary.update(
        {
            "pruned_layers": results.get("pruned_layers"),
            "num_layers_after": results.get("num_layers_after"),
        }
    )


def log_wandb(
    rows: Sequence[dict[str, Any]],
    paired: Sequence[dict[str, Any]],
    figures: Sequence[Path],
    project: str,
    config: dict[str, Any],
    out_dir: Path,
) -> str:
    """Log the tables and PNG figures to one summary run; offline unless WANDB_MODE is set.

    Returns:
        The W&B run id.
    """
    import wandb

    run = wandb.init(
        project=project,
        job_type="report",
        name=f"report-{out_dir.parent.name}",
        mode=os.environ.get("WANDB_MODE", "offline"),
        config=config,
        dir=os.environ.get("WANDB_DIR", str(out_dir)),
    )
    try:
        cols = ["criterion", "label", "task", "metric", "stage", "n", "mean", "std", "best"]
        run.log(
            {
                "table1": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows]),
                "table1_paired": wandb.Table(
                    columns=["criterion", "task", "n", "mean_diff", "ci_low", "ci_high", "note"],
                    data=[
                        [
                            p["criterion"],
                            p["task"],
                            p["n"],
                            p["mean"],
                            p["ci_low"],
                            p["ci_high"],
                            p["note"],
                        ]
                        for p in paired
                    ],
                ),
                **{
                    f"figures/{f.stem}": wandb.Image(str(f)) for f in figures if f.suffix == ".png"
                },
            }
        )
        return run.id
    finally:
        run.finish()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infodyn-report",
        description="Table 1 and redundancy figures from infodyn results.json files.",
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="Hydra multirun or single-run dirs; searched recursively",
    )
    p.add_argument("--out", type=Path, help="output dir (default: FIRST_RUN_DIR/report)")
    p.add_argument(
        "--stage",
        default="final",
        choices=STAGES,
        help="metrics stage for Table 1 (default: final)",
    )
    p.add_argument(
        "--expect-seeds",
        type=int,
        metavar="N",
        help="seeds every cell should have; fewer is reported as missing",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 on mixed configs, failed or missing jobs"
    )
    p.add_argument("--percent", action="store_true", help="show metrics ×100 in table1.md")
    p.add_argument(
        "--estimator",
        default="cosine",
        help="profile estimator for fig1/heatmap (default: cosine)",
    )
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--wandb", action="store_true", help="log tables and figures to W&B")
    p.add_argument("--wandb-project", default="infodyn")
    return p


def _loud(title: str, lines: Sequence[str]) -> None:
    if lines:
        print(f"\n!!! {title} ({len(lines)}):", file=sys.stderr)
        for line in lines:
            print(f"!!!   {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Exit codes: 0 ok, 1 ``--strict`` violation, 2 no runs found."""
    args = _parser().parse_args(argv)
    try:
        runs, failed = collect(args.run_dirs)
    except NoRunsError as err:
        print(f"infodyn-report: error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"infodyn-report: error: no complete run under {', '.join(args.run_dirs)}",
            file=sys.stderr,
        )
        _loud("FAILED jobs", [f.describe() for f in failed])
        return 2
    out_dir = args.out or Path(args.run_dirs[0]) / "report"
    no_metric = [
        f"{r.path} [task={r.task}, pruner={r.pruner}, seed={r.seed}]: complete but no "
        f"metrics[{args.stage!r}][{r.data.get('main_metric')!r}]"
        for r in runs
        if r.metric(args.stage) is None
    ]
    problems = {
        "FAILED jobs (not averaged)": [f.describe() for f in failed] + no_metric,
        "MISSING jobs": missing_jobs(runs, failed, args.expect_seeds),
        "MIXED configs in one comparison": mixed_configs(runs),
    }
    for title, lines in problems.items():
        _loud(title, lines)
    rows = table1(runs, args.stage)
    paired = paired_comparison(runs, args.stage)
    md_path, csv_path = write_table1(rows, paired, out_dir, args.stage, problems, args.percent)
    figures = [] if args.no_figures else render_figures(runs, out_dir, args.estimator)
    print(md_path.read_text())
    print(f"wrote {md_path}, {csv_path} and {len(figures)} figure files to {out_dir}")
    if args.wandb:
        run_id = log_wandb(
            rows,
            paired,
            figures,
            args.wandb_project,
            {"run_dirs": list(args.run_dirs), "stage": args.stage},
            out_dir,
        )
        print(f"logged report to W&B run {run_id}")
    strict_fail = problems["MIXED configs in one comparison"] or (
        problems["FAILED jobs (not averaged)"] or problems["MISSING jobs"]
    )
    if args.strict and strict_fail:
        print("infodyn-report: error: --strict and the problems above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
