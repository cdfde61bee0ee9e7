"""The unpruned target: a criterion is judged only on a fine-tuned model that reaches it.

`target: {metric: value}` (set per task and model by `conf/task_scale/`) is the dev score the
plain fine-tune of a (task, seed) must reach. A model too weak to beat it cannot tell the
criteria apart, so a pruning job whose plain fine-tune misses the target records
`status: below_target` (`results.BELOW_TARGET`) with the numbers and stops before scoring (and,
for a pruner that trains its own model, such as LayerDrop, before that fine-tune). The unpruned
job itself is never held back: it is the evidence. `infodyn-report` reads the same target from
each run's config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from infodyn.errors import ConfigError

log = logging.getLogger("infodyn")


class BelowTarget(Exception):
    """The plain fine-tune of this job's (task, seed) missed `target`; the reason says by how
    much."""


def targets(cfg: DictConfig) -> dict[str, float]:
    """`cfg.target` as {metric: value} (empty: no target)."""
    return {str(k): float(v) for k, v in (cfg.get("target") or {}).items()}


def check_metrics(cfg: DictConfig) -> None:
    """Every target names a metric the task computes (raises `ConfigError` before any work)."""
    known = [str(m) for m in cfg.task.metrics]
    for metric in targets(cfg):
        if metric not in known:
            raise ConfigError(
                f"target.{metric}: task {cfg.task.name} computes {', '.join(known)}, not "
                f"{metric!r}. Fix: target={{{known[0]}: <value>}} (or target=null for none)."
            )


def shortfall(metrics: Mapping[str, Any], wanted: Mapping[str, float]) -> str | None:
    """'accuracy 0.5848 < target 0.6' for each metric below its target; None when all reach it."""
    short = []
    for metric, value in wanted.items():
        got = metrics.get(metric)
        if not isinstance(got, int | float) or got < value:
            shown = "none" if not isinstance(got, int | float) else f"{got:.4f}"
            short.append(f"{metric} {shown} < target {value:g}")
    return "; ".join(short) or None


def judge(cfg: DictConfig, plain_metrics: Mapping[str, Any] | None) -> None:
    """Raise `BelowTarget` when the plain fine-tune's dev metrics miss `cfg.target`.

    `plain_metrics=None` (no plain fine-tune to look at) lets the job run, with a log line.
    """
    wanted = targets(cfg)
    if not wanted:
        return
    if plain_metrics is None:
        log.info("target %s: no plain fine-tune of this (task, seed) to judge; running", wanted)
        return
    short = shortfall(plain_metrics, wanted)
    if short:
        raise BelowTarget(
            f"the plain fine-tune of task={cfg.task.name} seed={cfg.seed} scored {short} on dev:"
            " too weak to judge pruning against, so this criterion is not run. Fix: a larger"
            " conf/task_scale size or more epochs, or a lower `target`."
        )
