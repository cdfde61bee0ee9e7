"""Bad inputs end in one error that names the input and the fix, before any training starts.

Most cases run `pipeline.run(cfg)` in-process and check the exception (or, in the hostile-input
table, what `explain.cli_exit` prints and returns); the CLI cases run the Hydra entry point
in-process (`cli`; test_faults runs `python -m infodyn` itself), to check the exit code and that
stderr holds one `error: ...` paragraph.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from infodyn import pipeline
from infodyn.data import DataConfigError
from infodyn.errors import ConfigError
from infodyn.explain import cli_exit
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
    assert isinstance(info.value, ConfigError), type(info.value)
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


# -- the CLI: exit codes and a one-paragraph message
BASE = ["model=roberta_tiny", "trainer=cpu", "logger=none", "task=mrpc"]


def _cli(args: list[str], tmp_path: Path, glue_dir: Path) -> subprocess.CompletedProcess:
    """`python -m infodyn` in a subprocess (each costs an interpreter start with torch)."""
    env = dict(os.environ, GLUE_DIR=str(glue_dir), PROJECT_ROOT=str(tmp_path))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "infodyn", *BASE, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def cli(
    tmp_path: Path,
    glue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> Callable[..., tuple[int, str]]:
    """`cli(*args)` -> (exit code, stderr): the Hydra entry point run in this process, as
    `python -m infodyn` runs it (same argv parsing, preflight callback and exit codes)."""
    import logging

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from infodyn.__main__ import main

    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["infodyn", *BASE, *args])
        handlers, level = root.handlers[:], root.level
        GlobalHydra.instance().clear()
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:  # Hydra's logging and singletons must not outlive the call
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(level)
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
        return code, capsys.readouterr().err

    return call


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
    args: list[str], words: list[str], tmp_path: Path, cli: Callable
) -> None:
    code, err = cli(*args, f"run_dir={tmp_path / 'run'}")
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    for word in words:
        assert word in errors[0]
    _assert_nothing_trained(tmp_path / "run")


@pytest.mark.parametrize("climb", ["{tmp}/a/../../escaped", "../escaped", "out/../../escaped"])
def test_cli_hydra_run_dir_that_climbs_is_refused(
    climb: str, tmp_path: Path, cli: Callable
) -> None:
    code, err = cli(f"hydra.run.dir={climb.format(tmp=tmp_path)}")
    assert code == 2, err[-2000:]
    assert "error: hydra.run.dir=" in err and "'..'" in err and "Fix" in err
    assert not list(tmp_path.parent.glob("escaped")) and not (tmp_path / "escaped").exists()
    assert not (tmp_path / "outputs").exists()  # Hydra wrote nothing either


def _failing_run(monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    def fail(cfg):
        raise err

    monkeypatch.setattr(pipeline, "_run", fail)


def test_cli_interrupt_exits_130_and_says_it_resumes(
    tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_run(monkeypatch, KeyboardInterrupt())
    code, err = cli(f"run_dir={tmp_path / 'run'}")
    assert code == 130
    assert "error: interrupted" in err and "resumes" in err and "Traceback" not in err


def test_cli_known_library_failure_is_one_paragraph(
    tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x.ckpt"))
    _failing_run(monkeypatch, full)
    code, err = cli(f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "no space" in line and "x.ckpt" in line and "Fix" in line


def test_cli_unknown_failure_keeps_its_traceback_and_names_the_log(
    tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_run(monkeypatch, RuntimeError("a bug nobody knows"))
    code, err = cli(f"run_dir={tmp_path / 'run'}")
    assert code == 1  # Hydra's report of an exception
    assert "unexpected RuntimeError" in err and "a bug nobody knows" in err
    assert ".log" in err  # the line names Hydra's job log, which holds the traceback


def test_cli_second_run_on_a_held_run_dir_stops_naming_the_first(
    tmp_path: Path, cli: Callable
) -> None:
    from infodyn.runlock import RunLock

    with RunLock(tmp_path / "run", command="python -m infodyn task=mrpc (the first)"):
        code, err = cli(f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert f"pid {os.getpid()}" in err and "(the first)" in err and "Fix" in err
    assert not (tmp_path / "run").exists()  # the first one's lock went with it; nothing else


def test_cli_bad_data_file_exits_2(tmp_path: Path, glue_dir: Path, cli: Callable) -> None:
    # (test_faults' NaN test runs `python -m infodyn` itself: its exit 3 comes from this path)
    binary_garbage(glue_dir)
    code, err = cli(f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert "Traceback" not in err
    assert "error:" in err and "train.tsv" in err


def test_cli_unknown_sweep_names_it(tmp_path: Path, glue_dir: Path) -> None:
    proc = _cli(["-m", "sweep=does_not_exist"], tmp_path, glue_dir)
    assert proc.returncode != 0
    assert "does_not_exist" in proc.stderr and "sweep" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("results.json"))


# -- the hostile-input table ---------------------------------------------------------------------
# Each row: one hostile input and the words its one `error:` paragraph must hold (the input it
# names). Every row runs in-process: `pipeline.run`, then `explain.cli_exit` as the CLI calls it,
# and checks the exit code, the paragraph, that nothing was trained and that the run dir holds
# exactly what it held before (nothing when it did not exist).


@dataclass(frozen=True)
class Hostile:
    id: str
    kind: str  # the class of input, for the counts in the table's docstring
    overrides: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    setup: Callable[[Ctx], tuple[str, ...] | None] | None = None
    code: int = 2


@dataclass
class Ctx:
    tmp: Path
    glue: Path
    run_dir: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch


def H(kind: str, overrides: str, *words: str, setup=None, code: int = 2, id: str = "") -> Hostile:
    args = tuple(overrides.split()) if overrides else ()
    if not id:
        id = f"{kind}: {overrides}" + (f" [{words[-1]}]" if kind == "data" else "")
    return Hostile(id, kind, args, words, setup, code)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8-sig").split("\n")


def _edit_line(task_dir: str, file: str, line: int, edit: Callable[[list[str]], list[str]]):
    """A setup that edits the tab-separated fields of one line (1-based) of a GLUE file."""

    def setup(ctx: Ctx) -> None:
        path = ctx.glue / task_dir / file
        lines = _lines(path)
        lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
        _write(path, "\n".join(lines))

    return setup


def _set(i: int, value: str) -> Callable[[list[str]], list[str]]:
    return lambda f: [*f[:i], value, *f[i + 1 :]] if i >= 0 else [*f[:i], value]


def _replace_file(task_dir: str, file: str, text: str | bytes):
    return lambda ctx: _write(ctx.glue / task_dir / file, text)


def _all_sentences_blank(ctx: Ctx) -> None:
    path = ctx.glue / "MRPC" / "dev.tsv"
    lines = _lines(path)
    out = [lines[0]] + [
        "\t".join([*ln.split("\t")[:3], " ", ""]) for ln in lines[1:] if ln.strip()
    ]
    _write(path, "\n".join(out) + "\n")


# -- run dirs an earlier run left: a template finished once per module, copied per row
FINISHED = ("pruner=last_k", "pruner.k=1", "stages.finetune_epochs=1")


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import TINY, compose_config
    from glue_layout import write_all_tasks

    root = tmp_path_factory.mktemp("finished")
    write_all_tasks(root / "glue", n_train=24, n_dev=12)
    cfg = compose_config([*TINY, *MRPC, *FINISHED])
    with open_dict(cfg):
        cfg.paths.glue_dir = str(root / "glue")
        cfg.paths.cache_dir = str(root / "cache")
        cfg.run_dir = str(root / "run")
    pipeline.run(cfg)
    return root / "run"


def _finished(*remove: str, write: dict[str, str] | None = None):
    """A setup: the finished run copied into the row's run dir, `remove`d, files overwritten."""

    def setup(ctx: Ctx) -> tuple[str, ...]:
        shutil.copytree(ctx.request.getfixturevalue("finished_template"), ctx.run_dir)
        for name in remove:
            (ctx.run_dir / name).unlink()
        for name, text in (write or {}).items():
            (ctx.run_dir / name).write_text(text)
        return FINISHED

    return setup


