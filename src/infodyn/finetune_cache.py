"""Share the `finetune` stage between jobs that would compute it identically.

In a Table-1 sweep every criterion of a (task, seed) starts from the same fine-tuned model: the
pruner only acts after fine-tuning (unless its `training_signature()` says it changes training,
as LayerDrop's does). The first job to reach the stage trains it and publishes
`stages/finetune.json` and its last checkpoint under `paths.finetune_cache/<key>/`; the others copy
them in and resume from there, exactly as a rerun of a job with a finished `finetune` stage does.
A file lock makes a parallel job with the same key wait instead of training the same model twice.

The key is the hash of the fine-tune stage's own config (`reuse.stage_config`): every resolved
value that can change the fine-tuned weights or the recorded profiles, so jobs share only when
the stage would be the same computation.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from infodyn.io import atomic_copy, read_json

log = logging.getLogger("infodyn")

FILES = ("stages/finetune.json", "checkpoints/finetune/last.ckpt")


class SharedFinetune:
    """The cache entry of one key: `fetch` into a run dir, `publish` from it, under a lock."""

    def __init__(self, root: str | Path, key: str, files: tuple[str, ...] = FILES) -> None:
        self.dir = Path(root) / key
        self.key = key
        self.files = files

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
        return all((self.dir / name).is_file() for name in self.files)

    def metrics(self) -> dict | None:
        """The published stage's dev metrics (waits while another job trains it); None if none."""
        with self.locked():
            record = read_json(self.dir / "stages/finetune.json") if self.complete() else None
        return record.get("metrics") if isinstance(record, dict) else None

    def fetch(self, run_dir: Path) -> bool:
        """Copy a published stage into `run_dir` (unless it has its own); True if it did."""
        if not self.complete() or all((run_dir / n).is_file() for n in self.files):
            return False
        for name in self.files:
            # a finished stage's files are only ever replaced: sharing them costs no disk
            atomic_copy(self.dir / name, run_dir / name, link=True)
        log.info("%s shared from %s", " + ".join(self.files), self.dir)
        return True

    def publish(self, run_dir: Path) -> None:
        """Publish `run_dir`'s finished stage (temp dir + rename: never half an entry)."""
        if self.complete() or not all((run_dir / n).is_file() for n in self.files):
            return
        from infodyn.io import atomic_dir

        with atomic_dir(self.dir) as tmp:
            for name in self.files:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / name, tmp / name)


def for_job(cfg: DictConfig, key: str) -> SharedFinetune | None:
    """The job's cache entry, or None when sharing is off (`run.share_finetune=false`) or there
    is no training to share (`stages.finetune_epochs=0`)."""
    if not cfg.run.get("share_finetune", False) or int(cfg.stages.finetune_epochs) == 0:
        return None
    return SharedFinetune(_root(cfg), key)


def for_oracle(cfg: DictConfig, key: str) -> SharedFinetune | None:
    """The oracle analysis's cache entry: every criterion of a (task, seed) judges its choice
    against the same subsets of the same fine-tuned model, so they are evaluated once."""
    if not cfg.run.get("share_finetune", False) or not cfg.stages.get("oracle", False):
        return None
    return SharedFinetune(_root(cfg), f"oracle-{key}", files=("stages/oracle.json",))


def _root(cfg: DictConfig) -> str:
    return cfg.paths.get("finetune_cache") or os.path.join(cfg.paths.output_root, "finetune_cache")
