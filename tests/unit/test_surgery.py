"""remove_layers equals a model built with fewer layers, for every supported family."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from infodyn.layers import find_layer_list, num_blocks
from infodyn.pruners.surgery import SurgeryError, remove_layers
from tiny_models import ALL_ARCHS, tiny


def block_prefix(model) -> str:
    blocks = find_layer_list(model)[2]
    return next(n for n, m in model.named_modules() if m is blocks) + "."


def expected_state(model, drop: set[int]) -> dict[str, torch.Tensor]:
    """The original weights renamed as a (L - |drop|)-layer model would name them."""
    prefix = block_prefix(model)
    keep = [i for i in range(num_blocks(model)) if i not in drop]
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    out = {}
    for key, value in model.state_dict().items():
        m = pattern.fullmatch(key)
        if m is None:
            out[key] = value.clone()
        elif int(m.group(1)) in new_index:
            out[f"{prefix}{new_index[int(m.group(1))]}.{m.group(2)}"] = value.clone()
    return out


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    ids[0, 5:] = 1  # pad
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_remove_matches_model_built_smaller(arch):
    model = tiny(arch, layers=5)
    drop = {1, 3}
    state = expected_state(model, drop)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 3
    reference = AutoModelForSequenceClassification.from_config(config).eval()
    reference.load_state_dict(state, strict=True)

    wrong = remove_layers(copy.deepcopy(model), [0, 2])
    with torch.no_grad():  # installs HF's hidden-state recorders before the surgery
        assert len(model(**batch(), output_hidden_states=True).hidden_states) == 6
    assert remove_layers(model, [3, 1]) is model
    assert num_blocks(model) == 3 and model.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch()).logits, reference(**batch()).logits, atol=1e-5, rtol=0
        )
        got = model.base_model(**batch()).last_hidden_state
        torch.testing.assert_close(
            got, reference.base_model(**batch()).last_hidden_state, atol=1e-5, rtol=0
        )
        hs = model(**batch(), output_hidden_states=True).hidden_states
        ref_hs = reference(**batch(), output_hidden_states=True).hidden_states
        assert len(hs) == len(ref_hs) == 4
        for a, b in zip(hs, ref_hs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        # The comparison can tell removal sets apart.
        assert not torch.allclose(got, wrong.base_model(**batch()).last_hidden_state, atol=1e-3)
    assert set(model.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_layer_idx_renumbered_and_cache_works(arch):
    model = tiny(arch, layers=5)
    remove_layers(model, [0, 2])
    idx = [
        {m.layer_idx for m in b.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        for b in find_layer_list(model)[2]
    ]
    assert idx == [{0}, {1}, {2}]
    if arch == "bert":
        return
    backbone = model.base_model
    ids = batch()["input_ids"][1:]
    with torch.no_grad():
        full = backbone(input_ids=ids).last_hidden_state
        first = backbone(input_ids=ids[:, :-1], use_cache=True)
        assert first.cache.get_seq_length() == ids.shape[1] - 1
        step = backbone(input_ids=ids[:, -1:], cache=first.cache, use_cache=True)
    assert len(first.cache.layers) == 3  # one cache slot per kept block
    torch.testing.assert_close(step.last_hidden_state[:, -1], full[:, -1], atol=1e-5, rtol=0)


def test_layer_types_follow_removed_blocks():
    model = tiny("llama", layers=4)
    model.config.layer_types = ["a", "b", "c", "d"]
    remove_layers(model, [1, 2])
    assert model.config.layer_types == ["a", "d"]


@pytest.mark.parametrize(
    ("layers", "match"),
    [([1, 1], "duplicates"), ([4], "outside"), ([-1], "outside"), ([0, 1, 2, 3], "leaves none")],
)
def test_bad_indices_raise_and_leave_model_untouched(layers, match):
    model = tiny("roberta", layers=4)
    with pytest.raises(SurgeryError, match=match):
        remove_layers(model, layers)
    assert num_blocks(model) == 4 and model.config.num_hidden_layers == 4


def test_mpnet_keeps_its_shared_relative_attention_bias():
    model = tiny("mpnet", layers=4)
    encoder = model.mpnet.encoder
    bias = encoder.relative_attention_bias.weight.detach().clone()
    remove_layers(model, [0, 3])
    assert encoder.relative_attention_bias.weight.data_ptr() != 0
    torch.testing.assert_close(encoder.relative_attention_bias.weight, bias, atol=0, rtol=0)
    # one bias table for the whole encoder, none inside the kept blocks
    assert not any("relative_attention_bias" in n for n, _ in encoder.layer.named_parameters())
    with torch.no_grad():
        assert len(model(**batch(), output_hidden_states=True).hidden_states) == 3


def test_surgery_through_peft():
    peft = pytest.importorskip("peft")
    model = tiny("roberta", layers=4)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"]))
    remove_layers(wrapped, [0])
    assert num_blocks(wrapped) == 3 and wrapped.get_base_model().config.num_hidden_layers == 3