def stale(change: str, *words: str, remove: tuple[str, ...] = ()) -> Hostile:
    what = "stage" if remove else "results"
    return H(
        "stale results",
        change,
        *words,
        "run.overwrite=true",
        setup=_finished(*remove),
        id=f"stale {what}: {change}",
    )


# -- models on disk (model=local)
def _model_dir(fill: Callable[[Path], None]):
    def setup(ctx: Ctx) -> tuple[str, ...]:
        folder = ctx.tmp / "model_in"
        folder.mkdir()
        fill(folder)
        return ("model=local", f"model.name_or_path={folder}", "stages.finetune_epochs=0")

    return setup


def _saved_model(folder: Path) -> None:
    from tiny_models import tiny_roberta

    tiny_roberta().save_pretrained(folder, safe_serialization=True)


def _only_a_pickle(folder: Path) -> None:
    """config.json and a pytorch_model.bin that holds more than tensors."""
    from tiny_models import tiny_roberta

    model = tiny_roberta()
    model.config.save_pretrained(folder)
    torch.save(
        {"state": model.state_dict(), "extra": OSError("any object")}, folder / "pytorch_model.bin"
    )


def _truncated_safetensors(folder: Path) -> None:
    _saved_model(folder)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])


# -- the run dir itself
def _run_dir_is_a_file(ctx: Ctx) -> None:
    ctx.run_dir.write_text("not a folder")


