"""GLUE data: the classic `glue_data/` TSV files (`GLUE_DIR`) or the hub (`nyu-mll/glue`).

`GlueDataModule` reads one task described by a `conf/task/*.yaml` entry, checks it
(`validate()`, before any training), tokenizes once (the result is cached on disk, keyed by the
files, the tokenizer and every option that changes the rows) and pads each batch dynamically.

TSV files are read with quoting off, as the GLUE processors always did: quote characters in a
sentence are literal text. The task entry's `tsv` block says how a task's files are laid out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
import torch
from datasets import Dataset, load_from_disk
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
# Bump when the tokenized rows this module writes change, so that old caches are not reused.
CACHE_VERSION = 1
_TRUE = {"1", "true", "yes", "on"}


class DataConfigError(ValueError):
    """Data that cannot be used as configured; the message names the input and the fix."""


def _fix_hint(task: Mapping[str, Any]) -> str:
    return (
        f"Fix: point GLUE_DIR (or data.glue_dir) at a folder holding "
        f"{task['glue_dir_name']}/ in the classic GLUE layout, or unset it to use the hub."
    )


class GlueDataModule(pl.LightningDataModule):
    """One GLUE task: train split, one or more eval splits, probe and calibration subsets.

    Args:
        task: a `conf/task/*.yaml` entry (see that folder for the fields).
        tokenizer: the model's tokenizer.
        glue_dir: folder in the classic `glue_data/` layout; else env `GLUE_DIR`; else the hub.
        max_seq_length: longer inputs are truncated.
        batch_size: training batch size.
        eval_batch_size: batch size of eval, probe and calibration loaders.
        train_limit: keep this many training rows (a seeded random subset); None keeps all.
        eval_limit: the same for each eval split.
        seed: seeds the subsets and the training shuffle.
        num_workers: DataLoader workers.
        cache_dir: where tokenized splits are cached; default
            `$HF_DATASETS_CACHE/infodyn_tokenized` (or `~/.cache/huggingface/datasets/...`).
        model_max_length: the longest input the model accepts; default the tokenizer's.
    """

    def __init__(
        self,
        task: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        glue_dir: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        train_limit: int | None = None,
        eval_limit: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        model_max_length: int | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        env_dir = os.environ.get("GLUE_DIR") or None
        self.glue_dir = Path(glue_dir or env_dir).expanduser() if (glue_dir or env_dir) else None
        self.max_seq_length = int(max_seq_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.train_limit = train_limit
        self.eval_limit = eval_limit
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        default_cache = Path(
            os.environ.get("HF_DATASETS_CACHE", "~/.cache/huggingface/datasets")
        ).expanduser()
        self.cache_dir = (
            Path(cache_dir).expanduser() if cache_dir else default_cache / "infodyn_tokenized"
        )
        self.model_max_length = model_max_length
        self.eval_split_names: list[str] = list(task["eval_files"])
        self.collator = DataCollatorWithPadding(tokenizer)
        self.train_dataset: Dataset | None = None
        self.eval_datasets: dict[str, Dataset] = {}
        # Untokenized rows per split (sentence columns + `labels`), filled by validate().
        self.raw_datasets: dict[str, Dataset] = {}
        self._sources: dict[str, str] = {}
        self._validated = False

    # ----------------------------------------------------------------- checks and raw rows
    @property
    def source(self) -> str:
        """`"glue_dir"` or `"hub"`."""
        return "glue_dir" if self.glue_dir is not None else "hub"

    def validate(self) -> None:
        """Check every input and read the raw rows; raises `DataConfigError` on the first problem.

        Cheap enough to call before training: it reads the files but tokenizes nothing.
        """
        if self._validated:
            return
        self._check_lengths()
        if self.glue_dir is not None:
            self.raw_datasets = self._read_glue_dir()
        else:
            self.raw_datasets = self._read_hub()
        self._validated = True

    def _check_lengths(self) -> None:
        limit = self.model_max_length
        if limit is None:
            tok_limit = getattr(self.tokenizer, "model_max_length", None)
            # Tokenizers with no known limit report a huge sentinel (int(1e30)); ignore it.
            limit = tok_limit if tok_limit is not None and tok_limit < 1_000_000 else None
        if self.max_seq_length < 2:
            raise DataConfigError(
                f"data.max_seq_length={self.max_seq_length} leaves no room for text. "
                "Fix: set data.max_seq_length to 128 (or at least 8)."
            )
        if limit is not None and self.max_seq_length > limit:
            raise DataConfigError(
                f"data.max_seq_length={self.max_seq_length} is longer than the model accepts "
                f"(model_max_length={limit}): inputs that long would index past the position "
                f"embeddings. Fix: set data.max_seq_length={limit} or less."
            )

    def _read_glue_dir(self) -> dict[str, Dataset]:
        assert self.glue_dir is not None
        task = self.task
        if not self.glue_dir.is_dir():
            raise DataConfigError(f"GLUE_DIR={self.glue_dir} is not a folder. {_fix_hint(task)}")
        folder = self.glue_dir / task["glue_dir_name"]
        if not folder.is_dir():
            raise DataConfigError(
                f"task '{task['name']}' expects the folder {folder}, which does not exist "
                f"(GLUE_DIR={self.glue_dir}). {_fix_hint(task)}"
            )
        files = {"train": task["train_file"], **dict(task["eval_files"])}
        raw = {}
        for split, name in files.items():
            path = folder / name
            raw[split] = self._read_tsv(path)
            st = path.stat()
            self._sources[split] = f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}"
        return raw

    def _read_tsv(self, path: Path) -> Dataset:
        """One TSV file -> Dataset with columns sentence1_key[, sentence2_key], labels."""
        task = self.task
        layout = task["tsv"]
        if not path.exists():
            raise DataConfigError(
                f"task '{task['name']}' needs the file {path}, which does not exist. "
                f"{_fix_hint(task)}"
            )
        if not path.is_file():
            raise DataConfigError(
                f"{path} is a directory (or not a regular file), but task '{task['name']}' reads "
                f"it as a TSV file. Fix: put the GLUE file {path.name} there, or point GLUE_DIR "
                "at the right folder."
            )
        data = path.read_bytes()
        if b"\x00" in data[:65536]:
            raise DataConfigError(
                f"{path} holds binary data (NUL bytes), not tab-separated text. Fix: replace it "
                "with the GLUE TSV file (re-download or re-extract glue_data)."
            )
        try:
            # utf-8-sig drops MRPC's byte-order mark.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataConfigError(
                f"{path} is not UTF-8 text (byte {err.start}: {err.reason}). Fix: replace it with "
                "the GLUE TSV file (re-download or re-extract glue_data)."
            ) from err
        # Split on \n only: sentences may hold other line-break characters (\x0b, \u2028, ...).
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()  # trailing newline(s); CoLA's last line has none
        first_line = 1
        if layout.get("header", True):
            if not lines:
                raise DataConfigError(
                    f"{path} is empty (no header, no rows). Fix: replace it with the GLUE TSV "
                    "file of that split."
                )
            columns = lines[0].split("\t")
            lines = lines[1:]
            first_line = 2
        else:
            columns = list(layout["columns"])
        wanted = {"sentence1": task["sentence1_key"], "label": "labels"}
        if task.get("sentence2_key"):
            wanted["sentence2"] = task["sentence2_key"]
        index = {}
        for field in wanted:
            col = layout[field]
            if col not in columns:
                raise DataConfigError(
                    f"{path} has no column '{col}' (the {field} of task '{task['name']}'); its "
                    f"header has {columns}. Fix: use the classic GLUE file for this task, or fix "
                    f"`tsv.{field}` in conf/task/{task['name']}.yaml."
                )
            index[field] = columns.index(col)
        if not lines:
            raise DataConfigError(
                f"{path} has no data rows. Fix: replace it with the GLUE TSV file of that split."
            )
        need = max(index.values()) + 1
        skip_malformed = bool(layout.get("skip_malformed", False))
        label_ids = (
            None if task["is_regression"] else {s: i for i, s in enumerate(task["label_list"])}
        )
        out: dict[str, list] = {name: [] for name in wanted.values()}
        skipped = 0
        for lineno, line in enumerate(lines, start=first_line):
            fields = line.split("\t")
            if len(fields) < need:
                if skip_malformed:
                    skipped += 1
                    continue
                raise DataConfigError(
                    f"{path} line {lineno} has {len(fields)} tab-separated fields, but task "
                    f"'{task['name']}' needs at least {need}. Fix: repair or re-download the file "
                    "(it must be read with quoting off; a stray tab breaks the row)."
                )
            raw_label = fields[index["label"]].strip()
            if label_ids is None:
                try:
                    label: float | int = float(raw_label)
                except ValueError:
                    raise DataConfigError(
                        f"{path} line {lineno}: label '{raw_label}' is not a number, but task "
                        f"'{task['name']}' is a regression task. Fix: repair the file or use the "
                        "classic GLUE file."
                    ) from None
            else:
                if raw_label not in label_ids:
                    if skip_malformed and not raw_label:
                        skipped += 1
                        continue
                    raise DataConfigError(
                        f"{path} line {lineno}: label '{raw_label}' is not one of "
                        f"{list(label_ids)} (task '{task['name']}'). Fix: repair the file, or "
                        f"correct `label_list` in conf/task/{task['name']}.yaml."
                    )
                label = label_ids[raw_label]
            for field, name in wanted.items():
                if field != "label":
                    out[name].append(fields[index[field]])
            out["labels"].append(label)
        if skipped:
            log.warning("%s: skipped %d malformed rows", path, skipped)
        if not out["labels"]:
            raise DataConfigError(
                f"{path} has no usable rows. Fix: replace it with the GLUE TSV file of that split."
            )
        return Dataset.from_dict(out)

    def _read_hub(self) -> dict[str, Dataset]:
        task = self.task
        hint = "Fix: set GLUE_DIR=/path/to/glue_data (the classic GLUE layout) or go online."
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if os.environ.get(var, "").strip().lower() in _TRUE:
                raise DataConfigError(
                    f"task '{task['name']}' has no GLUE_DIR, so it would come from the hub "
                    f"({HUB_DATASET}, '{task['hub_config']}'), but {var}=1 turns the hub off. "
                    f"{hint}"
                )
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        host = urlparse(endpoint).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as err:
            raise DataConfigError(
                f"task '{task['name']}' has no GLUE_DIR, so it would come from the hub "
                f"({HUB_DATASET}), but {host} cannot be reached ({err}). {hint}"
            ) from err
        from datasets import load_dataset

        splits = dict(task.get("hub_splits") or {})
        keep = [task["sentence1_key"]] + (
            [task["sentence2_key"]] if task.get("sentence2_key") else []
        )
        raw = {}
        for split in ["train", *self.eval_split_names]:
            hub_split = splits.get(split, split)
            try:
                ds = load_dataset(HUB_DATASET, task["hub_config"], split=hub_split)
            except Exception as err:  # the hub raises many kinds; all mean "not available"
                raise DataConfigError(
                    f"could not load {HUB_DATASET} '{task['hub_config']}' split '{hub_split}': "
                    f"{err.__class__.__name__}: {err}. {hint}"
                ) from err
            missing = [c for c in [*keep, "label"] if c not in ds.column_names]
            if missing:
                raise DataConfigError(
                    f"{HUB_DATASET} '{task['hub_config']}' split '{hub_split}' lacks columns "
                    f"{missing} (has {ds.column_names}). Fix: correct sentence1_key/sentence2_key "
                    f"in conf/task/{task['name']}.yaml."
                )
            # Hub labels are already ids in label_list order (MNLI: entailment, neutral,
            # contradiction); float scores for STS-B.
            ds = ds.select_columns([*keep, "label"]).rename_column("label", "labels")
            raw[split] = ds
            self._sources[split] = (
                f"hub:{HUB_DATASET}:{task['hub_config']}:{hub_split}:{ds._fingerprint}"
            )
        return raw

    # ----------------------------------------------------------------- tokenizing and caching
    def _tokenizer_id(self) -> str:
        tok = self.tokenizer
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

    def _cache_path(self, split: str, limit: int | None) -> Path:
        key = json.dumps(
            {
                "v": CACHE_VERSION,
                "task": self.task["name"],
                "source": self._sources[split],
                "tokenizer": self._tokenizer_id(),
                "max_seq_length": self.max_seq_length,
                "limit": limit,
                "seed": self.seed,
                "keys": [self.task["sentence1_key"], self.task.get("sentence2_key")],
                "labels": list(self.task.get("label_list") or []),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.cache_dir / f"{self.task['name']}-{split}-{digest}"

    def _subsample(self, ds: Dataset, limit: int | None) -> Dataset:
        if limit is None or limit >= len(ds):
            return ds
        rng = np.random.default_rng(self.seed)
        idx = np.sort(rng.permutation(len(ds))[: int(limit)])
        return ds.select(idx.tolist())

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[self.task["sentence1_key"]]]
        if self.task.get("sentence2_key"):
            texts.append(batch[self.task["sentence2_key"]])
        return self.tokenizer(*texts, truncation=True, max_length=self.max_seq_length)

    def _prepared(self, split: str, limit: int | None) -> Dataset:
        """The tokenized split, from the disk cache if an identical run wrote it already."""
        path = self._cache_path(split, limit)
        if path.is_dir():
            try:
                return load_from_disk(str(path))
            except Exception:  # a half-written or foreign folder: rebuild it
                log.warning("ignoring unreadable cache %s", path)
        ds = self._subsample(self.raw_datasets[split], limit)
        ds = ds.map(
            self._tokenize,
            batched=True,
            remove_columns=[c for c in ds.column_names if c != "labels"],
            desc=f"tokenizing {self.task['name']}/{split}",
        )
        ds = ds.cast_column("labels", _label_feature(self.task))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        ds.save_to_disk(str(tmp))
        try:
            tmp.rename(path)  # atomic: a parallel job either sees the whole cache or none
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return load_from_disk(str(path)) if path.is_dir() else ds

    def setup(self, stage: str | None = None) -> None:
        """Validate, then tokenize (or load from cache) the splits `stage` needs."""
        self.validate()
        if stage in (None, "fit"):
            self._ensure_train()
        for split in self.eval_split_names:
            if split not in self.eval_datasets:
                self.eval_datasets[split] = self._prepared(split, self.eval_limit)

    def _ensure_train(self) -> Dataset:
        self.validate()
        if self.train_dataset is None:
            self.train_dataset = self._prepared("train", self.train_limit)
        return self.train_dataset

    # ----------------------------------------------------------------- loaders
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order is fixed by `seed`."""
        return self._loader(self._ensure_train(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per eval split, in `eval_split_names` order."""
        if len(self.eval_datasets) < len(self.eval_split_names):
            self.setup("validate")
        return [
            self._loader(self.eval_datasets[s], self.eval_batch_size)
            for s in self.eval_split_names
        ]

    def _fixed_subset(self, n: int) -> Dataset:
        train = self._ensure_train()
        if n <= 0:
            raise DataConfigError(
                f"a probe/calibration subset of {n} examples is empty. Fix: ask for n >= 1."
            )
        n = min(int(n), len(train))
        # A stream of its own, so the subset does not depend on train_limit's draw.
        rng = np.random.default_rng([self.seed, 1])
        return train.select(np.sort(rng.permutation(len(train))[:n]).tolist())

    def probe_dataloader(self, n: int) -> DataLoader:
        """A fixed, seeded subset of `n` training examples, in a fixed order (same every call).

        Sorted by length, so each batch pads to a length its examples share: the probe pass
        scores every example on its own, so the grouping changes no value, only the cost (on
        RTE's 512-example probe set at 128 tokens: 54% of the padded tokens of an unsorted
        order, 36% of the attention work).
        """
        subset = self._fixed_subset(n)
        lengths = [len(ids) for ids in subset["input_ids"]]
        order = np.argsort(np.asarray(lengths), kind="stable").tolist()
        return self._loader(subset.select(order), self.eval_batch_size)

    def calibration_batches(self, n: int, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Collated batches covering a fixed, seeded subset of `n` training examples."""
        return list(self._loader(self._fixed_subset(n), batch_size or self.eval_batch_size))


def _label_feature(task: Mapping[str, Any]) -> Any:
    from datasets import Value

    return Value("float32") if task["is_regression"] else Value("int64")
