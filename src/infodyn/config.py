"""The config's location, its options, and a run's identity.

`options(group)` / `load_option(...)`: the entries of a config group. `identity(cfg)` /
`config_hash(cfg)`: the keys that decide a run's results, and their hash (the default single-run
dir holds it). The schema that checks every value is `infodyn.schema`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.errors import ConfigError

# Inside the package: in a source checkout a symlink to the top-level conf/, in a wheel the copy.
CONF_DIR = Path(__file__).parent / "conf"
# Keys that never change a run's numbers: left out of its identity (and of the run dir's hash).
NOT_IN_IDENTITY = (
    "hydra",
    "paths",
    "run_dir",
    "seed",  # the run dir names the seed itself: seeds of one setting stay siblings
    "project",
    "sweep_name",
    "logger",
    "run.dry_run",
    "run.skip_if_complete",
    "run.keep_checkpoints",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)


def options(group: str) -> list[str]:
    """The options of a config group (`conf/<group>/*.yaml` stems)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_option(cfg: DictConfig, group: str, name: str) -> DictConfig:
    """`conf/<group>/<name>.yaml` attached to a copy of `cfg`, so `${seed}` resolves in the job.

    Loaded alone, `seed: ${seed}` points at itself (a recursive interpolation): this is how the
    pipeline adds the estimator a pruner needs (`estimator=none pruner=redundancy`).
    """
    from omegaconf import open_dict

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{group} '{name}' does not exist (no conf/{group}/{name}.yaml). Fix: choose one "
            f"of {', '.join(options(group))}."
        )
    job = cfg.copy()
    with open_dict(job):
        if not isinstance(job.get(group), DictConfig):
            job[group] = {}
        job[group][name] = OmegaConf.load(path)
    return job[group][name]


# -- identity -------------------------------------------------------------------------------


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The job config without the keys that cannot change its results (`NOT_IN_IDENTITY`).

    Interpolations stay unresolved (`${seed}` is the same text in every seed's config).
    """
    out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    for dotted in NOT_IN_IDENTITY:
        *parents, last = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def config_hash(cfg: DictConfig, length: int = 8) -> str:
    """A short hash of `identity(cfg)`: two settings that can differ in results differ in it."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _hash_resolver(*, _root_: DictConfig) -> str:
    return config_hash(_root_)


def register_resolvers() -> None:
    """`${infodyn.config_hash:}` for conf/hydra/default.yaml (idempotent)."""
    if not OmegaConf.has_resolver("infodyn.config_hash"):
        OmegaConf.register_new_resolver("infodyn.config_hash", _hash_resolver)


register_resolvers()
