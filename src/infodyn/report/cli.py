"""`infodyn-report`: Table 1, fidelity, claims and figures from the results.json under sweep dirs.

    infodyn-report multirun/2026-11-29/12-00-00 [--out DIR] [--stage final] [--wandb]

Failed jobs, missing seeds and cells that mix configs are printed to stderr and written into
table1.md; they are never averaged in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infodyn.errors import ConfigError
from infodyn.io import atomic_write_text
from infodyn.report.checks import (
    below_target,
    config_targets,
    missing_jobs,
    mixed_configs,
    no_metric,
    parse_targets,
)
from infodyn.report.claims import claims_markdown, evaluate_claims
from infodyn.report.constant import constant_cells, not_above_constant, with_constant
from infodyn.report.discovery import NoRunsError, Run, collect, sweeps_of
from infodyn.report.fidelity import fidelity_records, fidelity_table
from infodyn.report.figures import fidelity_figure, render_figures
from infodyn.report.stats import best_vs_runner_up, cell_values, paired_comparison, table1
from infodyn.report.tables import PAIRED_REFERENCES, write_fidelity, write_table1

STAGES = ("finetune", "pruned", "recover", "final")
# Jobs not run by design (`target.py`): listed, never a `--strict` failure.
SKIPPED = "SKIPPED criteria (their plain fine-tune missed the target)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infodyn-report",
        description="Table 1, fidelity, claims and redundancy figures from infodyn results.json.",
    )
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR",
        help="Hydra multirun or single-run dirs; searched recursively",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="output dir (default: FIRST_RUN_DIR/report)")
    p.add_argument(
        "--stage",
        default="final",
        choices=STAGES,
        help="metrics stage for Table 1 (default: final)",
    )
    p.add_argument(
        "--expect-seeds", type=int, metavar="N",
        help="seeds every cell should have; fewer is reported as missing",
    )  # fmt: skip
    p.add_argument(
        "--strict", action="store_true", help="exit 1 on mixed configs, failed or missing jobs"
    )
    p.add_argument("--percent", action="store_true", help="show metrics ×100 in table1.md/.tex")
    p.add_argument(
        "--targets", metavar="SPEC",
        help="unpruned targets, 'sst2:accuracy=0.85,mrpc:f1=0.85' or a YAML {task: {metric: v}},"
        " over the `target` the runs were configured with; a task whose unpruned row misses one"
        " is left out of Table 1 with the reason",
    )  # fmt: skip
    p.add_argument(
        "--estimator", default="cosine", help="profile estimator for fig1/heatmap/claims"
    )
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--wandb", action="store_true", help="log tables and figures to W&B")
    p.add_argument("--wandb-project", default="infodyn")
    return p


def _loud(title: str, lines: Sequence[str]) -> None:
    if lines:
        print(f"\n!!! {title} ({len(lines)}):", file=sys.stderr)
        for line in lines:
            print(f"!!!   {line}", file=sys.stderr)


def _problems(runs: Sequence[Run], failed, args) -> dict[str, list[str]]:
    broken = [f.describe() for f in failed if not (f.skipped or f.running)]
    return {
        "FAILED jobs (not averaged)": broken + no_metric(runs, args.stage),
        "RUNNING jobs (not in the table yet)": [f.describe() for f in failed if f.running],
        "MISSING jobs": missing_jobs(runs, failed, args.expect_seeds),
        "MIXED configs in one comparison": mixed_configs(runs),
        SKIPPED: [f.describe() for f in failed if f.skipped],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Exit codes: 0 ok, 1 `--strict` violation, 2 no runs or bad input."""
    args = _parser().parse_args(argv)
    try:
        given = parse_targets(args.targets)
        runs, failed = collect(args.run_dirs)
    except (NoRunsError, ConfigError) as err:
        print(f"infodyn-report: error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"infodyn-report: error: no complete run under {', '.join(args.run_dirs)}",
            file=sys.stderr,
        )
        _loud("FAILED jobs", [f.describe() for f in failed])
        return 2
    targets = config_targets(runs)
    for task, wanted in given.items():
        targets[task] = {**targets.get(task, {}), **wanted}
    out_dir = args.out or Path(args.run_dirs[0]) / "report"
    problems = _problems(runs, failed, args)
    for title, lines in problems.items():
        _loud(title, lines)

    rows = with_constant(table1(runs, args.stage), *constant_cells(runs))
    paired = {ref: paired_comparison(runs, args.stage, ref) for ref in PAIRED_REFERENCES}
    paired = {ref: p for ref, p in paired.items() if any(r.pruner == ref for r in runs)}
    runner_up = best_vs_runner_up(rows, cell_values(runs, args.stage))
    excluded = not_above_constant(rows)
    for task, why in below_target(rows, targets).items():
        excluded[task] = f"{excluded[task]}; {why}" if task in excluded else why
    written = write_table1(
        rows, paired, runner_up, out_dir, args.stage, problems, excluded, args.percent
    )
    records, notes = fidelity_records(runs)
    fid = fidelity_table(records)
    written += write_fidelity(fid, notes, out_dir)
    claims = evaluate_claims(runs, args.stage, args.estimator, excluded)
    written.append(
        atomic_write_text(out_dir / "claims.md", claims_markdown(claims, args.estimator))
    )
    figures = []
    if not args.no_figures:
        figures = render_figures(runs, out_dir, args.estimator) + fidelity_figure(fid, out_dir)
    print((out_dir / "table1.md").read_text())
    print((out_dir / "claims.md").read_text())
    names = ", ".join(p.name for p in written)
    print(f"wrote {names} and {len(figures)} figure files to {out_dir}")
    if args.wandb:
        from infodyn.report.wandb_run import log_wandb

        sweeps = sweeps_of(runs)
        group = sweeps[0] if len(sweeps) == 1 else None
        if group is None:
            print(f"NOTE: runs from {len(sweeps)} sweeps; the report run joins no group")
        verdicts = [{k: c[k] for k in ("id", "title", "verdict")} for c in claims]
        tables = {
            "table1": [{k: v for k, v in r.items() if k != "metrics"} for r in rows],
            "table1_paired": [p for plist in paired.values() for p in plist],
            "fidelity": fid,
            "claims": verdicts,
        }
        config = {"run_dirs": list(map(str, args.run_dirs)), "stage": args.stage}
        run_id = log_wandb(tables, figures, args.wandb_project, group, config, out_dir)
        print(f"logged report to W&B run {run_id} (group {group})")
    strict_fail = any(lines for title, lines in problems.items() if title != SKIPPED)
    if args.strict and strict_fail:
        print("infodyn-report: error: --strict and the problems above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
