"""Per-layer profiles and criterion rankings read out of the runs, ready to plot or test."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from infodyn.report.discovery import Run, criteria_of
from infodyn.report.names import BASELINE


@contextlib.contextmanager
def quiet_nan() -> Iterator[None]:
    """Silence numpy's all-NaN-slice warnings: unscored blocks are NaN by contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def float_array(x: Any) -> np.ndarray:
    """Nested lists with None as NaN."""
    if x and not isinstance(x[0], list | tuple):
        return np.array([np.nan if v is None else v for v in x], dtype=float)
    return np.array([[np.nan if v is None else v for v in row] for row in x], dtype=float)


def profile_stack(
    runs: Sequence[Run],
    task: str,
    estimator: str = "cosine",
    series: str = "redundancy",
    stage: str = "finetune",
) -> tuple[np.ndarray, np.ndarray, list[Run]] | None:
    """Seeds × epochs × layers of `profiles[stage][estimator][series]` for one task.

    Uses the task's `none` runs, or all its runs when it has none, one run per (model, seed):
    the criteria of one seed share its fine-tune, so a second copy is no new sample. Epochs are
    cut to the shortest run; runs whose layer list differs from the first are dropped.

    Returns:
        `(stack, layers, runs used)` or None when no run has the profile.
    """
    pool = [r for r in runs if r.task == task]
    pool = [r for r in pool if r.pruner == BASELINE] or pool
    arrays, layers, used, seen = [], None, [], set()
    for r in sorted(pool, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))):
        prof = ((r.result.profiles or {}).get(stage) or {}).get(estimator) or {}
        if not isinstance(prof, dict) or not prof.get(series) or (r.model, r.seed) in seen:
            continue
        arr = float_array(prof[series])
        lay = np.asarray(prof.get("layers") or range(arr.shape[-1]), dtype=int)
        if arr.ndim != 2 or arr.shape[1] != lay.size:
            continue
        if layers is None:
            layers = lay
        if not np.array_equal(lay, layers):
            print(
                f"WARNING: {r.path}: profile layers {lay.tolist()} differ; left out of "
                f"the {task} profile",
                file=sys.stderr,
            )
            continue
        seen.add((r.model, r.seed))
        arrays.append(arr)
        used.append(r)
    if not arrays:
        return None
    epochs = min(a.shape[0] for a in arrays)
    if any(a.shape[0] != epochs for a in arrays):
        print(
            f"WARNING: {task}: runs have different epoch counts; the profile uses the first "
            f"{epochs}",
            file=sys.stderr,
        )
    return np.stack([a[:epochs] for a in arrays]), layers, used


def criterion_prunability(runs: Sequence[Run], task: str) -> dict[str, np.ndarray]:
    """Per criterion, its `layer_prunability` (higher = remove first) averaged over seeds.

    Ranking raw `layer_scores` would mix orientations (distances, removal ranks, scores).
    Records of the old schema (raw scores but no prunability) are skipped with a note; criteria
    without usable values (all null, under two finite, constant, lengths that differ between
    seeds) are left out: `none`, `last_k`, `random` typically.
    """
    out: dict[str, np.ndarray] = {}
    mine = [r for r in runs if r.task == task]
    for crit in criteria_of(mine):
        rows = []
        for r in (r for r in mine if r.pruner == crit):
            p = r.result.layer_prunability
            if p:
                rows.append(float_array(p))
            elif r.result.layer_scores and any(v is not None for v in r.result.layer_scores):
                print(
                    f"NOTE: {r.path}: layer_scores but no layer_prunability (schema "
                    f"{r.result.schema_version}); left out of the rankings",
                    file=sys.stderr,
                )
        if not rows or len({a.size for a in rows}) > 1:
            continue
        with quiet_nan():
            mean = np.nanmean(np.stack(rows), axis=0)
        if np.sum(np.isfinite(mean)) < 2 or np.nanmax(mean) == np.nanmin(mean):
            continue
        out[crit] = mean
    return out


def spearman_matrix(scores: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Spearman rank correlation between criteria over the layers both score.

    Criteria of different depths (runs of different models) have no common layers: NaN.
    """
    from scipy.stats import spearmanr

    names = list(scores)
    rho = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(scores.values()):
        for j, b in enumerate(scores.values()):
            if a.size != b.size:
                continue
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() >= 2:
                with quiet_nan():
                    rho[i, j] = spearmanr(a[ok], b[ok]).statistic
    return names, rho
