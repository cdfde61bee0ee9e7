"""Per-job logging to the experiment trackers (placeholder moved from pipeline.py; the trainer
branch replaces it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("infodyn")


def log_run_summary(loggers: list, result: Any) -> None:
    flat = {
        f"{stage}/{k}": v
        for stage, vals in result.metrics.items()
        for k, v in vals.items()
        if isinstance(v, int | float)
    }
    for lg in loggers:
        try:
            lg.log_metrics(flat)
            if type(lg).__name__ == "WandbLogger":
                from infodyn.report import log_job_to_wandb

                lg.experiment.summary.update(flat)
                log_job_to_wandb(lg.experiment, result.to_dict(), Path(lg.save_dir or "."))
        except Exception as err:  # noqa: BLE001 - tracking must never sink a finished job
            log.warning("could not log the summary to %s: %s", type(lg).__name__, err)


def close_loggers(loggers: list) -> None:
    for lg in loggers:
        try:
            lg.finalize("success")
            if type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish()
        except Exception as err:  # noqa: BLE001
            log.warning("closing %s failed: %s", type(lg).__name__, err)
