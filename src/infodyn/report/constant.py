"""The constant predictor's row: the best label-blind prediction (`metrics.constant_baseline`)
on the dev labels each (task, seed) was evaluated on, read again from the run's own config.

A criterion whose mean is not above it has left the model no better than predicting one class;
a task whose unpruned model does not beat it says nothing about pruning and is left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from infodyn.report.discovery import Run
from infodyn.report.names import (
    BASELINE,
    CONSTANT,
    criterion_key,
    label,
    metric_label,
    task_key,
)
from infodyn.report.stats import FEW_SEEDS, Seed, summarize

Cells = dict[str, dict[Seed, dict[str, float]]]  # task -> seed -> {metric: value}
Notes = dict[str, list[str]]  # task -> why a seed has no constant predictor


def _constant_of(run: Run) -> dict[str, float]:
    import yaml

    from infodyn.data import GlueDataModule
    from infodyn.data.hub import HUB_DATASET
    from infodyn.metrics import constant_baseline

    cfg = yaml.safe_load((run.path / str(run.result.config_path)).read_text()) or {}
    data, paths = cfg.get("data") or {}, cfg.get("paths") or {}
    dm = GlueDataModule(
        task=cfg["task"],
        tokenizer=None,
        glue_dir=paths.get("glue_dir"),
        eval_limit=data.get("eval_limit"),
        seed=int(cfg.get("seed", 0)),
        cache_dir=paths.get("cache_dir"),
        hub_dataset=data.get("hub_dataset") or HUB_DATASET,
    )
    return constant_baseline(cfg["task"], dm.eval_labels())


def constant_cells(runs: Sequence[Run]) -> tuple[Cells, Notes]:
    """`(task -> seed -> metrics, notes)`: one evaluation per (task, seed), from the first run's
    config that reads; a note for each (task, seed) whose dev labels cannot be read."""
    groups: dict[tuple[str, Seed], list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: str(r.path)):
        groups[(r.task, r.seed)].append(r)
    cells: Cells = defaultdict(dict)
    notes: Notes = defaultdict(list)
    for (task, seed), members in sorted(
        groups.items(), key=lambda kv: (task_key(kv[0][0]), str(kv[0][1]))
    ):
        problem = ""
        for run in members:
            try:
                cells[task][seed] = _constant_of(run)
                break
            # no data here weakens the table, never ends the report
            except Exception as err:  # noqa: BLE001
                problem = f"{type(err).__name__}: {err}".splitlines()[0]
        else:
            notes[task].append(
                f"seed {seed}: dev labels not readable ({problem}); set GLUE_DIR to the data "
                "the runs used"
            )
    return dict(cells), dict(notes)


def with_constant(
    rows: Sequence[dict[str, Any]], cells: Cells, notes: Notes | None = None
) -> list[dict[str, Any]]:
    """Table 1's rows plus a `constant` row per task; its `note` says which seeds have none."""
    out = [r for r in rows if r["criterion"] != CONSTANT]
    for base in (r for r in rows if r["criterion"] == BASELINE):
        by_seed = cells.get(base["task"], {})
        row = {"criterion": CONSTANT, "label": label(CONSTANT), "task": base["task"]}
        row.update(metric=base["metric"], stage="dev labels", params=None, speedup=None)
        row.update(summarize({s: m[base["metric"]] for s, m in by_seed.items()}))
        row["metrics"] = {
            m: summarize({s: v[m] for s, v in by_seed.items() if m in v}) for m in base["metrics"]
        }
        row.update(few=0 < row["n"] < FEW_SEEDS, best=False)
        row["note"] = "; ".join((notes or {}).get(base["task"], []))
        out.append(row)
    return sorted(out, key=lambda r: (criterion_key(r["criterion"]), task_key(r["task"])))


def not_above_constant(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Tasks whose unpruned mean does not beat the constant predictor's: task -> the reason."""
    at = {(r["criterion"], r["task"]): r for r in rows}
    out = {}
    for (crit, task), base in at.items():
        floor = at.get((CONSTANT, task))
        if crit != BASELINE or not base["n"] or floor is None or not floor["n"]:
            continue
        if base["mean"] <= floor["mean"]:
            out[task] = (
                f"unpruned {metric_label(base['metric'])} {base['mean']:.4f} (mean, "
                f"n={base['n']}) does not beat the constant predictor's {floor['mean']:.4f}: "
                "the model learned nothing its pruning could lose"
            )
    return out


def at_or_below_constant(rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(criterion, task) cells whose main-metric mean is not above the constant predictor's."""
    floor = {r["task"]: r["mean"] for r in rows if r["criterion"] == CONSTANT and r["n"]}
    return {
        (r["criterion"], r["task"])
        for r in rows
        if r["criterion"] != CONSTANT
        and r["n"]
        and r["task"] in floor
        and r["mean"] <= floor[r["task"]] + 1e-12
    }
