"""Fig. 1 (redundancy per layer and epoch), heatmaps, criterion rankings, the fidelity figure."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infodyn.io import atomic_write
from infodyn.report.discovery import Run, tasks_of
from infodyn.report.names import label, task_key, task_label
from infodyn.report.profiles import (
    criterion_prunability,
    profile_stack,
    quiet_nan,
    spearman_matrix,
)

XLABEL = "layer (1-based as in the paper = block index + 1)"
YLABEL = "redundancy score R"


def style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "figure.dpi": 150,
            "savefig.dpi": 200,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "pdf.fonttype": 42,
        }
    )


def save(fig, path: Path, pdf: bool = True) -> list[Path]:
    """PNG (and PDF) of `fig`, each written atomically; closes the figure."""
    import matplotlib.pyplot as plt

    formats = ["png"] + (["pdf"] if pdf else [])
    out = []
    for ext in formats:
        target = path.with_suffix(f".{ext}")
        atomic_write(
            target, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, bbox_inches="tight")
        )
        out.append(target)
    plt.close(fig)
    return out


def _models(used: Sequence[Run]) -> str:
    return ", ".join(sorted({r.model for r in used}))


def plot_profile(ax, stack: np.ndarray, layers: np.ndarray, legend: bool) -> None:
    import matplotlib.pyplot as plt

    n, epochs = stack.shape[0], stack.shape[1]
    x = layers + 1  # the paper's layer l+1 is our block index l
    cmap = plt.get_cmap("viridis")
    colors = [cmap(0.9 * e / max(epochs - 1, 1)) for e in range(epochs)]
    with quiet_nan():
        mean = np.nanmean(stack, axis=0)
        std = np.nanstd(stack, axis=0, ddof=1) if n > 1 else None
    for e in range(epochs):
        ax.plot(x, mean[e], marker="o", ms=3, lw=1.5, color=colors[e], label=f"{e + 1}")
        if std is not None:
            ax.fill_between(
                x, mean[e] - std[e], mean[e] + std[e], color=colors[e], alpha=0.15, lw=0
            )
    ax.set_xticks(x if x.size <= 16 else x[:: max(1, x.size // 12)])
    ax.grid(alpha=0.3, lw=0.5)
    if legend:
        ax.legend(
            title="epoch",
            ncols=2 if epochs > 6 else 1,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
        )


def render_figures(
    runs: Sequence[Run],
    out_dir: str | os.PathLike[str],
    estimator: str = "cosine",
    series: str = "redundancy",
) -> list[Path]:
    """Write fig1_<task>, fig1_grid (png+pdf), heatmap_<task> and rankings_<task> (png).

    Returns:
        The files written.
    """
    style()
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: list[Path] = []
    stacks = {}
    for task in tasks_of(runs):
        got = profile_stack(runs, task, estimator, series)
        if got is None:
            print(
                f"WARNING: {task}: no profiles.finetune.{estimator}.{series}; no fig1/heatmap",
                file=sys.stderr,
            )
            continue
        stacks[task] = got
        stack, layers, used = got
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        plot_profile(ax, stack, layers, legend=True)
        band = f", mean ± std over {stack.shape[0]} seeds" if stack.shape[0] > 1 else ", 1 seed"
        ax.set(xlabel=XLABEL, ylabel=YLABEL, title=f"{task_label(task)} · {_models(used)}{band}")
        written += save(fig, out_dir / f"fig1_{task}")
        written += _heatmap(stack, layers, used, task, out_dir)
    if stacks:
        written += _grid(stacks, out_dir)
    for task in tasks_of(runs):
        written += _rankings(runs, task, out_dir)
    return written


def _grid(stacks: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    n = len(stacks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols + 0.8, 2.9 * rows), squeeze=False, sharey=True
    )
    for ax, (task, (stack, layers, used)) in zip(axes.flat, stacks.items(), strict=False):
        plot_profile(ax, stack, layers, legend=False)
        ax.set_title(f"{task_label(task)} · {_models(used)} (n={stack.shape[0]})")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(YLABEL)
    xlabel = XLABEL if cols == 1 else "layer (1-based)"
    for c in range(cols):  # hidden panels leave the bottom row short
        last = max(r for r in range(rows) if r * cols + c < n)
        axes[last, c].set_xlabel(xlabel)
        axes[last, c].tick_params(labelbottom=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, title="epoch", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
    )
    fig.tight_layout()
    return save(fig, out_dir / "fig1_grid")


def _heatmap(stack, layers, used, task: str, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    with quiet_nan():
        mean = np.nanmean(stack, axis=0)  # epochs × layers
    epochs = mean.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * epochs + 1.2, 0.8 + 0.28 * layers.size + 0.6))
    im = ax.imshow(
        mean.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.5, epochs + 0.5, layers[0] + 0.5, layers[-1] + 1.5),
    )
    ax.set_xticks(range(1, epochs + 1))
    ax.set_yticks(layers + 1)
    ax.set(
        xlabel="epoch",
        ylabel="layer (1-based = block index + 1)",
        title=f"{task_label(task)} · {_models(used)} (n={stack.shape[0]})",
    )
    ax.spines[["top", "right"]].set_visible(True)
    fig.colorbar(im, ax=ax, label=YLABEL)
    fig.tight_layout()
    return save(fig, out_dir / f"heatmap_{task}", pdf=False)


def _rankings(runs: Sequence[Run], task: str, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    scores = criterion_prunability(runs, task)
    if not scores:
        return []
    names = list(scores)
    k = len(names)
    if k > 1:
        fig, (ax, axc) = plt.subplots(
            1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.5, 1]}
        )
    else:  # one criterion: nothing to correlate
        fig, ax = plt.subplots(figsize=(6, 3.6))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        s = scores[name]
        norm = (s - np.nanmin(s)) / (np.nanmax(s) - np.nanmin(s))
        x = np.arange(s.size) + 1
        ax.plot(x, norm, marker="o", ms=3, lw=1.4, color=cmap(i % 10), label=label(name))
    size = max(s.size for s in scores.values())
    ax.set_xticks(np.arange(1, size + 1) if size <= 16 else np.arange(1, size + 1, size // 12))
    ax.set(
        xlabel=XLABEL,
        ylabel="prunability (min-max; high = remove first)",
        ylim=(-0.05, 1.05),
        title=f"{task_label(task)}: prunability per criterion (mean over seeds)",
    )
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="best", framealpha=0.85, title="criterion")
    if k == 1:
        fig.tight_layout()
        return save(fig, out_dir / f"rankings_{task}", pdf=False)
    _, rho = spearman_matrix(scores)
    im = axc.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [label(n) for n in names]
    axc.set_xticks(range(k), labels, rotation=30, ha="right")
    axc.set_yticks(range(k), labels)
    for i in range(k):
        for j in range(k):
            if np.isfinite(rho[i, j]):
                color = "white" if abs(rho[i, j]) > 0.6 else "black"
                axc.text(
                    j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=9, color=color
                )
    axc.set_title("Spearman ρ of prunability")
    axc.spines[["top", "right"]].set_visible(True)
    fig.colorbar(im, ax=axc, fraction=0.046, pad=0.04, label="ρ")
    fig.tight_layout()
    return save(fig, out_dir / f"rankings_{task}", pdf=False)


def fidelity_figure(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """fidelity.png: per task, each criterion's regret (removal) and rho(prunability, -damage)."""
    rows = [r for r in rows if r["split"] == "dev"] or list(rows)
    if not rows:
        return []
    style()
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows}, key=task_key)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks) + 0.5, 6.0), squeeze=False)
    for c, task in enumerate(tasks):
        mine = [r for r in rows if r["task"] == task]
        names = [f"{r['label']} (n={r['n_regret']})" for r in mine]
        y = np.arange(len(mine))
        regret = [r["regret"] if r["regret"] is not None else np.nan for r in mine]
        rho = [r["rho"] if r["rho"] is not None else np.nan for r in mine]
        axes[0, c].barh(y, regret, color="tab:red")
        axes[0, c].set(yticks=y, yticklabels=names, xlabel=f"regret ({mine[0]['metric']})")
        axes[0, c].set_title(f"{task_label(task)}: regret vs best subset (k={mine[0]['k']})")
        axes[1, c].barh(y, rho, color="tab:blue")
        axes[1, c].set(yticks=y, yticklabels=names, xlim=(-1.05, 1.05), xlabel="ρ")
        axes[1, c].set_title("ρ(prunability, −removal damage)")
        axes[1, c].axvline(0, color="black", lw=0.6)
        for ax, vals in ((axes[0, c], regret), (axes[1, c], rho)):
            for yi, v in zip(y, vals, strict=True):  # a zero bar and no bar look alike
                ax.annotate("–" if np.isnan(v) else f"{v:.3g}", (0, yi), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=8)  # fmt: skip
        for ax in axes[:, c]:
            ax.invert_yaxis()
            ax.grid(alpha=0.3, lw=0.5, axis="x")
    fig.tight_layout()
    return save(fig, Path(out_dir) / "fidelity", pdf=False)
