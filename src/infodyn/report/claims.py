"""A verdict per claim of the paper, from the runs, whatever it comes out as.

Each claim is tested per task (or per task and baseline) on one number per seed, with a
Student-t 95% interval over seeds: "supported" when the interval lies on the claim's side,
"not supported" when it lies on the other, else "undecided". Under `FEW_SEEDS` seeds, or with
no runs, a claim is "undecided" whatever its numbers. A claim holds overall only if it holds
on every item (the paper states each as universal across tasks); one item against it refutes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from infodyn.report.discovery import Run, tasks_of
from infodyn.report.names import REFERENCE, label, task_label
from infodyn.report.profiles import profile_stack
from infodyn.report.stats import FEW_SEEDS, Interval, cell_values, paired, t_interval

PAPER_DEPTH, PAPER_BAND = 12, (3, 8)  # "a pronounced peak ... typically layers 3 to 8" of 12
STABLE_RHO = 0.8  # consecutive epochs rank the layers alike: strong rank agreement
FINAL_R, FINAL_DECADES = 1e-3, 1.0  # "near 1e-3": within a factor of 10
BASELINES = (("knowledge_entropy",), ("layerdrop_random", "layerdrop"), ("slimllm",))
SUPPORTED, REFUTED = "supported", "not supported"
NOT_COUNTED = "not counted"  # a task left out of Table 1: shown, not in the verdict


def band(depth: int) -> tuple[int, int]:
    """The paper's layers 3–8 of 12 scaled to `depth`: 1-based ⌈3L/12⌉ … ⌊8L/12⌋."""
    lo = max(1, math.ceil(PAPER_BAND[0] * depth / PAPER_DEPTH))
    return lo, max(lo, math.floor(PAPER_BAND[1] * depth / PAPER_DEPTH))


def decide(
    values: Sequence[float],
    holds: Callable[[Interval], bool],
    fails: Callable[[Interval], bool],
) -> tuple[str, Interval | None]:
    """The verdict on one number per seed, and its interval."""
    ci = t_interval(values)
    if not values:
        return "undecided (no runs)", None
    if len(values) < FEW_SEEDS or ci is None:
        return f"undecided (n={len(values)} too small; needs {FEW_SEEDS})", ci
    if holds(ci):
        return SUPPORTED, ci
    if fails(ci):
        return REFUTED, ci
    return "undecided (interval straddles the threshold)", ci


def overall(items: Sequence[dict[str, Any]]) -> str:
    if not items:
        return "undecided (no runs)"
    verdicts = [i["verdict"] for i in items if not i["verdict"].startswith(NOT_COUNTED)]
    if not verdicts:
        return "undecided (no task counted)"
    if REFUTED in verdicts:
        return REFUTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    why = sorted({v.removeprefix("undecided (").rstrip(")") for v in verdicts if v != SUPPORTED})
    return "undecided (" + "; ".join(why) + ")"


def _item(what: str, values: Sequence[float], verdict: tuple[str, Interval | None], **extra):
    mean = float(np.mean(values)) if len(values) else None
    return {"what": what, "n": len(values), "values": list(values), "mean": mean,
            "verdict": verdict[0], "ci": verdict[1], **extra}  # fmt: skip


def _stacks(runs: Sequence[Run], estimator: str):
    for task in tasks_of(runs):
        got = profile_stack(runs, task, estimator, "redundancy")
        if got is not None:
            yield task, got


