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
    from infodyn.data.hub import HUB_DATASET

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
        hub_dataset=cfg.data.get("hub_dataset") or HUB_DATASET,
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


def _targets(cfg: DictConfig, group: str) -> dict[str, dict[str, Any]]:
    """`cfg.<group>` as key -> plain `_target_` mapping (a group holding several, as
    lightning-hydra-template's logger and callbacks groups do)."""
    node = cfg.get(group) or {}
    hint = f"choose from conf/{group} ({', '.join(_options(group))}), e.g. {group}=none"
    if not isinstance(node, Mapping):
        raise ConfigError(f"{group} must be a mapping of `_target_` configs. Fix: {hint}.")
    out = {}
    for key, sub in node.items():
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise ConfigError(f"{group}.{key} has no _target_. Fix: {hint}.")
        out[str(key)] = OmegaConf.to_container(sub, resolve=True)
    return out


def _instantiate(group: str, key: str, node: dict[str, Any]) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - re-raised with the input named
        raise ConfigError(
            f"{group}.{key} ({node['_target_']}) could not be built: {_root_cause(err)}. "
            f"Fix: correct {group}.{key}.* (see conf/{group}/{key}.yaml)."
        ) from err


def build_loggers(cfg: DictConfig, run_dir: Path, names: Mapping[str, str]) -> Any:
    """The `logger` group's Lightning loggers, as a `loggers.RunLoggers`.

    A `save_dir`, `name` or `tags` left null in a logger's YAML is filled with the job's run
    dir, job name and tags; the resolved config is logged as the run's hyperparameters.
    """
    from infodyn.loggers import RunLoggers

    os.environ.setdefault("WANDB_SILENT", "true")
    fills = {
        "save_dir": str(run_dir),
        "name": names["job_name"],
        "tags": [
            f"pruner:{names['pruner']}",
            f"estimator:{names['estimator']}",
            f"model:{names['model']}",
            f"finetune:{cfg.finetune.name}",
        ],
    }
    loggers = []
    for key, node in _targets(cfg, "logger").items():
        node.update({k: v for k, v in fills.items() if k in node and node[k] is None})
        lg = _instantiate("logger", key, node)
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        loggers.append(lg)
    return RunLoggers(loggers)


def build_callbacks(cfg: DictConfig, ckpt_dir: Path | None) -> list[Any]:
    """The `callbacks` group's Lightning callbacks, for one training stage.

    A `dirpath` left null is the stage's checkpoint folder `ckpt_dir`. A callback that monitors
    a `val/` metric needs validation while training: refused when
    `trainer.check_val_every_n_epoch=0`.
    """
    out = []
    validates = cfg.trainer.get("check_val_every_n_epoch", 1) != 0
    for key, node in _targets(cfg, "callbacks").items():
        if "dirpath" in node and node["dirpath"] is None and ckpt_dir is not None:
            node["dirpath"] = str(ckpt_dir)
        monitor = str(node.get("monitor") or "")
        if monitor.startswith("val") and not validates:
            raise ConfigError(
                f"callbacks.{key} monitors {monitor}, but trainer.check_val_every_n_epoch=0 "
                "turns validation while training off. Fix: trainer.check_val_every_n_epoch=1, "
                "or callbacks=none."
            )
        out.append(_instantiate("callbacks", key, node))
    return out


# Lightning registers `<launcher>_find_unused_parameters_true` for each of these.
DDP_LAUNCHERS = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
# Trainer arguments infodyn sets itself, per stage; the fix names where each one comes from.
OWNED = {
    "max_epochs": "stages.finetune_epochs / stages.recover_epochs",
    "callbacks": "callbacks=<option> (conf/callbacks)",
    "logger": "logger=<option> (conf/logger)",
    "enable_checkpointing": "callbacks=model_checkpoint (stage checkpoints are always kept)",
    "default_root_dir": "the run dir (run_dir=..., or Hydra's hydra.run.dir)",
    "use_distributed_sampler": "infodyn (evaluation trainers see the whole dev set)",
}


def trainer_kwargs(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(`_target_`, its arguments) from `cfg.trainer`, each checked against the target's
    signature: a misspelt or infodyn-owned key is refused with the fix."""
    import difflib
    import inspect

    from hydra.utils import get_class

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    target = kwargs.pop("_target_", None)
    if not target:
        raise ConfigError(
            "trainer has no _target_. Fix: trainer=default (or one of "
            f"{_options('trainer')}), or add `_target_: pytorch_lightning.Trainer`."
        )
    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception as err:  # noqa: BLE001
        raise ConfigError(
            f"trainer._target_={target} is not a class: {_root_cause(err)}. "
            "Fix: trainer._target_=pytorch_lightning.Trainer."
        ) from err
    for key in kwargs:
        if key in OWNED:
            raise ConfigError(
                f"trainer.{key} is set by infodyn. Fix: remove it; use {OWNED[key]}."
            )
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"trainer.{close[0]}" if close else f"a {target} argument"
            raise ConfigError(f"trainer.{key} is not a {target} argument. Fix: {hint}.")
    every = kwargs.get("check_val_every_n_epoch", 1)
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every!r} is invalid. Fix: an integer >= 1 "
            "(validate every N epochs while training) or 0 (no validation while training)."
        )
    return target, kwargs


def build_trainer(
    cfg: DictConfig,
    max_epochs: int,
    callbacks: list,
    loggers: list,
    ckpt_dir: Path | None,
    evaluation: bool = False,
    unused_parameters: bool = False,
) -> Any:
    """A Lightning Trainer from `cfg.trainer` (its `_target_` and arguments, passed as they are).

    A training trainer (`evaluation=False`) also gets the `callbacks` group's callbacks (before
    the stage checkpoint, so `trainer.checkpoint_callback` is a configured best-checkpoint
    keeper when there is one) and validates every `trainer.check_val_every_n_epoch` epochs
    when `fit` gets `val_dataloaders` (0: never). `evaluation=True` (validation only): every
    DDP process sees the whole dev set rather than a DistributedSampler shard padded with
    repeated samples; the metrics' cross-process sums then count each example once per
    process, which leaves every ratio metric (accuracy, F1, Matthews, Pearson, Spearman)
    exactly as on one. `unused_parameters=True` (LayerDrop: a skipped block gets no gradient)
    makes DDP look for parameters without a gradient each step instead of failing at the
    second step. `trainer.enable_progress_bar` null picks a bar on a terminal, line logs
    otherwise.
    """
    from hydra.utils import get_class
    from pytorch_lightning.callbacks import TQDMProgressBar

    from infodyn.progress import progress_callbacks

    target, kwargs = trainer_kwargs(cfg)
    cbs = list(callbacks)
    if not evaluation:
        cbs += build_callbacks(cfg, ckpt_dir)
    cbs += progress_callbacks(kwargs.pop("enable_progress_bar", None))
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
    strategy = kwargs.get("strategy", "auto")
    if unused_parameters and str(strategy) in DDP_LAUNCHERS:
        kwargs["strategy"] = f"{strategy}_find_unused_parameters_true"
    if kwargs.get("check_val_every_n_epoch") == 0:
        # Lightning has no "never" value: an empty validation loop is its off switch
        kwargs["check_val_every_n_epoch"] = 1
        if not evaluation:
            kwargs["limit_val_batches"] = 0
    return get_class(target)(
        **kwargs,
        max_epochs=max_epochs,
        logger=list(loggers) or False,
        callbacks=cbs,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=any(isinstance(c, TQDMProgressBar) for c in cbs),
        default_root_dir=str(ckpt_dir.parent if ckpt_dir else "."),
        use_distributed_sampler=not evaluation,
    )
