"""The report's own W&B run: its tables and figures, in the W&B group of the sweep it reads."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if hasattr(v, "low") and hasattr(v, "high"):  # an Interval
        return f"[{v.low:.6g}, {v.high:.6g}] ({v.describe()})"
    return json.dumps(v, default=str)


def as_table(rows: Sequence[Mapping[str, Any]]):
    """A `wandb.Table` of dict rows (columns from the first); nested values as text."""
    import wandb

    cols = list(rows[0]) if rows else ["empty"]
    return wandb.Table(columns=cols, data=[[_cell(r.get(c)) for c in cols] for r in rows])


def log_wandb(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    figures: Sequence[Path],
    project: str,
    group: str | None,
    config: dict[str, Any],
    out_dir: Path,
) -> str:
    """Log `tables` (name -> dict rows) and the PNG figures to one report run.

    Args:
        group: the sweep name the jobs were logged under (their W&B group), so the report
            sits beside its jobs; None when the runs come from several sweeps.

    Returns:
        The W&B run id. Offline unless WANDB_MODE is set.
    """
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=f"report-{group or Path(out_dir).parent.name}",
        mode=os.environ.get("WANDB_MODE", "offline"),
        config=config,
        dir=os.environ.get("WANDB_DIR", str(out_dir)),
    )
    try:
        data = {name: as_table(rows) for name, rows in tables.items()}
        data.update(
            {f"figures/{f.stem}": wandb.Image(str(f)) for f in figures if f.suffix == ".png"}
        )
        run.log(data)
        return run.id
    finally:
        run.finish()
