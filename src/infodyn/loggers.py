"""Per-job experiment logging: stage namespaces on one step, the run summary, the final table.

`RunLoggers` holds a job's Lightning loggers; `RunLoggers.stage(name)` gives the loggers for
one stage's Trainer, which write `<name>/<key>` on a step that continues after every earlier
stage (a fresh Trainer counts its steps from 0). `log_run_summary` puts a finished run's
figures in each logger (W&B: summary, profile tables, the Fig. 1 chart); `close_loggers` ends
them; `summary_table` is the text a run prints when it ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from infodyn.results import RunResult

log = logging.getLogger("infodyn")


class RunLoggers(Sequence[Logger]):
    """A job's Lightning loggers and the one step their stages share.

    Iterating gives the loggers themselves (un-namespaced); `stage(name)` wraps them.
    """

    def __init__(self, loggers: Iterable[Logger] = ()) -> None:
        self._loggers = list(loggers)
        self.next_step = 0  # the first step no stage has logged at yet

    def __getitem__(self, index):  # type: ignore[override]
        return self._loggers[index]

    def __len__(self) -> int:
        return len(self._loggers)

    def stage(self, name: str, start_step: int | None = None) -> list[Logger]:
        """The loggers for one stage's Trainer: keys under `name/`, steps after earlier stages.

        Args:
            name: the stage (`finetune`, `pruned`, `recover`, `final`).
            start_step: the first step for this stage when known from a previous process (a
                resumed job); the shared step never moves backwards.
        """
        if not name or "/" in name:
            raise ValueError(f"stage name must be a non-empty word without '/', got {name!r}")
        if start_step is not None:
            self.next_step = max(self.next_step, int(start_step))
        return [StageLogger(lg, name, self) for lg in self._loggers]


class StageLogger(Logger):
    """Forwards to `inner` with every key under `<stage>/` and steps shifted past earlier stages.

    Works with any Lightning logger. `finalize` only flushes: the job's loggers outlive each
    stage's Trainer and are closed once by `close_loggers`.
    """

    def __init__(self, inner: Logger, stage: str, clock: RunLoggers) -> None:
        super().__init__()
        self._inner = inner
        self._stage = stage
        self._clock = clock
        self._offset = clock.next_step

    @property
    def inner(self) -> Logger:
        return self._inner

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def name(self) -> str | None:
        return self._inner.name

    @property
    def version(self) -> int | str | None:
        return self._inner.version

    @property
    def save_dir(self) -> str | None:
        return self._inner.save_dir

    @property
    def root_dir(self) -> str | None:
        return self._inner.root_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self._inner, "log_dir", self._inner.save_dir)

    @property
    def experiment(self) -> Any:
        return self._inner.experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        at = self._offset + int(step or 0)
        self._clock.next_step = max(self._clock.next_step, at + 1)
        # the layer tracker names its keys by stage already (the HF Trainer adapter has no
        # StageLogger): `finetune/redundancy/layer_07`, never `finetune/finetune/...`
        prefix = f"{self._stage}/"
        named = {(k if k.startswith(prefix) else prefix + k): v for k, v in metrics.items()}
        self._inner.log_metrics(named, at)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # each stage's module has its own hparams (the recovered one lists its pruned blocks)
        plain = dict(params) if isinstance(params, Mapping) else dict(vars(params))
        self._inner.log_hyperparams({self._stage: plain}, *args, **kwargs)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self._inner.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._inner.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        self._inner.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._inner.save()


def _base_loggers(loggers: Iterable[Logger]) -> list[Logger]:
    return [lg.inner if isinstance(lg, StageLogger) else lg for lg in loggers]


def _is_wandb(lg: Logger) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(lg, WandbLogger)


def summary_metrics(result: RunResult) -> dict[str, float | int]:
    """The run's scalar figures: `<stage>/<metric>`, throughput, speed-up, sizes, wall time."""
    out: dict[str, float | int] = {}
    for stage, values in result.metrics.items():
        for key, value in values.items():
            if _number(value):
                out[f"{stage}/{key}"] = value
    if result.throughput is not None:
        out["throughput/before"] = result.throughput.before
        out["throughput/after"] = result.throughput.after
        out["throughput/speedup"] = result.throughput.speedup
    for key in (
        "num_layers_before",
        "num_layers_after",
        "num_parameters_before",
        "num_parameters_after",
        "wall_time_s",
    ):
        value = getattr(result, key)
        if _number(value):
            out[key] = value
    return out


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@rank_zero_only
def log_run_summary(loggers: Iterable[Logger], result: RunResult) -> None:
    """Log a finished run's figures to every logger; a logging failure never sinks the job.

    Each logger gets `summary_metrics(result)` as one row (at the step after the last stage's
    when `loggers` is a `RunLoggers`); a W&B run also gets them in its summary, with the
    pruned blocks, a table per recorded profile and the Fig. 1 chart.
    """
    step = loggers.next_step if isinstance(loggers, RunLoggers) else None
    flat = summary_metrics(result)
    for lg in _base_loggers(loggers):
        try:
            lg.log_metrics(flat, step)
            if _is_wandb(lg):
                run = lg.experiment
                run.summary.update(
                    {**flat, "pruned_layers": list(result.pruned_layers), "status": result.status}
                )
                _log_wandb_profiles(run, result)
            lg.save()
        except Exception as err:  # noqa: BLE001 - tracking must never sink a finished job
            log.warning("could not log the run summary to %s: %s", type(lg).__name__, err)


