"""Write small GLUE task folders in each task's exact classic `glue_data/` layout.

`write_glue_task(root, "mrpc")` writes `root/MRPC/{train,dev}.tsv` as the original download did
(BOM, header, column order, label spelling) and returns the rows it wrote, so that a test can
compare what a loader reads with what is on disk. Sentences include quote characters, which are
literal text in GLUE (a loader that honours CSV quoting merges rows).
"""

from __future__ import annotations

from pathlib import Path

MNLI_TRAIN_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label",
]  # fmt: skip
MNLI_DEV_HEADER = [
    *MNLI_TRAIN_HEADER[:11], "label2", "label3", "label4", "label5", "gold_label",
]  # fmt: skip

# Raw label strings as the TSV spells them, in id order (the task configs' label_list).
RAW_LABELS = {
    "cola": ["0", "1"],
    "sst2": ["0", "1"],
    "mrpc": ["0", "1"],
    "qqp": ["0", "1"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "mnli": ["entailment", "neutral", "contradiction"],
}
FOLDERS = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B",
    "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE",
}  # fmt: skip
# Split name (as in conf/task/*.yaml eval_files) -> file name.
FILES = {"train": "train.tsv", "validation": "dev.tsv"}
MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
QUOTE_ROW = 1  # the row whose first sentence opens a quote it never closes


def _sentence(task: str, split: str, i: int, which: int) -> str:
    text = f"{task} {split} row {i} part {which}"
    if i == QUOTE_ROW and which == 1:
        return f'"It will rain, he said of {text}'  # opens a quote: CSV quoting eats rows
    if i == QUOTE_ROW + 1:
        return f"'Tis a \"quoted\" {text}, isn't it?"
    return text


def _label(task: str, i: int) -> tuple[str, float | int]:
    if task == "stsb":
        score = round((i * 0.75) % 5.0, 3)
        return f"{score:.3f}", score
    raw = RAW_LABELS[task]
    return raw[i % len(raw)], i % len(raw)


def _line(task: str, split: str, i: int, s1: str, s2: str, raw: str, dev: bool) -> list[str]:
    if task == "cola":
        return ["gj04", raw, "" if raw == "1" else "*", s1]
    if task == "sst2":
        return [s1 + " ", raw]  # real SST-2 sentences end in a space
    if task == "mrpc":
        return [raw, str(1000 + i), str(2000 + i), s1, s2]
    if task == "stsb":
        meta = ["main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none"]
        return [str(i), *meta, s1, s2, raw]
    if task == "qqp":
        return [str(i), str(2 * i + 1), str(2 * i + 2), s1, s2, raw]
    if task == "mnli":
        parses = [f"( {s1} )", f"( {s2} )", f"(ROOT {s1})", f"(ROOT {s2})"]
        head = [str(i), str(31193 + i), f"{31193 + i}n", "government", *parses, s1, s2]
        return [*head, raw, raw, raw, raw, raw, raw] if dev else [*head, raw, raw]
    if task in ("qnli", "rte"):
        return [str(i), s1, s2, raw]
    raise KeyError(task)


def _header(task: str, dev: bool) -> list[str] | None:
    return {
        "cola": None,
        "sst2": ["sentence", "label"],
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "stsb": [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ],  # fmt: skip
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": MNLI_DEV_HEADER if dev else MNLI_TRAIN_HEADER,
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
    }[task]


def split_files(task: str) -> dict[str, str]:
    """Split name -> file name for `task`."""
    return MNLI_FILES if task == "mnli" else FILES


