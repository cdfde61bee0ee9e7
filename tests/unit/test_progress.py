"""`quiet_libraries()` under a real tiny Trainer.fit, and the plain per-epoch progress line."""

from __future__ import annotations

import logging
import warnings

import pytest

from conftest import compose_config
from infodyn import progress
from infodyn.builders import build_trainer
from tiny_lightning import ScriptedClassifier, token_loader


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def captured():
    """Every line the quieted loggers (and infodyn's) pass, with quieting undone afterwards."""
    handler = Lines()
    names = (*progress.QUIET_LOGGERS, "infodyn")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.removeFilter(progress._QUIET)  # start loud, whatever ran before in this process
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    progress._QUIET.seen.clear()
    with warnings.catch_warnings():
        yield handler.lines
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.removeFilter(progress._QUIET)
        lg.setLevel(level)
    progress._QUIET.seen.clear()
    import datasets
    import transformers

    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()


def fit_twice(tmp_path) -> None:
    """Two stages' Trainers, as a run builds them (each prints Lightning's banners)."""
    cfg = compose_config(["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"])
    for stage in ("finetune", "recover"):
        trainer = build_trainer(cfg, 1, [], [], tmp_path / stage)
        trainer.fit(ScriptedClassifier(), token_loader(), val_dataloaders=token_loader(seed=1))


def test_lightning_banners_print_once_and_tips_never(tmp_path, captured) -> None:
    fit_twice(tmp_path)
    loud = list(captured)
    assert sum(line.startswith("GPU available") for line in loud) == 2  # without quieting
    assert any(line.startswith("💡 Tip") for line in loud)
    captured.clear()
    progress.quiet_libraries(tty=False)
    progress.quiet_libraries(tty=False)  # idempotent: one filter, not two
    fit_twice(tmp_path / "again")
    assert sum(line.startswith("GPU available") for line in captured) == 1
    assert sum(line.startswith("TPU available") for line in captured) == 1
    assert not any("💡" in line or "max_epochs=1` reached" in line for line in captured)
    assert not any(line.startswith("Loading `train_dataloader`") for line in captured)
    # what helps stays: the per-epoch line with the dev metric
    epochs = [line for line in captured if "epoch 1/1 done" in line]
    assert len(epochs) == 2 and all("val/accuracy 0.5000" in line for line in epochs)


def test_the_plain_log_says_when_and_why_a_stage_stopped_early(tmp_path, captured) -> None:
    cfg = compose_config(
        [
            "trainer=cpu",
            "logger=none",
            "callbacks=early_stopping",
            "trainer.enable_progress_bar=false",
        ]
    )
    trainer = build_trainer(cfg, 6, [], [], tmp_path)
    module = ScriptedClassifier(script=[0.9, 0.5, 0.4, 0.3])
    trainer.fit(module, token_loader(), val_dataloaders=token_loader(seed=1))
    (line,) = [line for line in captured if "early stop" in line]
    assert line == (
        "[train] early stop after epoch 3/6: val/accuracy did not improve for 2 epoch(s) "
        "(best 0.9000)"
    )


def test_an_early_stop_is_still_reported(captured) -> None:
    progress.quiet_libraries(tty=False)
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    log.info("`Trainer.fit` stopped: `max_epochs=3` reached.")
    log.info("`Trainer.fit` stopped: `EarlyStopping` asked to stop.")
    assert captured == ["`Trainer.fit` stopped: `EarlyStopping` asked to stop."]


def test_the_model_load_report_prints_once(captured) -> None:
    progress.quiet_libraries(tty=False)
    log = logging.getLogger("transformers.modeling_utils")
    report = "BertForSequenceClassification LOAD REPORT from: /m\nclassifier.weight | MISSING"
    for _ in range(2):
        log.warning(report)
    log.warning("another warning")
    log.warning("another warning")
    assert captured == [report, "another warning", "another warning"]


def test_library_progress_bars_are_off_on_a_plain_log_only(captured) -> None:
    import datasets
    import transformers

    progress.quiet_libraries(tty=True)
    assert datasets.is_progress_bar_enabled()
    assert transformers.utils.logging.is_progress_bar_enabled()
    progress.quiet_libraries(tty=False)
    assert not datasets.is_progress_bar_enabled()
    assert not transformers.utils.logging.is_progress_bar_enabled()


def test_repeated_library_warnings_are_ignored(captured) -> None:
    progress.quiet_libraries(tty=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", stacklevel=1)
        warnings.warn("something the user should see", stacklevel=1)
    assert [str(w.message) for w in seen] == ["something the user should see"]
