"""Table 1 and the fidelity table as a researcher pastes them: Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infodyn.io import atomic_write_text
from infodyn.report.constant import at_or_below_constant
from infodyn.report.names import (
    BASELINE,
    CONSTANT,
    REFERENCE,
    criterion_key,
    label,
    metric_label,
    task_key,
    task_label,
)
from infodyn.report.stats import BOOTSTRAP_MIN_N, FEW_SEEDS, T_METHOD

DASH = "–"
FEW_MARK = "†"
FLOOR_MARK = "°"


def fmt(x: float | None, scale: float = 1.0, digits: int = 4, sign: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x * scale:{'+' if sign else ''}.{digits}f}"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _params(x: float | None) -> str:
    return DASH if x is None else f"{x / 1e6:.1f}M"


def _speedup(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}×"


def _metric_text(s: Mapping[str, Any], scale: float, digits: int, pm: str = "±") -> str:
    if not s["n"]:
        return DASH
    return f"{fmt(s['mean'], scale, digits)} {pm} {fmt(s['std'], scale, digits)}"


def _layout(rows: Sequence[dict[str, Any]], excluded: Mapping[str, str]):
    tasks = [t for t in sorted({r["task"] for r in rows}, key=task_key) if t not in excluded]
    crits = sorted({r["criterion"] for r in rows}, key=criterion_key)
    at = {(r["criterion"], r["task"]): r for r in rows}
    metrics = {r["task"]: list(r["metrics"]) for r in rows}
    return tasks, crits, at, metrics


def average(at: Mapping, crit: str, tasks: Sequence[str]) -> float | None:
    """Mean over `tasks` of the criterion's main-metric means; None unless every task has runs."""
    means = [at[(crit, t)]["mean"] for t in tasks]
    return sum(means) / len(means) if tasks and all(m is not None for m in means) else None


def _paired_text(p: Mapping[str, Any], scale: float, digits: int) -> str:
    if not p["n"]:
        return DASH + (f" ({p['note']})" if p["note"] else "")
    text = fmt(p["mean"], scale, digits, True)
    if p["ci"] is None:
        return f"{text} (n={p['n']}: no interval)"
    ci = p["ci"]
    text += f" [{fmt(ci.low, scale, digits, True)}, {fmt(ci.high, scale, digits, True)}]"
    if p["boot"] is not None:
        b = p["boot"]
        text += f" boot [{fmt(b.low, scale, digits, True)}, {fmt(b.high, scale, digits, True)}]"
    return text + f" (n={p['n']})" + (FEW_MARK if p["n"] < FEW_SEEDS else "")


