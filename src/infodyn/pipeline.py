"""The experiment: finetune -> score -> prune -> recover -> final, one GLUE task per job.

`run(cfg)` validates every input before any training, then runs the stages. Each finished stage
writes `<run dir>/stages/<stage>.json` (atomically) and training stages keep a Lightning
checkpoint per epoch, so re-running the same command resumes from the last finished stage (or the
last finished epoch inside a stage). The job ends with `results.json` (atomic: temp + rename);
a job whose `results.json` is complete is skipped, so re-running a sweep resumes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
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


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message names the stage, the step and the kept checkpoint."""


# Lightning's accepted `precision` values (trainer/connectors/accelerator_connector.py).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")
PRECISIONS += ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")
# A value used as a directory name (run dirs, W&B names): no separators, no `..`.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.,=+-]+$")
KILL_ENV = "INFODYN_TEST_KILL_AT"  # tests only: SIGKILL this process at a named point


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input" (one paragraph, no traceback on the CLI)."""
    from infodyn.data import DataConfigError
    from infodyn.layers import LayerListNotFound
    from infodyn.models import ModelConfigError
    from infodyn.pruners.base import PrunerConfigError

    return (ConfigError, DataConfigError, ModelConfigError, PrunerConfigError, LayerListNotFound)


# -- small utilities
def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON via a temp file + rename: a killed write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
            cause = _root_cause(err)
            hint = (
                ""
                if "Fix" in cause
                else (
                    f" Fix: correct estimator.{name}.* (defaults and ranges in "
                    f"conf/estimator/{name}.yaml)."
                )
            )
            raise ConfigError(f"estimator.{name} could not be built: {cause}{hint}") from err
    return out


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


def _needed_cfg(estimators: Mapping[str, Any]) -> dict[str, str]:
    """Estimators added for a pruner (not in cfg.estimator), by class: part of the cache key."""
    return {k: f"{type(e).__module__}.{type(e).__qualname__}" for k, e in estimators.items()}


def _stem_of(target: str, group: str = "pruner") -> str:
    """The conf/<group> entry whose `_target_` is `target` (the public name), else the class."""
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return target.rpartition(".")[2]


