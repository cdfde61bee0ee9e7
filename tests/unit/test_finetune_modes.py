"""finetune=last_blocks: only the last n blocks and the head train; full and lora as before."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import compose_config
from infodyn.models import ModelConfigError
from infodyn.module import GlueClassifier, train_last_blocks
from tiny_models import ALL_ARCHS, tiny

# what trains besides the last blocks: the classifier head and what follows the blocks
HEAD = {
    "roberta": {"classifier"},
    "bert": {"classifier", "bert.pooler"},
    "mpnet": {"classifier"},
    "gpt2": {"score", "transformer.ln_f"},
    "llama": {"score", "model.norm"},
}
BLOCKS = {
    "roberta": "roberta.encoder.layer",
    "bert": "bert.encoder.layer",
    "mpnet": "mpnet.encoder.layer",
    "gpt2": "transformer.h",
    "llama": "model.layers",
}


def _owner(name: str, arch: str) -> str:
    m = re.match(re.escape(BLOCKS[arch]) + r"\.(\d+)\.", name)
    if m:
        return f"block{m.group(1)}"
    return next((h for h in HEAD[arch] if name.startswith(h + ".")), "frozen")


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_only_last_blocks_and_head_train(arch):
    model = train_last_blocks(tiny(arch, layers=4), 2)
    owners = {n: _owner(n, arch) for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = {n for n, o in owners.items() if o in {"block2", "block3"} | HEAD[arch]}
    assert trainable == want
    assert {owners[n] for n in trainable} == {"block2", "block3"} | HEAD[arch]
    # embeddings and the first blocks are frozen, and get no gradient
    model.train()
    ids = torch.randint(3, 99, (2, 6))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert any("embed" in n or "wte" in n for n in owners if n not in trainable)


def test_mpnet_shared_relative_bias_stays_frozen():
    model = train_last_blocks(tiny("mpnet", layers=4), 1)
    assert not model.mpnet.encoder.relative_attention_bias.weight.requires_grad


def test_last_blocks_through_the_real_config():
    cfg = compose_config(["model=roberta_tiny", "finetune=last_blocks", "finetune.n=1"])
    module = GlueClassifier(cfg.model, cfg.task, cfg.optim, cfg.finetune, pruned_layers=[0])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("model.roberta.encoder.layer.2.", "model.classifier.")) for n in trainable
    )
    assert any(n.startswith("model.roberta.encoder.layer.2.") for n in trainable)
    full = GlueClassifier(cfg.model, cfg.task, cfg.optim, {"name": "full"})
    assert all(p.requires_grad for p in full.parameters())


@pytest.mark.parametrize("n", [0, 5, 1.5, "2", True, None])
def test_bad_n_names_the_key_and_the_range(n):
    with pytest.raises(ModelConfigError, match=r"finetune\.n=.*1\.\.4"):
        train_last_blocks(tiny("roberta", layers=4), n)


def test_unknown_mode_is_refused():
    cfg = compose_config(["model=roberta_tiny"])
    with pytest.raises(ModelConfigError, match="finetune='partial'.*last_blocks"):
        GlueClassifier(cfg.model, cfg.task, cfg.optim, {"name": "partial"})
