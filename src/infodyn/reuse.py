"""Whether what a run dir holds may be reused: it was made by a config that agrees with the one
asked for now on every key that affects it.

Each stage record stores the flattened resolved config it was made with (only the keys that can
change it); a rerun compares and, on any difference, stops before work naming the keys and the
fix. Keys that cannot change a result (logging, progress bars, paths of outputs) never block.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.errors import ConfigError

# Keys (or prefixes) that cannot change any number a run writes.
INERT = (
    "hydra",
    "run_dir",
    "project",
    "target",  # decides whether a criterion runs, never what it computes
    "sweep_name",
    "logger",
    "paths",  # where data and outputs live, not what they hold (the data cache keys content)
    "run.dry_run",
    "run.skip_if_complete",
    "run.overwrite",
    "run.share_finetune",
    "run.save_stage_checkpoints",
    "run.export_pruned_model",
    "run.keep_checkpoints",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.enable_model_summary",
)
# What only a later stage reads: a change there keeps the earlier stages reusable.
AFTER_FINETUNE = ("pruner", "data.calibration_size", "oracle", "stages.oracle")
AFTER_PRUNE = ("stages.recover_epochs",)
LATER = {
    "finetune": AFTER_FINETUNE
    + AFTER_PRUNE
    + ("run.throughput_batches", "run.throughput_seconds"),
    "oracle": ("pruner",) + AFTER_PRUNE + ("run.throughput_batches", "run.throughput_seconds"),
    "score": AFTER_PRUNE + ("run.throughput_batches", "run.throughput_seconds"),
    "prune": AFTER_PRUNE,
    "recover": (),
    "final": (),
}


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {dotted key: leaf value}, inert keys left out."""
    from infodyn.metrics import METRIC_REVISIONS

    plain = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}
    _flatten(plain, "", out)
    task = plain.get("task") if isinstance(plain, dict) else None
    for name in (task or {}).get("metrics") or ():
        if name in METRIC_REVISIONS:  # a record made before the metric's fix is stale
            out[f"metric_revision.{name}"] = METRIC_REVISIONS[name]
    return {k: v for k, v in out.items() if not _under(k, INERT)}


def stage_config(
    cfg: DictConfig, stage: str, training_signature: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The keys that affect `stage` (the fine-tune's pruner signature included), flattened."""
    flat = {k: v for k, v in flat_config(cfg).items() if not _under(k, LATER[stage])}
    if stage == "finetune" and training_signature:
        _flatten(dict(training_signature), "pruner.training.", flat)
    return flat


def config_hash(flat: Mapping[str, Any]) -> str:
    blob = json.dumps(dict(sorted(flat.items())), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key: stored -> now` for every key that differs (missing on one side included)."""
    keys = sorted(set(stored) | set(now))
    missing = object()
    out = []
    for k in keys:
        a, b = stored.get(k, missing), now.get(k, missing)
        if _norm(a) != _norm(b):
            shown = ["(unset)" if x is missing else repr(x) for x in (a, b)]
            out.append(f"{k}: {shown[0]} -> {shown[1]}")
    return out


def check_reuse(what: str, path: Path, stored: Mapping[str, Any] | None, now: Mapping[str, Any]):
    """Raise `ConfigError` unless `stored` (the config a record was made with) agrees with `now`.

    `stored=None` (a record from before configs were stored) cannot be trusted either.
    """
    if stored is None:
        diff = ["(the record stores no config: it predates this check)"]
    else:
        diff = differences(stored, now)
    if not diff:
        return
    shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    raise ConfigError(
        f"{path} holds {what} made with a different config ({shown}), so it cannot be reused "
        f"for this run. Fix: a new run dir (e.g. run_dir=<new path>, or let Hydra pick one per "
        f"override), or run.overwrite=true to discard what {path.parent} holds and start over."
    )


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        if not node and prefix:
            out[prefix.rstrip(".")] = {}
        for k, v in node.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix.rstrip(".")] = node


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _norm(v: Any) -> Any:
    # JSON round trips turn tuples into lists and ints stay ints: compare as JSON does
    return json.loads(json.dumps(v, default=str)) if v is not None else None
