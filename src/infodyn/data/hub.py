"""GLUE from the Hugging Face hub (`data.hub_dataset`, default `nyu-mll/glue`) or a local copy.

`data.hub_dataset` is either a dataset id on the hub (or on the mirror `HF_ENDPOINT` names) or a
local folder in that repository's own layout: one folder per config holding parquet files named
by split, e.g. `<folder>/mrpc/train-00000-of-00001.parquet`, `<folder>/mnli/
validation_matched-00000-of-00001.parquet` (what `huggingface-cli download nyu-mll/glue
--repo-type dataset --local-dir <folder>` writes). A local folder is read with the `parquet`
builder, one split's files at a time, so it needs no network and no dataset script.

The hub's labels are already class ids in `label_list` order (MNLI: entailment, neutral,
contradiction) and float scores for STS-B; test splits are labelled -1 and are refused. The row
policy (labels, empty sentences) is the TSV files' one, see `infodyn.data.formats`.

With `HF_HUB_OFFLINE=1` (or `HF_DATASETS_OFFLINE=1`) a hub id is answered from the local
Hugging Face cache only, at once; online, an unreachable host fails in seconds instead of the
client's retries.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from datasets import Dataset

from infodyn.data.formats import (
    DataConfigError,
    blank_rows,
    check_class_id,
    check_score,
    sentence_keys,
    warn_dropped,
)

HUB_DATASET = "nyu-mll/glue"
_TRUE = {"1", "true", "yes", "on"}
_HINT = "Fix: set GLUE_DIR=/path/to/glue_data (the classic GLUE layout) or go online."


def is_local(dataset: str) -> bool:
    """A folder, or something written as a path (which then must be a folder)."""
    return Path(dataset).expanduser().is_dir() or dataset.startswith(("/", ".", "~"))


def read_hub(
    task: Mapping[str, Any], dataset: str, splits: Sequence[str], cache_dir: Path | None = None
) -> dict[str, tuple[Dataset, str]]:
    """Our split name -> (rows with the sentence columns and `labels`, a source identity).

    `splits` are the task's split names (`train` and its eval splits); `task.hub_splits` maps
    them to the hub's (MNLI's `validation_matched`, ...). A local folder's arrow conversion is
    kept under `cache_dir` (default: the datasets cache).

    Raises:
        DataConfigError: the hub is off or unreachable, or a config, split or column is missing.
    """
    hub_splits = {s: dict(task.get("hub_splits") or {}).get(s, s) for s in splits}
    out = {}
    if is_local(dataset):
        folder = _config_folder(task, dataset)
        files = {s: sorted(folder.glob(f"{hub_splits[s]}-*.parquet")) for s in splits}
        for split in splits:
            if not files[split]:
                raise _missing_split(task, folder, split, hub_splits[split], files)
        for split in splits:
            where = f"{folder} split '{hub_splits[split]}'"
            ds = _load_local(files[split], hub_splits[split], cache_dir)
            stats = [
                f"{f.resolve()}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in files[split]
            ]
            out[split] = (_rows(task, ds, where), "hub-folder:" + "|".join(stats))
        return out
    offline = _offline_var()
    if offline is None:
        _check_reachable(task, dataset)
    for split in splits:
        hub_split = hub_splits[split]
        ds = _load_remote(task, dataset, hub_split, offline)
        where = f"{dataset} '{task['hub_config']}' split '{hub_split}'"
        source = f"hub:{dataset}:{task['hub_config']}:{hub_split}:{ds._fingerprint}"
        out[split] = (_rows(task, ds, where), source)
    return out


def _offline_var() -> str | None:
    """The variable that turns the hub off (then only the local HF cache can answer), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def _check_reachable(task: Mapping[str, Any], dataset: str) -> None:
    """Fail at once instead of the hub client's long retries when the hub cannot answer."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        raise DataConfigError(
            f"task '{task['name']}' has no GLUE_DIR, so it would come from the hub "
            f"({dataset}), but {host} cannot be reached ({err}). {_HINT}"
        ) from err


def _load_remote(
    task: Mapping[str, Any], dataset: str, hub_split: str, offline: str | None
) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(dataset, task["hub_config"], split=hub_split)
    except Exception as err:  # the hub raises many kinds; all mean "not available"
        if offline:  # offline, the client answers at once from its cache or not at all
            raise DataConfigError(
                f"task '{task['name']}' has no GLUE_DIR, so it would come from the hub "
                f"({dataset}, '{task['hub_config']}'), but {offline}=1 turns the hub off and "
                f"the local Hugging Face cache does not hold split '{hub_split}' "
                f"({err.__class__.__name__}). Fix: set GLUE_DIR=/path/to/glue_data (the "
                "classic GLUE layout), or data.hub_dataset=<folder> (a local copy in the "
                "hub's layout), or go online once to fill the cache."
            ) from err
        raise DataConfigError(
            f"could not load {dataset} '{task['hub_config']}' split '{hub_split}': "
            f"{err.__class__.__name__}: {err}. Fix: check data.hub_dataset and the task's "
            f"`hub_config`/`hub_splits`, set GLUE_DIR=/path/to/glue_data, or go online."
        ) from err


def _config_folder(task: Mapping[str, Any], dataset: str) -> Path:
    root = Path(dataset).expanduser().absolute()
    if not root.is_dir():
        raise DataConfigError(
            f"data.hub_dataset={dataset} ({root}) is not a folder. Fix: give a hub dataset id "
            f"(default nyu-mll/glue) or a folder in the hub's layout (<folder>/"
            f"{task['hub_config']}/train-00000-of-00001.parquet, ...)."
        )
    folder = root / task["hub_config"]
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataConfigError(
            f"data.hub_dataset={dataset} has no folder '{task['hub_config']}' for task "
            f"'{task['name']}' (it has {have}). Fix: use a copy of the hub repository with that "
            "config, or correct `hub_config` in the task's yaml."
        )
    return folder


def _missing_split(
    task: Mapping[str, Any],
    folder: Path,
    split: str,
    hub_split: str,
    files: Mapping[str, list[Path]],
) -> DataConfigError:
    have = sorted({p.name.split("-")[0] for p in folder.glob("*.parquet")})
    present = [s for s, found in files.items() if s not in ("train", split) and found]
    fix = "Fix: use a complete copy of the hub repository"
    if split != "train" and present:
        fix += (
            f", or evaluate only on the splits you have: 'task.eval_splits=[{','.join(present)}]'"
        )
    return DataConfigError(
        f"{folder} has no parquet files for split '{hub_split}' ({hub_split}-*.parquet) of "
        f"task '{task['name']}'; it has splits {have}. {fix}."
    )


def _load_local(files: list[Path], hub_split: str, cache_dir: Path | None) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(
            "parquet",
            data_files={hub_split: [str(f) for f in files]},
            split=hub_split,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except Exception as err:  # pyarrow and datasets raise many kinds for a bad file
        raise DataConfigError(
            f"could not read {', '.join(map(str, files))}: {err.__class__.__name__}: {err}. "
            "Fix: replace the file(s) with the hub's parquet files of that split."
        ) from err


def _rows(task: Mapping[str, Any], ds: Dataset, where: str) -> Dataset:
    """The task's sentence columns and `labels`, after the label checks and blank-row policy."""
    keys = sentence_keys(task)
    missing = [c for c in [*keys, "label"] if c not in ds.column_names]
    if missing:
        raise DataConfigError(
            f"{where} lacks columns {missing} (has {ds.column_names}). Fix: correct "
            f"sentence1_key/sentence2_key in conf/task/{task['name']}.yaml."
        )
    ds = ds.select_columns([*keys, "label"]).rename_column("label", "labels")
    if len(ds) == 0:
        raise DataConfigError(f"{where} has no rows. Fix: use a complete copy of the dataset.")
    labels = np.asarray(ds["labels"])
    if (labels == -1).all():
        raise DataConfigError(
            f"{where} has no labels (all -1: the hub's mark for a test split). Fix: evaluate on "
            "a labelled split (task.eval_splits, or the task's `hub_splits`)."
        )
    if task["is_regression"]:
        lo, hi = task.get("label_range") or (-np.inf, np.inf)
        bad = ~np.isfinite(labels) | (labels < lo) | (labels > hi)
        for i in np.flatnonzero(bad)[:1]:
            check_score(labels[i].item(), task, f"{where} row {i}")
    else:
        bad = (labels < 0) | (labels >= int(task["num_labels"]))
        for i in np.flatnonzero(bad)[:1]:
            check_class_id(labels[i].item(), task, f"{where} row {i}")
    blank = blank_rows({k: ds[k] for k in keys}, keys)
    if blank:
        warn_dropped(where, [f"row {i}" for i in blank])
        gone = set(blank)
        ds = ds.select([i for i in range(len(ds)) if i not in gone])
        if len(ds) == 0:
            raise DataConfigError(
                f"{where} has no usable rows. Fix: use a complete copy of the dataset."
            )
    return ds
