"""Bad inputs end in one error that names the input and the fix, before any training starts.

Most cases run `pipeline.run(cfg)` in-process and check the exception; a few run
`python -m infodyn` to check the exit code and that stderr holds one `error: ...` paragraph.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf import open_dict

from infodyn import pipeline
from infodyn.data import DataConfigError
from infodyn.errors import ConfigError, user_errors
from infodyn.models import ModelConfigError
from infodyn.pruners.base import PrunerConfigError

REPO = Path(__file__).resolve().parents[2]
MRPC = ("task=mrpc",)


def _write(path: Path, content: bytes | str) -> None:
    path.unlink()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _header(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig").splitlines()[0]


# Each data fault edits the MRPC files in the test's GLUE dir.
def wrong_columns(glue: Path) -> None:
    _write(glue / "MRPC" / "train.tsv", "a\tb\tc\n1\t2\t3\n")


def unknown_label(glue: Path) -> None:
    lines = (glue / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    lines[1] = "7" + lines[1][1:]
    _write(glue / "MRPC" / "train.tsv", "\n".join(lines) + "\n")


def empty_file(glue: Path) -> None:
    _write(glue / "MRPC" / "train.tsv", "")


def header_only(glue: Path) -> None:
    _write(glue / "MRPC" / "dev.tsv", _header(glue / "MRPC" / "dev.tsv") + "\n")


def binary_garbage(glue: Path) -> None:
    _write(glue / "MRPC" / "train.tsv", bytes(range(256)) * 8)


def directory_not_file(glue: Path) -> None:
    (glue / "MRPC" / "train.tsv").unlink()
    (glue / "MRPC" / "train.tsv").mkdir()


def missing_file(glue: Path) -> None:
    (glue / "MRPC" / "dev.tsv").unlink()


DATA_FAULTS = [
    ("wrong_columns", wrong_columns, "train.tsv"),
    ("unknown_label", unknown_label, "label"),
    ("empty_file", empty_file, "train.tsv"),
    ("header_only", header_only, "dev.tsv"),
    ("binary_garbage", binary_garbage, "train.tsv"),
    ("directory_not_file", directory_not_file, "train.tsv"),
    ("missing_file", missing_file, "dev.tsv"),
]

# (overrides, exception type, words the message must hold: the input, then the fix)
CONFIG_FAULTS = [
    (["trainer.strategy=fsdp", "trainer.accelerator=cpu"], ConfigError, ["fsdp", "GPU", "Fix"]),
    pytest.param(
        ["trainer.accelerator=gpu"],
        ConfigError,
        ["trainer.accelerator=gpu", "no CUDA", "Fix"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPU"),
    ),
    (["data.batch_size=0"], ConfigError, ["data.batch_size", "Fix"]),
    (["data.batch_size=abc"], ConfigError, ["data.batch_size", "Fix"]),
    (["data.eval_batch_size=-3"], ConfigError, ["data.eval_batch_size", "Fix"]),
    (["data.max_seq_length=100000"], ValueError, ["data.max_seq_length", "Fix"]),
    (["data.max_seq_length=2"], ConfigError, ["data.max_seq_length", "Fix"]),
    (["data.train_limit=0"], ConfigError, ["data.train_limit", "Fix"]),
    (["data.calibration_size=0"], ConfigError, ["data.calibration_size", "Fix"]),
    (["optim.lr=-1"], ConfigError, ["optim.lr", "Fix"]),
    (["optim.lr=fast"], ConfigError, ["optim.lr", "Fix"]),
    (["optim.warmup_ratio=1.5"], ConfigError, ["optim.warmup_ratio", "Fix"]),
    (["stages.finetune_epochs=-1"], ConfigError, ["stages.finetune_epochs", "Fix"]),
    (["stages.recover_epochs=-1"], ConfigError, ["stages.recover_epochs", "Fix"]),
    (["seed=-5"], ConfigError, ["seed", "Fix"]),
    (["pruner=redundancy", "pruner.k=-1"], ValueError, ["pruner.k", "Fix"]),
    (["pruner=redundancy", "pruner.k=99"], PrunerConfigError, ["pruner.k=99", "Fix"]),
    (
        ["pruner=redundancy", "pruner.k=null", "pruner.fraction=1.5"],
        ValueError,
        ["pruner.fraction", "Fix"],
    ),
    (
        ["pruner=redundancy", "pruner.k=2", "pruner.protect=[0,1,2,3]"],
        PrunerConfigError,
        ["pruner.protect", "Fix"],
    ),
    (
        ["pruner=redundancy", "pruner.k=2", "pruner.protect=[7]"],
        PrunerConfigError,
        ["pruner.protect", "Fix"],
    ),
    (
        ["pruner=redundancy", "pruner.reduce=median"],
        ConfigError,
        ["pruner.reduce", "Fix"],
    ),
    (["pruner=redundancy", "pruner.estimator=nope"], ConfigError, ["nope", "Fix"]),
    (["estimator.cosine.pooling=max"], ValueError, ["estimator.cosine", "max", "Fix"]),
    (
        ["estimator=[gaussian]", "estimator.gaussian.k=0"],
        ValueError,
        ["estimator.gaussian", "Fix"],
    ),
    (["estimator=[exact]", "estimator.exact.bins=100000"], ValueError, ["estimator.exact", "Fix"]),
    (["finetune=lora", "finetune.r=0"], ConfigError, ["finetune.r", "Fix"]),
    (["finetune=lora", "finetune.dropout=1.5"], ConfigError, ["finetune.dropout", "Fix"]),
    (["trainer.precision=bogus"], ConfigError, ["trainer.precision", "Fix"]),
    (["trainer.accumulate_grad_batches=0"], ConfigError, ["accumulate_grad", "Fix"]),
    (
        ["model=roberta_base", "model.name_or_path=/does/not/exist"],
        ModelConfigError,
        ["/does/not/exist", "Fix"],
    ),
    (["model.config.vocab_size=50"], ConfigError, ["vocab_size", "Fix"]),
    (["model.name=../../escape"], ConfigError, ["model.name", "Fix"]),
    (["task.name=a/b"], ConfigError, ["task.name", "Fix"]),
]


def _assert_nothing_trained(run_dir: Path) -> None:
    ckpts = run_dir / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.rglob("*")), "training started"
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "stages").exists()


def _check_message(err: BaseException, words: list[str]) -> None:
    text = str(err)
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    assert "\n" not in text.strip(), f"not one paragraph: {text}"


@pytest.mark.parametrize(
    ("overrides", "exc", "words"),
    CONFIG_FAULTS,
    ids=[" ".join(getattr(c, "values", c)[0]) for c in CONFIG_FAULTS],
)
def test_bad_config_fails_before_training(
    tiny_cfg: Callable, overrides: list[str], exc: type, words: list[str]
) -> None:
    cfg = tiny_cfg(*MRPC, *overrides)
    with pytest.raises(exc) as info:
        pipeline.run(cfg)
    assert isinstance(info.value, user_errors()), type(info.value)
    _check_message(info.value, words)
    _assert_nothing_trained(Path(cfg.run_dir))


@pytest.mark.parametrize(("name", "fault", "word"), DATA_FAULTS, ids=[f[0] for f in DATA_FAULTS])
def test_bad_data_file_fails_before_training(
    tiny_cfg: Callable, glue_dir: Path, name: str, fault: Callable, word: str
) -> None:
    fault(glue_dir)
    cfg = tiny_cfg(*MRPC, "pruner=redundancy", "pruner.k=1")
    with pytest.raises(DataConfigError) as info:
        pipeline.run(cfg)
    _check_message(info.value, [word])
    assert "Fix" in str(info.value) or "fix" in str(info.value)
    _assert_nothing_trained(Path(cfg.run_dir))


def test_glue_dir_that_does_not_exist(tiny_cfg: Callable, tmp_path: Path) -> None:
    cfg = tiny_cfg(*MRPC)
    with open_dict(cfg):
        cfg.paths.glue_dir = str(tmp_path / "nowhere")
    with pytest.raises(DataConfigError, match="nowhere"):
        pipeline.run(cfg)
    _assert_nothing_trained(Path(cfg.run_dir))


def test_run_dir_with_dotdot_is_refused(tiny_cfg: Callable, tmp_path: Path) -> None:
    cfg = tiny_cfg(*MRPC, f"run_dir={tmp_path}/a/../../escaped")
    with pytest.raises(ConfigError, match=r"run_dir=.*'\.\.'.*Fix"):
        pipeline.run(cfg)
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize(
    "group_override", ["task=bogus", "model=bogus", "logger=bogus", "pruner=bogus"]
)
def test_unknown_group_option_is_a_hydra_error(group_override: str) -> None:
    from conftest import compose_config

    with pytest.raises(HydraException, match=group_override.split("=")[0]):
        compose_config([group_override])


# -- the CLI: exit codes and a one-paragraph message (each subprocess costs ~6 s)
def _cli(args: list[str], tmp_path: Path, glue_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLUE_DIR=str(glue_dir), PROJECT_ROOT=str(tmp_path))
    env.pop("HYDRA_FULL_ERROR", None)
    base = ["model=roberta_tiny", "trainer=cpu", "logger=none", "task=mrpc"]
    return subprocess.run(
        [sys.executable, "-m", "infodyn", *base, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["data.batch_size=0"], ["error: data.batch_size=0", "Fix"]),
        (["pruner=redundancy", "pruner.k=99"], ["error: pruner.k=99", "Fix"]),
        (["model.config.vocab_size=50"], ["error:", "vocab_size", "Fix"]),
    ],
    ids=["batch_size", "k", "vocab"],
)
def test_cli_prints_one_paragraph_and_exits_2(
    args: list[str], words: list[str], tmp_path: Path, glue_dir: Path
) -> None:
    proc = _cli([*args, f"run_dir={tmp_path / 'run'}"], tmp_path, glue_dir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in errors[0]
    _assert_nothing_trained(tmp_path / "run")


def test_cli_bad_data_file_exits_2(tmp_path: Path, glue_dir: Path) -> None:
    binary_garbage(glue_dir)
    proc = _cli([f"run_dir={tmp_path / 'run'}"], tmp_path, glue_dir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "train.tsv" in proc.stderr


def test_cli_unknown_sweep_names_it(tmp_path: Path, glue_dir: Path) -> None:
    proc = _cli(["-m", "sweep=does_not_exist"], tmp_path, glue_dir)
    assert proc.returncode != 0
    assert "does_not_exist" in proc.stderr and "sweep" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("results.json"))
