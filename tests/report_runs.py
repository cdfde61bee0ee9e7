"""Hand-written results.json trees for the report tests (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TASKS = {"mrpc": "f1", "rte": "accuracy"}
PRUNERS = ("none", "redundancy", "last_k", "knowledge_entropy")
SEEDS = (0, 1, 2)
BASE = {  # per (task, pruner): final metric of seed 0; other seeds add OFFSETS
    ("mrpc", "none"): 0.90,
    ("mrpc", "redundancy"): 0.86,
    ("mrpc", "last_k"): 0.84,
    ("rte", "none"): 0.70,
    ("rte", "redundancy"): 0.64,
    ("rte", "last_k"): 0.66,
    ("mrpc", "knowledge_entropy"): 0.81,
    ("rte", "knowledge_entropy"): 0.61,
}
OFFSETS = {0: 0.0, 1: 0.013, 2: -0.021}
MISSING = ("rte", "last_k", 2)  # never written
FAILED = ("mrpc", "redundancy", 1)  # status "failed"
TRUNCATED = ("rte", "none", 1)  # half a JSON file
LAYERS, EPOCHS = 12, 6
PARAMS_BEFORE, PARAMS_BLOCK = 124_647_170, 7_087_872


def final_metric(task: str, pruner: str, seed: int) -> float:
    jitter = ((seed * 7 + len(pruner) * 3) % 5) * 0.002  # seed effects differ per pruner
    return BASE[(task, pruner)] + OFFSETS[seed] + jitter


def profile(seed: int) -> list[list[float]]:
    """∩-shaped redundancy over 12 blocks that rises and sharpens over 6 epochs."""
    x = (np.arange(LAYERS) + 0.5) / LAYERS
    rng = np.random.default_rng(seed)
    return [
        (0.35 + 0.08 * e * np.sin(np.pi * x) ** (1 + 0.3 * e) + 0.01 * rng.standard_normal(LAYERS))
        .round(5)
        .tolist()
        for e in range(EPOCHS)
    ]


def layer_scores(pruner: str, seed: int) -> list[float | None] | None:
    if pruner == "redundancy":
        return [None] + profile(seed)[-1][1:]  # block 0 unscored
    if pruner == "none":
        return None  # the pipeline writes null when nothing was scored
    if pruner == "knowledge_entropy":  # rises with depth, unlike the ∩ of redundancy
        rng = np.random.default_rng(100 + seed)
        return (np.linspace(0.1, 1.0, LAYERS) ** 2 + 0.05 * rng.standard_normal(LAYERS)).tolist()
    return [None] * LAYERS


def job_dir(root: Path, task: str, pruner: str, seed: int) -> Path:
    return root / f"pruner={pruner},task={task}" / f"seed={seed}"


def results(task: str, pruner: str, seed: int, **over) -> dict:
    metric = TASKS.get(task, "accuracy")
    value = final_metric(task, pruner, seed) if (task, pruner) in BASE else 0.5
    other = "accuracy" if metric == "f1" else None
    finals = {metric: value, **({other: value - 0.03} if other else {})}
    scores = layer_scores(pruner, seed)
    removed = 0 if pruner == "none" else 3
    data = {
        "task": task,
        "model": "roberta_base",
        "seed": seed,
        "pruner": pruner,
        "estimator": "cosine",
        "finetune": "full",
        "sweep": "glue_all_pruners",
        "job_name": f"pruner={pruner},task={task}",
        "status": "complete",
        "main_metric": metric,
        "metrics": {
            "finetune": {k: v + 0.05 for k, v in finals.items()},
            "pruned": {k: v - 0.1 for k, v in finals.items()},
            "recover": dict(finals),
            "final": dict(finals),
        },
        "num_layers_before": LAYERS,
        "num_layers_after": LAYERS - removed,
        "num_parameters_before": PARAMS_BEFORE,
        "num_parameters_after": PARAMS_BEFORE - removed * PARAMS_BLOCK,
        "layer_scores": scores,
        "layer_prunability": scores,  # these criteria: higher raw = remove first
        "pruned_layers": [] if pruner == "none" else [4, 5, 6],
        "throughput": None
        if pruner == "none"
        else {"before": 100.0, "after": 125.0 + seed, "speedup": 1.25 + seed / 100, "batches": 8},
        "profiles": {
            "indexing": "0-based block index",
            "finetune": {"cosine": {"layers": list(range(LAYERS)), "redundancy": profile(seed)}},
        },
        "wall_time_s": 1.0,
        "config_path": "config_resolved.yaml",
    }
    data.update(over)
    return data


def resolved_config(task: str, pruner: str, seed: int, model: str = "roberta_base") -> str:
    """A cut-down config_resolved.yaml as pipeline.run writes it."""
    return (
        f"task: {{name: {task}}}\nmodel: {{name: {model}}}\npruner: {{name: {pruner}}}\n"
        f"seed: {seed}\nrun_dir: null\nsweep_name: glue_all_pruners\n"
        f"paths: {{root: /somewhere/{seed}}}\nrun: {{skip_if_complete: true}}\n"
        "stages: {finetune_epochs: 6, recover_epochs: 5}\ndata: {num_workers: 0}\n"
        "estimator: {cosine: {_target_: infodyn.estimators.cosine.CosineRedundancy}}\n"
    )


def write_job(root: Path, data: dict) -> Path:
    d = job_dir(root, data["task"], data["pruner"], data["seed"])
    d.mkdir(parents=True, exist_ok=True)
    config = resolved_config(data["task"], data["pruner"], data["seed"], data["model"])
    (d / "config_resolved.yaml").write_text(config)
    (d / "results.json").write_text(json.dumps(data))
    return d


def build_sweep(root: Path) -> Path:
    """2 tasks × 4 pruners × 3 seeds; one seed missing, one failed, one truncated."""
    for task in TASKS:
        for pruner in PRUNERS:
            for seed in SEEDS:
                job = (task, pruner, seed)
                if job == MISSING:
                    continue
                status = "failed" if job == FAILED else "complete"
                d = write_job(root, results(task, pruner, seed, status=status))
                if job == TRUNCATED:
                    text = (d / "results.json").read_text()
                    (d / "results.json").write_text(text[: len(text) // 2])
    return root


def complete_values(task: str, pruner: str) -> dict[int, float]:
    bad = {MISSING, FAILED, TRUNCATED}
    return {s: final_metric(task, pruner, s) for s in SEEDS if (task, pruner, s) not in bad}
