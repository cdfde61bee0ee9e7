"""Find the jobs under sweep dirs, read each through `RunResult.load`, name the failed ones."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infodyn.report.names import BASELINE, criterion_key, task_key
from infodyn.results import RunResult
from infodyn.runlock import unfinished_state

# Files a job writes before training: a job dir holding one but no results.json did not finish.
JOB_MARKERS = (".hydra", "config_resolved.yaml")


class NoRunsError(FileNotFoundError):
    """A run dir does not exist or holds no results.json at all."""


@dataclass
class Run:
    """One complete job: its record and where it came from."""

    path: Path  # the job dir (holds results.json)
    result: RunResult
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved config, if any

    @property
    def task(self) -> str:
        return str(self.result.task)

    @property
    def pruner(self) -> str:
        return str(self.result.pruner)

    @property
    def seed(self) -> int | None:
        return self.result.seed

    @property
    def model(self) -> str:
        return name_of(self.result.model)

    def metric(self, stage: str, name: str | None = None) -> tuple[float, str] | None:
        """`(metrics[stage][name or main_metric], stage used)`; `none` falls back to `finetune`.

        The unpruned run has no pruned/recover stage: its fine-tuned model is its final model.
        """
        key = name or self.result.main_metric
        stages = [stage] + (
            ["finetune"] if self.pruner == BASELINE and stage != "finetune" else []
        )
        for s in stages:
            value = (self.result.metrics.get(s) or {}).get(key)
            if isinstance(value, int | float) and math.isfinite(value):
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
    skipped: bool = False  # not run by design: its plain fine-tune missed the target (target.py)
    running: bool = False  # a live job holds its run dir: not finished yet, not failed

    def describe(self) -> str:
        who = ", ".join(
            f"{k}={v}"
            for k, v in (("task", self.task), ("pruner", self.pruner), ("seed", self.seed))
            if v is not None
        )
        return f"{self.path} [{who or 'unknown job'}]: {self.reason}"


def name_of(value: Any) -> str:
    """A readable name for a config group stored as a string or a dict."""
    if isinstance(value, dict):
        for key in ("name", "_name_", "pretrained_model_name_or_path", "method"):
            if key in value:
                return str(value[key])
        return json.dumps(value, sort_keys=True)
    return str(value)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists become one JSON string (compared as a whole)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        return {prefix: json.dumps(obj, sort_keys=True, default=str)}
    return {prefix: obj}


def _path_overrides(path: Path) -> dict[str, str]:
    """`k=v` pairs from Hydra's `<override_dirname>/seed=<n>` folder names."""
    found: dict[str, str] = {}
    for part in path.parts:
        for item in part.split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                found[k.split(".")[-1].lstrip("+~")] = v
    return found


def _failed_from_path(path: Path, reason: str, running: bool = False) -> Failed:
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
    return Failed(path, reason, task and str(task), pruner and str(pruner), seed, running=running)


def _read_config(job_dir: Path, result: RunResult) -> dict[str, Any]:
    if not result.config_path:
        return {}
    try:
        import yaml

        return flatten(yaml.safe_load((job_dir / result.config_path).read_text()) or {})
    except Exception:  # an unreadable config only weakens the mixing check
        return {}


def collect(run_dirs: Iterable[str | os.PathLike[str]]) -> tuple[list[Run], list[Failed]]:
    """Read every results.json under `run_dirs`.

    Returns:
        `(runs, failed)`: complete runs, and jobs whose results.json is unreadable, not
        `status == "complete"` (`skipped` when below its target), or absent from a job dir
        (one holding `.hydra/` or `config_resolved.yaml`: the pipeline writes those before
        training).

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
            result = RunResult.load(file)
            if result is None:
                reason = "unreadable results.json (corrupt, truncated or not a run record)"
                failed.append(_failed_from_path(job, reason))
                continue
            if not result.complete:
                skipped = result.below_target
                reason = f"status={result.status!r}" + (f": {result.reason}" if skipped else "")
                failed.append(
                    Failed(job, reason, result.task, result.pruner, result.seed, skipped)
                )
                continue
            runs.append(Run(job, result, _read_config(job, result)))
        markers = (p for m in JOB_MARKERS for p in run_dir.rglob(m))
        for job in sorted({p.parent for p in markers}):
            if job.resolve() in seen or (job / "results.json").exists():
                continue
            seen.add(job.resolve())
            running, why = unfinished_state(job)
            failed.append(_failed_from_path(job, why, running))
    return runs, failed


def tasks_of(runs: Sequence[Run]) -> list[str]:
    """Tasks present, in GLUE order (unknown tasks last, alphabetically)."""
    return sorted({r.task for r in runs}, key=task_key)


def criteria_of(runs: Sequence[Run]) -> list[str]:
    """Pruners present: `none`, `redundancy`, the rest alphabetically, `oracle` last."""
    return sorted({r.pruner for r in runs}, key=criterion_key)


def sweeps_of(runs: Sequence[Run]) -> list[str]:
    """The sweep names the runs were made under (the W&B group of their jobs)."""
    return sorted({str(r.result.sweep) for r in runs if r.result.sweep})
