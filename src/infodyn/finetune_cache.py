"""Share the `finetune` stage between jobs that would compute it identically.

In a Table-1 sweep every criterion of a (task, seed) starts from the same fine-tuned model: the
pruner only acts after fine-tuning (LayerDrop excepted: it changes training, so it keys its own
entry). The first job to reach the stage trains it and publishes `stages/finetune.json` and its
last checkpoint under `paths.finetune_cache/<key>/`; the others copy them in and resume from
there, exactly as a rerun of a job with a finished `finetune` stage does. A file lock makes a
parallel job with the same key wait instead of training the same model twice.

The key is a hash of every resolved config value that can change the fine-tuned weights or the
recorded profiles (task, model, fine-tuning method, estimators, data, optimiser, seed, epochs,
trainer numerics), so jobs share only when the stage would be bit-for-bit the same computation.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("infodyn")

FILES = ("stages/finetune.json", "checkpoints/finetune/last.ckpt")
# Trainer settings that change the numbers (not the progress bar or logging cadence).
TRAINER_KEYS = (
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "deterministic",
    "fast_dev_run",
    "limit_train_batches",
    "strategy",
    "devices",
    "accelerator",
)


def finetune_key(
    cfg: DictConfig,
    pruner_name: str,
    pruner_cfg: Mapping[str, Any],
    estimator_cfgs: Mapping[str, Any],
) -> str:
    """A short hash of everything that determines the `finetune` stage's outputs."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("calibration_size", None)  # used after fine-tuning only
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    payload = {
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "finetune": OmegaConf.to_container(cfg.finetune, resolve=True),
        "estimators": {k: _plain(v) for k, v in sorted(estimator_cfgs.items())},
        "data": data,
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "seed": int(cfg.seed),
        "epochs": int(cfg.stages.finetune_epochs),
        "trainer": {k: trainer.get(k) for k in TRAINER_KEYS},
        "glue_dir": str(cfg.paths.get("glue_dir")),
        # LayerDrop trains differently; every other criterion only acts after this stage.
        "layerdrop": _plain(pruner_cfg) if pruner_name == "layerdrop" else None,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


class SharedFinetune:
    """The cache entry of one key: `fetch` into a run dir, `publish` from it, under a lock."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / key
        self.key = key

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the key's lock (waits while another job trains the same stage)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dir.parent / f".{self.key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def complete(self) -> bool:
        return all((self.dir / name).is_file() for name in FILES)

    def fetch(self, run_dir: Path) -> bool:
        """Copy a published stage into `run_dir` (unless it has its own); True if it did."""
        if not self.complete() or all((run_dir / n).is_file() for n in FILES):
            return False
        for name in FILES:
            _atomic_copy(self.dir / name, run_dir / name)
        log.info("finetune stage shared from %s", self.dir)
        return True

    def publish(self, run_dir: Path) -> None:
        """Publish `run_dir`'s finished stage (temp dir + rename: never half an entry)."""
        if self.complete() or not all((run_dir / n).is_file() for n in FILES):
            return
        tmp = self.dir.with_name(f".{self.key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in FILES:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, tmp / name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(tmp, self.dir)


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def for_job(
    cfg: DictConfig, pruner_name: str, estimator_cfgs: Mapping[str, Any]
) -> SharedFinetune | None:
    """The job's cache entry, or None when sharing is off (`run.share_finetune=false`)."""
    if not cfg.run.get("share_finetune", False):
        return None
    root = cfg.paths.get("finetune_cache") or os.path.join(cfg.paths.output_root, "finetune_cache")
    return SharedFinetune(root, finetune_key(cfg, pruner_name, cfg.pruner, estimator_cfgs))
