"""The classic GLUE TSV files (`glue_data/<Task>/*.tsv`) and the row rules shared with the hub.

Each task's `tsv:` block in `conf/task/<task>.yaml` says how its files are laid out: a header
row or fixed `columns` (CoLA has no header and 4 columns), and which column holds sentence 1,
sentence 2 and the label. Files are decoded as `utf-8-sig` (MRPC starts with a byte-order mark),
split on `\\n` only (sentences may hold other line-break characters) and read with quoting off,
as the GLUE processors always did: quote characters inside a sentence are literal text.

Row policy, the same for every task and both sources:
- A row whose number of tab-separated fields differs from its header's (or from `columns`) is an
  error naming the file and line: a stray tab would shift every later field, and the row is
  never re-split or guessed at. A task with `tsv.skip_malformed: true` (QQP, whose original
  train.tsv has broken rows that GLUE's own processor skipped) skips such rows instead and logs
  one warning with their count.
- A label that is not in `label_list`, or (regression) not a finite number inside the task's
  `label_range` (STS-B: [0, 5]), is an error naming the file and line (hub: split and row).
- A row whose required sentence is empty or only whitespace is dropped: one warning per file
  gives the count and the first line numbers. A file left with no rows is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Value

from infodyn.errors import ConfigError

log = logging.getLogger(__name__)


class DataConfigError(ConfigError):
    """Data that cannot be used as configured; the message names the input and the fix."""


def fix_hint(task: Mapping[str, Any]) -> str:
    return (
        f"Fix: point GLUE_DIR (or paths.glue_dir) at a folder holding "
        f"{task['glue_dir_name']}/ in the classic GLUE layout, or unset it to use the hub."
    )


def sentence_keys(task: Mapping[str, Any]) -> list[str]:
    """The task's text columns: `[sentence1_key]` or `[sentence1_key, sentence2_key]`."""
    return [task["sentence1_key"]] + ([task["sentence2_key"]] if task.get("sentence2_key") else [])


def label_feature(task: Mapping[str, Any]) -> Value:
    return Value("float32") if task["is_regression"] else Value("int64")


def _range_text(task: Mapping[str, Any]) -> str:
    lo, hi = task.get("label_range") or (None, None)
    return f" in [{lo}, {hi}]" if lo is not None else ""


def check_score(value: Any, task: Mapping[str, Any], where: str) -> float:
    """A regression label as a finite float inside `task.label_range`; else `DataConfigError`."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataConfigError(
            f"{where}: label '{value}' is not a number, but task '{task['name']}' is a "
            "regression task. Fix: repair the file or use the classic GLUE file."
        ) from None
    lo, hi = task.get("label_range") or (-math.inf, math.inf)
    if not math.isfinite(score) or not lo <= score <= hi:
        raise DataConfigError(
            f"{where}: label '{value}' is not a finite score{_range_text(task)} (task "
            f"'{task['name']}'); one such label makes the loss NaN at the first step. Fix: "
            f"repair that row, or correct `label_range` in conf/task/{task['name']}.yaml."
        )
    return score


def check_class_id(value: Any, task: Mapping[str, Any], where: str) -> int:
    """A hub label as a class id in [0, num_labels); else `DataConfigError`."""
    n = int(task["num_labels"])
    if not isinstance(value, int) or not 0 <= value < n:
        raise DataConfigError(
            f"{where}: label {value!r} is not a class id in [0, {n}) (task '{task['name']}'; "
            "-1 marks an unlabelled row). Fix: use the GLUE data, or correct `num_labels` in "
            f"conf/task/{task['name']}.yaml."
        )
    return value


def blank_rows(rows: Mapping[str, Sequence[str]], keys: Sequence[str]) -> list[int]:
    """Indices of the rows whose sentence in any of `keys` is missing, empty or only whitespace."""
    columns = [rows[k] for k in keys]
    return [
        i
        for i, texts in enumerate(zip(*columns, strict=True))
        if not all(t is not None and t.strip() for t in texts)
    ]


def warn_dropped(where: str, places: Sequence[Any]) -> None:
    """The one log line of the empty-sentence policy: how many rows went, and the first few."""
    first = ", ".join(str(p) for p in places[:5])
    more = ", ..." if len(places) > 5 else ""
    log.warning(
        "%s: dropped %d row(s) with an empty sentence (%s%s)", where, len(places), first, more
    )


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataConfigError(
            f"{path} holds binary data (NUL bytes), not tab-separated text. Fix: replace it "
            "with the GLUE TSV file (re-download or re-extract glue_data)."
        )
    try:
        return data.decode("utf-8-sig")  # drops MRPC's byte-order mark
    except UnicodeDecodeError as err:
        raise DataConfigError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}). Fix: replace it with "
            "the GLUE TSV file (re-download or re-extract glue_data)."
        ) from err


def _columns(path: Path, task: Mapping[str, Any], lines: list[str]) -> tuple[list[str], int]:
    """The file's column names and the line number of its first data row."""
    layout = task["tsv"]
    if not layout.get("header", True):
        return list(layout["columns"]), 1
    if not lines:
        raise DataConfigError(
            f"{path} is empty (no header, no rows). Fix: replace it with the GLUE TSV file of "
            "that split."
        )
    return lines.pop(0).split("\t"), 2


