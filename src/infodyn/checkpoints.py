"""What a job keeps on disk to resume: atomic JSON stage records and Lightning checkpoints.

Every write is temp file + rename, so a killed job never leaves half a file; every read treats a
corrupt file as absent (reported by name), so a rerun redoes that stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger("infodyn")


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


def finite(value: Any) -> Any:
    """Replace NaN/inf by None recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


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


def load_module(path: Path) -> Any:
    """The `GlueClassifier` saved in the checkpoint at `path` (weights only, on CPU)."""
    from infodyn.module import GlueClassifier

    return GlueClassifier.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
