"""What must be said before any number is read: failed, missing and mixed jobs; unmet targets."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infodyn.errors import ConfigError
from infodyn.report.discovery import Failed, Run, name_of, tasks_of
from infodyn.report.names import BASELINE, criterion_key, task_key

# Resolved-config keys that legitimately differ between the seeds of one cell.
IGNORED_CONFIG_KEYS = re.compile(
    r"^(run|project|sweep_name|sweep|experiment)(\.|$)|"  # bookkeeping (conf/config.yaml)
    r"(^|\.)(seed|hydra|paths|logger|wandb|job_name|output_dir|default_root_dir|devices|"
    r"accelerator|num_nodes|strategy|num_workers|eval_batch_size|enable_progress_bar|"
    r"log_every_n_steps|.*_dir|.*_path)(\.|$)"
)


def no_metric(runs: Sequence[Run], stage: str) -> list[str]:
    """Complete runs that lack the main metric at `stage` (they are not averaged)."""
    return [
        f"{r.path} [task={r.task}, pruner={r.pruner}, seed={r.seed}]: complete but no "
        f"metrics[{stage!r}][{r.result.main_metric!r}]"
        for r in runs
        if r.metric(stage) is None
    ]


def missing_jobs(
    runs: Sequence[Run], failed: Sequence[Failed], expect_seeds: int | None = None
) -> list[str]:
    """Cells × seeds expected but absent (failed jobs are reported as failed, not missing).

    A task's expected seeds are all seeds seen for it in any cell; its expected criteria are all
    criteria seen anywhere. With `expect_seeds`, cells with fewer seeds say how many are unseen.
    """
    jobs = [(r.task, r.pruner, r.seed) for r in runs]
    jobs += [(f.task, f.pruner, f.seed) for f in failed if f.task and f.pruner]
    crits = sorted({p for _, p, _ in jobs}, key=criterion_key)
    tasks = sorted({t for t, _, _ in jobs}, key=task_key)
    present = set(jobs)
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

    Seeds, paths, loggers and device settings are ignored (`IGNORED_CONFIG_KEYS`), and so is
    the estimator in `none` cells (it only observes); elsewhere it is compared.
    """
    by_cell: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        by_cell[(r.task, r.pruner)].append(r)
    lines = []
    for (task, crit), cell in sorted(by_cell.items()):
        views = [_comparable(r) for r in cell]
        for key in sorted(set().union(*views)):
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
                    groups[name_of(getattr(r.result, key))].append(r.pruner)
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
        view["estimator"] = json.dumps(run.result.estimator, sort_keys=True, default=str)
    for key in ("model", "finetune"):
        view[key] = json.dumps(getattr(run.result, key), sort_keys=True, default=str)
    return view


def parse_targets(spec: str | None) -> dict[str, dict[str, float]]:
    """`--targets`: a YAML file `{task: {metric: value}}` or inline `sst2:accuracy=0.85,...`.

    Raises:
        ConfigError: the spec names no file and is not `task:metric=value[,...]`.
    """
    if not spec:
        return {}
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        import yaml

        if not path.is_file():
            raise ConfigError(
                f"--targets {spec}: no such file; give a YAML {{task: {{metric: v}}}}"
            )
        data = yaml.safe_load(path.read_text()) or {}
        try:
            return {str(t): {str(m): float(v) for m, v in d.items()} for t, d in data.items()}
        except (AttributeError, TypeError, ValueError) as err:
            raise ConfigError(
                f"--targets {spec}: expected a mapping task -> {{metric: number}} ({err})"
            ) from None
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"([\w-]+):([\w-]+)=([-+0-9.eE]+)", item)
        if not m:
            raise ConfigError(
                f"--targets: {item!r} is not task:metric=value (e.g. sst2:accuracy=0.85,"
                "mrpc:f1=0.85) nor a YAML file"
            )
        out[m[1]][m[2]] = float(m[3])
    return dict(out)


def config_targets(runs: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Each task's `target` as its unpruned runs were configured with it ({} where none was)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for run in runs:
        if run.pruner != BASELINE:
            continue
        for key, value in run.config.items():
            if key.startswith("target.") and isinstance(value, int | float):
                out[run.task].setdefault(key.split(".", 1)[1], float(value))
    return dict(out)


def below_target(
    rows: Sequence[Mapping[str, Any]], targets: Mapping[str, Mapping[str, float]]
) -> dict[str, str]:
    """Tasks whose unpruned row misses a stated target: task -> the reason, with the numbers."""
    out: dict[str, str] = {}
    for task, wanted in targets.items():
        base = next((r for r in rows if r["task"] == task and r["criterion"] == BASELINE), None)
        if base is None:
            continue
        for metric, target in wanted.items():
            got = base["metrics"].get(metric)
            if got is None or not got["n"]:
                out[task] = f"no unpruned {metric} to check against the target {target:g}"
            elif got["mean"] < target:
                out[task] = (
                    f"unpruned {metric} {got['mean']:.4f} (mean, n={got['n']}) is below the "
                    f"target {target:g} (too weak at this size to judge pruning against)"
                )
    return out
