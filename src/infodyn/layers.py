"""Where a model keeps its transformer blocks, for every supported architecture.

Supported: RoBERTa, BERT (incl. MiniLM), MPNet, GPT-2, Llama-style decoders (Llama, Mistral,
Qwen2, ...), bare or under a `*ForSequenceClassification` head, optionally wrapped by a peft
`PeftModel`. MPNet's relative attention bias lives in its encoder, outside the blocks, and is
shared by all of them, so removing a block leaves it intact.
Block index b is 0-based and matches `hidden_states[b] -> hidden_states[b + 1]` (see
docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from infodyn.errors import ConfigError

SUPPORTED = "RoBERTa, BERT/MiniLM, MPNet (encoder.layer), GPT-2 (h), Llama-style decoders (layers)"

# (path to the ModuleList from the backbone) per family; first match wins.
_LAYER_PATHS: tuple[tuple[str, ...], ...] = (
    ("encoder", "layer"),  # BERT, RoBERTa, MiniLM, MPNet
    ("h",),  # GPT-2
    ("layers",),  # Llama, Mistral, Qwen2
)

# Output projection of the FFN, whose input is the post-nonlinearity activation [B, T, F].
_FFN_OUT_PATHS: tuple[tuple[str, ...], ...] = (
    # BERT, RoBERTa, MPNet (attention's own projection is attention.output.dense / attention.o)
    ("output", "dense"),
    ("mlp", "c_proj"),  # GPT-2
    ("mlp", "down_proj"),  # Llama-style
)


class LayerListNotFound(ConfigError):
    """The model's transformer blocks could not be located."""


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a peft `PeftModel` (or `model` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _walk(root: nn.Module, path: tuple[str, ...]) -> tuple[nn.Module, str, nn.Module] | None:
    parent = root
    for name in path[:-1]:
        parent = getattr(parent, name, None)
        if not isinstance(parent, nn.Module):
            return None
    child = getattr(parent, path[-1], None)
    return (parent, path[-1], child) if isinstance(child, nn.ModuleList) else None


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """`(parent, attribute, blocks)` such that `getattr(parent, attribute) is blocks`.

    Raises:
        LayerListNotFound: the architecture is not supported.
    """
    base = unwrap(model)
    prefix = getattr(base, "base_model_prefix", "")
    backbone = getattr(base, prefix, None) if prefix else None
    roots = [r for r in (backbone, base) if isinstance(r, nn.Module)]
    for root in roots:
        for path in _LAYER_PATHS:
            found = _walk(root, path)
            if found is not None:
                return found  # type: ignore[return-value]
    raise LayerListNotFound(
        f"cannot find the transformer blocks of {type(base).__name__}. Supported: {SUPPORTED}. "
        "Fix: use a supported model=..., or add the block list's path to "
        "infodyn.layers._LAYER_PATHS."
    )


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks L (hidden_states has L + 1 entries)."""
    return len(find_layer_list(model)[2])


def ffn_output_projection(block: nn.Module) -> nn.Module:
    """The FFN output projection of `block`; its input is the post-nonlinearity activation.

    BERT/RoBERTa/MPNet `output.dense`, GPT-2 `mlp.c_proj`, Llama `mlp.down_proj`.
    """
    for path in _FFN_OUT_PATHS:
        module: nn.Module | None = block
        for name in path:
            module = getattr(module, name, None)
            if not isinstance(module, nn.Module):
                break
        else:
            return module  # type: ignore[return-value]
    raise LayerListNotFound(
        f"cannot find the FFN output projection of block {type(block).__name__}. Supported: "
        f"{SUPPORTED}. Fix: add its path to infodyn.layers._FFN_OUT_PATHS."
    )


def _returns_tuple(block: nn.Module) -> bool:
    # transformers v5 blocks return the hidden-states Tensor, except MPNet's (a tuple whose
    # first entry its encoder reads)
    try:
        from transformers.models.mpnet.modeling_mpnet import MPNetLayer
    except ImportError:  # pragma: no cover - transformers without MPNet
        return False
    return isinstance(block, MPNetLayer)


def skip_output(block: nn.Module, hidden_states: Tensor) -> Any:
    """What `block` returns when it is skipped (identity): in the block's own return format."""
    return (hidden_states,) if _returns_tuple(block) else hidden_states


def block_hidden(output: Any) -> Tensor:
    """The hidden states in a block's return value (a Tensor, or a tuple's first entry)."""
    return output[0] if isinstance(output, tuple | list) else output
