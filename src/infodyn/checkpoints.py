"""What a job keeps on disk to resume, and what it lets go of once it is done.

Stage records are JSON written through `infodyn.io` (atomic); training stages keep a Lightning
`last.ckpt` per epoch (`AtomicCheckpoint`, also atomic). A corrupt checkpoint is treated as
absent (reported by name), so a rerun redoes that stage. A finished stage needs only its
weights: `slim_checkpoint` drops the optimizer and scheduler state, and `release_finished_run`
removes the checkpoints nothing needs once `results.json` is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from infodyn.io import atomic_write, atomic_write_json, finite, read_json

__all__ = [
    "AtomicCheckpoint",
    "atomic_write_json",  # re-exported until pipeline/stages import them from infodyn.io
    "finite",
    "load_module",
    "read_json",
    "release_finished_run",
    "slim_checkpoint",
    "usable_checkpoint",
]

log = logging.getLogger("infodyn")

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
TRAINING_STATE = ("optimizer_states", "lr_schedulers")  # only a resumed fit() reads these


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


class AtomicCheckpoint(ModelCheckpoint):
    """`last.ckpt` after every epoch, written through `infodyn.io.atomic_write`.

    A kill mid-write never leaves half a checkpoint, and the temporary it leaves is named like
    every other (`.last.ckpt.tmp-<pid>`), so `io.remove_stale_temporaries` clears it. (Lightning
    2.6 refreshes `last` only when a top-k file was saved in the same step, i.e. never with
    save_top_k=0.)
    """

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        save = super()._save_checkpoint
        if trainer.is_global_zero:
            atomic_write(filepath, lambda tmp: save(trainer, str(tmp)))
        else:  # a collective call: the other ranks write nothing
            save(trainer, filepath)
        self._last_checkpoint_saved = filepath


def load_module(path: Path) -> Any:
    """The `GlueClassifier` saved in the checkpoint at `path` (weights only, on CPU)."""
    from infodyn.module import GlueClassifier

    return GlueClassifier.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)


def is_slim(checkpoint: dict[str, Any]) -> bool:
    return all(not checkpoint.get(key) for key in TRAINING_STATE)


def slim_checkpoint(path: str | os.PathLike) -> int:
    """Rewrite a FINISHED stage's checkpoint without optimizer and scheduler state (atomic).

    Weights, hyper-parameters, loop and callback state stay, so `load_module` loads it and a
    `fit(ckpt_path=...)` on it (the stage has no epochs left) restores and ends at once; the
    optimizer state is left as empty lists, which Lightning restores as nothing. Returns the
    bytes saved (0 if it was slim already).
    """
    path = Path(path)
    before = path.stat().st_size
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if is_slim(checkpoint):
        return 0
    for key in TRAINING_STATE:
        checkpoint[key] = []
    checkpoint["infodyn_slim"] = True  # for a reader: this stage cannot continue training
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
    saved = before - path.stat().st_size
    log.info("%s: optimizer state dropped (stage finished), %.1f MB freed", path, saved / 1e6)
    return saved


def stage_checkpoint(run_dir: str | os.PathLike, stage: str) -> Path:
    """Where a training stage keeps its last checkpoint."""
    return Path(run_dir) / CHECKPOINTS / stage / LAST


def release_finished_run(run_dir: str | os.PathLike, keep: Iterable[str] = ()) -> list[Path]:
    """Once `results.json` is complete, remove the stage checkpoints nothing needs any more.

    A complete run is skipped on rerun, so its checkpoints only duplicate the exported model
    (`<run_dir>/model`). Stages named in `keep` (`run.keep_checkpoints`, or a stage another
    job will reuse) keep theirs, slimmed. Without an export, the checkpoint of the last trained
    stage holds the only copy of the final model: it is kept too, slimmed. Returns what went.
    """
    run_dir = Path(run_dir)
    done = read_json(run_dir / "results.json")
    if not done or done.get("status") != "complete":
        log.info("%s is not complete: its checkpoints stay (a rerun resumes from them)", run_dir)
        return []
    root = run_dir / CHECKPOINTS
    stages = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    keep = set(keep)
    if not _has_export(run_dir / "model"):
        final = next((s for s in ("recover", "finetune") if (root / s / LAST).is_file()), None)
        keep |= {final} if final else set()
    gone = []
    for stage in stages:
        folder = root / stage
        if stage in keep:
            if (folder / LAST).is_file():
                slim_checkpoint(folder / LAST)
            continue
        gone.append(folder)
        shutil.rmtree(folder)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if gone:
        log.info("run complete: removed the checkpoints of %s", ", ".join(p.name for p in gone))
    return gone


def _has_export(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
