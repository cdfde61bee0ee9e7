"""trust_remote_code stays opt-in; opting in prints one warning naming the code that will run."""

from __future__ import annotations

import json
import logging

import pytest
from omegaconf import OmegaConf

from infodyn import models
from infodyn.models import ModelConfigError, build_tokenizer, char_tokenizer


def _folder(tmp_path):
    folder = tmp_path / "remote"
    char_tokenizer().save_pretrained(folder)
    config = {
        "model_type": "roberta",
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyConfig",
            "AutoModelForSequenceClassification": "modeling_tiny.TinyForSequenceClassification",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _entry(folder, trust):
    return OmegaConf.create(
        {
            "name": "remote",
            "source": "hub",
            "name_or_path": str(folder),
            "trust_remote_code": trust,
        }
    )


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(models, "_WARNED_REMOTE_CODE", set())


def test_opting_in_warns_once_naming_the_modules(tmp_path, caplog):
    folder = _folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        build_tokenizer(_entry(folder, True))
        build_tokenizer(_entry(folder, True))
    warnings = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "model=remote" in text and str(folder) in text
    assert "configuration_tiny.TinyConfig" in text and "modeling_tiny" in text


def test_default_is_off_and_silent(tmp_path, caplog):
    folder = _folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        build_tokenizer(
            OmegaConf.create({"name": "r", "source": "hub", "name_or_path": str(folder)})
        )
    assert not [r for r in caplog.records if "trust_remote_code" in r.getMessage()]


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_non_boolean_is_refused(tmp_path, value):
    with pytest.raises(ModelConfigError, match=r"trust_remote_code=.*not a boolean"):
        build_tokenizer(_entry(_folder(tmp_path), value))
