"""The on-disk cache of tokenized splits: its key, its atomic write and its integrity check.

A cache folder is named by a digest of everything that changes its rows (the source file's
identity, the tokenizer, max length, subset size and seed, the task's columns and labels). It
holds the `datasets.save_to_disk` output plus `infodyn_cache.json`, which records the row count
and the size and SHA-256 of every file. A folder whose record is missing or disagrees (a killed
writer, a truncated disk, a hand edit) is rebuilt with one warning instead of failing again on
every rerun. Writes go through `infodyn.io.atomic_dir`, so a parallel job sees all or nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from infodyn.io import atomic_dir, atomic_write_json, read_json

log = logging.getLogger(__name__)

# Bump when the tokenized rows this package writes change, so that old caches are not reused.
CACHE_VERSION = 2
MANIFEST = "infodyn_cache.json"


def tokenizer_id(tok: Any) -> str:
    """A digest of the tokenizer's full definition (vocabulary, normaliser, special tokens)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation/padding are call-time state that every tokenizer call rewrites.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = json.dumps(sorted(tok.get_vocab().items()))
    meta = f"{type(tok).__name__}|{tok.name_or_path}|{len(tok)}|{tok.padding_side}"
    return hashlib.sha256((meta + body).encode()).hexdigest()


def cache_path(
    cache_dir: Path,
    task: Mapping[str, Any],
    split: str,
    *,
    source: str,
    tokenizer: str,
    max_seq_length: int,
    limit: int | None,
    seed: int,
) -> Path:
    """`<cache_dir>/<task>-<split>-<digest>`: equal digests mean equal tokenized rows."""
    key = json.dumps(
        {
            "v": CACHE_VERSION,
            "task": task["name"],
            "source": source,
            "tokenizer": tokenizer,
            "max_seq_length": max_seq_length,
            "limit": limit,
            "seed": seed,
            "keys": [task["sentence1_key"], task.get("sentence2_key")],
            "labels": list(task.get("label_list") or []),
            "label_range": list(task.get("label_range") or []),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{task['name']}-{split}-{digest}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def _problem(path: Path) -> str | None:
    """Why the cache folder at `path` cannot be trusted, or None when it can."""
    record = read_json(path / MANIFEST)
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION:
        return f"no valid {MANIFEST}"
    want = record.get("files") or {}
    for name, meta in want.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta.get("size"):
            return f"{name} has {f.stat().st_size} bytes, the record says {meta.get('size')}"
        if _sha256(f) != meta.get("sha256"):
            return f"{name} does not match its recorded SHA-256"
    return None


def load_cached(path: Path) -> Dataset | None:
    """The cached split at `path`, or None when absent; a corrupt one is logged and ignored."""
    if not path.exists():
        return None
    why = _problem(path)
    if why is None:
        record = read_json(path / MANIFEST) or {}
        try:
            ds = load_from_disk(str(path))
        except Exception as err:  # datasets/pyarrow raise many kinds for a broken folder
            why = f"{err.__class__.__name__}: {err}"
        else:
            if len(ds) == record.get("rows"):
                return ds
            why = f"{len(ds)} rows, the record says {record.get('rows')}"
    log.warning("tokenized cache %s is corrupt (%s); rebuilding it", path, why)
    return None


def save_cached(path: Path, ds: Dataset) -> Dataset:
    """Write `ds` atomically with its integrity record; returns it memory-mapped from `path`."""
    with atomic_dir(path) as tmp:
        ds.save_to_disk(str(tmp))
        atomic_write_json(
            tmp / MANIFEST, {"version": CACHE_VERSION, "rows": len(ds), "files": _files(tmp)}
        )
    try:
        return load_from_disk(str(path))
    except FileNotFoundError:  # a parallel job's identical write is replacing it right now
        return ds
