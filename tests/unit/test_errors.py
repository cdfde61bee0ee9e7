"""`explain.explain` and `explain.cli_exit` on real exceptions from transformers, Lightning, torch,
datasets and the OS: every known failure is one paragraph naming the input and the fix; an
unknown one is None (its traceback stays)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from infodyn import errors
from infodyn.errors import ConfigError, TrainingDivergedError
from infodyn.explain import cli_exit, explain
from tiny_models import tiny_roberta


def raised(fn: Callable[[], object]) -> BaseException:
    """The exception `fn` really raises (the test fails if it raises none)."""
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - any exception is what we want to inspect
        return err
    raise AssertionError(f"{fn} raised nothing")


def _raise(err: BaseException) -> Callable[[], object]:
    def fail():
        raise err

    return fail


class Evil:
    """Unpickling this calls print: what a malicious pytorch_model.bin does with os.system."""

    def __reduce__(self):
        return (print, ("this ran while unpickling",))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    model = tiny_roberta()
    (root / "empty_model").mkdir()
    model.config.save_pretrained(root / "pickle_model")
    torch.save({**model.state_dict(), "x": Evil()}, root / "pickle_model" / "pytorch_model.bin")
    model.config.save_pretrained(root / "config_only")
    model.save_pretrained(root / "torn_model")
    weights = root / "torn_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    model.save_pretrained(root / "bad_json")
    (root / "bad_json" / "config.json").write_text("{not json")
    torch.save({"state_dict": model.state_dict()}, root / "torn.ckpt")
    (root / "torn.ckpt").write_bytes((root / "torn.ckpt").read_bytes()[:4096])
    (root / "empty.ckpt").write_bytes(b"")
    (root / "garbage.ckpt").write_bytes(b"this is not a checkpoint")
    torch.save({"state_dict": {}}, root / "foreign.ckpt")
    (root / "stage.json").write_text('{"metrics": {"accuracy": 0.5')
    (root / "afile").write_text("I am a file")
    return root


def _from_pretrained(path: Path) -> Callable[[], object]:
    from transformers import AutoModelForSequenceClassification

    return lambda: AutoModelForSequenceClassification.from_pretrained(
        str(path), trust_remote_code=False
    )


def _tokenizer(path: Path) -> Callable[[], object]:
    from transformers import AutoTokenizer

    return lambda: AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def _trainer(**kwargs) -> Callable[[], object]:
    import pytorch_lightning as pl

    return lambda: pl.Trainer(
        logger=False, enable_progress_bar=False, enable_checkpointing=False, **kwargs
    )


def _full_disk() -> None:
    with open("/dev/full", "w") as fh:
        fh.write("x" * 64)
        fh.flush()


def _json(path: Path) -> Callable[[], object]:
    def read():
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    return read


def _forward(ids: list[int]) -> Callable[[], object]:
    model = tiny_roberta()  # vocab 99, 512 positions
    return lambda: model(input_ids=torch.tensor([ids]))


def _load_module(path: Path) -> Callable[[], object]:
    from infodyn.checkpoints import load_module

    return lambda: load_module(path)


def _oom() -> None:
    # CPU machines cannot run out of GPU memory on demand: the type and text torch raises
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
        "139.81 GiB of which 1.00 GiB is free."
    )


def _os_error(code: int, path: str) -> Callable[[], object]:
    def fail():
        raise OSError(code, os.strerror(code), path)  # what the OS call raises: a subclass

    return fail


def _datasets_offline(monkeypatch: pytest.MonkeyPatch) -> Callable[[], object]:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return lambda: datasets.load_dataset("infodyn-test/not-cached-anywhere")


# (id, the fault as f(files, monkeypatch) -> callable, words the paragraph must hold)
KNOWN = [
    ("empty model dir (model)", lambda d, m: _from_pretrained(d / "empty_model"),
     ["empty_model", "the folder is empty", "Fix", "model.name_or_path"]),
    ("empty model dir (tokenizer)", lambda d, m: _tokenizer(d / "empty_model"),
     ["empty_model", "the folder is empty", "Fix"]),
    ("only an unsafe pickle", lambda d, m: _from_pretrained(d / "pickle_model"),
     ["pickle_model", "pytorch_model.bin", "safetensors", "Fix"]),
    ("config but no weights", lambda d, m: _from_pretrained(d / "config_only"),
     ["config_only", "no weights", "Fix"]),
    ("torn safetensors", lambda d, m: _from_pretrained(d / "torn_model"),
     ["torn_model", "corrupt", "Fix"]),
    ("config.json not JSON", lambda d, m: _from_pretrained(d / "bad_json"),
     ["bad_json", "JSON", "Fix"]),
    ("trainer.devices=0", lambda d, m: _trainer(accelerator="cpu", devices=0),
     ["trainer.devices=0", "Fix"]),
    ("trainer.devices=-2", lambda d, m: _trainer(accelerator="cpu", devices=-2),
     ["trainer.devices=-2", "Fix"]),
    ("trainer.accelerator=mps", lambda d, m: _trainer(accelerator="mps"),
     ["trainer.accelerator=mps", "not available", "Fix", "trainer=cpu"]),
    ("trainer.accelerator=tpu", lambda d, m: _trainer(accelerator="tpu"),
     ["trainer.accelerator=tpu", "Fix"]),
    ("trainer.accelerator=bogus", lambda d, m: _trainer(accelerator="bogus"),
     ["Lightning refused", "bogus", "Fix"]),
    ("trainer.strategy=bogus", lambda d, m: _trainer(strategy="bogus"),
     ["strategy='bogus'", "Fix"]),
    ("trainer.limit_train_batches=-1", lambda d, m: _trainer(limit_train_batches=-1),
     ["limit_train_batches", "Fix"]),
    ("run dir is a file", lambda d, m: lambda: (d / "afile").mkdir(parents=True, exist_ok=True),
     ["afile", "is a file", "run_dir=", "Fix"]),
    ("file on the run dir's path", lambda d, m: lambda: (d / "afile" / "run").mkdir(parents=True),
     ["afile", "is a file", "Fix"]),
    ("writing under a file", lambda d, m: lambda: open(d / "afile" / "x.json", "w"),
     ["afile", "is a file", "Fix"]),
    ("folder where a file goes", lambda d, m: lambda: open(d, "w"),
     ["is a folder", "Fix"]),
    ("full disk", lambda d, m: _full_disk, ["no space", "Fix", "run_dir="]),
    ("read-only dir", lambda d, m: _os_error(errno.EACCES, "/data/ro/run"),
     ["/data/ro/run", "permission denied", "Fix", "run_dir="]),
    ("read-only file system", lambda d, m: _os_error(errno.EROFS, "/mnt/cd/run"),
     ["/mnt/cd/run", "read-only", "Fix"]),
    ("disk quota", lambda d, m: _os_error(errno.EDQUOT, "/home/u/run"),
     ["/home/u/run", "quota", "Fix"]),
    ("torn checkpoint", lambda d, m: lambda: torch.load(d / "torn.ckpt", weights_only=True),
     ["torn.ckpt", "corrupt", "delete it", "Fix"]),
    ("empty checkpoint", lambda d, m: lambda: torch.load(d / "empty.ckpt", weights_only=True),
     ["empty.ckpt", "corrupt", "Fix"]),
    ("garbage checkpoint", lambda d, m: lambda: torch.load(d / "garbage.ckpt", weights_only=True),
     ["garbage.ckpt", "corrupt", "Fix"]),
    ("pickle checkpoint",
     lambda d, m: lambda: torch.load(d / "pickle_model" / "pytorch_model.bin", weights_only=True),
     ["pytorch_model.bin", "could run code", "Fix"]),
    ("not a Lightning checkpoint", lambda d, m: _load_module(d / "foreign.ckpt"),
     ["foreign.ckpt", "not a checkpoint written by infodyn", "Fix"]),
    ("torn stage json", lambda d, m: _json(d / "stage.json"),
     ["stage.json", "not valid JSON", "line 1", "Fix"]),
    ("CUDA out of memory", lambda d, m: _oom, ["out of memory", "data.batch_size", "Fix"]),
    ("token id beyond the vocab", lambda d, m: _forward([0, 5, 500, 2]),
     ["token id (500)", "word embeddings table (99 rows)", "tokenizer", "Fix"]),
    ("labels beyond the head",
     lambda d, m: lambda: F.cross_entropy(torch.zeros(2, 2), torch.tensor([0, 5])),
     ["label (5)", "2 outputs", "Fix"]),
    ("datasets offline", lambda d, m: _datasets_offline(m), ["GLUE_DIR", "hub", "Fix"]),
    ("sequence beyond the positions", lambda d, m: _forward([0] + [5] * 600 + [2]),
     ["position id", "data.max_seq_length", "Fix"]),
    ("config error", lambda d, m: _raise(ConfigError("data.x=1 is bad. Fix: data.x=2")),
     ["data.x=1", "Fix"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fault", "words"), KNOWN, ids=[k[0] for k in KNOWN])
def test_known_failure_is_one_paragraph_naming_input_and_fix(
    files: Path, monkeypatch: pytest.MonkeyPatch, name: str, fault, words: list[str]
) -> None:
    err = raised(fault(files, monkeypatch))
    text = explain(err)
    assert text is not None, f"{type(err).__name__}: {err}"
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    assert "\n" not in text and "\x1b" not in text
    assert not re.search(r"[^.]\.\.(\s|$)", text), "a quoted message's period doubled"
    assert "Traceback" not in text
    assert "weights_only" not in text  # never a hint towards unsafe loading


def test_unsafe_pickle_never_suggests_unsafe_loading(files: Path) -> None:
    err = raised(_from_pretrained(files / "pickle_model"))
    assert "weights_only` set to `False`" in str(err)  # torch's own message suggests it
    text = explain(err)
    assert "False" not in text and "weights_only" not in text
    assert "pickle" in text and "safetensors" in text
    # also when infodyn's own error wraps torch's message
    from infodyn.models import ModelConfigError

    try:
        raise ModelConfigError(f"could not load model: {err}") from err
    except ModelConfigError as wrapped:
        assert "weights_only" not in explain(wrapped)


def test_the_wrapped_cause_is_explained(files: Path) -> None:
    cause = raised(lambda: (files / "afile").mkdir(exist_ok=True))
    try:
        raise RuntimeError("while preparing the run dir") from cause
    except RuntimeError as err:
        assert "afile" in explain(err)


def _bug_in_our_code() -> None:
    scores = {"a": 1}
    return scores["b"]


UNKNOWN = [
    ("KeyError in our code", lambda: _bug_in_our_code()),
    ("TypeError", lambda: len(3)),
    ("RuntimeError", lambda: torch.zeros(2, 3) @ torch.zeros(2, 3)),
    ("plain ValueError", lambda: int("x")),
    ("missing file", lambda: open("/nonexistent/infodyn/file")),
    ("IndexError of a list", lambda: [][1]),
    ("AttributeError", lambda: None.shape),
    ("TypeError inside from_pretrained", lambda: _from_pretrained_with_bad_argument()),
]


def _from_pretrained_with_bad_argument() -> None:
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(None, trust_remote_code=False)


@pytest.mark.parametrize(("name", "fault"), UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unknown_failure_keeps_its_traceback(name: str, fault) -> None:
    assert explain(raised(fault)) is None


def _with_log_file(tmp_path: Path):
    handler = logging.FileHandler(tmp_path / "__main__.log")
    logging.getLogger().addHandler(handler)
    return handler


def test_cli_exit_prints_one_paragraph_and_returns_2(files: Path, tmp_path: Path) -> None:
    handler = _with_log_file(tmp_path)
    try:
        out = io.StringIO()
        code = cli_exit(raised(_trainer(accelerator="cpu", devices=0)), stream=out)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert code == errors.EXIT_USER
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.devices=0")
    logged = (tmp_path / "__main__.log").read_text()
    assert "Traceback" in logged and "MisconfigurationException" in logged


def test_cli_exit_diverged_returns_3() -> None:
    out = io.StringIO()
    err = raised(_raise(TrainingDivergedError("stage finetune diverged")))
    assert cli_exit(err, stream=out) == errors.EXIT_DIVERGED
    assert out.getvalue().startswith("error: stage finetune diverged")


def test_cli_exit_unknown_names_the_log_and_reraises(tmp_path: Path) -> None:
    handler = _with_log_file(tmp_path)
    try:
        out = io.StringIO()
        assert cli_exit(raised(_bug_in_our_code), stream=out) is None
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and str(tmp_path / "__main__.log") in lines[0]
    assert "KeyError" in lines[0]
    assert "_bug_in_our_code" in (tmp_path / "__main__.log").read_text()  # the traceback


def test_cli_exit_given_log_path_and_interrupt() -> None:
    out = io.StringIO()
    assert cli_exit(raised(lambda: int("x")), "/runs/x/__main__.log", stream=out) is None
    assert "/runs/x/__main__.log" in out.getvalue()
    out = io.StringIO()
    assert cli_exit(KeyboardInterrupt(), stream=out) == errors.EXIT_INTERRUPTED
    assert "resumes" in out.getvalue()
    assert cli_exit(SystemExit(0), stream=out) is None


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def test_cli_exit_never_hides_the_error_it_explains() -> None:
    out = io.StringIO()
    assert cli_exit(raised(_raise(_Unprintable())), "/x.log", stream=out) is None
    assert "_Unprintable" in out.getvalue()
