"""One job: validate -> build -> check what the run dir holds -> run the stages -> results.json.

Every input is checked before any training, and nothing is written before the checks pass. A
run dir is reused (a finished job skipped, a killed one resumed) only when what it holds was made
by a config that agrees with this one on every key that affects it (`reuse.py`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from infodyn.builders import (
    build_datamodule,
    build_estimators,
    build_loggers,
    build_module,
    build_pruner,
    estimator_configs,
)
from infodyn.checkpoints import release_finished_run
from infodyn.errors import ConfigError
from infodyn.explain import cli_exit
from infodyn.io import atomic_write
from infodyn.layers import num_blocks
from infodyn.loggers import close_loggers, log_run_summary, summary_table
from infodyn.model_checks import preflight
from infodyn.models import find_hf_model
from infodyn.output_paths import check_output_dir
from infodyn.results import BELOW_TARGET, RunResult
from infodyn.reuse import check_reuse, config_hash, flat_config
from infodyn.runlock import RunLock
from infodyn.stages import Finetune, Job, OracleAnalysis, check_stored, run_stages, stages_for
from infodyn.target import BelowTarget
from infodyn.validation import validate

log = logging.getLogger("infodyn")

# What a run dir holds that `run.overwrite=true` discards (never anything else in the dir).
RUN_OUTPUTS = ("stages", "checkpoints", "model", "results.json", "config_resolved.yaml")


def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main metric of the last stage (what a sweeper optimises).

    Bad inputs raise before any training (`ConfigError`); a NaN/inf loss raises
    `TrainingDivergedError`. Under `python -m infodyn` (a single run) every failure goes through
    `explain.cli_exit`: a known one is one `error: ...` paragraph and exit 2 (input) or 3
    (diverged), Ctrl-C exits 130, an unknown one keeps its traceback and names the log.
    """
    if not _single_cli_run():
        return _run(cfg)  # the API and a multirun: the caller (Hydra, per job) reports
    try:
        return _run(cfg)
    except BaseException as err:
        code = cli_exit(err)
        if code is None:
            raise
        raise SystemExit(code) from None