def table1_markdown(
    rows: Sequence[dict[str, Any]],
    paired: Mapping[str, Sequence[dict[str, Any]]],
    runner_up: Sequence[dict[str, Any]],
    stage: str,
    problems: Mapping[str, list[str]],
    excluded: Mapping[str, str],
    percent: bool = False,
) -> str:
    """The Markdown of Table 1; `paired` maps a reference criterion to its comparison rows."""
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    tasks, crits, at, metrics = _layout(rows, excluded)
    floor = at_or_below_constant(rows)
    head = [f"{task_label(t)} ({'/'.join(map(metric_label, metrics[t]))})" for t in tasks]
    md = [
        f"# Table 1: stage `{stage}`" + (" (×100)" if percent else ""),
        "",
        "Mean ± sample std (ddof=1) over seeds; n = seeds; " + DASH + " = undefined or no runs. "
        f"{FEW_MARK} = n < {FEW_SEEDS}. **Bold** = best contender (not `none`/`constant`/"
        "`oracle`) among cells with the same n whose paired t-interval against the runner-up "
        "excludes 0. "
        f"`{BASELINE}` falls back to stage `finetune`. Avg = mean of the first metric over the "
        "tasks shown; Params = parameters after pruning; Speed-up = measured eval throughput "
        "after/before (means over all the row's runs). "
        f"{FLOOR_MARK} = mean not above the constant predictor's: the best label-blind "
        "prediction (one class for every example; correlation 0 for regression) on the same "
        "dev labels.",
        "",
        "| Criterion | " + " | ".join(head) + " | Avg | Params | Speed-up |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for crit in crits:
        cells = []
        for t in tasks:
            r = at[(crit, t)]
            if not r["n"]:
                cells.append(DASH)
                continue
            parts = [_metric_text(r["metrics"][m], scale, digits) for m in metrics[t]]
            text = " / ".join(parts) + f" (n={r['n']})" + (FEW_MARK if r["few"] else "")
            text += FLOOR_MARK if (crit, t) in floor else ""
            cells.append(f"**{text}**" if r["best"] else text)
        any_row = next(at[(crit, t)] for t in sorted({r["task"] for r in rows}, key=task_key))
        params = [at[(crit, t)]["params"] for t in tasks if at[(crit, t)]["params"] is not None]
        speed = [at[(crit, t)]["speedup"] for t in tasks if at[(crit, t)]["speedup"] is not None]
        md.append(
            f"| {any_row['label']} | "
            + " | ".join(cells)
            + f" | {fmt(average(at, crit, tasks), scale, digits)}"
            + f" | {_params(sum(params) / len(params) if params else None)}"
            + f" | {_speedup(sum(speed) / len(speed) if speed else None)} |"
        )
    missing = [r for r in rows if r["criterion"] == CONSTANT and r.get("note")]
    if missing:
        md += ["", "Constant predictor not computed for:", ""]
        md += [f"- {task_label(r['task'])}: {r['note']}" for r in missing]
    if excluded:
        md += ["", "Left out of the table:", ""]
        md += [f"- {task_label(t)}: {why}" for t, why in sorted(excluded.items())]
    for ref, plist in paired.items():
        md += ["", f"## Paired differences vs {label(ref)} (`{ref}`)", ""]
        if not plist:
            md.append(f"No `{ref}` runs: nothing to compare against.")
            continue
        md += [
            f"Mean over seeds of (criterion − {ref}) on the main metric, matched by seed, with "
            f"a {T_METHOD} interval (scipy.stats.t, n−1 degrees of freedom) and n; from n ≥ "
            f"{BOOTSTRAP_MIN_N} also a percentile bootstrap (`boot`). Positive = criterion "
            "better.",
            "",
            "| Criterion | " + " | ".join(map(task_label, tasks)) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        pat = {(p["criterion"], p["task"]): p for p in plist}
        for crit in (c for c in crits if c not in (ref, CONSTANT)):  # no seeds to pair
            cells = [
                _paired_text(pat[(crit, t)], scale, digits) if (crit, t) in pat else DASH
                for t in tasks
            ]
            md.append(f"| {label(crit)} | " + " | ".join(cells) + " |")
    md += ["", "## Best vs runner-up", ""]
    for c in runner_up:
        if c["task"] in excluded:
            continue
        if c["runner_up"] is None:
            md.append(f"- {task_label(c['task'])}: {label(c['criterion'])} — {c['note']}")
            continue
        ci = c["ci"]
        interval = (
            f"[{fmt(ci.low, scale, digits, True)}, {fmt(ci.high, scale, digits, True)}] "
            f"({ci.describe()})"
            if ci
            else f"no interval (n={c['n']})"
        )
        verdict = "best" if c["best"] else "no best (" + (c["note"] or "?") + ")"
        md.append(
            f"- {task_label(c['task'])}: {label(c['criterion'])} − {label(c['runner_up'])} = "
            f"{fmt(c['mean'], scale, digits, True)} {interval}: {verdict}"
        )
    md += ["", "## Per-seed values (main metric)", "", "| Criterion | Task | n | seeds | values |"]
    md.append("|---|---|---|---|---|")
    for r in rows:
        if r["n"]:
            vals = ", ".join(fmt(v, scale, digits) for v in r["values"])
            seeds = ", ".join(map(str, r["seeds"]))
            md.append(f"| {r['label']} | {task_label(r['task'])} | {r['n']} | {seeds} | {vals} |")
    md += ["", "## Problems", ""]
    if not any(problems.values()):
        md.append("None: every job complete, every cell has every seed, no mixed configs.")
    for title, lines in problems.items():
        if lines:
            md += [f"**{title}** ({len(lines)}):", ""] + [f"- {x}" for x in lines] + [""]
    return "\n".join(md) + "\n"


def _tex(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("$", r"\$"),
    ):
        text = text.replace(a, b)
    return text


def table1_latex(
    rows: Sequence[dict[str, Any]], excluded: Mapping[str, str], percent: bool = False
) -> str:
    """A booktabs `tabular` of Table 1 (needs `\\usepackage{booktabs}`)."""
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    tasks, crits, at, metrics = _layout(rows, excluded)
    floor = at_or_below_constant(rows)
    out = [
        "% infodyn-report Table 1: mean $\\pm$ sample std over seeds; bold = best with a paired",
        "% t-interval against the runner-up excluding 0; $^\\dagger$ = fewer than "
        f"{FEW_SEEDS} seeds; $^\\circ$ = not above the constant predictor.",
        "\\begin{tabular}{l" + "c" * (len(tasks) + 3) + "}",
        "\\toprule",
        "Criterion & "
        + " & ".join(
            f"{_tex(task_label(t))} ({_tex('/'.join(map(metric_label, metrics[t])))})"
            for t in tasks
        )
        + " & Avg & Params & Speed-up \\\\",
        "\\midrule",
    ]
    for crit in crits:
        cells = []
        for t in tasks:
            r = at[(crit, t)]
            if not r["n"]:
                cells.append("--")
                continue
            text = " / ".join(
                _metric_text(r["metrics"][m], scale, digits, "$\\pm$").replace(DASH, "--")
                for m in metrics[t]
            )
            text = f"\\textbf{{{text}}}" if r["best"] else text
            text += "$^\\dagger$" if r["few"] else ""
            cells.append(text + ("$^\\circ$" if (crit, t) in floor else ""))
        params = [at[(crit, t)]["params"] for t in tasks if at[(crit, t)]["params"] is not None]
        speed = [at[(crit, t)]["speedup"] for t in tasks if at[(crit, t)]["speedup"] is not None]
        tail = [
            fmt(average(at, crit, tasks), scale, digits),
            _params(sum(params) / len(params) if params else None),
            _speedup(sum(speed) / len(speed) if speed else None).replace("×", "$\\times$"),
        ]
        out.append(
            _tex(label(crit))
            + " & "
            + " & ".join(cells + [c.replace(DASH, "--") for c in tail])
            + " \\\\"
        )
        if crit == BASELINE:
            out.append("\\midrule")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def write_table1(
    rows: Sequence[dict[str, Any]],
    paired: Mapping[str, Sequence[dict[str, Any]]],
    runner_up: Sequence[dict[str, Any]],
    out_dir: Path,
    stage: str,
    problems: Mapping[str, list[str]],
    excluded: Mapping[str, str] | None = None,
    percent: bool = False,
) -> list[Path]:
    """Write table1.md, table1.tex, table1.csv (one row per cell and metric), table1_paired.csv."""
    excluded = dict(excluded or {})
    out_dir = Path(out_dir)
    md = table1_markdown(rows, paired, runner_up, stage, problems, excluded, percent)
    written = [atomic_write_text(out_dir / "table1.md", md)]
    written.append(
        atomic_write_text(out_dir / "table1.tex", table1_latex(rows, excluded, percent))
    )
    header = [
        "criterion",
        "label",
        "task",
        "metric",
        "stage",
        "n",
        "mean",
        "std",
        "best",
        "seeds",
        "values",
        "main",
        "few_seeds",
        "params_after",
        "speedup",
        "left_out",
        "not_above_constant",
    ]
    floor = at_or_below_constant(rows)
    lines = []
    for r in rows:
        for m, s in r["metrics"].items():
            main = m == r["metric"]
            lines.append([
                r["criterion"], r["label"], r["task"], m, r["stage"], s["n"], _num(s["mean"]),
                _num(s["std"]), "*" if r["best"] and main else "", " ".join(map(str, s["seeds"])),
                " ".join(map(_num, s["values"])), int(main), int(0 < s["n"] < FEW_SEEDS),
                _num(r["params"]), _num(r["speedup"]), excluded.get(r["task"], ""),
                int((r["criterion"], r["task"]) in floor),
            ])  # fmt: skip
    written.append(write_csv(out_dir / "table1.csv", header, lines))
    header = [
        "criterion",
        "reference",
        "task",
        "n",
        "mean_diff",
        "std_diff",
        "ci_low",
        "ci_high",
        "method",
        "boot_low",
        "boot_high",
        "seeds",
        "note",
    ]
    lines = [
        [p["criterion"], ref, p["task"], p["n"], _num(p["mean"]), _num(p["std"]),
         _num(p["ci_low"]), _num(p["ci_high"]), p["method"],
         _num(p["boot"].low if p["boot"] else None), _num(p["boot"].high if p["boot"] else None),
         " ".join(map(str, p["seeds"])), p["note"]]
        for ref, plist in paired.items() for p in plist
    ]  # fmt: skip
    written.append(write_csv(out_dir / "table1_paired.csv", header, lines))
    return written


PAIRED_REFERENCES = (BASELINE, REFERENCE)


def _mean_with_n(row: Mapping[str, Any], key: str, digits: int = 2) -> str:
    n = row[f"n_{key}"]
    return DASH if not n else f"{row[key]:.{digits}f} (n={n})"


def fidelity_markdown(rows: Sequence[dict[str, Any]], notes: Sequence[str]) -> str:
    md = [
        "# Fidelity: each criterion's choice against every subset (the oracle)",
        "",
        "Per task and criterion, means over seeds (n = seeds). Rank of the chosen subset among "
        "all C(L, k) subsets by the oracle metric (1 = best, ties averaged), right after "
        "removal and after recovery (among the subsets the oracle recovered); regret = best "
        "subset's metric − chosen subset's; ρ = Spearman(prunability, −damage) over blocks, "
        "damage = loss with the block removed alone − unpruned loss (high ρ: the criterion "
        "removes first what hurts least). Split = where the oracle evaluated (`selection` is "
        "the oracle pruner's own split: its rank 1 there is by construction).",
        "",
    ]
    if not rows:
        md.append(
            "No run has an oracle: run the sweep with `stages.oracle=true` (or `pruner=oracle`)."
        )
    else:
        md += [
            "| Task | Criterion | Split | k | subsets | rank (removal) | regret (removal) "
            "| rank (recovered) | regret (recovered) | ρ(prunability, −damage) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            md.append(
                f"| {task_label(r['task'])} ({metric_label(r['metric'])}) | {r['label']} | "
                f"{r['split']} | {r['k']} | {r['n_subsets']} | {_mean_with_n(r, 'rank')} | "
                f"{_mean_with_n(r, 'regret', 4)} | {_mean_with_n(r, 'rank_recovered')} | "
                f"{_mean_with_n(r, 'regret_recovered', 4)} | {_mean_with_n(r, 'rho')} |"
            )
    if notes:
        md += ["", "Skipped:", ""] + [f"- {n}" for n in notes]
    return "\n".join(md) + "\n"


def write_fidelity(
    rows: Sequence[dict[str, Any]], notes: Sequence[str], out_dir: Path
) -> list[Path]:
    """Write fidelity.md and fidelity.csv."""
    out_dir = Path(out_dir)
    written = [atomic_write_text(out_dir / "fidelity.md", fidelity_markdown(rows, notes))]
    keys = ["rank", "regret", "rank_recovered", "regret_recovered", "rho"]
    header = ["task", "criterion", "label", "split", "metric", "k", "n_subsets", "seeds"]
    header += [x for k in keys for x in (k, f"n_{k}")] + ["chosen"]
    lines = [
        [r[h] for h in header[:7]]
        + [" ".join(map(str, r["seeds"]))]
        + [x for k in keys for x in (_num(r[k]), r[f"n_{k}"])]
        + [" ".join("-".join(map(str, c)) for c in r["chosen"])]
        for r in rows
    ]
    written.append(write_csv(out_dir / "fidelity.csv", header, lines))
    return written
