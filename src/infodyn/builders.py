"""Config -> objects: estimators, pruner, datamodule, LightningModule, loggers and Trainer.

Errors name the config key at fault and the fix (`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from infodyn.checkpoints import AtomicCheckpoint
from infodyn.config import CONF_DIR  # the one config location: package data
from infodyn.config import options as _options
from infodyn.errors import ConfigError


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


def _stem_of(target: str, group: str = "pruner") -> str:
    """The conf/<group> entry whose `_target_` is `target` (the public name), else the class."""
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return target.rpartition(".")[2]


def _choice(cfg: DictConfig, group: str, fallback: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return fallback


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

    # A pretrained model's new classification head (and LoRA's adapters) are drawn from the
    # global RNG here: seed it, or the head depends on whatever ran before in the process.
    torch.manual_seed(int(cfg.seed))
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


# Lightning registers `<launcher>_find_unused_parameters_true` for each of these.
DDP_LAUNCHERS = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def build_trainer(
    cfg: DictConfig,
    max_epochs: int,
    callbacks: list,
    loggers: list,
    ckpt_dir: Path | None,
    evaluation: bool = False,
    unused_parameters: bool = False,
) -> Any:
    """A Lightning Trainer from `cfg.trainer`. `evaluation=True` (validation only): every DDP
    process sees the whole dev set rather than a DistributedSampler shard padded with repeated
    samples; the metrics' cross-process sums then count each example once per process, which
    leaves every ratio metric (accuracy, F1, Matthews, Pearson, Spearman) exactly as on one.
    `unused_parameters=True` (LayerDrop: a skipped block gets no gradient) makes DDP look for
    parameters without a gradient each step instead of failing at the second step."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    from infodyn.progress import progress_callbacks

    t = cfg.trainer
    cbs = list(callbacks) + progress_callbacks(t.get("enable_progress_bar"))
    if ckpt_dir is not None:
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
        strategy=(
            f"{t.strategy}_find_unused_parameters_true"
            if unused_parameters and str(t.strategy) in DDP_LAUNCHERS
            else t.strategy
        ),
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