def _single_cli_run() -> bool:
    """True inside `python -m infodyn` without `-m` (a multirun keeps Hydra's per-job report)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


def _run(cfg: DictConfig) -> float | None:
    from infodyn.progress import quiet_libraries

    start = time.time()
    quiet_libraries()
    run_dir = run_dir_of(cfg)
    check_output_dir(cfg, run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"the run dir {run_dir} is a file. Fix: run_dir=<a folder path>, or move the file."
        )
    # held to the end: a second run on this dir stops here naming this one; stale temporaries go
    with RunLock(run_dir):
        return _locked_run(cfg, run_dir, start)


def _locked_run(cfg: DictConfig, run_dir: Path, start: float) -> float | None:
    done = _finished(cfg, run_dir)
    if done is not None:
        log.info("%s is complete; skipping (made by this same config).", run_dir / "results.json")
        return done.main_value()

    validate(cfg)
    name, pruner = build_pruner(cfg)
    estimators = build_estimators(_with_pruner_estimator(cfg), pruner.needs_estimator())
    from infodyn.models import build_tokenizer

    tokenizer = build_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, None)
    dm.validate()  # data files, columns, labels: before the model is even built
    module = build_module(cfg, list(dm.eval_split_names))
    preflight(cfg, module, tokenizer)
    num_layers = num_blocks(find_hf_model(module.model))
    k = pruner.num_to_remove(num_layers)
    pruner.check(num_layers, estimators)
    if int(cfg.stages.finetune_epochs) == 0 and k > 0 and pruner.needs_profile():
        raise ConfigError(
            f"pruner={name} ranks blocks by the fine-tuning profile of estimator "
            f"'{pruner.needs_estimator()}', and stages.finetune_epochs=0 records none. Fix: "
            "pruner.reduce=calibration (scores the given model on data.calibration_size "
            "training examples), or fine-tune (stages.finetune_epochs >= 1)."
        )

    result = RunResult(
        task=str(cfg.task.name),
        model=str(cfg.model.name),
        seed=int(cfg.seed),
        pruner=name,
        estimator="+".join(sorted(estimator_configs(cfg))) or "none",
        finetune=str(cfg.finetune.name),
        sweep=str(cfg.get("sweep_name", "manual")),
        job_name=_job_name(cfg),
        main_metric=str(cfg.task.main_metric),
        status="running",
    )
    job = Job(cfg, run_dir, dm, estimators, pruner, k, [], module, result)
    if cfg.run.get("overwrite", False):
        _discard_outputs(run_dir)
    check_stored(job, stages_for(job))  # a stale stage stops the run here, before any work

    from infodyn import finetune_cache

    shared = {
        "finetune": finetune_cache.for_job(cfg, config_hash(Finetune().config(job))),
        "oracle": finetune_cache.for_oracle(cfg, config_hash(OracleAnalysis().config(job))),
    }
    # Only now does the job write outputs: a failed check leaves nothing behind (but the lock).
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").unlink(missing_ok=True)  # failed, or made by an older code
    config_path = run_dir / "config_resolved.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write(config_path, lambda tmp: OmegaConf.save(resolved, tmp))

    job.loggers = build_loggers(cfg, run_dir, {**_names(result), "job_name": result.job_name})
    status = "failed"
    try:
        dm.setup("fit")
        try:
            run_stages(job, shared)
            result.status = "complete"
        except BelowTarget as why:  # by design, not a failure: the report lists it as skipped
            result.status, result.reason = BELOW_TARGET, str(why)
        result.wall_time_s = round(time.time() - start, 3)
        result.config_path = config_path.name
        result.config_hash = config_hash(flat_config(cfg))
        result.save(run_dir / "results.json")
        if rank_zero_only.rank == 0:  # a finished run is skipped on rerun: its checkpoints go
            release_finished_run(run_dir, keep=list(cfg.run.get("keep_checkpoints") or ()))
            if not result.complete and shared["finetune"] and shared["finetune"].complete():
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the cache holds it
        status = "success"
        if not result.complete:
            log.warning("%s: %s", result.status, result.reason)
            return None
        log_run_summary(job.loggers, result)
        log.info("run finished\n%s", summary_table(result, run_dir))
        return result.main_value()
    finally:
        close_loggers(job.loggers, status)


def _with_pruner_estimator(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose `estimator` holds the one the pruner names too (`estimator=none
    pruner=redundancy`), loaded inside the job so that its `${seed}` resolves."""
    from omegaconf import open_dict

    from infodyn.validation import estimators_in_effect

    job = cfg.copy()
    with open_dict(job):
        job.estimator = estimators_in_effect(cfg)
    return job


def _finished(cfg: DictConfig, run_dir: Path) -> RunResult | None:
    """The run dir's complete results when this config made them (None: run the job).

    A complete results.json made by another config stops the run naming the keys."""
    done = RunResult.load(run_dir / "results.json")
    if done is None or not done.complete:
        return None
    if cfg.run.get("overwrite", False) or not cfg.run.get("skip_if_complete", True):
        return None
    stored = run_dir / "config_resolved.yaml"
    made_by = flat_config(OmegaConf.load(stored)) if stored.is_file() else None
    check_reuse("a finished run", run_dir / "results.json", made_by, flat_config(cfg))
    return done


def _discard_outputs(run_dir: Path) -> None:
    """`run.overwrite=true`: what an earlier run left in the dir goes (nothing else)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    log.info("run.overwrite=true: discarded the earlier outputs in %s", run_dir)


def run_dir_of(cfg: DictConfig) -> Path:
    """The job's output dir: Hydra's runtime output dir, or `cfg.run_dir` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigError("no output dir: run through `python -m infodyn`, or set run_dir=<path>.")


def _job_name(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        dirname = HydraConfig.get().job.override_dirname
        if dirname:
            return f"{dirname},seed={cfg.seed}"
    return f"{cfg.task.name}-{cfg.model.name}-seed={cfg.seed}"


def _names(result: RunResult) -> dict[str, str]:
    return {
        "task": result.task,
        "model": result.model,
        "pruner": result.pruner,
        "estimator": result.estimator,
    }
