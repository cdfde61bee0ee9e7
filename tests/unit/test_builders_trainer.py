"""`build_trainer` / `build_callbacks` / `build_loggers` from the real composed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from conftest import compose_config
from infodyn.builders import build_callbacks, build_loggers, build_trainer
from infodyn.checkpoints import AtomicCheckpoint
from infodyn.errors import ConfigError
from infodyn.loggers import RunLoggers
from tiny_lightning import ScriptedClassifier, token_loader

NAMES = {"job_name": "job", "pruner": "none", "estimator": "cosine", "model": "m", "task": "sst2"}


def cfg_of(*overrides: str):
    return compose_config(["trainer=cpu", "logger=none", "task=sst2", *overrides])


def test_trainer_arguments_come_from_the_yaml_as_they_are(tmp_path) -> None:
    cfg = cfg_of(
        "trainer.gradient_clip_val=0.25",
        "trainer.accumulate_grad_batches=3",
        "trainer.log_every_n_steps=7",
        "trainer.check_val_every_n_epoch=2",
        "trainer.limit_train_batches=5",
        "+trainer.max_steps=11",  # any Lightning argument, with no code naming it
    )
    fit = build_trainer(cfg, 4, [], [], tmp_path / "ckpt")
    assert fit.gradient_clip_val == 0.25 and fit.accumulate_grad_batches == 3
    assert fit.log_every_n_steps == 7 and fit.check_val_every_n_epoch == 2
    assert fit.limit_train_batches == 5 and fit.max_steps == 11 and fit.max_epochs == 4
    assert fit.num_sanity_val_steps == 0
    ckpts = [c for c in fit.callbacks if isinstance(c, AtomicCheckpoint)]
    assert len(ckpts) == 1 and ckpts[0].dirpath == str(tmp_path / "ckpt")
    assert fit._accelerator_connector.use_distributed_sampler is True
    ev = build_trainer(cfg, 1, [], [], None, evaluation=True)
    assert ev._accelerator_connector.use_distributed_sampler is False
    assert not any(isinstance(c, ModelCheckpoint) for c in ev.callbacks)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("+trainer.gradient_clip=1.0", "trainer.gradient_clip_val"),  # a typo: the close match
        ("+trainer.max_epochs=3", "stages.finetune_epochs"),  # infodyn's: where it comes from
        ("+trainer.callbacks=[]", "callbacks=<option>"),
        ("trainer.check_val_every_n_epoch=-1", "an integer >= 1"),
        ("trainer._target_=torch.nn.NoSuchTrainer", "trainer._target_"),
    ],
)
def test_bad_trainer_settings_name_the_key_and_the_fix(tmp_path, override, says) -> None:
    with pytest.raises(ConfigError, match="Fix") as err:
        build_trainer(cfg_of(override), 1, [], [], tmp_path)
    assert says in str(err.value)


def test_ddp_with_layerdrop_looks_for_unused_parameters(tmp_path) -> None:
    cfg = cfg_of("trainer=ddp", "trainer.accelerator=cpu")
    trainer = build_trainer(cfg, 1, [], [], tmp_path, unused_parameters=True)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    plain = build_trainer(cfg, 1, [], [], tmp_path)
    assert not plain.strategy._ddp_kwargs.get("find_unused_parameters", False)


def test_callbacks_group_is_built_from_target_for_training_trainers_only(tmp_path) -> None:
    cfg = cfg_of("callbacks=default", "task=mrpc")
    fit = build_trainer(cfg, 3, [], [], tmp_path / "ckpt")
    stops = [c for c in fit.callbacks if isinstance(c, EarlyStopping)]
    assert len(stops) == 1 and stops[0].monitor == "val/f1" and stops[0].mode == "max"
    # the configured best-keeper comes first: it is the trainer's checkpoint_callback
    best = fit.checkpoint_callback
    assert best.monitor == "val/f1" and best.dirpath == str(tmp_path / "ckpt")
    assert best.save_top_k == 1 and not best.save_last
    assert any(c.save_last for c in fit.checkpoint_callbacks)  # the resume checkpoint stays
    ev = build_trainer(cfg, 1, [], [], None, evaluation=True)
    assert not any(isinstance(c, EarlyStopping | ModelCheckpoint) for c in ev.callbacks)
    assert build_callbacks(cfg_of("callbacks=none"), tmp_path) == []


def test_validation_off_refuses_a_callback_that_monitors_it(tmp_path) -> None:
    cfg = cfg_of("trainer.check_val_every_n_epoch=0", "callbacks=early_stopping")
    with pytest.raises(ConfigError, match="callbacks.early_stopping monitors val/accuracy"):
        build_trainer(cfg, 1, [], [], tmp_path)
    off = build_trainer(cfg_of("trainer.check_val_every_n_epoch=0"), 2, [], [], tmp_path)
    assert off.limit_val_batches == 0
    ev = build_trainer(cfg_of("trainer.check_val_every_n_epoch=0"), 1, [], [], None, True)
    assert ev.limit_val_batches == 1.0  # evaluation still sees the whole dev set


def test_a_callback_that_cannot_be_built_names_its_entry(tmp_path) -> None:
    cfg = cfg_of("callbacks=early_stopping", "callbacks.early_stopping.mode=sideways")
    with pytest.raises(ConfigError, match=r"callbacks\.early_stopping .*Fix: correct"):
        build_trainer(cfg, 1, [], [], tmp_path)


def test_best_checkpoint_and_early_stopping_fire_in_a_real_fit(tmp_path) -> None:
    # scripted dev metric: best at epoch 2 (index 1), then two epochs without improvement
    cfg = cfg_of("callbacks=default", "callbacks.early_stopping.patience=2")
    ckpt = tmp_path / "checkpoints" / "finetune"
    trainer = build_trainer(cfg, 10, [], [], ckpt)
    module = ScriptedClassifier(script=[0.5, 0.8, 0.7, 0.6, 0.9, 0.9])
    trainer.fit(module, train_dataloaders=token_loader(), val_dataloaders=token_loader(seed=1))
    assert trainer.current_epoch == 4  # stopped after epoch 4 (index 3): patience 2 exhausted
    assert trainer.early_stopping_callback.stopped_epoch == 3
    best = trainer.checkpoint_callback
    assert best.best_model_path == str(ckpt / "best.ckpt")
    assert float(best.best_model_score) == pytest.approx(0.8)
    state = torch.load(ckpt / "best.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1
    assert (ckpt / "last.ckpt").is_file()  # the resume checkpoint is still written


def test_validation_runs_every_epoch_of_a_fit_by_default(tmp_path) -> None:
    seen = []
    module = ScriptedClassifier(script=[0.1, 0.2, 0.3])
    module.on_validation_end = lambda: seen.append(module.current_epoch)
    trainer = build_trainer(cfg_of(), 3, [], [], tmp_path)
    trainer.fit(module, train_dataloaders=token_loader(), val_dataloaders=token_loader(seed=1))
    assert seen == [0, 1, 2]
    assert float(trainer.callback_metrics["val/accuracy"]) == pytest.approx(0.3)


def test_build_loggers_fills_the_run_dir_and_logs_the_config(tmp_path) -> None:
    loggers = build_loggers(cfg_of("logger=csv"), tmp_path, NAMES)
    assert isinstance(loggers, RunLoggers) and len(loggers) == 1
    (csv,) = loggers
    assert isinstance(csv, CSVLogger) and csv.save_dir == str(tmp_path)
    assert Path(csv.log_dir) == tmp_path / "csv"
    csv.save()
    assert "task:" in (tmp_path / "csv" / "hparams.yaml").read_text()
    assert len(build_loggers(cfg_of("logger=none"), tmp_path, NAMES)) == 0


def test_a_logger_that_cannot_be_built_names_its_entry(tmp_path) -> None:
    cfg = cfg_of("logger=csv", "logger.csv._target_=pytorch_lightning.loggers.NoSuchLogger")
    with pytest.raises(ConfigError, match=r"logger\.csv .*Fix: correct logger\.csv"):
        build_loggers(cfg, tmp_path, NAMES)
    cfg = cfg_of("logger=csv", "+logger.junk=3")
    with pytest.raises(ConfigError, match=r"logger\.junk has no _target_.*Fix"):
        build_loggers(cfg, tmp_path, NAMES)


@pytest.mark.parametrize("option", ["none", "default", "early_stopping", "model_checkpoint"])
def test_every_callbacks_option_builds(tmp_path, option) -> None:
    cbs = build_callbacks(cfg_of(f"callbacks={option}", "task=stsb"), tmp_path)
    assert len(cbs) == {"none": 0, "default": 2}.get(option, 1)
    assert all(c.monitor == "val/pearson" for c in cbs)  # the task's main metric


@pytest.mark.parametrize("option", ["none", "csv", "wandb"])
def test_every_logger_option_composes_to_targets(option) -> None:
    node = cfg_of(f"logger={option}").logger
    assert all("_target_" in sub for sub in node.values())
    assert len(node) == (0 if option == "none" else 1)
