"""The config's schema: the type, range and known keys of every value of a job config.

`check_schema(cfg)` checks every value of the composed job config against the models below
(pydantic, strict: 1.7 is never an int, 5 never a bool, unknown keys are refused) and raises one
`ConfigError` paragraph naming the key, the value, what is expected and the fix. The groups that
build a class from `_target_` (`pruner`, `estimator.<name>`, `callbacks`) stay open: their
classes check their own arguments.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infodyn.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range; torch and Python's random accept it too
# Lightning's `precision` values (trainer/connectors/accelerator_connector.py).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")
PRECISIONS += ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class _Open(BaseModel):
    """A node built from `_target_`: its class checks the other keys."""

    model_config = ConfigDict(strict=True, extra="allow")
    target: str = Field(alias="_target_", description="a class path, e.g. one from conf/")


def _int(low: int, high: int | None = None, eg: int = 1, default: Any = ...) -> Any:
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Field(default, ge=low, le=high, description=text, examples=[eg])


SafeName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.,=+-]*[A-Za-z0-9_,=+-][A-Za-z0-9_.,=+-]*$",  # not only dots
        description="a name used as a directory: letters, digits and _ . , = + - only, no "
        "path separator and not '.' or '..'",
        examples=["mrpc"],
    ),
]
Count = Annotated[int, _int(1, eg=32)]
OptCount = Annotated[int | None, _int(1, eg=1000)]


class Paths(_Section):
    root: str
    glue_dir: str | None = None
    cache_dir: str
    output_root: str
    finetune_cache: str


class Data(_Section):
    max_seq_length: int = _int(8, eg=128)
    batch_size: Count
    eval_batch_size: Count
    train_limit: OptCount = None
    eval_limit: OptCount = None
    num_workers: int = _int(0, eg=0, default=0)
    calibration_size: Count = 256
    hub_dataset: str = "nyu-mll/glue"  # a hub id, a mirror, or a local folder in its layout


class Optim(_Section):
    lr: float = Field(gt=0, lt=1, description="a number in (0, 1)", examples=[2e-5])
    weight_decay: float = Field(ge=0, lt=1, description="a number in [0, 1)", examples=[0.01])
    warmup_ratio: float = Field(ge=0, lt=1, description="a number in [0, 1)", examples=[0.06])


class Stages(_Section):
    finetune_epochs: int = _int(0, eg=6)  # 0: the given model is fine-tuned
    recover_epochs: int = _int(0, eg=5)
    oracle: bool = Field(False, description="true or false", examples=[False])


class Run(_Section):
    dry_run: bool = False
    skip_if_complete: bool = True
    share_finetune: bool = False
    save_stage_checkpoints: bool = True
    export_pruned_model: bool = True
    throughput_batches: Count = 3
    throughput_seconds: float = Field(1.0, ge=0, description="a number of seconds >= 0")
    overwrite: bool = False
    keep_checkpoints: list[Literal["finetune", "recover"]] = Field(
        default_factory=list,
        description="a list of training stages, e.g. [finetune, recover] (or [])",
        examples=[["finetune"]],
    )


class Task(_Section):
    name: SafeName
    glue_dir_name: str
    hub_config: str
    sentence1_key: str
    sentence2_key: str | None
    num_labels: int = _int(1, eg=2)
    is_regression: bool
    label_list: list[str] | None
    metrics: list[str] = Field(min_length=1, description="a non-empty list of metric names")
    main_metric: str
    train_file: str
    eval_files: dict[str, str]
    hub_splits: dict[str, str]
    tsv: dict[str, Any] = Field(default_factory=dict)  # the data package reads it
    label_names: list[str] | None = None
    eval_splits: list[str] | None = None
    label_range: list[float] | None = None


class Model(_Section):
    name: SafeName
    source: Literal["hub", "package", "random", "split_zip"] = Field(
        description="one of 'hub', 'package', 'random'", examples=["hub"]
    )
    name_or_path: str | None = None
    package: str | None = None
    subdir: str | None = None
    arch: str | None = None
    tokenizer: str | None = None
    init_seed: int | None = _int(0, SEED_MAX, eg=0, default=None)
    max_position_tokens: int = _int(1, eg=512)
    trust_remote_code: bool = False
    archive: str | None = None
    hub_id: str | None = None
    cache_dir: str | None = None
    config: dict[str, Any] | None = None  # HF config kwargs: transformers checks them


class Finetune(_Section):
    name: Literal["full", "lora", "last_blocks"] = Field(
        description="'full', 'lora' or 'last_blocks'", examples=["full"]
    )
    n: int | None = _int(1, eg=2, default=None)
    r: int | None = _int(1, eg=8, default=None)
    alpha: float | None = Field(None, gt=0, description="a number > 0", examples=[16])
    dropout: float | None = Field(
        None, ge=0, lt=1, description="a number in [0, 1)", examples=[0.1]
    )
    target_modules: list[str] | None = None


_LIMIT = (
    "null, an integer >= 1 (batches) or a fraction in (0, 1] of the batches; 0 would train "
    "on nothing"
)


class Trainer(_Section):
    """Lightning `Trainer` arguments: the basics typed, any other must be a `Trainer` argument."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    target: str | None = Field(None, alias="_target_")
    accelerator: str = Field("auto", description="auto, cpu, gpu, cuda, mps or tpu")
    devices: int | str | list[int] = Field(
        1, description="an integer >= 1, 'auto', or a list of device ids", examples=[1]
    )
    strategy: str = "auto"
    precision: Literal[PRECISIONS] | Literal[16, 32, 64] = Field(
        "32-true",
        description=f"a Lightning precision: {', '.join(PRECISIONS)}",
        examples=["32-true"],
    )
    gradient_clip_val: float | None = Field(None, ge=0, description="null or a number >= 0")
    accumulate_grad_batches: int = _int(1, eg=1)
    log_every_n_steps: int = _int(1, eg=10)
    deterministic: bool | Literal["warn"] = False
    fast_dev_run: bool | Annotated[int, Field(ge=0)] = Field(
        False, description="true, false or a number of batches >= 0"
    )
    limit_train_batches: (
        Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] | None
    ) = Field(None, description=_LIMIT, examples=[0.25])
    limit_val_batches: Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0, le=1)] | None = (
        Field(None, description="null, an integer >= 0 or a fraction in [0, 1]")
    )
    enable_progress_bar: bool | None = None

    @field_validator("devices")
    @classmethod
    def _some_device(cls, value: Any) -> Any:
        if value == 0 or value == [] or (isinstance(value, int) and value < 0):
            raise ValueError("no device")
        if isinstance(value, str) and value != "auto" and not value.lstrip("-").isdigit():
            raise ValueError("not a device count")
        return value


