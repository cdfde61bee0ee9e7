"""The stages of one job: finetune -> [target] -> [oracle] -> score -> prune -> recover -> final.

Each stage is one small unit that knows where its record is, whether it is done, how to load
what it made and how to run. A record (`<run dir>/stages/<stage>.json`) stores the config keys
that made it; a stage is reused only when they agree with the config asked for now
(`reuse.check_reuse`), so a rerun resumes from the last finished stage (or the last finished
epoch inside a training stage) and ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from infodyn import finetune_cache
from infodyn.checkpoints import load_module, slim_checkpoint, usable_checkpoint
from infodyn.evaluation import (
    batch_judge,
    count_parameters,
    evaluate,
    fixed_shape_batch,
    measure_throughput,
)
from infodyn.io import atomic_write_json, finite, read_json
from infodyn.killpoints import kill_point
from infodyn.layers import num_blocks
from infodyn.models import find_hf_model
from infodyn.results import Oracle, RunResult, Throughput
from infodyn.reuse import check_reuse, config_hash, stage_config
from infodyn.target import judge, targets

log = logging.getLogger("infodyn")


@dataclass
class Job:
    """What the stages share: the inputs (built by the pipeline) and what each stage leaves."""

    cfg: DictConfig
    run_dir: Path
    dm: Any
    estimators: dict[str, Any]
    pruner: Any
    k: int
    loggers: list
    module: Any  # the model being fine-tuned; after `finetune`, the fine-tuned one
    result: RunResult
    pruned_module: Any = None  # after `prune`: the pruned copy that recovery trains
    profiles: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg.task, resolve=True)

    def hf(self, module: Any = None) -> torch.nn.Module:
        return find_hf_model((module or self.module).model)


class Stage:
    """One stage: `done` (a record made by this config exists), `load` it, or `run` it."""

    name = ""
    trains = False  # a training stage also needs its checkpoint to be reusable

    def record_path(self, job: Job) -> Path:
        return job.run_dir / "stages" / f"{self.name}.json"

    def checkpoint(self, job: Job) -> Path:
        return job.run_dir / "checkpoints" / self.name / "last.ckpt"

    def config(self, job: Job) -> dict[str, Any]:
        return stage_config(job.cfg, self.name, job.pruner.training_signature())

    def stored(self, job: Job) -> dict | None:
        """The stage's record if it exists and was made by this config (else raises)."""
        record = read_json(self.record_path(job))
        if record is not None:
            check_reuse(
                f"stage '{self.name}'",
                self.record_path(job),
                record.get("config"),
                self.config(job),
            )
        return record

    def done(self, job: Job) -> dict | None:
        record = self.stored(job)
        if record is None or (
            self.trains and self.epochs(job) > 0 and not usable_checkpoint(self.checkpoint(job))
        ):
            return None
        return record

    def save(self, job: Job, record: dict[str, Any]) -> dict[str, Any]:
        record = finite({**record, "config": self.config(job)})
        atomic_write_json(self.record_path(job), record)
        if self.trains and rank_zero_only.rank == 0 and self.checkpoint(job).is_file():
            slim_checkpoint(self.checkpoint(job))  # done: reuse and resume need only weights
        kill_point(f"after:{self.name}")
        return record

    def epochs(self, job: Job) -> int:
        return 0

    def load(self, job: Job, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError


class Finetune(Stage):
    """Fine-tune the built model (with the pruner's training hook around it), or, with
    `stages.finetune_epochs=0`, take the given model as fine-tuned and evaluate it."""

    name, trains = "finetune", True

    def epochs(self, job: Job) -> int:
        return int(job.cfg.stages.finetune_epochs)

    def config(self, job: Job) -> dict[str, Any]:
        # an estimator a pruner added is recorded in the profile too: part of what made it
        added = {
            f"estimator.{name}.added_for_pruner": f"{type(e).__module__}.{type(e).__qualname__}"
            for name, e in job.estimators.items()
            if name not in (job.cfg.get("estimator") or {})
        }
        return {**super().config(job), **added}

    def load(self, job: Job, record: dict[str, Any]) -> None:
        if self.epochs(job) > 0:
            job.module = load_module(self.checkpoint(job))
        job.result.metrics["finetune"] = record["metrics"]
        job.profiles.update(record["profiles"])

    def run(self, job: Job) -> dict[str, Any]:
        from infodyn.training import fit_stage

        profiles: dict[str, Any] = {}
        if self.epochs(job) > 0:
            job.pruner.prepare_training(job.hf(), int(job.cfg.seed))
            callback, job.module = fit_stage(
                job.cfg,
                job.run_dir,
                self.name,
                job.module,
                job.dm,
                job.estimators,
                job.loggers,
                self.epochs(job),
            )
            job.pruner.finish_training(job.hf())
            profiles = callback.profiles()
        record = {
            "metrics": evaluate(job.cfg, job.module, job.dm, job.loggers, "finetune"),
            "profiles": profiles,
        }
        return record


class TargetCheck(Stage):
    """Stop a pruning job whose plain fine-tune misses `target` (`target.py`); keeps no record.

    It runs after `finetune`, or before it for a pruner that trains its own model (LayerDrop),
    whose evidence is then the plain fine-tune another job published to the shared cache.
    """

    name = "target"

    def done(self, job: Job) -> dict | None:
        return None  # judged afresh each time: the target may have changed since

    def save(self, job: Job, record: dict[str, Any]) -> dict[str, Any]:
        return record

    def load(self, job: Job, record: dict[str, Any]) -> None:
        return None

    def run(self, job: Job) -> dict[str, Any]:
        judge(job.cfg, self.plain_metrics(job))
        return {}

    @staticmethod
    def plain_metrics(job: Job) -> dict[str, Any] | None:
        if not job.pruner.training_signature():
            return job.result.metrics.get("finetune")
        entry = finetune_cache.for_job(job.cfg, config_hash(stage_config(job.cfg, "finetune")))
        return entry.metrics() if entry else None


class OracleAnalysis(Stage):
    """Every C(L, k) subset of the fine-tuned model removed and judged on the dev set: the
    ground truth the criteria are judged against (`stages.oracle=true`)."""

    name = "oracle"

    def config(self, job: Job) -> dict[str, Any]:
        # the subsets depend on the fine-tuned weights (a pruner's training hook included), k
        # and the protected blocks; no other pruner key: criteria of one (task, seed) share it
        signature = {f"pruner.training.{k}": v for k, v in job.pruner.training_signature().items()}
        protect = sorted(int(b) for b in job.pruner.protect or [])
        return {**super().config(job), **signature, "oracle.k": job.k, "oracle.protect": protect}

    def load(self, job: Job, record: dict[str, Any]) -> None:
        job.result.oracle = Oracle.from_dict(record["oracle"])

    def run(self, job: Job) -> dict[str, Any]:
        from infodyn.oracle import evaluate_subsets

        batches = list(job.dm.val_dataloader()[0])
        oracle = evaluate_subsets(
            job.hf(),
            batches,
            job.k,
            batch_judge(job.task),
            split="dev",
            metric=str(job.cfg.task.main_metric),
            protect=job.pruner.protect,
        )
        return {"oracle": _as_dict(oracle)}


class Score(Stage):
    """The pruner scores the fine-tuned model's blocks and chooses the k to remove."""

    name = "score"

    def load(self, job: Job, record: dict[str, Any]) -> None:
        job.result.layer_scores = record["layer_scores"]
        job.result.layer_prunability = record["layer_prunability"]
        job.result.pruned_layers = list(record["pruned_layers"])

    def run(self, job: Job) -> dict[str, Any]:
        from infodyn.pruners.base import ScoringContext

        cfg, hf = job.cfg, job.hf()
        hf.eval()
        ctx = ScoringContext(
            model=hf,
            num_layers=num_blocks(hf),
            k=job.k,
            seed=int(cfg.seed),
            profiles=job.profiles.get("finetune", {}),
            estimators=job.estimators,
            calibration=lambda: job.dm.calibration_batches(int(cfg.data.calibration_size)),
            evaluate=batch_judge(job.task),
            main_metric=str(cfg.task.main_metric),
        )
        scores = job.pruner.score(ctx).double()
        return {
            "layer_scores": _floats(scores),
            "layer_prunability": _floats(job.pruner.prunability(scores)),
            "pruned_layers": sorted(int(i) for i in job.pruner.select(scores, job.k)),
        }


class Prune(Stage):
    """Remove the chosen blocks (one surgery on a copy), judge the pruned model right away and
    time both models side by side."""

    name = "prune"

    def load(self, job: Job, record: dict[str, Any]) -> None:
        if job.pruned_module is None:
            job.pruned_module = job.module.pruned(job.result.pruned_layers)
        job.result.metrics["pruned"] = record["metrics"]
        job.result.throughput = Throughput(**record["throughput"])

    def run(self, job: Job) -> dict[str, Any]:
        cfg = job.cfg
        job.pruned_module = job.module.pruned(job.result.pruned_layers)
        full, pruned = job.hf(), job.hf(job.pruned_module).to(job.module.device)
        batch = fixed_shape_batch(
            job.dm, int(cfg.data.eval_batch_size), int(cfg.data.max_seq_length)
        )
        timed = measure_throughput(
            {"before": full, "after": pruned},
            batch,
            min_seconds=float(cfg.run.get("throughput_seconds", 1.0)),
            min_batches=int(cfg.run.get("throughput_batches", 3)),
        )
        before, after = (timed[m]["examples_per_s"] for m in ("before", "after"))
        return {
            "metrics": evaluate(cfg, job.pruned_module, job.dm, job.loggers, "pruned"),
            "throughput": {
                "before": before,
                "after": after,
                "speedup": after / before,
                "batches": int(timed["before"]["rounds"]),
                "seconds": timed["before"]["seconds"] + timed["after"]["seconds"],
            },
        }


class Recover(Stage):
    """Train the pruned model `stages.recover_epochs` more epochs (0: skip)."""

    name, trains = "recover", True

    def epochs(self, job: Job) -> int:
        return int(job.cfg.stages.recover_epochs)

    def load(self, job: Job, record: dict[str, Any]) -> None:
        if self.epochs(job) > 0:
            job.pruned_module = load_module(self.checkpoint(job))
        job.profiles.update(record.get("profiles", {}))

    def run(self, job: Job) -> dict[str, Any]:
        from infodyn.builders import build_estimators
        from infodyn.training import fit_stage

        if self.epochs(job) == 0:
            return {"profiles": {}}
        kept = [
            b
            for b in range(job.result.num_layers_before or 0)
            if b not in set(job.result.pruned_layers)
        ]
        callback, job.pruned_module = fit_stage(
            job.cfg,
            job.run_dir,
            self.name,
            job.pruned_module,
            job.dm,
            build_estimators(job.cfg),
            job.loggers,
            self.epochs(job),
            block_ids=kept,
        )
        profiles = {k: v for k, v in callback.profiles().items() if k != "indexing"}
        return {"profiles": profiles}


class Final(Stage):
    """Judge the model the run ends with and export it (never reused: it is cheap)."""

    name = "final"

    def done(self, job: Job) -> dict | None:
        return None

    def run(self, job: Job) -> dict[str, Any]:
        model = job.pruned_module or job.module
        if job.pruned_module is None:  # nothing removed: the fine-tuned model's own numbers
            metrics = dict(job.result.metrics["finetune"])
        else:
            metrics = evaluate(job.cfg, model, job.dm, job.loggers, "final")
        job.result.metrics["final"] = metrics
        if job.pruned_module is not None and int(job.cfg.stages.recover_epochs) > 0:
            job.result.metrics["recover"] = dict(metrics)
        job.result.num_layers_after = num_blocks(job.hf(model))
        job.result.num_parameters_after = count_parameters(job.hf(model))
        job.result.profiles = job.profiles
        export(job, model)
        return {}

    def save(self, job: Job, record: dict[str, Any]) -> dict[str, Any]:
        return record


def stages_for(job: Job) -> list[Stage]:
    """The stages this job runs: nothing to remove -> fine-tune and final only."""
    if job.k == 0:
        return [Finetune(), Final()]
    check = [TargetCheck()] if targets(job.cfg) else []
    before, after = (check, []) if job.pruner.training_signature() else ([], check)
    middle = [OracleAnalysis()] if job.cfg.stages.get("oracle", False) else []
    return [*before, Finetune(), *after, *middle, Score(), Prune(), Recover(), Final()]


def check_stored(job: Job, stages: list[Stage]) -> None:
    """Before any work: every record in the run dir agrees with this config (else raises)."""
    for stage in stages:
        stage.stored(job)


def run_stages(job: Job, shared: dict[str, Any] | None = None) -> RunResult:
    """Run (or reuse) every stage in order; a stage in `shared` (name -> cache entry) under
    its entry's lock, fetched from it and published to it."""
    hf = job.hf()
    job.result.num_layers_before = num_blocks(hf)
    job.result.num_parameters_before = count_parameters(hf)
    for stage in stages_for(job):
        sharing = (shared or {}).get(stage.name)
        with sharing.locked() if sharing else contextlib.nullcontext():
            if sharing:
                sharing.fetch(job.run_dir)
            record = stage.done(job)
            if record is None:
                log.info("stage %s", stage.name)
                record = stage.save(job, stage.run(job))
            if not isinstance(stage, Final):
                stage.load(job, record)
            if sharing:
                sharing.publish(job.run_dir)
    return job.result


def export(job: Job, module: Any) -> None:
    """Process 0 writes the model the run ends with, its labels and a model card saying what
    was removed and why (two processes renaming one folder could fail)."""
    cfg, res = job.cfg, job.result
    if not cfg.run.get("export_pruned_model", True) or rank_zero_only.rank != 0:
        return
    if int(cfg.stages.finetune_epochs) == 0 and job.k == 0:
        return  # evaluate-only: the model is the one given, unchanged
    from infodyn.export import export_model, model_card
    from infodyn.models import base_model_id

    labels = cfg.task.get("label_names")
    labels = [str(x) for x in labels] if labels else None
    card = model_card(
        base_model_id(cfg.model),
        res.task,
        res.pruner,
        res.pruned_layers,
        res.num_layers_before or 0,
        res.metrics,
        labels=labels,
        num_parameters_before=res.num_parameters_before,
        num_parameters_after=res.num_parameters_after,
        finetune=res.finetune,
        seed=res.seed,
    )
    export_model(module.model, job.dm.tokenizer, job.run_dir / "model", labels=labels, card=card)


def _floats(t: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in t.tolist()]


def _as_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)