def read_tsv(path: Path, task: Mapping[str, Any]) -> Dataset:
    """One GLUE TSV file -> a Dataset with the task's sentence columns and `labels`.

    Raises:
        DataConfigError: the file is missing, not text, lacks a column, or has a bad row.
    """
    name = task["name"]
    layout = task["tsv"]
    if not path.exists():
        raise DataConfigError(
            f"task '{name}' needs the file {path}, which does not exist. {fix_hint(task)}"
        )
    if not path.is_file():
        raise DataConfigError(
            f"{path} is a directory (or not a regular file), but task '{name}' reads it as a "
            f"TSV file. Fix: put the GLUE file {path.name} there, or point GLUE_DIR at the "
            "right folder."
        )
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in _decode(path).split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()  # trailing newline(s); CoLA's last line has none
    columns, first_line = _columns(path, task, lines)
    wanted = {"sentence1": task["sentence1_key"], "label": "labels"}
    if task.get("sentence2_key"):
        wanted["sentence2"] = task["sentence2_key"]
    index = {}
    for field in wanted:
        col = layout[field]
        if col not in columns:
            raise DataConfigError(
                f"{path} has no column '{col}' (the {field} of task '{name}'); its header has "
                f"{columns}. Fix: use the classic GLUE file for this task, or fix "
                f"`tsv.{field}` in conf/task/{name}.yaml."
            )
        index[field] = columns.index(col)
    if not lines:
        raise DataConfigError(
            f"{path} has no data rows. Fix: replace it with the GLUE TSV file of that split."
        )
    skip_malformed = bool(layout.get("skip_malformed", False))
    label_ids = None if task["is_regression"] else {s: i for i, s in enumerate(task["label_list"])}
    rows: dict[str, list] = {col: [] for col in wanted.values()}
    places: list[str] = []
    skipped = 0
    for lineno, line in enumerate(lines, start=first_line):
        fields = line.split("\t")
        where = f"{path} line {lineno}"
        if len(fields) != len(columns):
            if skip_malformed:
                skipped += 1
                continue
            raise DataConfigError(
                f"{where} has {len(fields)} tab-separated fields, but its header has "
                f"{len(columns)} ({', '.join(columns)}): a stray tab shifts the fields, so "
                "the row is not guessed at. Fix: remove the stray tab in that line (or "
                "re-download the file); to skip such rows instead, set "
                "task.tsv.skip_malformed=true (they are counted in the log)."
            )
        raw_label = fields[index["label"]].strip()
        if label_ids is None:
            label: float | int = check_score(raw_label, task, where)
        elif raw_label in label_ids:
            label = label_ids[raw_label]
        elif skip_malformed and not raw_label:
            skipped += 1
            continue
        else:
            raise DataConfigError(
                f"{where}: label '{raw_label}' is not one of {list(label_ids)} (task "
                f"'{name}'). Fix: repair the file, or correct `label_list` in "
                f"conf/task/{name}.yaml."
            )
        for field, col in wanted.items():
            if field != "label":
                rows[col].append(fields[index[field]])
        rows["labels"].append(label)
        places.append(f"line {lineno}")
    if skipped:
        log.warning("%s: skipped %d malformed row(s) (tsv.skip_malformed)", path, skipped)
    blank = blank_rows(rows, sentence_keys(task))
    if blank:
        warn_dropped(str(path), [places[i] for i in blank])
        gone = set(blank)
        rows = {c: [v for i, v in enumerate(vals) if i not in gone] for c, vals in rows.items()}
    if not rows["labels"]:
        raise DataConfigError(
            f"{path} has no usable rows. Fix: replace it with the GLUE TSV file of that split."
        )
    return Dataset.from_dict(rows)