def _log_wandb_profiles(run: Any, result: RunResult) -> None:
    """A `wandb.Table` per (stage, estimator) profile; Fig. 1 (redundancy per layer and epoch
    of fine-tuning) as a W&B line chart."""
    import wandb

    for stage, per_est in (result.profiles or {}).items():
        if not isinstance(per_est, Mapping):
            continue  # the "indexing" note
        for est, prof in per_est.items():
            layers = prof.get("layers") or []
            series = [k for k, v in prof.items() if k != "layers" and v and isinstance(v[0], list)]
            rows = [
                [stage, epoch + 1, block, *[prof[k][epoch][i] for k in series]]
                for epoch in range(len(prof[series[0]]) if series else 0)
                for i, block in enumerate(layers)
            ]
            if rows:
                table = wandb.Table(columns=["stage", "epoch", "block", *series], data=rows)
                run.log({f"profiles/{stage}/{est}": table})
    prof = ((result.profiles or {}).get("finetune") or {}).get("cosine") or {}
    if prof.get("redundancy") and prof.get("layers"):
        xs, ys = [], []
        for row in prof["redundancy"]:
            kept = [(b + 1, v) for b, v in zip(prof["layers"], row, strict=True) if v is not None]
            xs.append([b for b, _ in kept])
            ys.append([v for _, v in kept])
        chart = wandb.plot.line_series(
            xs=xs,
            ys=ys,
            keys=[f"epoch {e + 1}" for e in range(len(ys))],
            title=f"{result.task} · {result.model} (seed {result.seed}): redundancy R",
            xname="layer (block index + 1)",
        )
        run.log({"fig1": chart})


def close_loggers(loggers: Iterable[Logger], status: str = "success") -> None:
    """Finalize every logger once (flush files; end the W&B run with the job's status)."""
    for lg in _base_loggers(loggers):
        try:
            lg.finalize(status)
            if _is_wandb(lg):
                import wandb

                wandb.finish(exit_code=0 if status == "success" else 1)
        except Exception as err:  # noqa: BLE001
            log.warning("closing %s failed: %s", type(lg).__name__, err)


# -------------------------------------------------------------------- the end-of-run table

STAGE_ORDER = ("finetune", "pruned", "recover", "final")


def summary_table(result: RunResult, run_dir: str | Path) -> str:
    """The text a run ends with: metrics per stage, pruned blocks, speed-up, where outputs are."""
    run_dir = Path(run_dir)
    stages = [s for s in STAGE_ORDER if s in result.metrics] + [
        s for s in result.metrics if s not in STAGE_ORDER
    ]
    names: list[str] = []
    for stage in stages:
        names += [k for k in result.metrics[stage] if k not in names]
    main = result.main_metric
    first = {k: i for i, k in enumerate(names)}  # main metric first, losses last
    names.sort(key=lambda k: (k != main, k == "loss" or k.startswith("loss_"), first[k]))
    lines = [
        f"{result.task} · {result.model} · pruner {result.pruner} · estimator {result.estimator}"
        f" · {result.finetune} · seed {result.seed}"
    ]
    if stages:
        rows = [["stage", *[f"{n}*" if n == main else n for n in names]]]
        for stage in stages:
            vals = result.metrics[stage]
            rows.append([stage, *[_fmt(vals.get(n)) for n in names]])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells))
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    before, after = result.num_layers_before, result.num_layers_after
    blocks = ", ".join(str(b) for b in result.pruned_layers) or "none"
    lines.append(f"pruned blocks: {blocks} (0-based){_arrow(' blocks', before, after)}")
    pb, pa = result.num_parameters_before, result.num_parameters_after
    if pb and pa:
        lines.append(f"parameters: {_count(pb)} -> {_count(pa)} ({(pa - pb) / pb:+.1%})")
    t = result.throughput
    if t is not None:
        lines.append(
            f"speed-up: {t.speedup:.2f}x (eval {t.before:,.0f} -> {t.after:,.0f} examples/s, "
            f"{t.batches} batch{'es' if t.batches != 1 else ''})"
        )
    if result.wall_time_s is not None:
        lines.append(f"wall time: {result.wall_time_s:.1f} s")
    lines.append(f"results: {run_dir / 'results.json'}")
    if (run_dir / "model").is_dir():
        lines.append(f"model:   {run_dir / 'model'}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if _number(value) else "-"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _arrow(what: str, before: int | None, after: int | None) -> str:
    return f"; {before} -> {after}{what}" if before is not None and after is not None else ""