def claim_shape(runs: Sequence[Run], estimator: str = "cosine") -> dict[str, Any]:
    """(a) ∩-shaped, peak in the middle: per seed d = max R in the band − max R at the ends.

    The ends are the layers outside the band and the first and last *scored* layers: with
    block 0 unscored (the paper's setting) the first scored layer can fall inside a shallow
    model's band, and a profile that only falls from it is no ∩.
    """
    items, depths = [], set()
    for task, (stack, layers, _) in _stacks(runs, estimator):
        depth = int(layers.max()) + 1
        depths.add(depth)
        lo, hi = band(depth)
        inside = (layers + 1 >= lo) & (layers + 1 <= hi)
        diffs, peaks = [], []
        for prof in stack[:, -1, :]:  # each seed's last fine-tuning epoch
            ok = np.isfinite(prof)
            middle = ok & inside
            scored = np.flatnonzero(ok)
            if scored.size:
                middle[[scored[0], scored[-1]]] = False
            ends = ok & ~middle
            if not middle.any() or not ends.any():
                continue
            diffs.append(float(prof[middle].max() - prof[ends].max()))
            peaks.append(int(layers[ok][np.argmax(prof[ok])]) + 1)
        verdict = decide(diffs, lambda c: c.low > 0, lambda c: c.high < 0)
        items.append(_item(task_label(task), diffs, verdict, peaks=peaks, band=(lo, hi)))
    bands = ", ".join(f"L={d}: layers {band(d)[0]}–{band(d)[1]}" for d in sorted(depths))
    return {
        "id": "a",
        "title": "The redundancy profile is ∩-shaped with its peak in the middle layers",
        "paper": "low in the input and output layers, ... a pronounced peak in the upper-middle "
        "layers of the model (typically layers 3 to 8)" + f" [of {PAPER_DEPTH}]",
        "method": "Band scaled to depth L as 1-based layers ⌈3L/12⌉…⌊8L/12⌋ "
        f"({bands or 'no runs'}). Per seed, last fine-tuning epoch: d = max R inside the "
        "band − max R at the ends (the layers outside the band and the first and last scored "
        "layers); a ∩ with its peak in the band ⇔ d > 0. Supported if the t-interval of d is "
        "above 0. Peak = 1-based layer of the maximum, per seed.",
        "items": items,
    }


def claim_stability(runs: Sequence[Run], estimator: str = "cosine") -> dict[str, Any]:
    """(b) stable across epochs: per seed, mean Spearman rho of consecutive epochs' profiles."""
    from scipy.stats import spearmanr

    items = []
    for task, (stack, _, _) in _stacks(runs, estimator):
        per_seed = []
        for seed_stack in stack:
            rhos = []
            for a, b in zip(seed_stack[:-1], seed_stack[1:], strict=True):
                ok = np.isfinite(a) & np.isfinite(b)
                if ok.sum() >= 3 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
                    rhos.append(float(spearmanr(a[ok], b[ok]).statistic))
            if rhos:
                per_seed.append(float(np.mean(rhos)))
        verdict = decide(per_seed, lambda c: c.low >= STABLE_RHO, lambda c: c.high < STABLE_RHO)
        items.append(_item(task_label(task), per_seed, verdict, epochs=int(stack.shape[1])))
    return {
        "id": "b",
        "title": "The profile is stable across epochs",
        "paper": "this profile is stable across training epochs",
        "method": "Per seed: the mean over consecutive epoch pairs of Spearman ρ between their "
        f"profiles (≥ 3 scored layers). Supported if the t-interval lies at or above ρ = "
        f"{STABLE_RHO}; not supported if it lies below. One epoch: no pair, no runs.",
        "items": items,
    }


def claim_final_layer(runs: Sequence[Run], estimator: str = "cosine") -> dict[str, Any]:
    """(c) the final layer's R near 1e-3: per seed log10 R of the last block, last epoch."""
    items = []
    target = math.log10(FINAL_R)
    for task, (stack, _, _) in _stacks(runs, estimator):
        logs = [math.log10(max(float(v), 1e-12)) for v in stack[:, -1, -1] if np.isfinite(v)]
        near = (target - FINAL_DECADES, target + FINAL_DECADES)
        verdict = decide(
            logs,
            lambda c, near=near: c.low >= near[0] and c.high <= near[1],
            lambda c, near=near: c.high < near[0] or c.low > near[1],
        )
        geo = [10**x for x in logs]
        items.append(_item(task_label(task), logs, verdict, r=geo))
    return {
        "id": "c",
        "title": "The final layer's R is near 1e-3",
        "paper": "the redundancy score in the final layer can be as low as 10^{-3}",
        "method": "Per seed: log10 R of the last block at the last fine-tuning epoch. 'Near' = "
        f"within a factor {10**FINAL_DECADES:g}: supported if the t-interval of log10 R lies in "
        f"[{target - FINAL_DECADES:g}, {target + FINAL_DECADES:g}], not supported if it lies "
        "outside.",
        "items": items,
    }


