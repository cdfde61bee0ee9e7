"""Pruning benchmark, both parts of the pruning issue.

1. Speed: eval throughput of a RoBERTa-base-sized model before/after removing 4 of 12 blocks,
   side by side in one run (delegates to `benchmarks/pruning_speed.py`). Target >= 1.4x.
2. The paper's comparison at CPU scale: MiniLM-L6 (remove k=2 of 6), criteria none, redundancy,
   knowledge_entropy, layerdrop, slimllm, last_k, random, 3 seeds, on real `$GLUE_DIR` data. It
   runs the `cpu_table1` sweep (resumable: complete jobs are skipped) and prints a
   Table-1-shaped markdown table of mean +- std of the final metric via `infodyn-report`.

Run:  GLUE_DIR=../shared/data/glue .venv/bin/python benchmarks/pruning.py [--skip-speed]
      [--tasks mrpc,cola,sst2] [--sweep-dir DIR] [--extra 'stages.finetune_epochs=2 ...']
Part 2 takes hours on 2 CPU cores (the lengths are those of multirun_sweeps/cpu_table1.yaml
unless --extra overrides them; say which you used when you report numbers).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_part(tasks: str, sweep_dir: Path | None, extra: str, n_jobs: int) -> None:
    from infodyn.report import collect, table1

    if sweep_dir is None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [
            sys.executable,
            "-m",
            "infodyn",
            "-m",
            "sweep=cpu_table1",
            "hydra/launcher=local_parallel",
            f"hydra.launcher.n_jobs={n_jobs}",
            "logger=csv",
            f"task={tasks}",
            *shlex.split(extra),
        ]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        sweep_dir = Path(os.environ.get("PROJECT_ROOT", ROOT)) / "outputs/multirun/cpu_table1"
    runs, failed = collect([sweep_dir])
    rows = table1(runs, stage="final")
    tasks_seen = [
        t
        for t in ("mnli", "mrpc", "sst2", "cola", "qnli", "qqp", "rte", "stsb")
        if any(r["task"] == t for r in rows)
    ]
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    cell = {(r["criterion"], r["task"]): r for r in rows}
    print(
        "\n| criterion | "
        + " | ".join(
            f"{t} ({cell[next(c for c in criteria if (c, t) in cell), t]['metric']})"
            for t in tasks_seen
        )
        + " |"
    )
    print("|---" * (len(tasks_seen) + 1) + "|")
    for c in criteria:
        cells = []
        for t in tasks_seen:
            r = cell.get((c, t))
            if r is None:
                cells.append("–")
                continue
            std = "–" if r["std"] is None else f"{r['std']:.4f}"
            mark = "**" if r.get("best") else ""
            cells.append(f"{mark}{r['mean']:.4f} ± {std}{mark} (n={r['n']})")
        print(f"| {c} | " + " | ".join(cells) + " |")
    if failed:
        print(f"\n{len(failed)} failed job(s):", *[f"  {f}" for f in failed], sep="\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--tasks", default="mrpc,cola,sst2,rte")
    ap.add_argument(
        "--sweep-dir",
        type=Path,
        default=None,
        help="report an existing cpu_table1 multirun dir instead of running it",
    )
    ap.add_argument("--extra", default="", help="more Hydra overrides for the sweep")
    ap.add_argument("--n-jobs", type=int, default=2)
    a = ap.parse_args()
    if not a.skip_speed:
        subprocess.run([sys.executable, str(ROOT / "benchmarks/pruning_speed.py")], check=True)
    if not a.skip_table:
        if a.sweep_dir is None and not os.environ.get("GLUE_DIR"):
            raise SystemExit("set GLUE_DIR=/path/to/glue_data (e.g. ../shared/data/glue)")
        table_part(a.tasks, a.sweep_dir, a.extra, a.n_jobs)


if __name__ == "__main__":
    main()
