"""`GlueDataModule`: one GLUE task's splits, loaders and fixed probe/calibration subsets.

Where the rows come from, first match wins: the `glue_dir` argument (config `paths.glue_dir`),
the `GLUE_DIR` environment variable (both the classic `glue_data/` TSV layout, read by
`infodyn.data.formats`), else `hub_dataset` (config `data.hub_dataset`: a hub id or a local copy
in the hub's layout, read by `infodyn.data.hub`). `validate()` reads and checks every row before
any training; `setup()` tokenizes once per distinct input (cached by `infodyn.data.cache`) and
each batch is padded dynamically.

The evaluation splits are the task's `eval_splits` (config `task.eval_splits`, e.g.
`'task.eval_splits=[validation_matched]'` for MNLI with only the matched dev file), or all of its
`eval_files` when that is null. The first one is the split the main metric is read on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from infodyn.data.cache import cache_path, load_cached, save_cached, tokenizer_id
from infodyn.data.formats import DataConfigError, fix_hint, label_feature, read_tsv, sentence_keys
from infodyn.data.hub import HUB_DATASET, read_hub
from infodyn.io import remove_orphaned_temporaries

log = logging.getLogger(__name__)


def eval_split_names(task: Mapping[str, Any]) -> list[str]:
    """The task's chosen evaluation splits (`eval_splits`), else all of its `eval_files`."""
    chosen = task.get("eval_splits")
    return list(task["eval_files"]) if chosen is None else [str(s) for s in chosen]


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
        hub_dataset: the hub dataset id, or a local folder in the hub's layout, used when there
            is no GLUE folder.
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
        hub_dataset: str = HUB_DATASET,
    ) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        where = glue_dir or os.environ.get("GLUE_DIR") or None
        self.glue_dir = Path(where).expanduser() if where else None
        self.hub_dataset = str(hub_dataset or HUB_DATASET)
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
        self.eval_split_names: list[str] = eval_split_names(task)
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

        Cheap enough to call before training: it reads the files but tokenizes nothing. Once per
        datamodule it also clears what a killed tokenization left half-written in the cache.
        """
        if self._validated:
            return
        remove_orphaned_temporaries(self.cache_dir)
        self._check_lengths()
        self._check_eval_splits()
        if self.glue_dir is not None:
            if self.hub_dataset != HUB_DATASET:
                log.warning(
                    "data.hub_dataset=%s is not used: GLUE_DIR/paths.glue_dir=%s comes first "
                    "(unset it to read the hub copy)",
                    self.hub_dataset,
                    self.glue_dir,
                )
            self.raw_datasets = self._read_glue_dir()
        else:
            splits = ["train", *self.eval_split_names]
            read = read_hub(self.task, self.hub_dataset, splits, self.cache_dir / "parquet")
            self.raw_datasets = {s: ds for s, (ds, _) in read.items()}
            self._sources = {s: src for s, (_, src) in read.items()}
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

    def _check_eval_splits(self) -> None:
        known = list(self.task["eval_files"])
        names = self.eval_split_names
        unknown = [s for s in names if s not in known]
        if not names or unknown or len(set(names)) != len(names):
            problem = f"names {unknown}, which it does not have" if unknown else "is empty"
            if names and not unknown:
                problem = "repeats a split"
            raise DataConfigError(
                f"task.eval_splits={names} {problem} (task '{self.task['name']}'). Fix: choose "
                f"one or more of {known}, e.g. 'task.eval_splits=[{known[0]}]', or set "
                "task.eval_splits=null to evaluate on all of them."
            )

    def _read_glue_dir(self) -> dict[str, Dataset]:
        assert self.glue_dir is not None
        task = self.task
        if not self.glue_dir.is_dir():
            raise DataConfigError(f"GLUE_DIR={self.glue_dir} is not a folder. {fix_hint(task)}")
        folder = self.glue_dir / task["glue_dir_name"]
        if not folder.is_dir():
            raise DataConfigError(
                f"task '{task['name']}' expects the folder {folder}, which does not exist "
                f"(GLUE_DIR={self.glue_dir}). {fix_hint(task)}"
            )
        files = {"train": task["train_file"]}
        files.update({s: task["eval_files"][s] for s in self.eval_split_names})
        for split, name in files.items():
            if split != "train" and not (folder / name).exists():
                raise self._missing_eval_file(folder, split)
        raw = {}
        for split, name in files.items():
            path = folder / name
            raw[split] = read_tsv(path, task)
            st = path.stat()
            self._sources[split] = f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}"
        return raw

    def _missing_eval_file(self, folder: Path, split: str) -> DataConfigError:
        task = self.task
        path = folder / task["eval_files"][split]
        present = [
            s
            for s in self.eval_split_names
            if s != split and (folder / task["eval_files"][s]).exists()
        ]
        if present:
            fix = (
                f"Fix: evaluate only on the splits whose files are there with "
                f"'task.eval_splits=[{','.join(present)}]' (e.g. python -m infodyn "
                f"task={task['name']} 'task.eval_splits=[{','.join(present)}]'), or put "
                f"{path.name} into {folder}."
            )
        else:
            fix = fix_hint(task)
        return DataConfigError(
            f"task '{task['name']}' needs the file {path} for its eval split '{split}', which "
            f"does not exist. {fix}"
        )

    # ----------------------------------------------------------------- tokenizing and caching
    def _cache_path(self, split: str, limit: int | None) -> Path:
        return cache_path(
            self.cache_dir,
            self.task,
            split,
            source=self._sources[split],
            tokenizer=tokenizer_id(self.tokenizer),
            max_seq_length=self.max_seq_length,
            limit=limit,
            seed=self.seed,
        )

    def _subsample(self, ds: Dataset, limit: int | None) -> Dataset:
        if limit is None or limit >= len(ds):
            return ds
        rng = np.random.default_rng(self.seed)
        idx = np.sort(rng.permutation(len(ds))[: int(limit)])
        return ds.select(idx.tolist())

    def eval_labels(self, split: str | None = None) -> list:
        """The labels of an eval split (default: the main one) exactly as evaluated - the same
        seeded `eval_limit` subset - read without tokenizing, so the tokenizer may be None."""
        self.validate()
        split = split or self.eval_split_names[0]
        return list(self._subsample(self.raw_datasets[split], self.eval_limit)["labels"])

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[k] for k in sentence_keys(self.task)]
        return self.tokenizer(*texts, truncation=True, max_length=self.max_seq_length)

    def _prepared(self, split: str, limit: int | None) -> Dataset:
        """The tokenized split, from the disk cache if an identical run wrote it already."""
        path = self._cache_path(split, limit)
        cached = load_cached(path)
        if cached is not None:
            return cached
        ds = self._subsample(self.raw_datasets[split], limit)
        ds = ds.map(
            self._tokenize,
            batched=True,
            remove_columns=[c for c in ds.column_names if c != "labels"],
            desc=f"tokenizing {self.task['name']}/{split}",
        )
        ds = ds.cast_column("labels", label_feature(self.task))
        return save_cached(path, ds)

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
        scores every example on its own, so the grouping changes no value, only the padding.
        """
        subset = self._fixed_subset(n)
        lengths = [len(ids) for ids in subset["input_ids"]]
        order = np.argsort(np.asarray(lengths), kind="stable").tolist()
        return self._loader(subset.select(order), self.eval_batch_size)

    def calibration_batches(self, n: int, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Collated batches covering a fixed, seeded subset of `n` training examples."""
        return list(self._loader(self._fixed_subset(n), batch_size or self.eval_batch_size))
