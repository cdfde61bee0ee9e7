"""Input checks before any work: the schema, the conflicts the config decides, output paths.

`validate(cfg)` runs the schema (`infodyn.schema.check_schema`) and then every rule of `RULES`,
each a named function that raises one `ConfigError` paragraph (the model entry's rules live in
`model_checks` and `model_folder`, the output paths' in `output_paths`). `PreflightCallback`
(registered in conf/hydra/default.yaml) runs the path checks and `validate` on every job of a run
or a sweep before Hydra writes anything (`.hydra/`, a log, an output dir).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from infodyn.config import load_option
from infodyn.errors import ConfigError
from infodyn.model_checks import (
    hub_model_named,
    model_hf_config,
    random_model_config_valid,
    seq_length_fits_model,
)
from infodyn.model_folder import local_model_folder_usable
from infodyn.output_paths import check_dirs, refuse_climbing
from infodyn.schema import check_schema
from infodyn.target import check_metrics as target_metrics_known


def validate(cfg: DictConfig) -> None:
    """The schema, then every rule of `RULES`: types, ranges, keys and conflicts, cheap."""
    check_schema(cfg)
    for rule in RULES:
        rule(cfg)


# -- the conflicts the config decides (each rule: one named function) -----------------------


def accelerator_available(cfg: DictConfig) -> None:
    """`trainer.accelerator` names an accelerator Lightning knows and this machine has."""
    import torch
    from pytorch_lightning.accelerators import AcceleratorRegistry

    name = str(cfg.trainer.get("accelerator", "auto"))
    known = sorted(AcceleratorRegistry.available_accelerators())
    if name == "auto":
        return
    lookup = "cuda" if name == "gpu" else name
    if lookup not in known:
        raise ConfigError(
            f"trainer.accelerator={name!r} is not a Lightning accelerator (known: auto, gpu, "
            f"{', '.join(known)}). Fix: trainer.accelerator=auto (or trainer=cpu / trainer=gpu)."
        )
    if not AcceleratorRegistry[lookup]["accelerator"].is_available():
        have = "CUDA" if lookup == "cuda" else lookup.upper()
        raise ConfigError(
            f"trainer.accelerator={name} but this machine has no {have} device (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Fix: trainer=cpu "
            "(or trainer.accelerator=auto), or run on a machine with that device."
        )


def fsdp_needs_gpu(cfg: DictConfig) -> None:
    """Lightning's FSDP refuses CPUs, but only after the data and model are built."""
    import torch

    strategy = str(cfg.trainer.get("strategy", "auto"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if not strategy.startswith("fsdp"):
        return
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        raise ConfigError(
            f"trainer.strategy={strategy} needs CUDA GPUs: Lightning's FSDP refuses "
            f"accelerator={accelerator!r}"
            + ("" if accelerator == "cpu" else " on a machine without a GPU")
            + ". Fix: run it on GPUs (trainer.accelerator=gpu), or use trainer=ddp "
            "(gloo on CPU) or trainer=cpu here."
        )


def strategy_known(cfg: DictConfig) -> None:
    """`trainer.strategy` is one Lightning knows (it would refuse it after the model is built)."""
    from pytorch_lightning.strategies import StrategyRegistry

    name = cfg.trainer.get("strategy", "auto")
    if isinstance(name, str) and name != "auto" and name not in StrategyRegistry:
        raise ConfigError(
            f"trainer.strategy={name!r} is not a Lightning strategy (e.g. auto, ddp, ddp_spawn, "
            "fsdp, deepspeed; the full list is pytorch_lightning.strategies.StrategyRegistry). "
            "Fix: trainer.strategy=auto, or trainer=ddp for several processes."
        )


def targets_take_their_keys(cfg: DictConfig) -> None:
    """Every key of the pruner entry is an argument of its class (a typo is never dropped)."""
    from hydra.utils import get_class

    try:
        cls = get_class(str(cfg.pruner._target_))
    except Exception:  # noqa: BLE001 - the pruner builder names a bad _target_
        return
    params = _parameters(cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in cfg.pruner:
        if not str(key).startswith("_") and key != "name" and key not in params:
            takes = ", ".join(k for k in params if k != "self")
            raise ConfigError(
                f"pruner.{key}={OmegaConf.select(cfg, f'pruner.{key}')} is not an argument of "
                f"{cls.__name__} (it takes: {takes or 'nothing'}). Fix: drop pruner.{key}, or "
                "spell one of those."
            )


def pruner_estimator_exists(cfg: DictConfig) -> None:
    """The estimator a pruner's config names is selected or has a conf/estimator entry."""
    if "estimator" in cfg.pruner and cfg.pruner.estimator is None:
        from hydra.utils import get_class

        default = _parameters(get_class(str(cfg.pruner._target_))).get("estimator")
        if default is not None and default.default is not None:
            raise ConfigError(
                "pruner.estimator=null but this pruner ranks the blocks by an estimator's "
                f"scores. Fix: pruner.estimator={default.default} (or another conf/estimator "
                "entry)."
            )
    estimators_in_effect(cfg)


def pair_estimators_need_two_samples(cfg: DictConfig) -> None:
    """An estimator that pairs samples of a batch (cosine) needs at least 2 per batch."""
    for name, entry, cls in _estimator_classes(cfg):
        params = _parameters(cls)
        least = getattr(cls, "min_batch_size", 2 if "pairing" in params else 1)
        batch = int(cfg.data.batch_size) * _processes_sharing_a_batch(cfg, entry, params)
        if batch < least:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} but estimator {name} pairs samples of "
                f"one batch and needs at least {least} per batch: every batch would be skipped "
                f"and the fine-tune would end with no score. Fix: data.batch_size={least} or "
                f"more, or drop {name} from estimator=[...]."
            )


def projection_fits_model_width(cfg: DictConfig) -> None:
    """A projecting estimator (gaussian, exact) cannot project to more dims than the model has."""
    width = model_hf_config(cfg).get("hidden_size")
    if width is None:
        return
    for name, entry, cls in _estimator_classes(cfg):
        params = _parameters(cls)
        if "projection" not in params:
            continue
        arg = next((a for a in ("k", "d") if a in params), None)
        if arg is None:
            continue
        dims = entry.get(arg, params[arg].default)
        if isinstance(dims, int) and dims > width:
            raise ConfigError(
                f"estimator.{name}.{arg}={dims} projects each layer to {dims} dims but "
                f"model={cfg.model.name} is {width} wide (its config's hidden_size). Fix: "
                f"estimator.{name}.{arg}={width} or less."
            )


def task_labels_agree(cfg: DictConfig) -> None:
    """A task's head size, label list and main metric agree with each other."""
    task = cfg.task
    if task.main_metric not in task.metrics:
        raise ConfigError(
            f"task.main_metric={task.main_metric!r} is not among task.metrics="
            f"{list(task.metrics)}. Fix: task.main_metric={task.metrics[0]} or add it to "
            "task.metrics."
        )
    if task.is_regression and task.num_labels != 1:
        raise ConfigError(
            f"task.is_regression=true with task.num_labels={task.num_labels}: a regression "
            "head has one output. Fix: task.num_labels=1."
        )
    labels = task.get("label_list")
    if not task.is_regression and labels is not None and len(labels) != task.num_labels:
        raise ConfigError(
            f"task.label_list has {len(labels)} labels but task.num_labels={task.num_labels}. "
            f"Fix: task.num_labels={len(labels)}, or list every label."
        )


def callbacks_monitor_logged_metrics(cfg: DictConfig) -> None:
    """A callback's `monitor` is a key training logs (Lightning finds a typo after an epoch)."""
    from infodyn.data.datamodule import eval_split_names
    from infodyn.module import logged_keys

    task = cfg.task
    logged = logged_keys(task, eval_split_names(task))
    for key, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, Mapping) or node.get("monitor") is None:
            continue
        monitor = str(node["monitor"])
        if monitor not in logged:
            raise ConfigError(
                f"callbacks.{key}.monitor={monitor!r} is not a metric this run logs (task "
                f"{task.name}: {', '.join(logged)}). Fix: callbacks.{key}.monitor="
                f"val/{task.main_metric} (the task's main metric), or one of those."
            )


