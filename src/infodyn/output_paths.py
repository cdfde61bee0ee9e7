"""Output paths that stay where they belong: no run or sweep dir climbs out through `..`.

`check_output_dir` (the pipeline) and `check_dirs` (the Hydra preflight callback, before Hydra
creates a dir) refuse a dir whose template or resolved value has a `..` component, naming the
config values it was built from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.errors import ConfigError

# Values interpolated into the default run and sweep dirs.
PATH_KEYS = ("seed", "task.name", "model.name", "sweep_name")


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
        if value is not None:
            refuse_climbing(key, str(value), cfg)


def refuse_climbing(key: str, value: str, cfg: DictConfig | None = None) -> None:
    if ".." not in Path(value).parts:
        return
    culprits = [
        f"{k}={OmegaConf.select(cfg, k)!r}"
        for k in PATH_KEYS
        if cfg is not None and ".." in str(OmegaConf.select(cfg, k, default=""))
    ]
    choice = _pruner_choice()
    if choice and ".." in choice:
        culprits.append(f"pruner={choice!r}")
    via = f" (through {', '.join(culprits)})" if culprits else ""
    raise ConfigError(
        f"{key}={value!r} contains a '..' component{via}, so outputs could land outside the "
        f"output directory. Fix: give {key} (and the config values it is built from) without "
        "'..', e.g. an absolute path."
    )


def _pruner_choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("pruner")


def check_dirs(config: DictConfig, *keys: str) -> None:
    """Each Hydra dir key: its template and its resolved value hold no '..' component."""
    from omegaconf.errors import OmegaConfBaseException

    for key in keys:
        raw = _unresolved(config, key)
        if ".." in Path(raw).parts:
            refuse_climbing(key, raw, None)
        try:
            value = str(OmegaConf.select(config, key))
        except OmegaConfBaseException as err:
            raise ConfigError(
                f"{key}={raw!r} cannot be resolved: {' '.join(str(err).split())}. Fix: "
                f"correct {key} or the values it is built from."
            ) from None
        refuse_climbing(key, value, config)


def _unresolved(config: DictConfig, key: str) -> str:
    node: Any = OmegaConf.to_container(config.hydra, resolve=False)
    for part in key.split(".")[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return str(node)