class Logger(BaseModel):
    """The basics of an experiment logger entry; the logger builder reads the rest."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: Literal["none", "csv", "wandb"] | None = Field(
        None, description="'none', 'csv' or 'wandb' (logger=<name>)", examples=["csv"]
    )


class Root(_Section):
    seed: int = Field(
        ge=0,
        le=SEED_MAX,
        description=f"an integer in [0, {SEED_MAX}] (numpy, torch and Python seed "
        "generators take 32 bits)",
        examples=[0],
    )
    run_dir: str | None = None
    project: str
    sweep_name: SafeName
    paths: Paths
    data: Data
    optim: Optim
    stages: Stages
    run: Run
    task: Task
    model: Model
    finetune: Finetune
    estimator: dict[str, _Open] = Field(
        description="a mapping of estimator entries, e.g. estimator=[cosine,gaussian]"
    )
    pruner: _Open = Field(description="a pruner entry from conf/pruner, e.g. pruner=none")
    trainer: Trainer
    logger: Logger
    callbacks: dict[str, Any] | None = None  # Lightning callbacks built from `_target_`
    target: dict[str, float] | None = Field(
        None,
        description="a mapping {metric: number}, e.g. {accuracy: 0.85} (or null for none)",
        examples=[{"accuracy": 0.85}],
    )


def _trainer_arguments() -> set[str]:
    from pytorch_lightning import Trainer as LightningTrainer

    return set(inspect.signature(LightningTrainer.__init__).parameters) - {"self"}


def check_schema(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first value of `cfg` (the job config) the schema refuses."""
    data = _resolved(cfg)
    data.pop("hydra", None)
    try:
        Root.model_validate(data)
    except ValidationError as err:
        raise _explain(err.errors(), data) from None
    extra = set(data["trainer"]) - set(Trainer.model_fields) - _trainer_arguments()
    extra -= {"_target_", "_partial_"}
    if extra:
        key = sorted(extra)[0]
        raise _unknown(("trainer", key), data["trainer"][key], _trainer_arguments())


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf.errors import InterpolationResolutionError

    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except InterpolationResolutionError as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(
            f"{key} cannot be resolved: {' '.join(str(err).split())}. Fix: correct the "
            f"interpolation in {key}, or set {key}=<value> on the command line."
        ) from None


