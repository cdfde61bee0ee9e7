"""One run's record: the schema of `results.json`, written and read only through `RunResult`.

Layer-indexed lists are indexed by the 0-based block index of the *unpruned* model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infodyn.io import atomic_write_json, finite, read_json

SCHEMA_VERSION = 2
STAGE_ORDER = ("final", "recover", "pruned", "finetune")  # latest first: what a run ends with
BELOW_TARGET = "below_target"  # a pruning job not run: its plain fine-tune missed `target`


@dataclass
class Throughput:
    """Eval examples per second on the same fixed-shape batches, before and after pruning."""

    before: float
    after: float
    speedup: float
    batches: int
    seconds: float | None = None  # timed seconds per model (the stopping rule's budget)


@dataclass
class OracleSubset:
    """One removed block subset evaluated without recovery (and, optionally, after it)."""

    layers: list[int]
    metric: float | None
    loss: float | None
    recovered_metric: float | None = None


@dataclass
class Oracle:
    """Every C(L, k) subset removed and evaluated: the ground truth for the criteria."""

    split: str  # "dev" (analysis) or "selection" (the oracle pruner's training-data split)
    metric: str
    k: int
    num_examples: int
    unpruned: OracleSubset
    subsets: list[OracleSubset]
    single: list[OracleSubset]  # each block removed alone: its removal damage

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Oracle:
        return cls(
            split=d["split"],
            metric=d["metric"],
            k=int(d["k"]),
            num_examples=int(d["num_examples"]),
            unpruned=OracleSubset(**d["unpruned"]),
            subsets=[OracleSubset(**s) for s in d["subsets"]],
            single=[OracleSubset(**s) for s in d["single"]],
        )


@dataclass
class RunResult:
    """What one job produced. `metrics` maps stage -> {metric: value}; stages: finetune, pruned
    (right after removal), recover (after recovery training), final (what the run ends with)."""

    task: str
    model: str
    seed: int
    pruner: str
    estimator: str
    finetune: str
    sweep: str
    job_name: str
    main_metric: str
    status: str = "complete"  # "complete" | "failed" | BELOW_TARGET (target.py)
    reason: str | None = None  # why a job that is not complete stopped
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    num_layers_before: int | None = None
    num_layers_after: int | None = None
    num_parameters_before: int | None = None
    num_parameters_after: int | None = None
    layer_scores: list[float | None] | None = None  # the criterion's raw values
    layer_prunability: list[float | None] | None = None  # higher = remove first
    pruned_layers: list[int] = field(default_factory=list)
    throughput: Throughput | None = None
    profiles: dict[str, Any] = field(default_factory=dict)
    oracle: Oracle | None = None
    wall_time_s: float | None = None
    config_path: str | None = None
    config_hash: str | None = None  # fingerprint of the resolved config that made this run
    schema_version: int = SCHEMA_VERSION

    def main_value(self, stage: str | None = None) -> float | None:
        """The task's main metric at `stage` (default: the latest stage the run has)."""
        stage = stage or next((s for s in STAGE_ORDER if s in self.metrics), None)
        return self.metrics.get(stage, {}).get(self.main_metric) if stage else None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def below_target(self) -> bool:
        return self.status == BELOW_TARGET

    def to_dict(self) -> dict[str, Any]:
        return finite(dataclasses.asdict(self))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("throughput"):
            kw["throughput"] = Throughput(**kw["throughput"])
        if kw.get("oracle"):
            kw["oracle"] = Oracle.from_dict(kw["oracle"])
        kw.setdefault("schema_version", 1)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kw and _required(f)]
        if missing:
            raise ValueError(f"results record lacks {missing}")
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> RunResult | None:
        """The record at `path`; None when absent, corrupt or not a run record."""
        data = read_json(path)
        if not isinstance(data, dict):
            return None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError, KeyError):
            return None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
