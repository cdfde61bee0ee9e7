"""Disk benchmark: what one finished run keeps, against the size of the model it exports.

Runs the CLI as a user does (`python -m infodyn`, MRPC from `$GLUE_DIR`, a small train subset,
logger=none, redundancy pruning of `--k` blocks with recovery) into a fresh run dir, then prints
the run dir's size over its exported model's size (target <= 2) and the per-file breakdown.
With `--run-dir` it measures an existing run instead (nothing is run or changed).

The pipeline itself slims each finished training stage and, once results.json is complete,
applies `checkpoints.release_finished_run` (keeping the stages named in `run.keep_checkpoints`,
slim). For a run dir written before that, `--slim` applies `checkpoints.slim_checkpoint` to every
stage checkpoint and measures again (what `run.keep_checkpoints=[finetune,recover]` keeps);
`--release` then applies `release_finished_run` and measures again. Both change that run dir.

Run: GLUE_DIR=../shared/data/glue .venv/bin/python benchmarks/disk.py [--model minilm_l6]
     .venv/bin/python benchmarks/disk.py --run-dir outputs/runs/mrpc/minilm_l6/redundancy/seed=0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sizes(run_dir: Path) -> dict[str, int]:
    """Bytes per file under `run_dir` (relative paths; symlinks not followed)."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_size
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def report(run_dir: Path, title: str, top: int) -> float | None:
    files = sizes(run_dir)
    total = sum(files.values())
    export = sum(v for k, v in files.items() if k.startswith("model" + os.sep))
    print(f"\n== {title}: {run_dir}")
    print(f"{'bytes':>14}  {'share':>6}  file")
    for name, size in sorted(files.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{size:>14,}  {size / max(total, 1):>6.1%}  {name}")
    if len(files) > top:
        rest = sum(sorted(files.values(), reverse=True)[top:])
        print(f"{rest:>14,}  {rest / max(total, 1):>6.1%}  ({len(files) - top} more files)")
    by_top = {}
    for name, size in files.items():
        head = name.split(os.sep, 1)[0] if os.sep in name else "(top-level files)"
        by_top[head] = by_top.get(head, 0) + size
    print("per folder: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(by_top.items())))
    print(f"run dir {total / 1e6:.2f} MB, exported model {export / 1e6:.2f} MB")
    if not export:
        print("ratio: n/a (no exported model under model/)")
        return None
    ratio = total / export
    verdict = "meets" if ratio <= 2 else "misses"
    print(f"ratio run dir / export = {ratio:.2f} ({verdict} the target <= 2)")
    return ratio


def run_cli(run_dir: Path, args: argparse.Namespace) -> None:
    glue = os.environ.get("GLUE_DIR")
    if not glue or not (Path(glue) / "MRPC" / "train.tsv").is_file():
        sys.exit("error: set GLUE_DIR to a folder with MRPC/train.tsv (classic GLUE layout).")
    overrides = [
        f"model={args.model}",
        "task=mrpc",
        "trainer=cpu",
        "logger=none",
        "pruner=redundancy",
        f"pruner.k={args.k}",
        f"data.train_limit={args.train_limit}",
        f"data.eval_limit={args.eval_limit}",
        "data.max_seq_length=64",
        f"stages.finetune_epochs={args.epochs}",
        f"stages.recover_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        f"run_dir={run_dir}",
        *args.overrides,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PROJECT_ROOT=str(run_dir.parent))
    env.setdefault("OMP_NUM_THREADS", "1")
    print("running: python -m infodyn " + " ".join(overrides), flush=True)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "infodyn", *overrides],
        env=env,
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"finished in {time.time() - start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, help="measure this finished run (nothing is run)")
    ap.add_argument("--model", default="roberta_tiny", help="roberta_tiny or minilm_l6")
    ap.add_argument("--k", type=int, default=2, help="blocks to prune")
    ap.add_argument("--train-limit", type=int, default=64)
    ap.add_argument("--eval-limit", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--slim", action="store_true", help="then slim every stage checkpoint")
    ap.add_argument("--release", action="store_true", help="then apply release_finished_run")
    ap.add_argument("--top", type=int, default=15, help="files listed")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides for the run")
    args = ap.parse_args()

    if args.run_dir:
        run_dir = args.run_dir
        if not run_dir.is_dir():
            sys.exit(f"error: --run-dir {run_dir} is not a folder.")
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="infodyn-disk-")) / "run"
        run_cli(run_dir, args)
    report(run_dir, "as the run left it", args.top)
    if args.slim:  # what run.keep_checkpoints=[...] keeps: finished stages without optimizer
        from infodyn.checkpoints import slim_checkpoint

        for ckpt in sorted(run_dir.glob("checkpoints/*/last.ckpt")):
            slim_checkpoint(ckpt)
        report(run_dir, "after slim_checkpoint on every stage", args.top)
    if args.release:
        from infodyn.checkpoints import release_finished_run

        gone = release_finished_run(run_dir)
        print(f"\nrelease_finished_run removed: {[str(p.relative_to(run_dir)) for p in gone]}")
        report(run_dir, "after release_finished_run", args.top)


if __name__ == "__main__":
    main()