def _explain(errors: list[dict[str, Any]], data: dict[str, Any]) -> ConfigError:
    first = errors[0]
    path, field = _field_path(first["loc"])
    key = ".".join(path)
    if first["type"] == "extra_forbidden":
        return _unknown(tuple(path), first["input"], set(_fields_at(path[:-1])))
    if first["type"] == "missing":
        return ConfigError(
            f"{key} is missing: {_expected(field)} is needed. Fix: set {key}=<value> (or "
            "restore it in the YAML it came from)."
        )
    value = _lookup(data, path)
    known = field is not None and (field.description or field.annotation in (bool, bool | None))
    return ConfigError(
        f"{key}={_show(value)} is invalid: expected {_expected(field)}"
        f"{'' if known else ' (' + first['msg'] + ')'}. Fix: {_fix(key, field)}."
    )


def _unknown(path: tuple[str, ...], value: Any, known: set[str]) -> ConfigError:
    key, section = ".".join(path), ".".join(path[:-1]) or "the config"
    near = difflib.get_close_matches(path[-1], sorted(known), n=1, cutoff=0.5)
    prefix = f"{section}." if len(path) > 1 else ""
    hint = f"the nearest valid key is {prefix}{near[0]}. " if near else ""
    fix = f"{prefix}{near[0]}={_show(value)}" if near else f"drop {key}"
    takes = ", ".join(sorted(known)) if len(known) <= 20 else f"{len(known)} keys"
    return ConfigError(
        f"{key}={_show(value)} is not a key of {section} (it would be silently ignored); "
        f"{hint}{section} takes: {takes}. Fix: {fix}."
    )


def _field_path(loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """The config key of a pydantic error location (union branch tags dropped), and its field."""
    model: Any = Root
    path: list[str] = []
    field = None
    rest = list(loc)
    while rest:
        part = rest.pop(0)
        if isinstance(model, type) and issubclass(model, BaseModel):
            by_alias = {f.alias or n: (n, f) for n, f in model.model_fields.items()}
            if part not in by_alias:
                path.append(str(part))  # an extra key (extra_forbidden)
                break
            name, field = by_alias[part]
            path.append(str(part))
            model = _inner_model(field.annotation)
            if model is dict and rest:
                path.append(str(rest.pop(0)))
                model = _dict_value_model(field.annotation)
                field = None if model is None else field
        else:
            break
    return path, field


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if getattr(annotation, "__origin__", None) is dict:
        return dict
    return None


def _dict_value_model(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", ())
    return _inner_model(args[1]) if len(args) == 2 else None


def _fields_at(path: list[str]) -> list[str]:
    model: Any = Root
    for part in path:
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        nxt = _inner_model(fields[part].annotation) if part in fields else None
        if nxt is dict:
            return []
        model = nxt
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


def _expected(field: Any) -> str:
    if field is None:
        return "a valid value"
    if field.description:
        return field.description
    if field.annotation in (bool, bool | None):
        return "true or false"
    return str(field.annotation)


def _fix(key: str, field: Any) -> str:
    if field is not None and field.examples:
        return f"{key}={_show(field.examples[0])}"
    if field is not None and field.annotation in (bool, bool | None):
        return f"{key}=true or {key}=false"
    return f"{key}=<{_expected(field)}>"


def _lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _show(value: Any) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) and not value else str(value)
