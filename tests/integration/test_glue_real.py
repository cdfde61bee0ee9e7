"""The five real GLUE tasks from $GLUE_DIR (e.g. GLUE_DIR=../shared/data/glue); skipped without it.

Reads every row of every file (the quoting and layout checks), but tokenizes only a subset so
that SST-2's 67k training rows keep the test well under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from infodyn.data import GlueDataModule
from infodyn.models import char_tokenizer

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"
GLUE_DIR = os.environ.get("GLUE_DIR")

pytestmark = pytest.mark.skipif(
    not GLUE_DIR, reason="set GLUE_DIR to the classic glue_data folder"
)

# task -> (train rows, dev rows, label set)
EXPECTED = {
    "cola": (8551, 1043, {0, 1}),
    "sst2": (67349, 872, {0, 1}),
    "mrpc": (3668, 408, {0, 1}),
    "stsb": (5749, 1500, None),
    "rte": (2490, 277, {0, 1}),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_real_task_rows_and_labels(task, tmp_path):
    n_train, n_dev, labels = EXPECTED[task]
    cfg = OmegaConf.load(TASK_DIR / f"{task}.yaml")
    dm = GlueDataModule(
        cfg,
        char_tokenizer(),
        glue_dir=GLUE_DIR,
        train_limit=256,
        eval_limit=256,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.validate()
    raw = dm.raw_datasets
    assert (len(raw["train"]), len(raw["validation"])) == (n_train, n_dev)
    for split in ("train", "validation"):
        values = raw[split]["labels"]
        if labels is None:
            assert 0.0 <= min(values) and max(values) <= 5.0
            assert len(set(values)) > 50  # real scores, not a parse of a constant column
        else:
            assert set(values) == labels
        texts = raw[split][cfg.sentence1_key]
        assert all(texts) and not any("\t" in t or "\ufeff" in t for t in texts)

    dm.setup("fit")
    assert len(dm.train_dataset) == 256
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["input_ids"].shape[0] == 64
    assert batch["input_ids"].shape[1] <= 128


@pytest.mark.parametrize("task", ["mrpc", "stsb", "rte"])
def test_real_task_through_a_hub_layout_copy(task, tmp_path, monkeypatch):
    """The real files converted to the hub repository's layout read back row for row."""
    from glue_layout import write_hub_task

    monkeypatch.delenv("GLUE_DIR", raising=False)
    write_hub_task(GLUE_DIR, tmp_path / "hub", task)
    cfg = OmegaConf.load(TASK_DIR / f"{task}.yaml")
    tok = char_tokenizer()
    from_tsv = GlueDataModule(cfg, tok, glue_dir=GLUE_DIR, cache_dir=str(tmp_path / "a"))
    from_hub = GlueDataModule(
        cfg, tok, hub_dataset=str(tmp_path / "hub"), cache_dir=str(tmp_path / "b")
    )
    from_tsv.validate()
    from_hub.validate()
    assert from_hub.source == "hub"
    for split in ("train", "validation"):
        assert from_hub.raw_datasets[split].to_dict() == from_tsv.raw_datasets[split].to_dict()
    assert len(from_hub.raw_datasets["validation"]) == EXPECTED[task][1]
