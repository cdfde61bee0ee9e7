"""The experiment: finetune -> score -> prune -> recover -> final, one GLUE task per job.

`run(cfg)` validates every input before any training, then runs the stages. Each finished stage
writes `<run dir>/stages/<stage>.json` (atomically) and training stages keep a Lightning
checkpoint per epoch, so re-running the same command resumes from the last finished stage (or the
last finished epoch inside a stage). The job ends with `results.json` (atomic: temp + rename);
a job whose `results.json` is complete is skipped, so re-running a sweep resumes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("infodyn")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
STAGES = ("finetune", "score", "prune", "recover", "final")


class ConfigError(ValueError):
    """A bad configuration value; the message names the input and the fix."""


# -- small utilities
def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON via a temp file + rename: a killed write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def read_json(path: Path) -> dict | None:
    """A stage/result file, or None if absent. A corrupt file is reported by name and ignored."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning("%s is corrupt or truncated (%s); that stage will be redone.", path, err)
        return None


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def run_dir_of(cfg: DictConfig) -> Path:
    """The job's output dir: Hydra's runtime output dir, or `cfg.run_dir` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigError("no output dir: run through `python -m infodyn`, or set run_dir=<path>.")


def _choice(cfg: DictConfig, group: str, fallback: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return fallback


# -- validation (before any training)
def estimator_configs(cfg: DictConfig) -> dict[str, Any]:
    """`cfg.estimator` as name -> config (several allowed: estimator=[cosine,gaussian])."""
    est = cfg.get("estimator") or {}
    if not isinstance(est, Mapping):
        raise ConfigError(
            f"estimator must be a mapping of estimator configs, got {type(est).__name__}. "
            "Fix: select from conf/estimator, e.g. estimator=[cosine,knowledge_entropy]."
        )
    out = {}
    for name, sub in est.items():
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise ConfigError(
                f"estimator.{name} has no _target_. Fix: choose an estimator from conf/estimator "
                f"({', '.join(_options('estimator'))}), e.g. estimator=[cosine]."
            )
        out[str(name)] = sub
    return out


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def build_estimators(cfg: DictConfig, needed: str | None = None) -> dict[str, Any]:
    """Instantiate the selected estimators (+ the one a pruner needs, from its YAML entry)."""
    from hydra.utils import instantiate

    confs = dict(estimator_configs(cfg))
    if needed and needed not in confs:
        path = CONF_DIR / "estimator" / f"{needed}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"pruner needs estimator '{needed}' but conf/estimator/{needed}.yaml does not "
                f"exist. Fix: choose one of {_options('estimator')}."
            )
        confs[needed] = OmegaConf.load(path)
    out = {}
    for name, sub in confs.items():
        try:
            out[name] = instantiate(sub)
        except Exception as err:  # noqa: BLE001 - re-raised with the input named
            raise ConfigError(f"estimator.{name} could not be built: {_root_cause(err)}") from err
    return out


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


def build_pruner(cfg: DictConfig) -> tuple[str, Any]:
    """(name, pruner instance) from `cfg.pruner`; errors name the bad value and the fix."""
    from hydra.utils import instantiate

    pcfg = OmegaConf.to_container(cfg.pruner, resolve=True)
    if not isinstance(pcfg, dict) or "_target_" not in pcfg:
        raise ConfigError(
            f"pruner has no _target_. Fix: choose one of {_options('pruner')}, e.g. pruner=none."
        )
    name = str(pcfg.pop("name", None) or _choice(cfg, "pruner", pcfg["_target_"]))
    try:
        return name, instantiate(pcfg)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"pruner={name} could not be built: {_root_cause(err)}") from err


def validate(cfg: DictConfig) -> None:
    """Cheap checks on plain config values (types and ranges), before anything is loaded."""
    checks = [
        ("seed", cfg.get("seed"), int, lambda v: v >= 0, "a non-negative integer"),
        ("data.batch_size", cfg.data.batch_size, int, lambda v: v >= 1, "an integer >= 1"),
        (
            "data.eval_batch_size",
            cfg.data.eval_batch_size,
            int,
            lambda v: v >= 1,
            "an integer >= 1",
        ),
        ("data.max_seq_length", cfg.data.max_seq_length, int, lambda v: v >= 8, "an integer >= 8"),
        ("optim.lr", cfg.optim.lr, float, lambda v: 0 < v < 1, "a float in (0, 1), e.g. 2e-5"),
        (
            "optim.warmup_ratio",
            cfg.optim.warmup_ratio,
            float,
            lambda v: 0 <= v < 1,
            "a float in [0, 1)",
        ),
        (
            "stages.finetune_epochs",
            cfg.stages.finetune_epochs,
            int,
            lambda v: v >= 1,
            "an integer >= 1",
        ),
        (
            "stages.recover_epochs",
            cfg.stages.recover_epochs,
            int,
            lambda v: v >= 0,
            "an integer >= 0",
        ),
    ]
    for opt in ("train_limit", "eval_limit"):
        if cfg.data.get(opt) is not None:
            checks.append(
                (f"data.{opt}", cfg.data[opt], int, lambda v: v >= 1, "null or an integer >= 1")
            )
    for key, value, typ, ok, want in checks:
        cast = value
        if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
            cast = float(value)
        if isinstance(value, bool) or not isinstance(cast, typ) or not ok(cast):
            raise ConfigError(f"{key}={value!r} is invalid: expected {want}. Fix: {key}=<{want}>.")
    if cfg.finetune.get("name") not in ("full", "lora"):
        raise ConfigError(
            f"finetune={cfg.finetune.get('name')!r} is unknown. Fix: finetune=full "
            "or finetune=lora."
        )


# -- building blocks
def build_datamodule(cfg: DictConfig, tokenizer: Any, model_max_length: int | None) -> Any:
    from infodyn.data import GlueDataModule

    return GlueDataModule(
        task=OmegaConf.to_container(cfg.task, resolve=True),
        tokenizer=tokenizer,
        glue_dir=cfg.paths.get("glue_dir"),
        max_seq_length=int(cfg.data.max_seq_length),
        batch_size=int(cfg.data.batch_size),
        eval_batch_size=int(cfg.data.eval_batch_size),
        train_limit=cfg.data.get("train_limit"),
        eval_limit=cfg.data.get("eval_limit"),
        seed=int(cfg.seed),
        num_workers=int(cfg.data.get("num_workers", 0)),
        cache_dir=cfg.paths.get("cache_dir"),
        model_max_length=model_max_length,
    )


def build_module(cfg: DictConfig, eval_split_names: list[str], pruned: list[int] = ()) -> Any:
    from infodyn.module import GlueClassifier

    return GlueClassifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        task=OmegaConf.to_container(cfg.task, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
        pruned_layers=list(pruned),
        eval_split_names=eval_split_names,
    )


def build_loggers(cfg: DictConfig, run_dir: Path, names: Mapping[str, str]) -> list[Any]:
    kind = cfg.logger.get("name", "none")
    if kind == "none":
        return []
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        return [
            WandbLogger(
                project=cfg.logger.project,
                group=str(cfg.logger.group),
                job_type=str(cfg.logger.job_type),
                name=names["job_name"],
                tags=[
                    f"pruner:{names['pruner']}",
                    f"estimator:{names['estimator']}",
                    f"model:{names['model']}",
                    f"finetune:{cfg.finetune.name}",
                ],
                mode=str(cfg.logger.mode),
                save_dir=str(run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        ]
    raise ConfigError(f"logger={kind!r} is unknown. Fix: logger=wandb, logger=csv or logger=none.")


def build_trainer(
    cfg: DictConfig, max_epochs: int, callbacks: list, loggers: list, ckpt_dir: Path | None
) -> Any:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from infodyn.progress import progress_callbacks

    t = cfg.trainer
    cbs = list(callbacks) + progress_callbacks(t.get("enable_progress_bar"))
    if ckpt_dir is not None:
        cbs.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="epoch{epoch}",
                save_last=True,
                save_top_k=0,
                every_n_epochs=1,
                auto_insert_metric_name=False,
            )
        )
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=max_epochs,
        gradient_clip_val=t.get("gradient_clip_val"),
        accumulate_grad_batches=int(t.get("accumulate_grad_batches", 1)),
        log_every_n_steps=int(t.get("log_every_n_steps", 10)),
        deterministic=bool(t.get("deterministic", False)),
        logger=loggers or False,
        callbacks=cbs,
        enable_checkpointing=ckpt_dir is not None,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_progress_bar=any(type(c).__name__ == "TQDMProgressBar" for c in cbs),
        default_root_dir=str(ckpt_dir.parent if ckpt_dir else "."),
    )
    if t.get("fast_dev_run"):
        kwargs["limit_train_batches"] = 2
        kwargs["limit_val_batches"] = 2
    for opt in ("limit_train_batches", "limit_val_batches"):
        if t.get(opt) is not None:
            kwargs[opt] = t[opt]
    return pl.Trainer(**kwargs)


def evaluate(trainer: Any, module: Any, dm: Any) -> dict[str, float]:
    """Validation metrics as {metric: value}; MNLI's mismatched split adds `<metric>_mm`."""
    results = trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    merged: dict[str, float] = {}
    for res in results:
        for key, value in res.items():
            split, _, metric = key.partition("/")
            suffix = "" if split == "val" else "_" + split.removeprefix("validation_")
            merged[f"{metric}{suffix}"] = float(value)
    return merged


