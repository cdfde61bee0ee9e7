"""Data integrity: bad rows are errors naming file and line, blank rows a counted policy, and a
corrupt tokenized cache is detected and rebuilt (issue 13, class 5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from glue_layout import write_glue_task
from infodyn.data import DataConfigError, GlueDataModule
from infodyn.data.cache import MANIFEST
from infodyn.models import char_tokenizer

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"


def task_cfg(name: str, **changes):
    cfg = OmegaConf.load(TASK_DIR / f"{name}.yaml")
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def make_dm(task, root, tmp_path, tokenizer, **kw):
    cfg = task_cfg(task) if isinstance(task, str) else task
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return GlueDataModule(cfg, tokenizer, glue_dir=str(root), **kw)


def edit_line(path: Path, lineno: int, edit) -> None:
    """Replace line `lineno` (1-based, counting the header) by `edit(fields)` joined by tabs."""
    text = path.read_text(encoding="utf-8-sig")
    bom = "\ufeff" if path.read_bytes().startswith(b"\xef\xbb\xbf") else ""
    lines = text.split("\n")
    lines[lineno - 1] = "\t".join(edit(lines[lineno - 1].split("\t")))
    path.write_text(bom + "\n".join(lines), encoding="utf-8")


# ------------------------------------------------------------------ field counts


def test_mrpc_stray_tab_is_an_error_naming_file_and_line(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "mrpc", n_train=8, n_dev=4)
    path = root / "MRPC" / "train.tsv"
    # A tab inside sentence 1: the old reader took its tail as sentence 2.
    edit_line(path, 5, lambda f: [*f[:3], "He said\tthat", *f[4:]])
    with pytest.raises(DataConfigError) as err:
        make_dm("mrpc", root, tmp_path, tokenizer).validate()
    text = str(err.value)
    assert f"{path} line 5 has 6 tab-separated fields, but its header has 5" in text
    assert "#1 String" in text and "Fix: remove the stray tab" in text
    assert "task.tsv.skip_malformed=true" in text


@pytest.mark.parametrize("task", ["cola", "sst2", "stsb", "qnli", "mnli"])
def test_an_extra_field_is_an_error_in_every_layout(task, tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, task, n_train=6, n_dev=3)
    folder = next(root.iterdir())
    # CoLA has no header: its third row is line 3; the others' is line 4.
    lineno = 3 if task == "cola" else 4
    edit_line(folder / "train.tsv", lineno, lambda f: [*f, "extra"])
    with pytest.raises(DataConfigError, match=f"train.tsv line {lineno} has .* fields"):
        make_dm(task, root, tmp_path, tokenizer).validate()


def test_skip_malformed_counts_what_it_skips(tmp_path, tokenizer, caplog):
    root = tmp_path / "glue"
    write_glue_task(root, "qqp", n_train=10, n_dev=4)
    path = root / "QQP" / "train.tsv"
    edit_line(path, 3, lambda f: [*f[:4], "stray", *f[4:]])
    edit_line(path, 6, lambda f: f[:3])
    with caplog.at_level(logging.WARNING, logger="infodyn.data"):
        dm = make_dm("qqp", root, tmp_path, tokenizer)
        dm.validate()
    assert len(dm.raw_datasets["train"]) == 8
    assert f"{path}: skipped 2 malformed row(s)" in caplog.text


# ------------------------------------------------------------------ labels


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "5.5", "-0.1", "high", ""])
def test_stsb_scores_must_be_finite_and_in_range(score, tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "stsb", n_train=6, n_dev=3)
    path = root / "STS-B" / "dev.tsv"
    edit_line(path, 3, lambda f: [*f[:-1], score])
    with pytest.raises(DataConfigError) as err:
        make_dm("stsb", root, tmp_path, tokenizer).validate()
    text = str(err.value)
    assert f"{path} line 3: label '{score}' is not a" in text and "Fix:" in text


def test_stsb_range_edges_are_accepted(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "stsb", n_train=6, n_dev=3)
    edit_line(root / "STS-B" / "train.tsv", 2, lambda f: [*f[:-1], "0.000"])
    edit_line(root / "STS-B" / "train.tsv", 3, lambda f: [*f[:-1], "5.000"])
    dm = make_dm("stsb", root, tmp_path, tokenizer)
    dm.validate()
    assert dm.raw_datasets["train"]["labels"][:2] == [0.0, 5.0]


def test_unparsable_class_label_names_file_and_line(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "mnli", n_train=6, n_dev=3)
    path = root / "MNLI" / "dev_matched.tsv"
    edit_line(path, 2, lambda f: [*f[:-1], "-"])
    with pytest.raises(DataConfigError, match=f"{path} line 2: label '-' is not one of"):
        make_dm("mnli", root, tmp_path, tokenizer).validate()


# ------------------------------------------------------------------ empty sentences


def test_rows_with_an_empty_sentence_are_dropped_and_counted(tmp_path, tokenizer, caplog):
    root = tmp_path / "glue"
    written = write_glue_task(root, "rte", n_train=10, n_dev=4)
    path = root / "RTE" / "train.tsv"
    edit_line(path, 3, lambda f: [f[0], f[1], "", f[3]])
    edit_line(path, 7, lambda f: [f[0], "   ", f[2], f[3]])
    with caplog.at_level(logging.WARNING, logger="infodyn.data"):
        dm = make_dm("rte", root, tmp_path, tokenizer)
        dm.setup("fit")
    kept = [s for i, s in enumerate(written["train"]["sentence1"]) if i not in (1, 5)]
    assert dm.raw_datasets["train"]["sentence1"] == kept
    assert len(dm.train_dataset) == 8
    assert f"{path}: dropped 2 row(s) with an empty sentence (line 3, line 7)" in caplog.text


def test_a_file_of_only_empty_sentences_is_an_error(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "sst2", n_train=3, n_dev=2)
    path = root / "SST-2" / "dev.tsv"
    path.write_text("sentence\tlabel\n \t0\n\t1\n", encoding="utf-8")
    with pytest.raises(DataConfigError, match=f"{path} has no usable rows"):
        make_dm("sst2", root, tmp_path, tokenizer).validate()


# ------------------------------------------------------------------ eval splits


def test_mnli_without_the_mismatched_file_says_how_to_run(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "mnli", n_train=6, n_dev=3)
    (root / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataConfigError) as err:
        make_dm("mnli", root, tmp_path, tokenizer).validate()
    text = str(err.value)
    assert str(root / "MNLI" / "dev_mismatched.tsv") in text and "does not exist" in text
    assert "'task.eval_splits=[validation_matched]'" in text

    task = task_cfg("mnli", eval_splits=["validation_matched"])
    dm = make_dm(task, root, tmp_path, tokenizer)
    dm.setup("fit")
    assert dm.eval_split_names == ["validation_matched"] and len(dm.val_dataloader()) == 1


@pytest.mark.parametrize(
    ("splits", "words"),
    [(["validation_mm"], "names ['validation_mm']"), ([], "is empty"), (["dev", "dev"], "dev")],
)
def test_unknown_eval_splits_are_named(splits, words, tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "mnli", n_train=4, n_dev=2)
    with pytest.raises(DataConfigError) as err:
        make_dm(task_cfg("mnli", eval_splits=splits), root, tmp_path, tokenizer).validate()
    text = str(err.value)
    assert words in text and "['validation_matched', 'validation_mismatched']" in text


def test_eval_splits_choose_the_order(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "mnli", n_train=4, n_dev=2)
    task = task_cfg("mnli", eval_splits=["validation_mismatched", "validation_matched"])
    dm = make_dm(task, root, tmp_path, tokenizer)
    dm.setup("validate")
    first = next(iter(dm.val_dataloader()[0]))
    assert dm.eval_split_names[0] == "validation_mismatched"
    assert len(first["labels"]) == 2


# ------------------------------------------------------------------ the tokenized cache


def _arrow(cache: Path) -> Path:
    (train,) = [p for p in cache.iterdir() if p.name.startswith("rte-train-")]
    (arrow,) = train.glob("*.arrow")
    return arrow


def _truncate(arrow: Path) -> None:
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) // 2])


def _flip_byte(arrow: Path) -> None:
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrow.write_bytes(bytes(data))


def _drop_manifest(arrow: Path) -> None:
    (arrow.parent / MANIFEST).unlink()


def _wrong_row_count(arrow: Path) -> None:
    path = arrow.parent / MANIFEST
    record = json.loads(path.read_text())
    record["rows"] += 1
    path.write_text(json.dumps(record))


def _delete_arrow(arrow: Path) -> None:
    arrow.unlink()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "bytes, the record says"),
        (_flip_byte, "does not match its recorded SHA-256"),
        (_drop_manifest, f"no valid {MANIFEST}"),
        (_wrong_row_count, "rows, the record says"),
        (_delete_arrow, "is missing"),
    ],
)
def test_a_corrupt_cache_is_rebuilt_with_one_warning(damage, why, tmp_path, tokenizer, caplog):
    root = tmp_path / "glue"
    write_glue_task(root, "rte", n_train=10, n_dev=4)
    first = make_dm("rte", root, tmp_path, tokenizer)
    first.setup("fit")
    expected = list(first.train_dataset["input_ids"])  # read now: the damage rewrites the file
    damage(_arrow(tmp_path / "cache"))

    with caplog.at_level(logging.WARNING, logger="infodyn.data"):
        again = make_dm("rte", root, tmp_path, tokenizer)
        again.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if "tokenized cache" in r.getMessage()]
    assert len(warnings) == 1 and "is corrupt" in warnings[0] and why in warnings[0]
    assert "rebuilding it" in warnings[0]
    assert again.train_dataset["input_ids"] == expected

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infodyn.data"):
        third = make_dm("rte", root, tmp_path, tokenizer)
        third.setup("fit")
    assert "tokenized cache" not in caplog.text  # the rebuilt cache is trusted again
    assert third.train_dataset["input_ids"] == expected


def test_cache_writes_leave_no_temporaries(tmp_path, tokenizer):
    root = tmp_path / "glue"
    write_glue_task(root, "rte", n_train=6, n_dev=3)
    make_dm("rte", root, tmp_path, tokenizer).setup("fit")
    names = [p.name for p in (tmp_path / "cache").rglob("*")]
    assert not [n for n in names if ".tmp-" in n]
    record = json.loads((_arrow(tmp_path / "cache").parent / MANIFEST).read_text())
    assert record["rows"] == 6 and all(len(m["sha256"]) == 64 for m in record["files"].values())


def test_a_dead_writers_cache_temporaries_go_on_the_next_start(tmp_path, tokenizer):
    """A tokenization killed mid-write leaves a folder; a live (parallel) writer's stays."""
    import os
    import socket
    import subprocess
    import sys
    import time

    root = tmp_path / "glue"
    write_glue_task(root, "rte", n_train=6, n_dev=3)
    make_dm("rte", root, tmp_path, tokenizer).setup("fit")
    split_dir = _arrow(tmp_path / "cache").parent
    host = socket.gethostname().split(".")[0]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    killed = split_dir.with_name(f".{split_dir.name}.tmp-{host}-{dead}-x1")
    live = split_dir.with_name(f".{split_dir.name}.tmp-{host}-{os.getpid()}-x2")
    foreign_new = split_dir.with_name(f".{split_dir.name}.tmp-othernode-{dead}-x3")
    foreign_old = split_dir.with_name(f".{split_dir.name}.tmp-othernode-{dead}-x4")
    for p in (killed, live, foreign_new, foreign_old):
        p.mkdir()
        (p / "data-00000-of-00001.arrow").write_bytes(b"half")
    day_ago = time.time() - 2 * 86400
    os.utime(foreign_old, (day_ago, day_ago))

    make_dm("rte", root, tmp_path, tokenizer).setup("fit")  # a cache hit: nothing rewritten
    assert not killed.exists() and not foreign_old.exists()
    assert live.exists() and foreign_new.exists()