RULES: list[Callable[[DictConfig], None]] = [
    accelerator_available,
    strategy_known,
    fsdp_needs_gpu,
    random_model_config_valid,
    hub_model_named,
    local_model_folder_usable,
    targets_take_their_keys,
    pruner_estimator_exists,
    pair_estimators_need_two_samples,
    projection_fits_model_width,
    seq_length_fits_model,
    task_labels_agree,
    callbacks_monitor_logged_metrics,
    target_metrics_known,
]


def estimators_in_effect(cfg: DictConfig) -> dict[str, DictConfig]:
    """`cfg.estimator` plus the one the pruner's config names (the pipeline adds it)."""
    out = dict(cfg.estimator.items())
    needed = cfg.pruner.get("estimator")
    if isinstance(needed, str) and needed not in out:
        try:
            out[needed] = load_option(cfg, "estimator", needed)
        except ConfigError as err:
            raise ConfigError(f"pruner.estimator={needed!r}: {err}") from None
    return out


def _estimator_classes(cfg: DictConfig) -> list[tuple[str, DictConfig, type]]:
    from hydra.utils import get_class

    out = []
    for name, entry in estimators_in_effect(cfg).items():
        try:
            out.append((str(name), entry, get_class(str(entry._target_))))
        except Exception:  # noqa: BLE001 - the estimator builder names a bad _target_
            continue
    return out


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(cls).parameters


