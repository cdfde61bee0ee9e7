"""export_model: a folder that loads, names its labels, and carries a card saying what was done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, pipeline

from infodyn.export import ExportError, export_model, model_card
from infodyn.models import char_tokenizer
from infodyn.pruners.surgery import remove_layers
from tiny_models import ALL_ARCHS, tiny


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    ids[0, 5:] = 1  # pad
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_export_round_trips(arch, tmp_path):
    model = remove_layers(tiny(arch, layers=4), [2])
    out = export_model(model, None, tmp_path / "pruned")
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir gone
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert loaded.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batch()).logits, model(**batch()).logits, atol=1e-5, rtol=0
        )


def test_labels_reach_the_pipeline_and_the_card_names_removed_blocks(tmp_path):
    model = remove_layers(tiny("roberta", layers=4), [1, 3])
    labels = ["not_equivalent", "equivalent"]
    card = model_card(
        "FacebookAI/roberta-base",
        "mrpc",
        "redundancy",
        removed=[3, 1],
        num_layers_before=4,
        metrics={"finetune": {"f1": 0.88, "accuracy": 0.84}, "final": {"f1": 0.86}},
        labels=labels,
        num_parameters_before=1000,
        num_parameters_after=800,
    )
    out = export_model(model, char_tokenizer(), tmp_path / "model", labels=labels, card=card)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert config["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # the model is not changed

    classify = pipeline("text-classification", model=str(out), tokenizer=str(out), device="cpu")
    got = classify(["a b c", "hello there"])
    assert {r["label"] for r in got} <= set(labels) and len(got) == 2

    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "FacebookAI/roberta-base"
    assert front["pipeline_tag"] == "text-classification"
    assert {"infodyn", "layer-pruning", "mrpc", "pruner-redundancy"} <= set(front["tags"])
    assert "Removed blocks (0-based, in the unpruned model): [1, 3]" in text
    assert "2 of its 4 transformer blocks were removed" in text and "`redundancy`" in text
    assert "| finetune | 0.8400 | 0.8800 |" in text and "| final | - | 0.8600 |" in text
    assert "1,000 -> 800" in text


def test_regression_export_keeps_default_labels_and_refuses_names(tmp_path):
    model = AutoModelForSequenceClassification.from_config(
        tiny("bert", layers=2).config.__class__(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            vocab_size=99, num_labels=1, problem_type="regression",
        )
    )  # fmt: skip
    out = export_model(model, None, tmp_path / "stsb")
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "LABEL_0"}
    with pytest.raises(ExportError, match="regression.*labels=None"):
        export_model(model, None, tmp_path / "bad", labels=["score"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("labels", "match"), [(["a"], "1 labels.*2 classes"), (["a", "a"], "duplicates")]
)
def test_bad_labels_are_refused_before_writing(tmp_path, labels, match):
    with pytest.raises(ExportError, match=match):
        export_model(tiny("roberta", layers=2), None, tmp_path / "m", labels=labels)
    assert not (tmp_path / "m").exists()


def test_card_without_base_model_or_metrics():
    text = model_card(None, "sst2", "last_k", removed=[], num_layers_before=4)
    front = yaml.safe_load(text.split("---\n")[1])
    assert "base_model" not in front
    assert "Removed blocks (0-based, in the unpruned model): none" in text
    assert "## Metrics" not in text


def test_export_overwrites_and_saves_tokenizer(tmp_path):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_model(tiny("roberta", layers=2), char_tokenizer(), out)
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "tokenizer.json" in names


def test_export_merges_peft_also_inside_a_wrapper(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny("roberta", layers=4)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"]))
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # make the adapter matter
    wrapped.eval()
    remove_layers(wrapped, [0])
    with torch.no_grad():
        want = wrapped(**batch()).logits
    holder = torch.nn.Module()
    holder.model = wrapped  # as a LightningModule holds it
    out = export_model(holder, None, tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("entry", "want"),
    [
        ({"source": "hub", "name_or_path": "FacebookAI/roberta-base"}, "FacebookAI/roberta-base"),
        ({"source": "hub", "name_or_path": "/no/such/folder"}, None),
        ({"source": "package", "package": "p", "hub_id": "org/m"}, "org/m"),
        ({"source": "random", "arch": "roberta"}, None),
    ],
)
def test_base_model_id(entry, want):
    from omegaconf import OmegaConf

    from infodyn.models import base_model_id

    assert base_model_id(OmegaConf.create(entry)) == want


def test_every_pretrained_entry_names_its_base_model():
    from omegaconf import OmegaConf

    from infodyn.models import base_model_id

    conf = Path(__file__).parents[2] / "conf" / "model"
    for path in sorted(conf.glob("*.yaml")):
        entry = OmegaConf.load(path)
        given_at_run_time = entry.source == "hub" and entry.get("name_or_path") is None
        if entry.source != "random" and not given_at_run_time:  # model=local: any folder
            assert base_model_id(entry), path.name
