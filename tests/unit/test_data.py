"""GlueDataModule on small files written in each task's exact GLUE layout (no hub, no network)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from glue_layout import QUOTE_ROW, split_files, write_glue_task
from infodyn.data import DataConfigError, GlueDataModule
from infodyn.models import char_tokenizer

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"
TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]


def task_cfg(name: str):
    return OmegaConf.load(TASK_DIR / f"{name}.yaml")


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def make_dm(task, glue_dir, tmp_path, tokenizer, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return GlueDataModule(task_cfg(task), tokenizer, glue_dir=str(glue_dir), **kw)


@pytest.mark.parametrize("task", TASKS)
def test_loads_every_task_in_its_glue_layout(task, tmp_path, tokenizer):
    written = write_glue_task(tmp_path / "glue", task, n_train=12, n_dev=6)
    dm = make_dm(task, tmp_path / "glue", tmp_path, tokenizer, batch_size=4)
    dm.setup("fit")
    cfg = task_cfg(task)

    expected_splits = [s for s in split_files(task) if s != "train"]
    assert dm.eval_split_names == expected_splits
    assert len(dm.val_dataloader()) == len(expected_splits)
    for split, rows in written.items():
        raw = dm.raw_datasets[split]
        assert len(raw) == len(rows["labels"])  # quote chars did not merge rows
        assert raw["labels"] == pytest.approx(rows["labels"])
        assert raw[cfg.sentence1_key] == rows["sentence1"]
        assert '"' in raw[cfg.sentence1_key][QUOTE_ROW]
        if cfg.sentence2_key:
            assert raw[cfg.sentence2_key] == rows["sentence2"]
        assert not any("\ufeff" in s for s in raw[cfg.sentence1_key])  # MRPC's BOM is gone
    assert len(dm.train_dataset) == 12
    assert [len(dm.eval_datasets[s]) for s in expected_splits] == [6] * len(expected_splits)

    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "labels"} <= set(batch)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4
    expected_dtype = torch.float32 if cfg.is_regression else torch.long
    assert batch["labels"].dtype == expected_dtype


def test_mnli_labels_and_both_dev_sets(tmp_path, tokenizer):
    write_glue_task(tmp_path / "glue", "mnli", n_train=9, n_dev=5)
    dm = make_dm("mnli", tmp_path / "glue", tmp_path, tokenizer)
    dm.setup("fit")
    # entailment, neutral, contradiction -> 0, 1, 2 in file order (the hub's ids).
    assert dm.raw_datasets["train"]["labels"] == [0, 1, 2] * 3
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    texts = [dm.raw_datasets[s]["premise"][0] for s in dm.eval_split_names]
    assert texts == [
        "mnli validation_matched row 0 part 1",
        "mnli validation_mismatched row 0 part 1",
    ]
    assert [sum(len(b["labels"]) for b in loader) for loader in loaders] == [5, 5]


def test_truncation_and_dynamic_padding(tmp_path, tokenizer):
    write_glue_task(tmp_path / "glue", "rte", n_train=8, n_dev=4)
    dm = make_dm("rte", tmp_path / "glue", tmp_path, tokenizer, max_seq_length=16, batch_size=8)
    dm.setup("fit")
    lengths = [len(ids) for ids in dm.train_dataset["input_ids"]]
    assert max(lengths) == 16  # the sentences are longer than 16 characters
    dm_short = make_dm("cola", tmp_path / "glue2", tmp_path, tokenizer, batch_size=3)
    write_glue_task(tmp_path / "glue2", "cola", n_train=6, n_dev=3)
    dm_short.setup("fit")
    batch = next(iter(dm_short.val_dataloader()[0]))
    longest = max(len(ids) for ids in dm_short.eval_datasets["validation"]["input_ids"][:3])
    assert batch["input_ids"].shape[1] == longest < 128  # padded to the batch, not to 128
    assert int(batch["attention_mask"].sum()) == sum(
        len(ids) for ids in dm_short.eval_datasets["validation"]["input_ids"][:3]
    )


def test_glue_dir_from_env(tmp_path, tokenizer, monkeypatch):
    write_glue_task(tmp_path / "glue", "sst2", n_train=5, n_dev=2)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    dm = GlueDataModule(task_cfg("sst2"), tokenizer, cache_dir=str(tmp_path / "cache"))
    assert dm.source == "glue_dir"
    dm.validate()
    assert len(dm.raw_datasets["train"]) == 5


# ------------------------------------------------------------------ bad inputs


def _replace_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = new
    path.write_text("\n".join(lines), encoding="utf-8")


def _bad_folder(root: Path) -> tuple[str, str]:
    (root / "RTE" / "train.tsv").unlink()
    (root / "RTE" / "dev.tsv").unlink()
    (root / "RTE").rmdir()
    return str(root / "RTE"), "does not exist"


def _bad_missing_file(root: Path) -> tuple[str, str]:
    (root / "RTE" / "dev.tsv").unlink()
    return str(root / "RTE" / "dev.tsv"), "does not exist"


def _bad_column(root: Path) -> tuple[str, str]:
    _replace_line(root / "RTE" / "train.tsv", 1, "index\tpremise\tsentence2\tlabel")
    return str(root / "RTE" / "train.tsv"), "no column 'sentence1'"


def _bad_label(root: Path) -> tuple[str, str]:
    _replace_line(root / "RTE" / "dev.tsv", 3, "1\tA cat.\tAn animal.\tmaybe")
    return str(root / "RTE" / "dev.tsv"), "line 3: label 'maybe'"


def _bad_empty(root: Path) -> tuple[str, str]:
    (root / "RTE" / "dev.tsv").write_bytes(b"")
    return str(root / "RTE" / "dev.tsv"), "empty"


def _bad_header_only(root: Path) -> tuple[str, str]:
    (root / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    return str(root / "RTE" / "train.tsv"), "no data rows"


def _bad_directory(root: Path) -> tuple[str, str]:
    (root / "RTE" / "dev.tsv").unlink()
    (root / "RTE" / "dev.tsv").mkdir()
    return str(root / "RTE" / "dev.tsv"), "is a directory"


def _bad_binary(root: Path) -> tuple[str, str]:
    (root / "RTE" / "train.tsv").write_bytes(bytes(range(256)) * 8)
    return str(root / "RTE" / "train.tsv"), "binary"


def _bad_encoding(root: Path) -> tuple[str, str]:
    (root / "RTE" / "train.tsv").write_bytes(b"index\tsentence1\n" + b"\xff\xfe\xa0\n")
    return str(root / "RTE" / "train.tsv"), "not UTF-8"


def _bad_short_row(root: Path) -> tuple[str, str]:
    _replace_line(root / "RTE" / "train.tsv", 4, "2\tonly one sentence")
    return str(root / "RTE" / "train.tsv"), "line 4 has 2 tab-separated fields"


@pytest.mark.parametrize(
    "breaker",
    [
        _bad_folder,
        _bad_missing_file,
        _bad_column,
        _bad_label,
        _bad_empty,
        _bad_header_only,
        _bad_directory,
        _bad_binary,
        _bad_encoding,
        _bad_short_row,
    ],
)
def test_bad_inputs_name_the_file(breaker, tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "rte", n_train=6, n_dev=4)
    named, what = breaker(root)
    dm = make_dm("rte", root, tmp_path, tokenizer)
    with pytest.raises(DataConfigError) as err:
        dm.setup("fit")
    assert named in str(err.value)
    assert what in str(err.value)
    assert "Fix:" in str(err.value)


def test_bad_stsb_score(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "stsb", n_train=4, n_dev=2)
    fields = ["0", "g", "f", "y", "0", "none", "none", "a", "b", "high"]
    _replace_line(root / "STS-B" / "train.tsv", 2, "\t".join(fields))
    with pytest.raises(DataConfigError, match="line 2: label 'high' is not a number"):
        make_dm("stsb", root, tmp_path, tokenizer).validate()


def test_max_seq_length_over_model_limit(tmp_path, tokenizer):
    write_glue_task(tmp_path / "glue", "rte", n_train=4, n_dev=2)
    dm = make_dm("rte", tmp_path / "glue", tmp_path, tokenizer, max_seq_length=1024)
    with pytest.raises(DataConfigError, match=r"max_seq_length=1024.*model_max_length=512"):
        dm.validate()
    dm = make_dm(
        "rte", tmp_path / "glue", tmp_path, tokenizer, max_seq_length=256, model_max_length=128
    )
    with pytest.raises(DataConfigError, match="data.max_seq_length=128 or less"):
        dm.validate()


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_hub_fails_at_once(var, tmp_path, tokenizer, monkeypatch):
    for name in ("GLUE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("must not touch the network when offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    # Offline, the client answers from its local cache: point it at an empty one.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    dm = GlueDataModule(task_cfg("rte"), tokenizer, cache_dir=str(tmp_path / "cache"))
    assert dm.source == "hub"
    with pytest.raises(DataConfigError, match=f"{var}=1.*local Hugging Face cache.*GLUE_DIR="):
        dm.setup("fit")


def test_unreachable_hub_fails_at_once(tmp_path, tokenizer, monkeypatch):
    for var in ("GLUE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    dm = GlueDataModule(task_cfg("mnli"), tokenizer, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataConfigError, match="cannot be reached.*GLUE_DIR=/path/to/glue_data"):
        dm.validate()


# ------------------------------------------------------------------ caching and subsets


def test_second_setup_reuses_the_tokenized_cache(tmp_path, tokenizer, monkeypatch):
    root = tmp_path / "glue"
    write_glue_task(root, "mrpc", n_train=10, n_dev=4)
    calls = []
    original = GlueDataModule._tokenize

    def counting(self, batch):
        calls.append(len(next(iter(batch.values()))))
        return original(self, batch)

    monkeypatch.setattr(GlueDataModule, "_tokenize", counting)
    first = make_dm("mrpc", root, tmp_path, tokenizer)
    first.setup("fit")
    assert sum(calls) == 14  # train + dev rows tokenized once
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2

    calls.clear()
    second = make_dm("mrpc", root, tmp_path, tokenizer)
    second.setup("fit")
    assert calls == []
    assert second.train_dataset["input_ids"] == first.train_dataset["input_ids"]
    assert (
        second.eval_datasets["validation"]["labels"] == first.eval_datasets["validation"]["labels"]
    )

    # Anything that changes the rows gets a cache of its own.
    make_dm("mrpc", root, tmp_path, tokenizer, max_seq_length=32).setup("fit")
    assert sum(calls) == 14
    calls.clear()
    path = root / "MRPC" / "dev.tsv"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    make_dm("mrpc", root, tmp_path, tokenizer).setup("fit")
    assert sum(calls) == 4  # only the edited split


def test_train_limit_is_deterministic_per_seed(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "sst2", n_train=40, n_dev=4)

    def rows(seed, cache):
        dm = make_dm("sst2", root, tmp_path / cache, tokenizer, train_limit=10, seed=seed)
        dm.setup("fit")
        return dm.train_dataset["input_ids"]

    a, b, c = rows(0, "a"), rows(0, "b"), rows(1, "c")
    assert len(a) == 10
    assert a == b  # separate caches: the draw itself is deterministic
    assert a != c


def test_probe_and_calibration_are_fixed(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "qnli", n_train=30, n_dev=4)
    dm = make_dm("qnli", root, tmp_path, tokenizer, eval_batch_size=4, seed=3)
    dm.setup("fit")

    def ids(loader):
        return [b["input_ids"].tolist() for b in loader]

    probe = ids(dm.probe_dataloader(10))
    assert probe == ids(dm.probe_dataloader(10))
    assert sum(len(b) for b in probe) == 10
    # sorted by length: each batch's real lengths never drop below the previous batch's
    masks = [b["attention_mask"].sum(dim=1).tolist() for b in dm.probe_dataloader(10)]
    flat = [n for m in masks for n in m]
    assert flat == sorted(flat) and len(set(flat)) > 1
    batches = dm.calibration_batches(9)
    assert [len(b["labels"]) for b in batches] == [4, 4, 1]
    assert [b["input_ids"].tolist() for b in batches] == [
        b["input_ids"].tolist() for b in dm.calibration_batches(9)
    ]
    assert set(batches[0]) >= {"input_ids", "attention_mask", "labels"}

    def first_batch(dm):
        return next(iter(dm.train_dataloader()))["input_ids"].tolist()

    assert first_batch(dm) == first_batch(dm)  # seeded shuffle
