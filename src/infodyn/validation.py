"""Input checks before any training: config values, output paths, then the built model."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.errors import ConfigError

# Lightning's accepted `precision` values (trainer/connectors/accelerator_connector.py).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")
PRECISIONS += ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")
# A value used as a directory name (run dirs, W&B names): no separators, no `..`.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.,=+-]+$")


def validate(cfg: DictConfig) -> None:
    """Cheap checks on plain config values (types and ranges), before anything is loaded."""
    checks = [
        ("seed", cfg.get("seed"), int, lambda v: v >= 0, "a non-negative integer"),
        ("data.batch_size", cfg.data.batch_size, int, lambda v: v >= 1, "an integer >= 1"),
        (
            "data.eval_batch_size",
            cfg.data.eval_batch_size,
            int,
            lambda v: v >= 1,
            "an integer >= 1",
        ),
        ("data.max_seq_length", cfg.data.max_seq_length, int, lambda v: v >= 8, "an integer >= 8"),
        ("optim.lr", cfg.optim.lr, float, lambda v: 0 < v < 1, "a float in (0, 1), e.g. 2e-5"),
        (
            "optim.warmup_ratio",
            cfg.optim.warmup_ratio,
            float,
            lambda v: 0 <= v < 1,
            "a float in [0, 1)",
        ),
        (
            "stages.finetune_epochs",
            cfg.stages.finetune_epochs,
            int,
            lambda v: v >= 0,
            "an integer >= 0",
        ),
        (
            "stages.recover_epochs",
            cfg.stages.recover_epochs,
            int,
            lambda v: v >= 0,
            "an integer >= 0",
        ),
    ]
    for opt in ("train_limit", "eval_limit"):
        if cfg.data.get(opt) is not None:
            checks.append(
                (f"data.{opt}", cfg.data[opt], int, lambda v: v >= 1, "null or an integer >= 1")
            )
    optional = [
        ("data.calibration_size", cfg.data.get("calibration_size"), int, ">= 1", 1),
        ("data.num_workers", cfg.data.get("num_workers"), int, ">= 0", 0),
        ("run.throughput_batches", cfg.run.get("throughput_batches"), int, ">= 1", 1),
        (
            "trainer.accumulate_grad_batches",
            cfg.trainer.get("accumulate_grad_batches"),
            int,
            ">= 1",
            1,
        ),
        ("trainer.gradient_clip_val", cfg.trainer.get("gradient_clip_val"), float, ">= 0", 0),
    ]
    if cfg.finetune.get("name") == "lora":
        optional += [
            ("finetune.r", cfg.finetune.get("r"), int, ">= 1", 1),
            ("finetune.alpha", cfg.finetune.get("alpha"), float, "> 0", 1e-12),
            ("finetune.dropout", cfg.finetune.get("dropout"), float, ">= 0 (and < 1)", 0),
        ]
    for key, value, typ, text, low in optional:
        if value is not None:
            bound = 1 if key == "finetune.dropout" else math.inf
            checks.append(
                (
                    key,
                    value,
                    typ,
                    lambda v, lo=low, hi=bound: lo <= v < hi,
                    f"a {typ.__name__} {text}",
                )
            )
    for key, value, typ, ok, want in checks:
        cast = value
        if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
            cast = float(value)
        if isinstance(value, bool) or not isinstance(cast, typ) or not ok(cast):
            raise ConfigError(f"{key}={value!r} is invalid: expected {want}. Fix: {key}=<{want}>.")
    if cfg.finetune.get("name") not in ("full", "lora"):
        raise ConfigError(
            f"finetune={cfg.finetune.get('name')!r} is unknown. Fix: finetune=full "
            "or finetune=lora."
        )
    precision = str(cfg.trainer.get("precision"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not a Lightning precision. Fix: "
            "trainer.precision=32-true (or bf16-mixed, 16-mixed on a GPU)."
        )
    _check_strategy(cfg)
    if cfg.logger.get("name", "none") not in ("none", "csv", "wandb"):
        raise ConfigError(
            f"logger.name={cfg.logger.get('name')!r} is unknown. Fix: logger=wandb, logger=csv "
            "or logger=none."
        )
    reduce = cfg.pruner.get("reduce") if isinstance(cfg.get("pruner"), Mapping) else None
    if reduce is not None and reduce not in ("last", "mean", "calibration"):
        raise ConfigError(
            f"pruner.reduce={reduce!r} is unknown. Fix: pruner.reduce=last, mean or calibration."
        )
    for key in ("task.name", "model.name", "sweep_name"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _SAFE_NAME.match(str(value)) or set(str(value)) == {"."}):
            raise ConfigError(
                f"{key}={value!r} is used as a directory name but holds a path separator, '..' "
                "or other unsafe characters. Fix: letters, digits and _ . , = + - only."
            )


def check_output_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse output paths that climb out of their root through `..` components."""
    from hydra.core.hydra_config import HydraConfig

    settings = {"run_dir": cfg.get("run_dir")}
    if not cfg.get("run_dir") and HydraConfig.initialized():
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            settings["hydra.sweep.dir"] = hc.sweep.dir
            settings["hydra.sweep.subdir"] = hc.sweep.subdir
        else:
            settings["hydra.run.dir"] = hc.run.dir
    for key, value in settings.items():
        if value is not None and ".." in Path(str(value)).parts:
            raise ConfigError(
                f"{key}={value!r} contains a '..' component, so outputs could land outside "
                f"the run directory. Fix: give {key} (and the config values it is built from) "
                "without '..', e.g. an absolute path."
            )


def preflight(cfg: DictConfig, module: Any, tokenizer: Any) -> None:
    """Checks that need the built model: the tokenizer fits its vocabulary, the sequence length
    its positions. (The pruner checks k and protect itself: `LayerPruner.check`.)"""
    from infodyn.models import find_hf_model, max_positions

    hf_model = find_hf_model(module.model)
    embeddings = hf_model.get_input_embeddings()
    vocab = int(embeddings.num_embeddings)
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"the tokenizer of model={cfg.model.name} has {len(tokenizer)} ids but the model's "
            f"embedding table has {vocab} rows (model.config.vocab_size), so ids >= {vocab} "
            "would crash the forward. Fix: set the model's vocab_size to at least "
            f"{len(tokenizer)}, or pair the model with its own tokenizer."
        )
    limit = max_positions(hf_model)
    if limit is not None and int(cfg.data.max_seq_length) > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
            f"limit of {limit} tokens. Fix: data.max_seq_length={limit} or less."
        )


def _check_strategy(cfg: DictConfig) -> None:
    """Strategy/accelerator combinations Lightning would refuse only after the data is built."""
    import torch

    strategy = str(cfg.trainer.get("strategy", "auto"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Fix: "
            "trainer=cpu (or trainer=ddp trainer.accelerator=cpu for several processes), or "
            "run on a GPU machine with a CUDA build of torch."
        )
    if strategy.startswith("fsdp"):
        if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
            raise ConfigError(
                f"trainer={strategy} (strategy={strategy}) needs CUDA GPUs: Lightning's FSDP "
                f"refuses accelerator={accelerator!r}"
                + ("" if accelerator == "cpu" else " on a machine without a GPU")
                + ". Fix: run it on GPUs (trainer.accelerator=gpu), or use trainer=ddp "
                "(gloo on CPU) or trainer=cpu here."
            )