def build_pruner(cfg: DictConfig) -> tuple[str, Any]:
    """(name, pruner instance) from `cfg.pruner`; errors name the bad value and the fix."""
    from hydra.utils import instantiate

    pcfg = OmegaConf.to_container(cfg.pruner, resolve=True)
    if not isinstance(pcfg, dict) or "_target_" not in pcfg:
        raise ConfigError(
            f"pruner has no _target_. Fix: choose one of {_options('pruner')}, e.g. pruner=none."
        )
    name = str(pcfg.pop("name", None) or _choice(cfg, "pruner", _stem_of(pcfg["_target_"])))
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
    optional = [
        ("data.calibration_size", cfg.data.get("calibration_size"), int, ">= 1", 1),
        ("data.num_workers", cfg.data.get("num_workers"), int, ">= 0", 0),
        ("run.throughput_batches", cfg.run.get("throughput_batches"), int, ">= 1", 1),
        (
            "trainer.accumulate_grad_batches",
            cfg.trainer.get("accumulate_grad_batches"),
            int,
            ">= 1",
            1,
        ),
        ("trainer.gradient_clip_val", cfg.trainer.get("gradient_clip_val"), float, ">= 0", 0),
    ]
    if cfg.finetune.get("name") == "lora":
        optional += [
            ("finetune.r", cfg.finetune.get("r"), int, ">= 1", 1),
            ("finetune.alpha", cfg.finetune.get("alpha"), float, "> 0", 1e-12),
            ("finetune.dropout", cfg.finetune.get("dropout"), float, ">= 0 (and < 1)", 0),
        ]
    for key, value, typ, text, low in optional:
        if value is not None:
            bound = 1 if key == "finetune.dropout" else math.inf
            checks.append(
                (
                    key,
                    value,
                    typ,
                    lambda v, lo=low, hi=bound: lo <= v < hi,
                    f"a {typ.__name__} {text}",
                )
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
    precision = str(cfg.trainer.get("precision"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not a Lightning precision. Fix: "
            "trainer.precision=32-true (or bf16-mixed, 16-mixed on a GPU)."
        )
    if cfg.logger.get("name", "none") not in ("none", "csv", "wandb"):
        raise ConfigError(
            f"logger.name={cfg.logger.get('name')!r} is unknown. Fix: logger=wandb, logger=csv "
            "or logger=none."
        )
    reduce = cfg.pruner.get("reduce") if isinstance(cfg.get("pruner"), Mapping) else None
    if reduce is not None and reduce not in ("last", "mean", "calibration"):
        raise ConfigError(
            f"pruner.reduce={reduce!r} is unknown. Fix: pruner.reduce=last, mean or calibration."
        )
    for key in ("task.name", "model.name", "sweep_name"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _SAFE_NAME.match(str(value)) or set(str(value)) == {"."}):
            raise ConfigError(
                f"{key}={value!r} is used as a directory name but holds a path separator, '..' "
                "or other unsafe characters. Fix: letters, digits and _ . , = + - only."
            )


def check_output_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse output paths that climb out of their root through `..` components."""
    from hydra.core.hydra_config import HydraConfig

    settings = {"run_dir": cfg.get("run_dir")}
    if not cfg.get("run_dir") and HydraConfig.initialized():
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            settings["hydra.sweep.dir"] = hc.sweep.dir
            settings["hydra.sweep.subdir"] = hc.sweep.subdir
        else:
            settings["hydra.run.dir"] = hc.run.dir
    for key, value in settings.items():
        if value is not None and ".." in Path(str(value)).parts:
            raise ConfigError(
                f"{key}={value!r} contains a '..' component, so outputs could land outside "
                f"the run directory. Fix: give {key} (and the config values it is built from) "
                "without '..', e.g. an absolute path."
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
    cfg: DictConfig,
    max_epochs: int,
    callbacks: list,
    loggers: list,
    ckpt_dir: Path | None,
    evaluation: bool = False,
) -> Any:
    """A Lightning Trainer from `cfg.trainer`. `evaluation=True` (validation only): every DDP
    process sees the whole dev set rather than a DistributedSampler shard padded with repeated
    samples; the metrics' cross-process sums then count each example once per process, which
    leaves every ratio metric (accuracy, F1, Matthews, Pearson, Spearman) exactly as on one."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    from infodyn.progress import progress_callbacks

    t = cfg.trainer
    cbs = list(callbacks) + progress_callbacks(t.get("enable_progress_bar"))
    if ckpt_dir is not None:

        class AtomicCheckpoint(ModelCheckpoint):
            """`last.ckpt` after every epoch, written to `<name>.tmp` then renamed.

            A kill mid-write never leaves half a checkpoint. (Lightning 2.6 refreshes `last`
            only when a top-k file was saved in the same step, i.e. never with save_top_k=0.)
            """

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                if not self._should_skip_saving_checkpoint(trainer):
                    self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

            def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
                tmp = f"{filepath}.tmp"
                super()._save_checkpoint(trainer, tmp)
                if trainer.is_global_zero:
                    os.replace(tmp, filepath)
                self._last_checkpoint_saved = filepath

        cbs.append(
            AtomicCheckpoint(
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
        enable_progress_bar=any(isinstance(c, TQDMProgressBar) for c in cbs),
        default_root_dir=str(ckpt_dir.parent if ckpt_dir else "."),
        use_distributed_sampler=not evaluation,
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
        results = _run_stages(
            cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, module, k
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


def preflight(cfg: DictConfig, module: Any, tokenizer: Any, pruner: Any, pruner_name: str) -> int:
    """Checks that need the built model (vocab, positions, k, protect); returns k."""
    from infodyn.models import max_positions
    from infodyn.pruners.base import PrunerConfigError, check_protect

    embeddings = _hf(module.model).get_input_embeddings()
    vocab = int(embeddings.num_embeddings)
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"the tokenizer of model={cfg.model.name} has {len(tokenizer)} ids but the model's "
            f"embedding table has {vocab} rows (model.config.vocab_size), so ids >= {vocab} "
            "would crash the forward. Fix: set the model's vocab_size to at least "
            f"{len(tokenizer)}, or pair the model with its own tokenizer."
        )
    limit = max_positions(_hf(module.model))
    if limit is not None and int(cfg.data.max_seq_length) > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
            f"limit of {limit} tokens. Fix: data.max_seq_length={limit} or less."
        )
    num_layers = _num_blocks(module.model)
    k = _resolve_k(pruner, num_layers, pruner_name)
    protect = check_protect(getattr(pruner, "protect", None) or (), num_layers)
    if k > num_layers - len(protect):
        raise PrunerConfigError(
            f"pruner.protect={sorted(protect)} leaves {num_layers - len(protect)} of "
            f"{num_layers} blocks removable but pruner.k={k}. Fix: protect fewer blocks or "
            f"lower pruner.k to {num_layers - len(protect)} or less."
        )
    return k


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


def _fit_stage(cfg, run_dir, stage, module, dm, estimators, loggers, epochs):
    """Train `module` for `epochs` (resuming a half-done stage); returns the callback.

    Randomness is a function of (seed, stage, epoch) only: the global RNGs are re-seeded and
    the data order is drawn afresh at every epoch start, so a stage resumed from its epoch-e
    checkpoint continues exactly as the uninterrupted run does.
    """
    import pytorch_lightning as pl

    from infodyn.estimators.callback import LayerDynamicsCallback

    seed = int(cfg.seed) * 100 + STAGES.index(stage)
    pl.seed_everything(seed % 2**32, workers=True, verbose=False)
    ckpt_dir = run_dir / "checkpoints" / stage
    probe = None
    probes = [e for e in estimators.values() if e.input_kind == "probe"]
    if probes:
        probe = dm.probe_dataloader(max(int(e.probe_size) for e in probes))
    callback = LayerDynamicsCallback(estimators, stage=stage, probe_dataloader=probe)
    extra = [callback, _epoch_seed_callback(seed)] + _test_kill_callbacks(stage)
    trainer = build_trainer(cfg, epochs, extra, loggers, ckpt_dir)
    ckpt_path = usable_checkpoint(ckpt_dir / "last.ckpt")
    if ckpt_path:
        log.info("resuming stage %s from %s", stage, ckpt_path)
    module.train()  # throughput/eval passes may have left it in eval mode
    loader = _epoch_ordered(dm.train_dataloader(), seed, trainer)
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    except FloatingPointError as err:
        kept = ckpt_dir / "last.ckpt"
        where = f"the last good checkpoint is {kept}" if kept.is_file() else "no epoch finished"
        raise TrainingDivergedError(
            f"stage {stage} diverged: {err} ({where}; a rerun resumes from it.)"
        ) from err
    return trainer, callback


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1000 + epoch) % 2**32


def _epoch_seed_callback(seed: int) -> Any:
    """Re-seeds Python, NumPy and torch before each epoch's first batch from (seed, epoch).

    (Not in `on_train_epoch_start`: Lightning skips that hook for the first epoch after a
    resume from an epoch-end checkpoint.)
    """
    import pytorch_lightning as pl

    class EpochSeed(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                pl.seed_everything(_epoch_seed(seed, trainer.current_epoch), verbose=False)

    return EpochSeed()


def _epoch_ordered(loader: Any, seed: int, trainer: Any) -> Any:
    """`loader` with its shuffle drawn from (seed, epoch), not from a generator's history.

    A resumed run builds a fresh loader; with a stateful generator its epoch e would replay
    epoch 0's order. Lightning iterates (and prefetches) before `on_train_epoch_start`, so the
    sampler asks the trainer for the epoch itself.
    """
    from torch.utils.data import DataLoader, Sampler

    class EpochShuffle(Sampler[int]):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __iter__(self):
            gen = torch.Generator().manual_seed(_epoch_seed(seed, int(trainer.current_epoch)))
            return iter(torch.randperm(self.n, generator=gen).tolist())

    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=EpochShuffle(len(loader.dataset)),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        drop_last=loader.drop_last,
    )


def _test_kill_callbacks(stage: str) -> list:
    """Tests only: `INFODYN_TEST_KILL_AT=<stage>:<epoch>:<batch>` SIGKILLs this process there."""
    spec = os.environ.get(KILL_ENV, "")
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != stage:
        return []
    import pytorch_lightning as pl

    epoch, batch = int(parts[1]), int(parts[2])

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, batch_idx) -> None:
            if trainer.current_epoch == epoch and batch_idx == batch:
                os.kill(os.getpid(), signal.SIGKILL)

    return [Kill()]


def _test_kill_point(name: str) -> None:
    """Tests only: `INFODYN_TEST_KILL_AT=after:<stage>` SIGKILLs this process between stages."""
    if os.environ.get(KILL_ENV) == f"after:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def usable_checkpoint(path: Path) -> str | None:
    """`path` if it holds a readable checkpoint; a corrupt one is reported by name and removed."""
    if not path.is_file():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return str(path)
    except Exception as err:  # noqa: BLE001 - any failure means "redo", never a deep traceback
        log.warning(
            "checkpoint %s is truncated or corrupt (%s); it is removed and that stage is redone.",
            path,
            " ".join(str(err).split())[:200],
        )
        path.unlink(missing_ok=True)
        return None


def _run_stages(cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, module, k):
    """The stages after `preflight`; `module` is the freshly built (untrained) model."""
    import copy

    dm.setup("fit")
    split_names = list(dm.eval_split_names)
    stages_dir = run_dir / "stages"
    results: dict[str, Any] = {"metrics": {}}
    profiles: dict[str, Any] = {}

    # finetune ---------------------------------------------------------------------------------
    layerdrop_p = float(getattr(pruner, "p", 0.0)) if pruner_name == "layerdrop" else 0.0
    num_layers = _num_blocks(module.model)
    results.update(
        num_layers=num_layers,
        num_parameters=count_parameters(module.model),
        num_layers_before=num_layers,
        num_parameters_before=count_parameters(module.model),
    )

    from infodyn import finetune_cache

    shared = finetune_cache.for_job(
        cfg, pruner_name, {**_needed_cfg(estimators), **estimator_configs(cfg)}
    )
    with shared.locked() if shared else contextlib.nullcontext():
        if shared:
            shared.fetch(run_dir)
        ft = read_json(stages_dir / "finetune.json")
        ft_ckpt = run_dir / "checkpoints" / "finetune" / "last.ckpt"
        if ft and usable_checkpoint(ft_ckpt):
            module = _load_module(ft_ckpt)
            trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
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
            _test_kill_point("finetune")
        if shared:
            shared.publish(run_dir)
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
        trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
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
    if rc and (epochs == 0 or usable_checkpoint(rc_ckpt)):
        if epochs > 0:
            rec_module = _load_module(rc_ckpt)
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
    trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
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


def _load_module(path: Path) -> Any:
    from infodyn.module import GlueClassifier

    return GlueClassifier.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)


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
    import copy

    from infodyn.module import unwrap_hf_model
    from infodyn.pruners.surgery import export_pruned

    # a copy: merging LoRA must not change the module the caller still holds
    export_pruned(
        unwrap_hf_model(copy.deepcopy(module.model).cpu()), dm.tokenizer, run_dir / "model"
    )