@torch.no_grad()
def eval_throughput(model: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """Examples per second of eval forwards over `batches` (one warm-up batch first)."""
    model.eval()
    batches = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches]
    model(**batches[0])
    n = sum(b["input_ids"].shape[0] for b in batches)
    start = time.perf_counter()
    for b in batches:
        model(**b)
    return n / (time.perf_counter() - start)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reduce_profile(profile: Mapping[str, Any], series: str, how: str) -> torch.Tensor:
    """Per-layer scores from an epoch profile: `last` epoch or `mean` over epochs (NaN-aware)."""
    epochs = profile.get(series) or []
    if not epochs:
        raise ConfigError(f"no '{series}' values were recorded; the pruner has nothing to rank.")
    table = torch.tensor(
        [[math.nan if v is None else v for v in row] for row in epochs], dtype=torch.float64
    )
    if how == "last":
        return table[-1]
    if how == "mean":
        return table.nanmean(dim=0)
    raise ConfigError(
        f"pruner.reduce={how!r} is unknown. Fix: reduce=last or reduce=mean "
        "(or reduce=calibration)."
    )


@torch.no_grad()
def calibration_scores(
    estimator: Any, model: torch.nn.Module, batches: list[dict]
) -> torch.Tensor:
    """An estimator's scores from eval forwards over calibration batches (no training)."""
    model.eval()
    estimator.reset()
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=True)
        if estimator.input_kind != "hidden_states":
            raise ConfigError("reduce=calibration supports hidden-state estimators (cosine) only.")
        estimator.update([h.float() for h in out.hidden_states], inputs["attention_mask"])
    return estimator.compute().double()


