"""The hub path, offline: a local folder in the `nyu-mll/glue` repository's own layout.

Each test writes small GLUE-layout TSVs, converts them into `<root>/<config>/<split>-*.parquet`
with the hub's column names, split names and label encoding (`glue_layout.write_hub_task`), and
reads them through the same code a user with the hub runs (`data.hub_dataset=<folder>`).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf, open_dict

from conftest import compose_config
from glue_layout import write_glue_task, write_hub_task
from infodyn.builders import build_datamodule
from infodyn.data import DataConfigError, GlueDataModule
from infodyn.models import char_tokenizer

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"
TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]


def task_cfg(name: str, **changes):
    cfg = OmegaConf.load(TASK_DIR / f"{name}.yaml")
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No GLUE_DIR, the hub switched off and the network refused: only the folder can answer."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a local hub folder must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)


def hub_folder(tmp_path: Path, task: str, n_train: int = 12, n_dev: int = 6) -> Path:
    write_glue_task(tmp_path / "glue", task, n_train=n_train, n_dev=n_dev)
    write_hub_task(tmp_path / "glue", tmp_path / "hub", task)
    return tmp_path / "hub"


def hub_dm(task, hub, tmp_path, tokenizer, **kw):
    cfg = task if not isinstance(task, str) else task_cfg(task)
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return GlueDataModule(cfg, tokenizer, hub_dataset=str(hub), **kw)


@pytest.mark.parametrize("task", TASKS)
def test_hub_folder_gives_the_rows_of_the_tsv_files(task, tmp_path, tokenizer):
    hub = hub_folder(tmp_path, task)
    assert (hub / task / "train-00000-of-00001.parquet").is_file()
    from_tsv = GlueDataModule(
        task_cfg(task), tokenizer, glue_dir=str(tmp_path / "glue"), cache_dir=str(tmp_path / "c1")
    )
    from_tsv.setup("fit")
    dm = hub_dm(task, hub, tmp_path, tokenizer, batch_size=4)
    assert dm.source == "hub"
    dm.setup("fit")

    assert dm.eval_split_names == from_tsv.eval_split_names
    for split in ["train", *dm.eval_split_names]:
        assert dm.raw_datasets[split].to_dict() == from_tsv.raw_datasets[split].to_dict()
    assert dm.train_dataset["input_ids"] == from_tsv.train_dataset["input_ids"]
    for split in dm.eval_split_names:
        assert dm.eval_datasets[split]["labels"] == from_tsv.eval_datasets[split]["labels"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == next(iter(from_tsv.train_dataloader()))["labels"].dtype
    assert len(dm.val_dataloader()) == len(dm.eval_split_names)


def test_build_datamodule_reads_data_hub_dataset(tmp_path, tokenizer):
    hub = hub_folder(tmp_path, "mnli")
    cfg = compose_config(["task=mnli", f"data.hub_dataset={hub}", "paths.glue_dir=null"])
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path / "cache")
    assert compose_config().data.hub_dataset == "nyu-mll/glue"
    dm = build_datamodule(cfg, tokenizer, None)
    dm.validate()
    assert dm.hub_dataset == str(hub)
    assert dm.eval_split_names == ["validation_matched", "validation_mismatched"]
    premises = [dm.raw_datasets[s]["premise"][0] for s in dm.eval_split_names]
    assert premises == [
        "mnli validation_matched row 0 part 1",
        "mnli validation_mismatched row 0 part 1",
    ]


def test_mnli_matched_only_by_choosing_the_eval_splits(tmp_path, tokenizer):
    hub = hub_folder(tmp_path, "mnli")
    (hub / "mnli" / "validation_mismatched-00000-of-00001.parquet").unlink()
    with pytest.raises(DataConfigError) as err:
        hub_dm("mnli", hub, tmp_path, tokenizer).validate()
    text = str(err.value)
    assert "validation_mismatched-*.parquet" in text and str(hub / "mnli") in text
    assert "'task.eval_splits=[validation_matched]'" in text

    dm = hub_dm(task_cfg("mnli", eval_splits=["validation_matched"]), hub, tmp_path, tokenizer)
    dm.setup("fit")
    assert dm.eval_split_names == ["validation_matched"]
    assert len(dm.val_dataloader()) == 1


def test_a_test_split_is_refused_as_unlabelled(tmp_path, tokenizer):
    hub = hub_folder(tmp_path, "rte")
    task = task_cfg("rte", **{"hub_splits.validation": "test"})
    with pytest.raises(DataConfigError, match=r"split 'test' has no labels \(all -1"):
        hub_dm(task, hub, tmp_path, tokenizer).validate()


def test_missing_config_and_missing_folder_are_named(tmp_path, tokenizer):
    hub = hub_folder(tmp_path, "rte")
    with pytest.raises(DataConfigError, match=r"has no folder 'mrpc'.*\['rte'\]"):
        hub_dm("mrpc", hub, tmp_path, tokenizer).validate()
    with pytest.raises(
        DataConfigError, match=r"data.hub_dataset=.*nowhere \(.*nowhere\) is not a folder"
    ):
        hub_dm("rte", tmp_path / "nowhere", tmp_path, tokenizer).validate()


def _rewrite(path: Path, column: str, index: int, value) -> None:
    table = pq.read_table(path).to_pydict()
    table[column][index] = value
    pq.write_table(pa.table(table), path)


@pytest.mark.parametrize(
    ("task", "value", "words"),
    [
        ("stsb", float("nan"), "label 'nan' is not a finite score in [0.0, 5.0]"),
        ("stsb", 7.5, "label '7.5' is not a finite score in [0.0, 5.0]"),
        ("rte", 2, "label 2 is not a class id in [0, 2)"),
        ("rte", -1, "label -1 is not a class id in [0, 2)"),
    ],
)
def test_bad_hub_labels_name_split_and_row(task, value, words, tmp_path, tokenizer):
    hub = hub_folder(tmp_path, task)
    _rewrite(hub / task / "train-00000-of-00001.parquet", "label", 3, value)
    with pytest.raises(DataConfigError) as err:
        hub_dm(task, hub, tmp_path, tokenizer).validate()
    assert f"{hub / task} split 'train' row 3" in str(err.value)
    assert words in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("blank", ["  ", "", None])
def test_blank_hub_sentences_are_dropped_with_a_count(blank, tmp_path, tokenizer, caplog):
    hub = hub_folder(tmp_path, "mrpc")
    _rewrite(hub / "mrpc" / "train-00000-of-00001.parquet", "sentence2", 4, blank)
    with caplog.at_level(logging.WARNING, logger="infodyn.data"):
        dm = hub_dm("mrpc", hub, tmp_path, tokenizer)
        dm.validate()
    assert len(dm.raw_datasets["train"]) == 11
    assert "row 4" not in " ".join(dm.raw_datasets["train"]["sentence1"])
    assert "dropped 1 row(s) with an empty sentence (row 4)" in caplog.text
