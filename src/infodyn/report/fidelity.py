"""How good each criterion's choice is, judged against the oracle's evaluation of every subset.

Per run with `RunResult.oracle`: the rank of its chosen subset (`pruned_layers`) among all
C(L, k) subsets by the oracle metric (1 = best, ties averaged), right after removal and, where
the oracle recovered it, after recovery; its regret (best metric - chosen metric); and
rho(prunability, -damage), damage = single-removal loss - unpruned loss (a good criterion finds
removable the blocks whose removal hurts least, so rho is high).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from infodyn.report.discovery import Run
from infodyn.report.names import criterion_key, label, task_key
from infodyn.results import Oracle, OracleSubset

MIN_BLOCKS_FOR_RHO = 3  # a rank correlation over two blocks is always ±1


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def subset_rank(
    subsets: Sequence[OracleSubset], chosen: Sequence[int], attr: str = "metric"
) -> tuple[float, float, int] | None:
    """`(rank, regret, number ranked)` of `chosen` among the subsets with a finite `attr`.

    Rank 1 = the highest metric; ties share their average rank. None when `chosen` is not
    among them (not evaluated, or not recovered).
    """
    from scipy.stats import rankdata

    pool = [s for s in subsets if _finite(getattr(s, attr))]
    values = np.array([getattr(s, attr) for s in pool], dtype=float)
    want = sorted(int(b) for b in chosen)
    hit = [i for i, s in enumerate(pool) if sorted(s.layers) == want]
    if not hit:
        return None
    ranks = rankdata(-values, method="average")
    i = hit[0]
    return float(ranks[i]), float(values.max() - values[i]), len(pool)


def damage_correlation(prunability: Sequence[float | None] | None, oracle: Oracle) -> float | None:
    """Spearman rho between per-block prunability and minus its single-removal damage."""
    from scipy.stats import spearmanr

    if not prunability or not _finite(oracle.unpruned.loss):
        return None
    pairs = []
    for s in oracle.single:
        if len(s.layers) != 1 or not _finite(s.loss):
            continue
        b = int(s.layers[0])
        if b < len(prunability) and _finite(prunability[b]):
            pairs.append((float(prunability[b]), -(s.loss - oracle.unpruned.loss)))
    if len(pairs) < MIN_BLOCKS_FOR_RHO:
        return None
    x, y = np.array(pairs).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def fidelity_records(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per run with an oracle and a chosen subset, and notes on the runs skipped."""
    records, notes = [], []
    for r in sorted(runs, key=lambda r: (task_key(r.task), criterion_key(r.pruner), str(r.path))):
        o = r.result.oracle
        if o is None:
            continue
        chosen = list(r.result.pruned_layers or [])
        if not chosen:
            continue  # `none` removes nothing: no choice to judge
        if len(chosen) != o.k:
            notes.append(f"{r.path}: removed {len(chosen)} blocks but the oracle has k={o.k}")
            continue
        rank = subset_rank(o.subsets, chosen)
        if rank is None:
            notes.append(f"{r.path}: chosen subset {sorted(chosen)} is not among the oracle's")
            continue
        rec = subset_rank(o.subsets, chosen, "recovered_metric")
        records.append(
            {
                "task": r.task,
                "criterion": r.pruner,
                "seed": r.seed,
                "split": o.split,
                "metric": o.metric,
                "k": o.k,
                "chosen": sorted(chosen),
                "n_subsets": rank[2],
                "rank": rank[0],
                "regret": rank[1],
                "rank_recovered": rec[0] if rec else None,
                "regret_recovered": rec[1] if rec else None,
                "n_recovered": rec[2] if rec else None,
                "rho": damage_correlation(r.result.layer_prunability, o),
            }
        )
    return records, notes


def _mean_n(values: Sequence[float | None]) -> tuple[float | None, int]:
    got = [v for v in values if v is not None]
    return (float(np.mean(got)) if got else None), len(got)


def fidelity_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, criterion, oracle split): means over seeds, each with its n."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["task"], rec["criterion"], rec["split"])].append(rec)
    rows = []
    for (task, crit, split), recs in sorted(
        groups.items(), key=lambda kv: (task_key(kv[0][0]), criterion_key(kv[0][1]), kv[0][2])
    ):
        row = {"task": task, "criterion": crit, "label": label(crit), "split": split}
        row.update(metric=recs[0]["metric"], k=recs[0]["k"], n_subsets=recs[0]["n_subsets"])
        row["seeds"] = [rec["seed"] for rec in recs]
        row["chosen"] = [rec["chosen"] for rec in recs]
        for key in ("rank", "regret", "rank_recovered", "regret_recovered", "rho"):
            row[key], row[f"n_{key}"] = _mean_n([rec[key] for rec in recs])
        rows.append(row)
    return rows