def write_glue_task(
    root: Path | str, task: str, n_train: int = 12, n_dev: int = 6
) -> dict[str, dict[str, list]]:
    """Write `root/<Folder>/*.tsv` for `task` in its classic layout.

    Returns:
        split name -> {"sentence1": [...], "sentence2": [...] (pair tasks), "labels": [ids or
        floats]}, in file order. `sentence1` is the text as written (SST-2's trailing space too).
    """
    folder = Path(root) / FOLDERS[task]
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, list]] = {}
    for split, name in split_files(task).items():
        dev = split != "train"
        n = n_dev if dev else n_train
        rows: dict[str, list] = {"sentence1": [], "sentence2": [], "labels": []}
        lines = []
        header = _header(task, dev)
        if header is not None:
            lines.append("\t".join(header))
        for i in range(n):
            s1, s2 = _sentence(task, split, i, 1), _sentence(task, split, i, 2)
            raw, label = _label(task, i)
            fields = _line(task, split, i, s1, s2, raw, dev)
            lines.append("\t".join(fields))
            rows["sentence1"].append(s1 + " " if task == "sst2" else s1)
            rows["sentence2"].append(s2)
            rows["labels"].append(label)
        if task in ("cola", "sst2"):
            del rows["sentence2"]
        text = "\n".join(lines)
        # CoLA's files end without a newline; the others end with one.
        text += "" if task == "cola" else "\n"
        bom = "\ufeff" if task == "mrpc" else ""
        (folder / name).write_text(bom + text, encoding="utf-8", newline="")
        written[split] = rows
    return written


def write_all_tasks(root: Path | str, n_train: int = 12, n_dev: int = 6) -> dict[str, dict]:
    """All eight tasks under `root`; task name -> what `write_glue_task` returned."""
    return {t: write_glue_task(root, t, n_train, n_dev) for t in FOLDERS}


# ------------------------------------------------------------------ the hub repository's layout

# task -> (TSV column -> hub column) for the text columns, then the TSV label column.
HUB_COLUMNS = {
    "cola": ({3: "sentence"}, 1),  # headerless: column positions
    "sst2": ({"sentence": "sentence"}, "label"),
    "mrpc": ({"#1 String": "sentence1", "#2 String": "sentence2"}, "Quality"),
    "stsb": ({"sentence1": "sentence1", "sentence2": "sentence2"}, "score"),
    "qqp": ({"question1": "question1", "question2": "question2"}, "is_duplicate"),
    "mnli": ({"sentence1": "premise", "sentence2": "hypothesis"}, "gold_label"),
    "qnli": ({"question": "question", "sentence": "sentence"}, "label"),
    "rte": ({"sentence1": "sentence1", "sentence2": "sentence2"}, "label"),
}
# TSV file -> the hub splits made from it; a test split gets the dev rows, labelled -1.
HUB_SPLITS = {
    "train.tsv": ["train"],
    "dev.tsv": ["validation", "test"],
    "dev_matched.tsv": ["validation_matched", "test_matched"],
    "dev_mismatched.tsv": ["validation_mismatched", "test_mismatched"],
}


def _read_glue_tsv(path: Path, task: str) -> list[list[str]]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows


def write_hub_task(glue_root: Path | str, hub_root: Path | str, task: str) -> Path:
    """Convert `glue_root/<Folder>/*.tsv` into `hub_root/<config>/<split>-00000-of-00001.parquet`.

    The columns, split names and label encoding are the `nyu-mll/glue` repository's: hub column
    names, `label` as a class id (a float score for STS-B), `idx`, and test splits with -1.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, label_col = HUB_COLUMNS[task]
    out = Path(hub_root) / task
    out.mkdir(parents=True, exist_ok=True)
    for name in split_files(task).values():
        rows = _read_glue_tsv(Path(glue_root) / FOLDERS[task] / name, task)
        header = None if task == "cola" else rows.pop(0)

        def col(key, rows=rows, header=header):
            i = key if header is None else header.index(key)
            return [r[i] for r in rows]

        table = {hub: col(tsv) for tsv, hub in texts.items()}
        raw = col(label_col)
        labels = (
            [float(x) for x in raw] if task == "stsb" else [RAW_LABELS[task].index(x) for x in raw]
        )
        for split in HUB_SPLITS[name]:
            test = split.startswith("test")
            unlabelled = [-1.0 if task == "stsb" else -1] * len(labels)
            cols = {**table, "label": unlabelled if test else labels}
            cols["idx"] = list(range(len(labels)))
            pq.write_table(pa.table(cols), out / f"{split}-00000-of-00001.parquet")
    return out