def _parent_is_a_file(ctx: Ctx) -> tuple[str, ...]:
    (ctx.tmp / "afile").write_text("x")
    ctx.run_dir = ctx.tmp / "afile" / "run"
    return (f"run_dir={ctx.run_dir}",)


def _read_only(ctx: Ctx) -> None:
    """Root ignores permission bits, so the file system's refusal is what is simulated."""
    import errno

    real = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(ctx.run_dir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    ctx.monkeypatch.setattr(os, "open", refuse)


HOSTILE = [
    # wrong types and ranges, caught when the config is checked
    H("types", "data.batch_size=1.5", "data.batch_size=1.5"),
    H("types", "data.batch_size=-1", "data.batch_size=-1"),
    H("types", "data.max_seq_length=12.5", "data.max_seq_length=12.5"),
    H("types", "data.max_seq_length=7", "data.max_seq_length=7"),
    H("types", "data.num_workers=-1", "data.num_workers=-1"),
    H("types", "data.eval_limit=0", "data.eval_limit=0"),
    H("types", "data.train_limit=-3", "data.train_limit=-3"),
    H("types", "data.calibration_size=2.5", "data.calibration_size=2.5"),
    H("types", "data.eval_batch_size=0.5", "data.eval_batch_size=0.5"),
    H("types", "stages.finetune_epochs=1.5", "stages.finetune_epochs=1.5"),
    H("types", "stages.recover_epochs=abc", "stages.recover_epochs=abc"),
    H("types", "stages.oracle=maybe", "stages.oracle=maybe"),
    H("types", "seed=1099511627776", "seed=1099511627776", "4294967295"),
    H("types", "seed=1.5", "seed=1.5"),
    H("types", "seed=1/../..", "seed=1/../.."),
    H("types", "optim.lr=0", "optim.lr=0"),
    H("types", "optim.lr=1", "optim.lr=1"),
    H("types", "optim.lr=nan", "optim.lr=nan"),
    H("types", "optim.lr=inf", "optim.lr=inf"),
    H("types", "optim.weight_decay=-0.1", "optim.weight_decay=-0.1"),
    H("types", "optim.warmup_ratio=-0.1", "optim.warmup_ratio=-0.1"),
    H("types", "run.throughput_batches=0", "run.throughput_batches=0"),
    H("types", "run.throughput_seconds=-1", "run.throughput_seconds=-1"),
    H("types", "run.overwrite=maybe", "run.overwrite=maybe"),
    H("types", "run.keep_checkpoints=[score]", "run.keep_checkpoints", "score"),
    H("types", "run.keep_checkpoints=finetune", "run.keep_checkpoints=finetune"),
    H("types", "trainer.devices=0", "trainer.devices=0"),
    H("types", "trainer.devices=-1", "trainer.devices=-1"),
    H("types", "trainer.devices=abc", "trainer.devices=abc"),
    H("types", "trainer.devices=[]", "trainer.devices=[]"),
    H("types", "trainer.precision=15", "trainer.precision=15"),
    H("types", "trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    H("types", "trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5"),
    H("types", "trainer.limit_val_batches=-1", "trainer.limit_val_batches=-1"),
    H("types", "trainer.accumulate_grad_batches=1.5", "trainer.accumulate_grad_batches=1.5"),
    H("types", "trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0"),
    H("types", "trainer.accelerator=banana", "trainer.accelerator='banana'"),
    H("types", "trainer.strategy=banana", "trainer.strategy='banana'"),
    H("types", "pruner=redundancy pruner.protect=0", "pruner.protect=0"),
    H("types", "pruner=redundancy pruner.k=1 pruner.protect=[0.5]", "pruner.protect", "0.5"),
    H("types", "pruner=redundancy pruner.k=1.5", "pruner.k=1.5"),
    H("types", "pruner=redundancy pruner.k=abc", "pruner.k='abc'"),
    H("types", "pruner=redundancy pruner.k=null pruner.fraction=0", "pruner.fraction=0"),
    H("types", "pruner=redundancy pruner.k=null pruner.fraction=-0.5", "pruner.fraction=-0.5"),
    H("types", "pruner=redundancy pruner.k=null pruner.fraction=0.01", "pruner.fraction=0.01"),
    H("types", "pruner=redundancy pruner.k=null pruner.fraction=null", "k=None, fraction=None"),
    H("types", "pruner=redundancy pruner.k=2 pruner.fraction=0.5", "k=2, fraction=0.5"),
    H("types", "finetune=lora finetune.alpha=0", "finetune.alpha=0"),
    H("types", "finetune=lora finetune.alpha=-1", "finetune.alpha=-1"),
    H("types", "finetune=lora finetune.r=1.5", "finetune.r=1.5"),
    H("types", "finetune=last_blocks finetune.n=0", "finetune.n=0"),
    H("types", "model.init_seed=-1", "model.init_seed=-1"),
    H("types", "model.max_position_tokens=0", "model.max_position_tokens=0"),
    H("types", "model.source=nope", "model.source=nope"),
    H("types", "task.num_labels=0", "task.num_labels=0"),
    H("types", "task.metrics=[]", "task.metrics=[]"),
    # unknown keys: a typo is never silently ignored
    H("unknown keys", "+optim.lrr=1", "optim.lrr=1", "optim.lr"),
    H("unknown keys", "+data.batchsize=4", "data.batchsize=4", "data.batch_size"),
    H("unknown keys", "+stages.finetune_epoch=1", "stages.finetune_epoch", "finetune_epochs"),
    H("unknown keys", "+run.overwite=true", "run.overwite=true", "run.overwrite"),
    H("unknown keys", "+trainer.max_epoch=3", "trainer.max_epoch=3", "trainer.max_epochs"),
    H("unknown keys", "+seeed=1", "seeed=1", "seed"),
    H("unknown keys", "+pruner.bogus=1", "pruner.bogus"),
    H("unknown keys", "+estimator.cosine.bogus=1", "estimator.cosine", "bogus"),
    # conflicts between values, caught before any training
    H("conflicts", "trainer.accelerator=mps", "trainer.accelerator=mps", "MPS"),
    H(
        "conflicts",
        "callbacks=early_stopping callbacks.early_stopping.monitor=val/acuracy",
        "callbacks.early_stopping.monitor='val/acuracy'",
        "val/f1",
    ),
    H(
        "conflicts",
        "callbacks=model_checkpoint callbacks.model_checkpoint.monitor=val/pearson",
        "callbacks.model_checkpoint.monitor='val/pearson'",
        "val/accuracy",
    ),
    H("conflicts", "trainer.accelerator=tpu", "trainer.accelerator=tpu", "TPU"),
    H("conflicts", "pruner=redundancy pruner.k=4", "pruner.k=4", "all 4 blocks"),
    H("conflicts", "pruner=redundancy pruner.k=2 pruner.protect=[0,1,2]", "pruner.protect"),
    H("conflicts", "pruner=redundancy pruner.k=1 pruner.protect=[-1]", "pruner.protect", "-1"),
    H("conflicts", "pruner=redundancy pruner.k=1 pruner.protect=[4]", "pruner.protect", "4"),
    H(
        "conflicts",
        "pruner=redundancy pruner.k=1 pruner.reduce=calibration "
        "pruner.estimator=knowledge_entropy",
        "pruner.reduce=calibration",
        "knowledge_entropy",
    ),
    H("conflicts", "pruner=redundancy pruner.k=1 stages.finetune_epochs=0", "finetune_epochs=0"),
    H("conflicts", "estimator=[cosine] data.batch_size=1", "data.batch_size=1", "cosine"),
    H(
        "conflicts",
        "estimator=[cosine,gaussian] estimator.gaussian.k=64",
        "estimator.gaussian.k=64",
        "32 wide",
    ),
    H("conflicts", "estimator=[exact] estimator.exact.d=64", "estimator.exact.d=64", "32 wide"),
    H(
        "conflicts",
        "estimator=[gaussian] estimator.gaussian.k=16 estimator.gaussian.probe_size=8",
        "estimator.gaussian",
        "probe_size=8",
    ),
    H("conflicts", "trainer.limit_train_batches=0", "trainer.limit_train_batches=0"),
    H("conflicts", "trainer.limit_train_batches=0.0", "trainer.limit_train_batches=0.0"),
    H("conflicts", "estimator=none pruner=redundancy pruner.estimator=null", "pruner.estimator"),
    H("conflicts", "estimator=none pruner=redundancy pruner.estimator=nope", "'nope'"),
    H("conflicts", "finetune=last_blocks finetune.n=99", "finetune.n=99"),
    H("conflicts", "model.config.hidden_size=30", "model.config.hidden_size=30"),
    H("conflicts", "model.config.num_hidden_layers=0", "model.config.num_hidden_layers=0"),
    H("conflicts", "model.config.max_position_embeddings=8", "data.max_seq_length=32"),
    H("conflicts", "model.arch=nope", "model.arch='nope'"),
    H("conflicts", "model.tokenizer=nope", "'nope'"),
    H("conflicts", "task.main_metric=bogus", "task.main_metric='bogus'"),
    H("conflicts", "task.num_labels=3", "task.num_labels=3"),
    H("conflicts", "task.is_regression=true", "task.is_regression=true"),
    H("conflicts", "finetune=lora finetune.target_modules=[nope]", "finetune.target_modules"),
    # stale results: a run dir made by another config is never reused
    stale("optim.weight_decay=0.1", "optim.weight_decay: 0.01 -> 0.1"),
    stale("optim.warmup_ratio=0.1", "optim.warmup_ratio: 0.06 -> 0.1"),
    stale("data.max_seq_length=16", "data.max_seq_length: 32 -> 16"),
    stale("data.batch_size=8", "data.batch_size: 4 -> 8"),
    stale("estimator=[cosine]", "estimator.knowledge_entropy"),
    stale("stages.finetune_epochs=2", "stages.finetune_epochs: 1 -> 2"),
    stale("model.init_seed=1", "model.init_seed: 0 -> 1"),
    stale("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches: 1 -> 2"),
    stale("optim.lr=5e-4", "stage 'finetune'", "optim.lr", remove=("results.json",)),
    stale("pruner.k=2", "stage 'score'", "pruner.k: 1 -> 2", remove=("results.json",)),
    stale(
        "data.calibration_size=4", "stage 'score'", "calibration_size", remove=("results.json",)
    ),
    stale(
        "stages.recover_epochs=2", "stage 'recover'", "recover_epochs", remove=("results.json",)
    ),
    H(
        "stale results",
        "",
        "stage 'finetune'",
        "stores no config",
        setup=_finished("results.json", write={"stages/finetune.json": '{"metrics": {}}'}),
        id="stale stage: a record without its config",
    ),
    # data files: the message names the file (and the line)
    H(
        "data",
        "",
        "train.tsv line 3",
        "6 tab-separated fields",
        id="data: a stray tab",
        setup=_edit_line("MRPC", "train.tsv", 3, lambda f: [*f, "extra"]),
    ),  # fmt: skip
    H(
        "data",
        "",
        "dev.tsv line 2",
        "4 tab-separated fields",
        id="data: a missing field",
        setup=_edit_line("MRPC", "dev.tsv", 2, lambda f: f[:-1]),
    ),  # fmt: skip
    H(
        "data",
        "task=stsb",
        "STS-B",
        "train.tsv line 4",
        "nan",
        setup=_edit_line("STS-B", "train.tsv", 4, _set(-1, "nan")),
    ),  # fmt: skip
    H(
        "data",
        "task=stsb",
        "STS-B",
        "train.tsv line 2",
        "7.5",
        setup=_edit_line("STS-B", "train.tsv", 2, _set(-1, "7.5")),
    ),  # fmt: skip
    H(
        "data",
        "task=stsb",
        "dev.tsv line 3",
        "high",
        setup=_edit_line("STS-B", "dev.tsv", 3, _set(-1, "high")),
    ),  # fmt: skip
    H(
        "data",
        "task=rte",
        "RTE",
        "train.tsv line 2",
        "'maybe'",
        setup=_edit_line("RTE", "train.tsv", 2, _set(-1, "maybe")),
    ),  # fmt: skip
    H(
        "data",
        "",
        "MRPC",
        "dev.tsv",
        "no usable rows",
        setup=_all_sentences_blank,
        id="data: every sentence empty",
    ),  # fmt: skip
    H(
        "data",
        "task=sst2",
        "SST-2",
        "train.tsv",
        "no data rows",
        setup=_replace_file("SST-2", "train.tsv", "sentence\tlabel\n"),
    ),  # fmt: skip
    H(
        "data",
        "task=sst2",
        "SST-2",
        "dev.tsv",
        "label",
        setup=_replace_file("SST-2", "dev.tsv", "sentence\tlabel\nfine\t\n"),
    ),  # fmt: skip
    H(
        "data",
        "task=cola",
        "CoLA",
        "train.tsv",
        setup=lambda ctx: (ctx.glue / "CoLA" / "train.tsv").unlink(),
    ),  # fmt: skip
    H(
        "data",
        "task=rte",
        "RTE",
        "dev.tsv",
        setup=_replace_file("RTE", "dev.tsv", b"index\tsentence1\xff\xfe\tlabel\n"),
    ),  # fmt: skip
    # paths: nothing may be written outside the output dir
    H("paths", "task.name=x/../y", "task.name=x/../y"),
    H("paths", "model.name=a/../b", "model.name=a/../b"),
    H("paths", "sweep_name=../x", "sweep_name=../x"),
    H("paths", "sweep_name=a/b", "sweep_name=a/b"),
    H("paths", "task.name=..", "task.name=.."),
    H("paths", "model.name=.", "model.name=."),
    H("paths", "model.name=", "model.name=''"),
    H("paths", "run_dir=/tmp/infodyn-x/../escaped", "run_dir='/tmp/infodyn-x/../escaped'"),
    # the OS and files on disk
    H("os", "", "is a file", setup=_run_dir_is_a_file, id="os: the run dir is a file"),
    H(
        "os",
        "",
        "afile",
        "is a file where infodyn needs a folder",
        setup=_parent_is_a_file,
        id="os: the run dir's parent is a file",
    ),  # fmt: skip
    H("os", "", "read-only", setup=_read_only, id="os: the run dir is on a read-only disk"),
    H("os", "model=local", "model=local", "model.name_or_path"),
    H(
        "os",
        "",
        "model_in",
        "empty",
        setup=_model_dir(lambda folder: None),
        id="os: an empty model folder",
    ),  # fmt: skip
    H(
        "os",
        "",
        "model_in",
        "pytorch_model.bin",
        "safetensors",
        setup=_model_dir(_only_a_pickle),
        id="os: a model folder with only a pickle",
    ),  # fmt: skip
    H(
        "os",
        "",
        "model_in",
        "tokenizer",
        setup=_model_dir(_saved_model),
        id="os: a model folder without a tokenizer",
    ),  # fmt: skip
    H(
        "os",
        "",
        "model_in",
        "model.safetensors is truncated",
        setup=_model_dir(_truncated_safetensors),
        id="os: a truncated model.safetensors",
    ),  # fmt: skip
    H(
        "os",
        "",
        "model_in",
        "config.json is not valid JSON",
        setup=_model_dir(lambda folder: (folder / "config.json").write_text("{not json")),
        id="os: a model folder whose config.json is not JSON",
    ),  # fmt: skip
    H("os", "model=local model.name_or_path=/nonexistent/model", "/nonexistent/model"),
]


def _snapshot(root: Path) -> dict[str, int] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("row", HOSTILE, ids=[r.id for r in HOSTILE])
def test_hostile_input(
    row: Hostile,
    tiny_cfg: Callable,
    glue_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = Ctx(tmp_path, glue_dir, tmp_path / "run", request, monkeypatch)
    extra = row.setup(ctx) if row.setup else None
    before = _snapshot(ctx.run_dir)
    overrides = [*MRPC, f"run_dir={ctx.run_dir}", *(extra or ()), *row.overrides]
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the CLI maps whatever it is
        pipeline.run(tiny_cfg(*overrides))
    monkeypatch.undo()
    out = io.StringIO()
    code = cli_exit(info.value, stream=out)
    text = out.getvalue()
    assert code == row.code, f"{type(info.value).__name__}: {text}"
    assert text.startswith("error: ") and text.count("\n") == 1, text
    for word in row.words:
        assert word in text, f"{word!r} not in: {text}"
    assert "Fix" in text, text
    assert "weights_only=False" not in text
    assert _snapshot(ctx.run_dir) == before, "the run dir changed"


def test_a_stale_run_dir_with_overwrite_proceeds(
    tiny_cfg: Callable, tmp_path: Path, finished_template: Path
) -> None:
    """What the stale rows' message offers works: run.overwrite=true discards and reruns."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_template, run_dir)
    pipeline.run(tiny_cfg(*MRPC, *FINISHED, "optim.weight_decay=0.1", "run.overwrite=true"))
    made = OmegaConf.load(run_dir / "config_resolved.yaml")
    assert made.optim.weight_decay == 0.1
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"


def test_a_truncated_tokenized_cache_is_rebuilt(
    tiny_cfg: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    evaluate_only = (*MRPC, "stages.finetune_epochs=0", "pruner=none")
    pipeline.run(tiny_cfg(*evaluate_only))
    arrows = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert arrows, "no tokenized cache was written"
    for arrow in arrows:
        arrow.write_bytes(arrow.read_bytes()[:64])
    with caplog.at_level(logging.WARNING):
        pipeline.run(tiny_cfg(*evaluate_only, "run.overwrite=true"))
    assert "rebuilding it" in caplog.text
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "complete"
    assert all(a.stat().st_size > 64 for a in arrows)


def test_estimator_none_with_a_pruner_that_needs_one_runs(tiny_cfg: Callable, tmp_path: Path):
    """Not a conflict: the pipeline adds the estimator the pruner names (its `${seed}` resolved
    in the job; loaded alone it pointed at itself)."""
    cfg = tiny_cfg(*MRPC, "estimator=none", "pruner=redundancy", "pruner.k=1",
                   "stages.finetune_epochs=1", "stages.recover_epochs=0")  # fmt: skip
    pipeline.run(cfg)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "complete" and len(res["pruned_layers"]) == 1
    assert "cosine" in res["profiles"]["finetune"]