# -- the job
def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main metric of the last stage (what a sweeper optimises)."""
    start = time.time()
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
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

    from infodyn.models import build_tokenizer, max_positions

    tokenizer = build_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, None)
    dm.validate()  # data files, columns, labels: before the model is even built
    config_path = run_dir / "config_resolved.yaml"
    OmegaConf.save(OmegaConf.to_container(cfg, resolve=True), config_path)

    loggers = build_loggers(cfg, run_dir, names)
    try:
        results = _run_stages(
            cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, max_positions
        )
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
        atomic_write_json(results_path, _finite(results))
        for lg in loggers:
            _log_summary(lg, results)
        log.info("results: %s", results_path)
        return _main_value(results)
    finally:
        for lg in loggers:
            _close_logger(lg)


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
            lg.experiment.summary.update(flat)
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


def _fit_stage(cfg, run_dir, stage, module, dm, estimators, loggers, epochs):
    """Train `module` for `epochs` (resuming a half-done stage); returns the callback."""
    import pytorch_lightning as pl

    from infodyn.estimators.callback import LayerDynamicsCallback

    pl.seed_everything(int(cfg.seed) + STAGES.index(stage), workers=True)
    ckpt_dir = run_dir / "checkpoints" / stage
    probe = None
    probes = [e for e in estimators.values() if e.input_kind == "probe"]
    if probes:
        probe = dm.probe_dataloader(max(int(e.probe_size) for e in probes))
    callback = LayerDynamicsCallback(estimators, stage=stage, probe_dataloader=probe)
    trainer = build_trainer(cfg, epochs, [callback], loggers, ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if last.is_file() and _loadable(last) else None
    if ckpt_path:
        log.info("resuming stage %s from %s", stage, ckpt_path)
    module.train()  # throughput/eval passes may have left it in eval mode
    trainer.fit(module, train_dataloaders=dm.train_dataloader(), ckpt_path=ckpt_path)
    return trainer, callback


def _loadable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception as err:  # noqa: BLE001
        log.warning("checkpoint %s is unreadable (%s); that stage restarts.", path, err)
        return False


def _run_stages(cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, max_positions):
    import copy

    dm.setup("fit")
    split_names = list(dm.eval_split_names)
    stages_dir = run_dir / "stages"
    results: dict[str, Any] = {"metrics": {}}
    profiles: dict[str, Any] = {}

    # finetune ---------------------------------------------------------------------------------
    module = build_module(cfg, split_names)
    limit = max_positions(module.model)
    if limit is not None and int(cfg.data.max_seq_length) > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
            f"limit of {limit} tokens. Fix: data.max_seq_length={limit} or less."
        )
    layerdrop_p = float(getattr(pruner, "p", 0.0)) if pruner_name == "layerdrop" else 0.0
    num_layers = _num_blocks(module.model)
    k = _resolve_k(pruner, num_layers, pruner_name)
    results.update(
        num_layers=num_layers,
        num_parameters=count_parameters(module.model),
        num_layers_before=num_layers,
        num_parameters_before=count_parameters(module.model),
    )

    ft = read_json(stages_dir / "finetune.json")
    ft_ckpt = run_dir / "checkpoints" / "finetune" / "last.ckpt"
    if ft and ft_ckpt.is_file():
        module = _load_module(ft_ckpt, split_names)
        trainer = build_trainer(cfg, 1, [], loggers, None)
    else:
        if layerdrop_p > 0:
            from infodyn.pruners.layerdrop import apply_layerdrop

            apply_layerdrop(module.model, layerdrop_p, seed=int(cfg.seed))
        trainer, callback = _fit_stage(
            cfg,
            run_dir,
            "finetune",
            module,
            dm,
            estimators,
            loggers,
            int(cfg.stages.finetune_epochs),
        )
        if layerdrop_p > 0:
            from infodyn.pruners.layerdrop import remove_layerdrop

            remove_layerdrop(module.model)
        ft = {"metrics": evaluate(trainer, module, dm), "profiles": callback.profiles()}
        atomic_write_json(stages_dir / "finetune.json", _finite(ft))
    results["metrics"]["finetune"] = ft["metrics"]
    profiles.update(ft["profiles"])

    if pruner_name == "none" or k == 0:
        results["metrics"]["final"] = dict(ft["metrics"])
        results.update(
            layer_scores=None,
            pruned_layers=[],
            num_layers_after=num_layers,
            num_parameters_after=results["num_parameters_before"],
            throughput=None,
            profiles=profiles,
        )
        _export(cfg, run_dir, module, dm)
        return results

    # score ------------------------------------------------------------------------------------
    sc = read_json(stages_dir / "score.json")
    if sc is None:
        scores = _scores(cfg, pruner, estimators, profiles, module, dm, k)
        pruned = sorted(int(i) for i in pruner.select(scores, k))
        sc = {
            "layer_scores": [None if math.isnan(s) else float(s) for s in scores.tolist()],
            "pruned_layers": pruned,
        }
        atomic_write_json(stages_dir / "score.json", sc)
    results["layer_scores"], results["pruned_layers"] = sc["layer_scores"], sc["pruned_layers"]
    pruned = list(sc["pruned_layers"])

    # prune ------------------------------------------------------------------------------------
    pr = read_json(stages_dir / "prune.json")
    rec_module = build_module(cfg, split_names, pruned)
    full_model = module.model
    pruned_model = copy.deepcopy(full_model)
    from infodyn.pruners.surgery import remove_layers

    remove_layers(_hf(pruned_model), pruned)
    _copy_weights(pruned_model, rec_module.model)
    if pr is None:
        device = module.device
        batches = dm.calibration_batches(
            int(cfg.data.eval_batch_size) * int(cfg.run.get("throughput_batches", 8))
        )
        before = eval_throughput(full_model, batches, device)
        after = eval_throughput(rec_module.model.to(device), batches, device)
        trainer = build_trainer(cfg, 1, [], loggers, None)
        pr = {
            "metrics": evaluate(trainer, rec_module, dm),
            "throughput": {
                "before": before,
                "after": after,
                "speedup": after / before,
                "batches": len(batches),
            },
        }
        atomic_write_json(stages_dir / "prune.json", pr)
    results["metrics"]["pruned"] = pr["metrics"]
    results["throughput"] = pr["throughput"]
    del module, full_model, pruned_model

    # recover ----------------------------------------------------------------------------------
    rc = read_json(stages_dir / "recover.json")
    rc_ckpt = run_dir / "checkpoints" / "recover" / "last.ckpt"
    epochs = int(cfg.stages.recover_epochs)
    if rc and (rc_ckpt.is_file() or epochs == 0):
        if rc_ckpt.is_file():
            rec_module = _load_module(rc_ckpt, split_names)
    elif epochs > 0:
        rec_estimators = build_estimators(cfg)
        trainer, callback = _fit_stage(
            cfg, run_dir, "recover", rec_module, dm, rec_estimators, loggers, epochs
        )
        rc = {"profiles": {k_: v for k_, v in callback.profiles().items() if k_ != "indexing"}}
        atomic_write_json(stages_dir / "recover.json", _finite(rc))
    else:
        rc = {"profiles": {}}
        atomic_write_json(stages_dir / "recover.json", rc)
    profiles.update(rc.get("profiles", {}))

    # final ------------------------------------------------------------------------------------
    trainer = build_trainer(cfg, 1, [], loggers, None)
    results["metrics"]["final"] = evaluate(trainer, rec_module, dm)
    if epochs > 0:
        results["metrics"]["recover"] = dict(results["metrics"]["final"])
    results.update(
        num_layers_after=_num_blocks(rec_module.model),
        num_parameters_after=count_parameters(rec_module.model),
        profiles=profiles,
    )
    _export(cfg, run_dir, rec_module, dm)
    return results


def _hf(model: torch.nn.Module) -> torch.nn.Module:
    from infodyn.estimators.callback import find_hf_model

    return find_hf_model(model)


def _num_blocks(model: torch.nn.Module) -> int:
    from infodyn.layers import num_blocks

    return num_blocks(_hf(model))


def _copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"pruned model weights do not match: missing={missing[:5]} unexpected={unexpected[:5]}"
        )


def _load_module(path: Path, split_names: list[str]) -> Any:
    from infodyn.module import GlueClassifier

    return GlueClassifier.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)


def _resolve_k(pruner: Any, num_layers: int, name: str) -> int:
    if name == "none":
        return 0
    from infodyn.pruners.base import resolve_k

    return resolve_k(num_layers, getattr(pruner, "k", None), getattr(pruner, "fraction", None))


def _scores(cfg, pruner, estimators, profiles, module, dm, k) -> torch.Tensor:
    source = getattr(pruner, "source", "none")
    num_layers = _num_blocks(module.model)
    if source == "estimator":
        how = str(getattr(pruner, "reduce", "last"))
        est = estimators[pruner.estimator]
        if how == "calibration":
            batches = dm.calibration_batches(int(cfg.data.calibration_size))
            return calibration_scores(est, _hf(module.model), batches)
        profile = profiles.get("finetune", {}).get(pruner.estimator, {})
        return reduce_profile(profile, est.name, how)
    if source == "calibration":
        batches = dm.calibration_batches(int(cfg.data.calibration_size))
        return pruner.calibrate(_hf(module.model).eval(), batches, k).double()
    return torch.full((num_layers,), math.nan, dtype=torch.float64)


def _export(cfg: DictConfig, run_dir: Path, module: Any, dm: Any) -> None:
    if not cfg.run.get("export_pruned_model", True):
        return
    from infodyn.module import unwrap_hf_model
    from infodyn.pruners.surgery import export_pruned

    model = unwrap_hf_model(copy_for_export(module.model))
    model.config.output_hidden_states = False
    export_pruned(model, dm.tokenizer, run_dir / "model")


def copy_for_export(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).cpu()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `python -m infodyn` instead")