def claim_pruning(
    runs: Sequence[Run], stage: str = "final", excluded: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """(d) redundancy pruning beats KE, LayerDrop and SlimLLM: paired (redundancy − baseline).

    A task in `excluded` (left out of Table 1, e.g. its unpruned model below its target) keeps
    its numbers but is not counted in the verdict, so the claim judges what the table shows.
    """
    excluded = excluded or {}
    cells = cell_values(runs, stage)
    items = []
    for task in tasks_of(runs):
        ours = cells.get((REFERENCE, task), {})
        for family in BASELINES:
            present = [b for b in family if (b, task) in cells]
            for base in present or family[:1]:
                p = paired(ours, cells.get((base, task), {}))
                verdict = decide(p["diffs"], lambda c: c.low > 0, lambda c: c.high < 0)
                if task in excluded:
                    verdict = (f"{NOT_COUNTED} ({verdict[0]}; {excluded[task]})", verdict[1])
                what = f"{task_label(task)}: {label(REFERENCE)} − {label(base)}"
                items.append(_item(what, p["diffs"], verdict))
    return {
        "id": "d",
        "title": "Redundancy pruning beats knowledge entropy, LayerDrop and SlimLLM",
        "paper": "outperforming knowledge-entropy pruning, LayerDrop, and SlimLLM",
        "method": f"Per task and baseline: the main metric at stage `{stage}`, redundancy − "
        "baseline matched by seed. Supported if the t-interval is above 0, not supported if "
        "below. LayerDrop: both selections where run (random is the paper's row).",
        "items": items,
    }


def evaluate_claims(
    runs: Sequence[Run],
    stage: str = "final",
    estimator: str = "cosine",
    excluded: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The four claims, each with its items and `verdict` (overall); `excluded`: see (d)."""
    claims = [
        claim_shape(runs, estimator),
        claim_stability(runs, estimator),
        claim_final_layer(runs, estimator),
        claim_pruning(runs, stage, excluded),
    ]
    for c in claims:
        c["verdict"] = overall(c["items"])
    return claims


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


def claims_markdown(claims: Sequence[dict[str, Any]], estimator: str = "cosine") -> str:
    md = [
        "# The paper's claims, as these runs show them",
        "",
        f"Profiles: `profiles.finetune.{estimator}.redundancy`, one per (model, seed) (the "
        f"`none` runs where there are any). Intervals: Student-t 95% over seeds; under "
        f"{FEW_SEEDS} seeds a claim is undecided whatever its numbers.",
    ]
    for c in claims:
        md += [
            "",
            f"## ({c['id']}) {c['title']}: **{c['verdict']}**",
            "",
            f'Paper: "{c["paper"]}".',
        ]
        md += ["", c["method"], ""]
        if not c["items"]:
            md.append("No runs with what this claim needs.")
            continue
        md += ["| Item | n | per seed | mean [95% t] | verdict |", "|---|---|---|---|---|"]
        for i in c["items"]:
            per_seed = ", ".join(f"{v:.4g}" for v in i["values"]) or "–"
            if "peaks" in i:
                lo, hi = i["band"]
                per_seed += f" (peak layers {', '.join(map(str, i['peaks']))}; band {lo}–{hi})"
            if "r" in i:
                per_seed += f" (R = {', '.join(f'{v:.2g}' for v in i['r'])})"
            ci = i["ci"]
            interval = f" [{_num(ci.low)}, {_num(ci.high)}]" if ci else ""
            md.append(
                f"| {i['what']} | {i['n']} | {per_seed} | {_num(i['mean'])}{interval} "
                f"| {i['verdict']} |"
            )
    return "\n".join(md) + "\n"
