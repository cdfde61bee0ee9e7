"""Finding the block list and the FFN output projection for every supported architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infodyn.layers import (
    LayerListNotFound,
    block_hidden,
    ffn_output_projection,
    find_layer_list,
    num_blocks,
    skip_output,
)
from tiny_models import ALL_ARCHS, tiny

EXPECTED = {
    "roberta": ("layer", "output.dense"),
    "bert": ("layer", "output.dense"),
    "gpt2": ("h", "mlp.c_proj"),
    "llama": ("layers", "mlp.down_proj"),
    "mpnet": ("layer", "output.dense"),
}


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_find_layer_list_and_ffn_projection(arch):
    model = tiny(arch, layers=3)
    parent, name, blocks = find_layer_list(model)
    assert name == EXPECTED[arch][0]
    assert getattr(parent, name) is blocks and len(blocks) == 3 == num_blocks(model)
    block = blocks[1]
    proj = ffn_output_projection(block)
    assert proj is block.get_submodule(EXPECTED[arch][1])
    # Its input is the intermediate activation: width = intermediate size, not hidden size.
    seen = []
    handle = proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    model(input_ids=torch.randint(3, 99, (2, 5)))
    handle.remove()
    assert seen == [37 if arch != "gpt2" else 4 * 32]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_skip_output_has_the_block_s_own_return_format(arch):
    """LayerDrop's skip path must return what the block returns (MPNet: a tuple)."""
    model = tiny(arch, layers=2)
    block = find_layer_list(model)[2][0]
    outs = []
    handle = block.register_forward_hook(lambda m, a, o: outs.append(o))
    model(input_ids=torch.randint(3, 99, (1, 4)))
    handle.remove()
    hidden = block_hidden(outs[0])
    assert isinstance(hidden, torch.Tensor) and hidden.shape == (1, 4, 32)
    skipped = skip_output(block, hidden)
    assert type(skipped) is type(outs[0])
    assert block_hidden(skipped) is hidden


def test_through_peft_wrapper():
    peft = pytest.importorskip("peft")
    model = tiny("roberta", layers=3)
    blocks = find_layer_list(model)[2]
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=2, target_modules=["query", "value", "dense"])
    )
    assert find_layer_list(wrapped)[2] is blocks
    assert num_blocks(wrapped) == 3
    proj = ffn_output_projection(find_layer_list(wrapped)[2][0])
    assert proj is find_layer_list(wrapped)[2][0].output.dense


def test_unknown_architecture_names_class_and_fix():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(LayerListNotFound, match=r"Odd.*Supported: RoBERTa"):
        find_layer_list(Odd())
    with pytest.raises(LayerListNotFound, match="FFN output projection of block Linear"):
        ffn_output_projection(nn.Linear(2, 2))
