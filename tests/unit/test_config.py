"""Every option of every config group, every experiment and every sweep composes, and every
`_target_` binds its class's signature without being built (TT `config/_validate.py` style)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import CONF_DIR, compose_config

GROUPS = [
    "task",
    "model",
    "finetune",
    "estimator",
    "pruner",
    "trainer",
    "logger",
    "experiment",
    "sweep",
]
SWEEPS_DIR = CONF_DIR.parent / "multirun_sweeps"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def targets(node, path: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted path, mapping) for every node with a `_target_`."""
    if isinstance(node, DictConfig | dict):
        plain = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
        if "_target_" in plain:
            yield path, plain
        for key, value in plain.items():
            yield from targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig | list):
        for i, value in enumerate(node):
            yield from targets(value, f"{path}[{i}]")


def bind(path: str, spec: dict) -> None:
    module, _, name = spec["_target_"].rpartition(".")
    obj = getattr(importlib.import_module(module), name)
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    if path.startswith("pruner"):
        kwargs.pop("name", None)  # a pruner's display name: build_pruner reads it, not the class
    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError as err:
        raise AssertionError(
            f"{path}: {spec['_target_']} does not accept {kwargs}: {err}"
        ) from err


def test_every_group_has_its_options() -> None:
    assert options("task") == sorted(
        ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    )
    assert {"roberta_base", "roberta_large", "bert_base", "minilm_l6", "roberta_tiny"} <= set(
        options("model")
    )
    assert {"cosine", "gaussian", "exact", "knowledge_entropy", "none"} <= set(
        options("estimator")
    )
    assert {
        "none",
        "redundancy",
        "knowledge_entropy",
        "layerdrop",
        "slimllm",
        "angular",
        "last_k",
        "random",
        "greedy",
    } <= set(options("pruner"))
    assert {"default", "cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))
    assert {"quickstart", "paper"} <= set(options("experiment"))
    assert {
        "paper_table1",
        "paper_fig1",
        "cpu_table1",
        "ablate_pooling",
        "ablate_batch_size",
        "ablate_pairing",
        "ablate_k",
        "ablate_estimator",
    } <= set(options("sweep"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_targets_bind(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    found = list(targets(cfg))
    for path, spec in found:
        bind(path, spec)
    if group == "estimator" and option != "none":
        assert list(cfg.estimator) == [option]  # lands at estimator.<name>
    if group == "estimator" and option == "none":
        assert dict(cfg.estimator) == {}
    if group == "pruner":
        assert any(p == "pruner" for p, _ in found)
    if group == "sweep":
        assert cfg.sweep_name == option, "a sweep names its W&B group / output dir after itself"


def test_several_estimators_at_once() -> None:
    cfg = compose_config(["estimator=[cosine,gaussian,knowledge_entropy]"])
    assert set(cfg.estimator) == {"cosine", "gaussian", "knowledge_entropy"}


def test_cross_group_values_are_interpolated() -> None:
    cfg = compose_config(["task=stsb", "model=roberta_tiny"])
    assert cfg.logger.wandb.job_type == "stsb"
    assert cfg.estimator.cosine.seed == cfg.seed
    cfg = compose_config(["seed=7", "pruner=random"])
    assert cfg.pruner.seed == 7


def test_experiments_override_the_primary_config() -> None:
    quick = compose_config(["experiment=quickstart"])
    assert quick.model.name == "minilm_l6" and quick.task.name == "sst2"
    assert quick.data.train_limit == 4000 and quick.stages.finetune_epochs == 2
    paper = compose_config(["experiment=paper"])
    assert paper.model.name == "roberta_base" and paper.stages.finetune_epochs == 6
    assert paper.stages.recover_epochs == 5 and paper.pruner.k == 4
    assert paper.data.batch_size == 32


def test_task_model_specialisation_applies() -> None:
    cfg = compose_config(["task=rte", "model=roberta_base"])
    assert cfg.data.batch_size == 16  # conf/task_model/rte_roberta_base.yaml
    assert compose_config(["task=sst2", "model=roberta_base"]).data.batch_size == 32


@pytest.mark.parametrize("sweep", options("sweep"))
def test_sweep_params_each_compose(sweep: str) -> None:
    cfg = compose_config([f"sweep={sweep}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{sweep} sweeps nothing"
    text = (SWEEPS_DIR / f"{sweep}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert any(line.startswith("# Question") for line in text[1:4]), "say what it answers"
    assert any("python -m infodyn -m sweep=" in line for line in text[1:5]), "and how to run it"
    for key, values in params.items():
        for value in str(values).split(","):
            sub = compose_config([f"sweep={sweep}", f"{key}={value.strip()}"])
            for path, spec in targets(sub):
                bind(path, spec)
    assert sweep in (SWEEPS_DIR / "README.md").read_text()


def test_launchers_bind() -> None:
    for launcher in ("local_parallel", "slurm"):
        cfg = compose_config([f"hydra/launcher={launcher}"], return_hydra_config=True)
        spec = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        module, _, name = spec["_target_"].rpartition(".")
        assert importlib.import_module(module), name


def test_sweep_dir_excludes_seed_from_override_dirname() -> None:
    cfg = compose_config([], return_hydra_config=True)
    assert "seed" in cfg.hydra.job.config.override_dirname.exclude_keys
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"].endswith(
        "/seed=${seed}"
    )


def test_self_comes_first_so_experiments_win() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infodyn", "--info", "defaults-tree"],
        capture_output=True,
        text=True,
        cwd=CONF_DIR.parent,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    tree = out.stdout[out.stdout.index("\n  config:") :]
    assert tree.split()[1] == "_self_"


def test_unknown_option_names_the_choices() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infodyn", "task=sst3", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=CONF_DIR.parent,
        timeout=120,
    )
    assert out.returncode != 0
    assert "sst3" in out.stderr and "sst2" in out.stderr  # Hydra lists the available options


def test_multirun_cfg_job_for_a_shrunk_sweep(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "infodyn",
            "-m",
            "sweep=cpu_table1",
            "task=mrpc",
            "pruner=none,redundancy",
            "seed=0",
            "model=roberta_tiny",
            "run.dry_run=true",
        ],
        capture_output=True,
        text=True,
        cwd=CONF_DIR.parent,
        timeout=120,
        env={**__import__("os").environ, "PROJECT_ROOT": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("sweep_name: cpu_table1") == 2, "one resolved config per job"
    assert "name: redundancy" in out.stdout or "RedundancyPruner" in out.stdout
    assert not list(tmp_path.rglob("results.json")), "a dry run must not run jobs"
