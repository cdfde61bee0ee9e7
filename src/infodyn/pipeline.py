"""One job: validate -> build -> run the stages -> `results.json`.

`run(cfg)` validates every input before any training, builds data, model, estimators, pruner and
loggers, runs the stages (`stages.py`; a rerun resumes them) and writes `results.json` (atomic:
temp + rename). A job whose `results.json` is complete is skipped, so rerunning a sweep resumes it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.builders import (
    build_datamodule,
    build_estimators,
    build_loggers,
    build_module,
    build_pruner,
    estimator_configs,
)
from infodyn.checkpoints import atomic_write_json, finite, read_json
from infodyn.errors import ConfigError, TrainingDivergedError, user_errors
from infodyn.stages import run_stages
from infodyn.validation import check_output_dir, preflight, validate

log = logging.getLogger("infodyn")


def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main metric of the last stage (what a sweeper optimises).

    Bad inputs raise before any training (`user_errors()`); a NaN/inf loss raises
    `TrainingDivergedError`. Under `python -m infodyn` (a single run) either is printed as one
    `error: ...` paragraph on stderr and the process exits with 2 (input) or 3 (diverged).
    """
    try:
        return _run(cfg)
    except (*user_errors(), TrainingDivergedError) as err:
        if not _single_cli_run():
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(3 if isinstance(err, TrainingDivergedError) else 2) from err


def _single_cli_run() -> bool:
    """True inside `python -m infodyn` without `-m` (a multirun keeps Hydra's per-job report)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


def _run(cfg: DictConfig) -> float | None:
    start = time.time()
    run_dir = run_dir_of(cfg)
    check_output_dir(cfg, run_dir)
    results_path = run_dir / "results.json"
    done = read_json(results_path)
    if done and done.get("status") == "complete" and cfg.run.get("skip_if_complete", True):
        log.info("%s is complete; skipping (delete it to rerun).", results_path)
        return _main_value(done)

    validate(cfg)
    pruner_name, pruner = build_pruner(cfg)
    needed = (
        getattr(pruner, "estimator", None)
        if getattr(pruner, "source", "") == "estimator"
        else None
    )
    estimators = build_estimators(cfg, needed)
    names = {
        "task": str(cfg.task.name),
        "model": str(cfg.model.name),
        "pruner": pruner_name,
        "estimator": "+".join(sorted(estimator_configs(cfg))) or "none",
        "job_name": _job_name(cfg, run_dir),
    }

    from infodyn.models import build_tokenizer

    tokenizer = build_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, None)
    dm.validate()  # data files, columns, labels: before the model is even built
    module = build_module(cfg, list(dm.eval_split_names))
    k = preflight(cfg, module, tokenizer, pruner, pruner_name)

    # Only now does the job write anything: a failed check leaves no outputs behind.
    run_dir.mkdir(parents=True, exist_ok=True)
    if results_path.exists():  # stale (failed, or complete with skip_if_complete=false)
        results_path.unlink()
    config_path = run_dir / "config_resolved.yaml"
    OmegaConf.save(OmegaConf.to_container(cfg, resolve=True), config_path)

    loggers = build_loggers(cfg, run_dir, names)
    try:
        results = run_stages(cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, module, k)
        results.update(
            task=names["task"],
            model=names["model"],
            seed=int(cfg.seed),
            pruner=pruner_name,
            estimator=names["estimator"],
            finetune=str(cfg.finetune.name),
            sweep=str(cfg.get("sweep_name", "manual")),
            job_name=names["job_name"],
            main_metric=str(cfg.task.main_metric),
            status="complete",
            wall_time_s=round(time.time() - start, 3),
            config_path=str(config_path.relative_to(run_dir)),
        )
        atomic_write_json(results_path, finite(results))
        for lg in loggers:
            _log_summary(lg, results)
        log.info("results: %s", results_path)
        return _main_value(results)
    finally:
        for lg in loggers:
            _close_logger(lg)


def run_dir_of(cfg: DictConfig) -> Path:
    """The job's output dir: Hydra's runtime output dir, or `cfg.run_dir` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigError("no output dir: run through `python -m infodyn`, or set run_dir=<path>.")


def _job_name(cfg: DictConfig, run_dir: Path) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        dirname = HydraConfig.get().job.override_dirname
        if dirname:
            return f"{dirname},seed={cfg.seed}"
    return f"{cfg.task.name}-{cfg.model.name}-seed={cfg.seed}"


def _main_value(results: Mapping[str, Any]) -> float | None:
    metrics = results.get("metrics", {})
    stage = next((s for s in ("final", "recover", "pruned", "finetune") if s in metrics), None)
    return metrics.get(stage, {}).get(results.get("main_metric")) if stage else None


def _log_summary(lg: Any, results: Mapping[str, Any]) -> None:
    flat = {
        f"{stage}/{k}": v
        for stage, vals in results["metrics"].items()
        for k, v in vals.items()
        if isinstance(v, int | float)
    }
    try:
        lg.log_metrics(flat)
        if type(lg).__name__ == "WandbLogger":
            from infodyn.report import log_job_to_wandb

            lg.experiment.summary.update(flat)
            log_job_to_wandb(lg.experiment, results, Path(lg.save_dir or "."))
    except Exception as err:  # noqa: BLE001 - tracking must never sink a finished job
        log.warning("could not log the summary to %s: %s", type(lg).__name__, err)


def _close_logger(lg: Any) -> None:
    try:
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    except Exception as err:  # noqa: BLE001
        log.warning("closing %s failed: %s", type(lg).__name__, err)