def _processes_sharing_a_batch(cfg: DictConfig, entry: DictConfig, params: Mapping) -> int:
    """DDP with `batch_scope: global` scores the global batch: B x processes."""
    devices = cfg.trainer.get("devices", 1)
    default = params["batch_scope"].default if "batch_scope" in params else None
    scope = entry.get("batch_scope", default)
    ddp = str(cfg.trainer.get("strategy", "auto")).startswith("ddp")
    return int(devices) if ddp and scope == "global" and isinstance(devices, int) else 1


# -- the Hydra callback: everything above, before Hydra writes a file -----------------------

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object  # type: ignore[assignment,misc]


class PreflightCallback(_HydraCallback):
    """Checks each job's output dir and config before Hydra creates a dir or writes a log."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(lambda: _check_run(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(lambda: _check_sweep(config))


def _or_exit(check: Callable[[], None]) -> None:
    try:
        check()
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _check_run(config: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)
    check_dirs(config, "hydra.run.dir")
    if config.get("run_dir"):
        refuse_climbing("run_dir", str(config.run_dir), config)
    validate(_job_part(config))


def _check_sweep(config: DictConfig) -> None:
    """The sweep dir, then every job the basic sweeper will launch: dir and config."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    HydraConfig.instance().set_config(config)
    check_dirs(config, "hydra.sweep.dir")
    sweeper = str(config.hydra.sweeper.get("_target_", ""))
    if not sweeper.endswith("BasicSweeper"):
        return  # other sweepers choose their jobs as they go: each job is checked by the pipeline
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    args = params + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader()
    parser = OverridesParser.create(config_loader=loader)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(args), None)
    try:
        for num, overrides in enumerate(o for batch in batches for o in batch):
            job = loader.load_sweep_config(config, list(overrides))
            with open_dict(job):
                job.hydra.job.id, job.hydra.job.num = f"check_{num}", num
            HydraConfig.instance().set_config(job)
            check_dirs(job, "hydra.sweep.dir", "hydra.sweep.subdir")
            try:
                validate(_job_part(job))
            except ConfigError as err:
                raise ConfigError(f"sweep job {' '.join(overrides)}: {err}") from None
    finally:
        HydraConfig.instance().set_config(config)


def _job_part(config: DictConfig) -> DictConfig:
    """The job config (what the task function gets): `hydra` removed, interpolations intact."""
    job = config.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return job
