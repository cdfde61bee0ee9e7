"""Shared fixtures: compose the real `conf/config.yaml` and shrink it (no hub, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(
    args: list[str], project_root: Path, glue_dir: Path | str, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python -m infodyn *args` as a user runs it: offline, outputs under `project_root`."""
    env = {
        **os.environ,
        "PROJECT_ROOT": str(project_root),
        "GLUE_DIR": str(glue_dir),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "infodyn", *args],
        capture_output=True,
        text=True,
        cwd=CONF_DIR.parent,
        env=env,
        timeout=timeout,
    )


def run_rank_script(argv: list[str], out_dir: Path, world: int = 2) -> list[dict]:
    """Run a multi-process test script (it writes `rank<r>.json` into `out_dir`); its outputs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]


def compose_config(
    overrides: list[str] | None = None, return_hydra_config: bool = False
) -> DictConfig:
    """The real primary config with `overrides`, through Hydra's compose API."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=overrides or [], return_hydra_config=return_hydra_config
        )


TINY = [
    "model=roberta_tiny",
    "trainer=cpu",
    "logger=none",
    "estimator=[cosine,knowledge_entropy]",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.max_seq_length=32",
    "data.calibration_size=8",
    "stages.finetune_epochs=2",
    "stages.recover_epochs=1",
    "optim.lr=1e-3",
    "run.throughput_batches=1",
    "run.throughput_seconds=0",
]


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    """All eight tasks written in their classic GLUE layout (small, with the real quirks)."""
    from glue_layout import write_all_tasks

    root = tmp_path / "glue"
    write_all_tasks(root, n_train=24, n_dev=12)
    return root


@pytest.fixture
def tiny_cfg(tmp_path: Path, glue_dir: Path) -> Callable[..., DictConfig]:
    """`tiny_cfg(*overrides)` -> a composed config for `roberta_tiny` that runs in seconds."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_config(TINY + list(overrides))
        with open_dict(cfg):
            cfg.paths.glue_dir = str(glue_dir)
            cfg.paths.cache_dir = str(tmp_path / "cache")
            if cfg.get("run_dir") is None:
                cfg.run_dir = str(tmp_path / "run")
        OmegaConf.resolve(cfg)
        return cfg

    return make
