"""`checkpoints`: atomic `last.ckpt`, slim finished stages, and what a finished run lets go of."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from infodyn import checkpoints, io
from infodyn.checkpoints import (
    AtomicCheckpoint,
    load_module,
    release_finished_run,
    slim_checkpoint,
    stage_checkpoint,
)

EPOCHS = 2


def _batches(n: int = 6, size: int = 4, length: int = 12) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(3, 99, (size, length), generator=gen),
            "attention_mask": torch.ones(size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (size,), generator=gen),
        }
        for _ in range(n)
    ]


def _module():
    from conftest import TINY, compose_config
    from infodyn.builders import build_module

    return build_module(compose_config([*TINY, "task=mrpc"]), ["validation"])


def _trainer(ckpt_dir: Path, epochs: int = EPOCHS) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[
            AtomicCheckpoint(
                dirpath=str(ckpt_dir),
                filename="epoch{epoch}",
                save_last=True,
                save_top_k=0,
                every_n_epochs=1,
                auto_insert_metric_name=False,
            )
        ],
        default_root_dir=str(ckpt_dir.parent),
    )


def _loader() -> DataLoader:
    return DataLoader(_batches(), batch_size=None)


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished finetune stage of the tiny model: `<dir>/checkpoints/finetune/last.ckpt`."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("trained")
    ckpt_dir = run_dir / "checkpoints" / "finetune"
    module = _module()
    _trainer(ckpt_dir).fit(module, train_dataloaders=_loader())
    torch.save(_weights(module), run_dir / "weights.pt")
    return run_dir


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    return run_dir


def test_atomic_checkpoint_leaves_last_ckpt_only(run: Path) -> None:
    folder = run / "checkpoints" / "finetune"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == EPOCHS - 1 and ckpt["optimizer_states"]


class _FakeTrainer:
    """What `ModelCheckpoint._save_checkpoint` reads from a trainer; saving writes half a file."""

    is_global_zero = True
    global_step = 7
    loggers: list = []

    def __init__(self, fail) -> None:
        self.fail = fail

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        with open(filepath, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
            fh.flush()
            self.fail()


def test_a_failed_checkpoint_write_keeps_the_old_one(run: Path) -> None:
    folder = run / "checkpoints" / "finetune"
    before = (folder / "last.ckpt").read_bytes()

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    callback = AtomicCheckpoint(dirpath=str(folder), save_last=True, save_top_k=0)
    with pytest.raises(OSError):
        callback._save_checkpoint(_FakeTrainer(full_disk), str(folder / "last.ckpt"))
    assert (folder / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


KILL_MID_WRITE = """
import os, signal, sys
sys.path[:0] = sys.argv[2:]
from test_checkpoints import _FakeTrainer
from infodyn.checkpoints import AtomicCheckpoint
folder = sys.argv[1]
callback = AtomicCheckpoint(dirpath=folder, save_last=True, save_top_k=0)
callback._save_checkpoint(
    _FakeTrainer(lambda: os.kill(os.getpid(), signal.SIGKILL)), os.path.join(folder, "last.ckpt")
)
"""


def test_a_kill_mid_write_leaves_a_temporary_that_the_next_start_removes(run: Path) -> None:
    folder = run / "checkpoints" / "finetune"
    before = (folder / "last.ckpt").read_bytes()
    here = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, str(folder), here, *sys.path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    left = [p.name for p in folder.iterdir() if p.name != "last.ckpt"]
    assert len(left) == 1 and left[0].startswith(".last.ckpt.tmp-"), left
    gone = io.remove_stale_temporaries(run)
    assert [p.name for p in gone] == left
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert (folder / "last.ckpt").read_bytes() == before


def test_slim_checkpoint_keeps_what_load_and_resume_need(run: Path) -> None:
    path = stage_checkpoint(run, "finetune")
    before = path.stat().st_size
    saved = slim_checkpoint(path)
    assert saved > 0 and path.stat().st_size == before - saved
    assert path.stat().st_size < 0.6 * before  # AdamW keeps two moments per weight
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporaries
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["optimizer_states"] == [] and ckpt["lr_schedulers"] == []
    assert ckpt["state_dict"] and ckpt["hyper_parameters"] and ckpt["loops"]
    expected = torch.load(run / "weights.pt", weights_only=True)
    module = load_module(path)
    for key, value in expected.items():
        torch.testing.assert_close(module.state_dict()[key], value, rtol=0, atol=0)
    assert slim_checkpoint(path) == 0  # already slim: not rewritten

    # a finished stage whose record was lost resumes from it: nothing left to train, no error
    fresh = _module()
    _trainer(run / "resumed").fit(
        fresh, train_dataloaders=_loader(), ckpt_path=str(path), weights_only=True
    )
    for key, value in expected.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_a_mid_stage_checkpoint_still_resumes_training(run: Path) -> None:
    path = stage_checkpoint(run, "finetune")
    module = _module()
    trainer = _trainer(run / "more", epochs=EPOCHS + 1)
    trainer.fit(module, train_dataloaders=_loader(), ckpt_path=str(path), weights_only=True)
    assert trainer.global_step == (EPOCHS + 1) * len(_batches())
    assert trainer.optimizers[0].state  # restored and stepped


def _finish(run: Path, export: bool = True, complete: bool = True) -> None:
    """Make `run` look like a finished job: a recover stage, an export, results.json."""
    shutil.copytree(run / "checkpoints" / "finetune", run / "checkpoints" / "recover")
    if export:
        from infodyn.models import char_tokenizer
        from infodyn.pruners.surgery import export_pruned

        export_pruned(load_module(stage_checkpoint(run, "recover")).model, char_tokenizer(),
                      run / "model")  # fmt: skip
    io.atomic_write_json(run / "results.json", {"status": "complete" if complete else "failed"})
    io.atomic_write_json(run / "stages" / "finetune.json", {"metrics": {}})


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_release_finished_run_keeps_at_most_twice_the_export(run: Path) -> None:
    (run / "weights.pt").unlink()
    _finish(run)
    assert _size(run) > 4 * _size(run / "model")  # two stages with optimizer state
    gone = release_finished_run(run)
    assert sorted(p.name for p in gone) == ["finetune", "recover"]
    assert not (run / "checkpoints").exists()
    assert (run / "model" / "model.safetensors").is_file() and (run / "results.json").is_file()
    assert (run / "stages" / "finetune.json").is_file()
    assert _size(run) <= 2 * _size(run / "model")


def test_release_keeps_and_slims_what_keep_names(run: Path) -> None:
    _finish(run)
    gone = release_finished_run(run, keep=["finetune"])
    assert [p.name for p in gone] == ["recover"]
    ckpt = torch.load(stage_checkpoint(run, "finetune"), weights_only=True)
    assert ckpt["optimizer_states"] == []


def test_release_without_an_export_keeps_the_final_model(run: Path) -> None:
    _finish(run, export=False)
    gone = release_finished_run(run)
    assert [p.name for p in gone] == ["finetune"]
    load_module(stage_checkpoint(run, "recover"))  # the only copy of the final model


def test_an_unfinished_run_keeps_everything(run: Path) -> None:
    _finish(run, complete=False)
    before = sorted(str(p) for p in run.rglob("*"))
    assert release_finished_run(run) == []
    assert sorted(str(p) for p in run.rglob("*")) == before
    (run / "results.json").unlink()
    assert release_finished_run(run) == []


def test_io_helpers_are_the_ones_from_infodyn_io() -> None:
    assert checkpoints.atomic_write_json is io.atomic_write_json
    assert checkpoints.read_json is io.read_json and checkpoints.finite is io.finite


def test_atomic_write_json_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    checkpoints.atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        checkpoints.atomic_write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]
