"""LayerDrop's training-time mechanism: skips blocks in train mode only, leaves weights alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from infodyn.layers import find_layer_list
from infodyn.pruners.layerdrop import (
    LayerDropPruner,
    _DropState,
    apply_layerdrop,
    has_layerdrop,
    remove_layerdrop,
)
from tiny_models import ARCHS, tiny


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


IDS = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(0))


def hidden(model, train: bool = True):
    model.train(train)
    with torch.no_grad():
        return model(input_ids=IDS, output_hidden_states=True).hidden_states


def pattern(model, n: int = 5) -> list[list[bool]]:
    """Per forward, which blocks were skipped (output == input)."""
    out = []
    for _ in range(n):
        hs = hidden(model)
        out.append([torch.equal(hs[b], hs[b + 1]) for b in range(len(hs) - 2)])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_p0_is_identical_to_no_layerdrop(arch):
    model = tiny(arch)
    torch.manual_seed(5)
    want = hidden(model)
    apply_layerdrop(model, 0.0)
    torch.manual_seed(5)
    got = hidden(model)
    assert len(got) == len(want) == 5
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_p1_in_train_mode_passes_embeddings_through(arch):
    model = no_dropout(tiny(arch))
    plain = hidden(model)
    apply_layerdrop(model, 1.0, seed=0)
    hs = hidden(model)
    assert len(hs) == 5  # every block still reports its (skipped) output
    for h in hs[1:-1]:
        assert torch.equal(h, hs[0])
    torch.testing.assert_close(hs[0], plain[0])  # embedding output itself is unchanged
    if arch in ("roberta", "bert"):  # no final norm: the model output is the embedding output
        assert torch.equal(hs[-1], hs[0])
    else:  # pre-norm decoders apply the final norm to the passed-through embeddings
        final_norm = model.base_model.ln_f if arch == "gpt2" else model.base_model.norm
        torch.testing.assert_close(hs[-1], final_norm(hs[0]))
    assert not torch.allclose(hs[-1], plain[-1])


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_never_drops_and_remove_restores(arch):
    model = no_dropout(tiny(arch))
    want = hidden(model, train=False)
    train_want = hidden(model, train=True)
    keys = list(model.state_dict())
    apply_layerdrop(model, 1.0)
    assert has_layerdrop(model) and list(model.state_dict()) == keys
    for a, b in zip(hidden(model, train=False), want, strict=True):
        assert torch.equal(a, b)
    remove_layerdrop(model)
    assert not has_layerdrop(model) and list(model.state_dict()) == keys
    for a, b in zip(hidden(model, train=True), train_want, strict=True):
        assert torch.equal(a, b)


def test_seeded_reproducibility():
    runs = {}
    for seed in (7, 7, 8):
        model = apply_layerdrop(no_dropout(tiny("roberta")), 0.5, seed=seed)
        runs.setdefault(seed, []).append(pattern(model))
    assert runs[7][0] == runs[7][1]
    assert runs[7][0] != runs[8][0]
    flat = [x for f in runs[7][0] for x in f]
    assert any(flat) and not all(flat)


def test_drop_rate_matches_p():
    state = _DropState(0.2, seed=0)
    rate = sum(state.drop() for _ in range(4000)) / 4000
    assert 0.18 < rate < 0.22


def test_deepcopy_keeps_layerdrop_with_its_own_rng():
    model = apply_layerdrop(no_dropout(tiny("llama")), 0.5, seed=3)
    twin = copy.deepcopy(model)
    assert has_layerdrop(twin)
    assert find_layer_list(twin)[2][0]._layerdrop is not find_layer_list(model)[2][0]._layerdrop
    assert pattern(twin) == pattern(model)  # same RNG state copied, advanced independently


def test_skipped_blocks_get_no_gradient():
    """Why DDP needs find_unused_parameters=True with LayerDrop."""
    model = apply_layerdrop(tiny("bert"), 1.0)
    model.train()
    model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is None for p in find_layer_list(model)[2].parameters())
    assert model.classifier.weight.grad is not None


def test_pruner_installs_layerdrop_around_training_only():
    model = no_dropout(tiny("gpt2"))
    pruner = LayerDropPruner(p=0.3, seed=1)
    pruner.prepare_training(model, seed=0)
    assert has_layerdrop(model) and find_layer_list(model)[2][0]._layerdrop.p == 0.3
    twin = apply_layerdrop(no_dropout(tiny("gpt2")), 0.3, seed=1)
    assert pattern(model) == pattern(twin)  # the drop stream is seeded by the pruner's seed
    pruner.finish_training(model)
    assert not has_layerdrop(model)
    LayerDropPruner(p=0.0).prepare_training(model, seed=0)  # p=0: plain fine-tuning
    assert not has_layerdrop(model)
    with pytest.raises(ValueError, match="p=2"):
        apply_layerdrop(model, 2)


@pytest.mark.parametrize(("L", "k", "want"), [(12, 4, [2, 5, 8, 11]), (6, 2, [2, 5])])
def test_every_other_drops_fan_et_al_depths(L, k, want):
    """Depths d = 1..L with d = 0 (mod floor(L/k)), as 0-based blocks."""
    assert LayerDropPruner(k=k).select(torch.full((L,), float("nan")), k) == want


def tiny_mpnet(layers: int = 4):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    cfg = MPNetConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=37, num_labels=2, pad_token_id=1,
    )  # fmt: skip
    return MPNetForSequenceClassification(cfg).eval()


def test_mpnet_blocks_return_tuples_and_are_skipped_in_kind():
    model = no_dropout(tiny_mpnet())
    plain = hidden(model)
    apply_layerdrop(model, 1.0, seed=0)
    hs = hidden(model)  # MPNet's encoder reads layer_outputs[0]: a bare Tensor would break it
    for h in hs[1:]:
        assert torch.equal(h, hs[0])
    torch.testing.assert_close(hs[0], plain[0])
    apply_layerdrop(model, 0.5, seed=0)
    hs = hidden(model)  # a mix of skipped and real blocks
    assert len(hs) == 5 and all(h.shape == hs[0].shape for h in hs)
