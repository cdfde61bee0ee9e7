"""What a model folder must hold, and what to tell the user about one that does not.

`model_dir_problems(path)` lists what keeps a folder from loading (no config.json, no
safetensors, only a pickle, no tokenizer); `local_model_folder_usable` (a rule of
`validation.RULES`) refuses such a folder before any work, and the `explain` rules here word the
same paragraph when transformers finds out first. A pickle is never loaded and its message never
passed on: it would suggest loading it unsafely.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from infodyn.errors import ConfigError
from infodyn.tracebacks import frame, path_of, short

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


# transformers' ValueErrors that are about a folder's files (others are wrong arguments: bugs)
MODEL_FILE_MESSAGES = (
    "Unrecognized model",
    "model_type",
    "Couldn't instantiate the backend tokenizer",
    "not a valid JSON",
)


def _model_path(err: BaseException) -> str | None:
    f = frame(err, "from_pretrained")
    if f is None:
        return None
    value = f.f_locals.get("pretrained_model_name_or_path")
    return None if value is None else str(value)


def unsafe_pickle(err: BaseException) -> str | None:
    """A pickle holding more than tensors: never loaded, never a hint to load it unsafely."""
    text = str(err)
    unsafe = "Unsupported global" in text or (
        "weights_only" in text and "Unsupported operand" not in text
    )
    if not unsafe:
        return None
    model = _model_path(err)
    if model is not None:
        pickles = sorted(
            p.name
            for p in (Path(model).iterdir() if Path(model).is_dir() else [])
            if p.suffix in PICKLE_SUFFIXES
        )
        return (
            f"model.name_or_path='{model}' holds its weights only as a pickle "
            f"({', '.join(pickles) or 'pytorch_model.bin'}) that contains more than tensors; "
            "infodyn will not load it, because unpickling it could run code. Fix: use a "
            "copy of the model that ships model.safetensors (from the hub or another source "
            "you trust), or, only if you trust whoever made this file, convert it to "
            "safetensors outside infodyn and point model.name_or_path at the result."
        )
    path = path_of(err) or "a checkpoint"
    return (
        f"'{path}' is a pickle that contains more than tensors; infodyn will not load it, "
        "because unpickling it could run code. Fix: delete it (a rerun redoes the stage that "
        "wrote it), or use a file infodyn wrote itself or one in safetensors format."
    )


def model_dir_problems(path: str) -> list[str]:
    """What keeps the folder at `path` from loading as a model (empty: nothing known)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return []
    names = {x.name for x in p.iterdir()}
    if not names:
        return ["the folder is empty"]
    problems = []
    if "config.json" not in names:
        problems.append("it has no config.json")
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if not has_safetensors and pickles:
        problems.append(
            f"its weights are only a pickle ({', '.join(pickles)}); use a copy that ships "
            "model.safetensors"
        )
    elif not has_safetensors:
        problems.append("it has no weights (model.safetensors)")
    if not names & set(TOKENIZER_FILES):
        problems.append("it has no tokenizer files (tokenizer.json or vocab files)")
    return problems


def model_folder(err: BaseException) -> str | None:
    """An error inside `from_pretrained` about the files of the model folder (or hub id)."""
    model = _model_path(err)
    if model is None:
        return None
    about_files = isinstance(err, OSError) or type(err).__name__ == "SafetensorError"
    if not about_files and not (
        isinstance(err, ValueError) and any(m in str(err) for m in MODEL_FILE_MESSAGES)
    ):
        return None  # another error here (a wrong argument) is a bug
    problems = model_dir_problems(model)
    if type(err).__name__ == "SafetensorError":
        problems.append(f"its safetensors file is truncated or corrupt ({short(err)})")
    elif not problems or "JSON" in str(err):
        problems.append(short(err))
    return unusable_model(model, problems)


def unusable_model(path: str, problems: list[str]) -> str:
    """The paragraph for a model folder that cannot be loaded (`problems`: what is wrong)."""
    return (
        f"model.name_or_path='{path}' is not a usable model: {'; '.join(problems)}. Fix: point "
        "model.name_or_path at a folder written by save_pretrained (config.json, "
        "model.safetensors and the tokenizer files) or at a hub id, or pick a model that works "
        "offline (model=minilm_l6, model=roberta_tiny)."
    )


def local_model_folder_usable(cfg: DictConfig) -> None:
    """A model folder on disk has a readable config.json, whole safetensors and a tokenizer
    (a pickle-only folder is refused: infodyn never unpickles a model)."""
    model = cfg.model
    path = model.get("name_or_path")
    if model.get("source") != "hub" or not path or not Path(str(path)).expanduser().is_dir():
        return
    folder = Path(str(path)).expanduser()
    problems = model_dir_problems(str(folder))
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"its config.json is not valid JSON ({' '.join(str(err).split())})")
    problems += [_truncated(p) for p in sorted(folder.glob("*.safetensors")) if _truncated(p)]
    if problems:
        raise ConfigError(unusable_model(str(path), problems))


def _truncated(path: Path) -> str:
    """Why a safetensors file cannot be whole ('' if its header and sizes agree)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(length)) if 0 < length <= size - 8 else None
    except (OSError, ValueError):
        header = None
    ends = [v["data_offsets"][1] for k, v in (header or {}).items() if k != "__metadata__"]
    if header is None or 8 + length + max(ends, default=0) > size:
        return f"{path.name} is truncated or corrupt ({size} bytes)"
    return ""
