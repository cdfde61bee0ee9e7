"""The stages of one job: finetune -> score -> prune -> recover -> final.

Each finished stage writes `<run dir>/stages/<stage>.json` and training stages keep a Lightning
checkpoint per epoch, so a rerun resumes from the last finished stage (or the last finished
epoch inside a stage) and ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from infodyn.builders import build_estimators, build_module, build_trainer, estimator_configs
from infodyn.checkpoints import (
    atomic_write_json,
    finite,
    load_module,
    read_json,
    usable_checkpoint,
)
from infodyn.errors import ConfigError, TrainingDivergedError

log = logging.getLogger("infodyn")

STAGES = ("finetune", "score", "prune", "recover", "final")
KILL_ENV = "INFODYN_TEST_KILL_AT"  # tests only: SIGKILL this process at a named point


def run_stages(cfg, run_dir, dm, estimators, pruner, pruner_name, loggers, module, k):
    """The stages after `validation.preflight`; `module` is the freshly built (untrained) model."""
    import copy

    dm.setup("fit")
    split_names = list(dm.eval_split_names)
    stages_dir = run_dir / "stages"
    results: dict[str, Any] = {"metrics": {}}
    profiles: dict[str, Any] = {}

    # finetune ---------------------------------------------------------------------------------
    layerdrop_p = float(getattr(pruner, "p", 0.0)) if pruner_name == "layerdrop" else 0.0
    num_layers = _num_blocks(module.model)
    results.update(
        num_layers=num_layers,
        num_parameters=count_parameters(module.model),
        num_layers_before=num_layers,
        num_parameters_before=count_parameters(module.model),
    )

    from infodyn import finetune_cache

    shared = finetune_cache.for_job(
        cfg, pruner_name, {**_needed_cfg(estimators), **estimator_configs(cfg)}
    )
    with shared.locked() if shared else contextlib.nullcontext():
        if shared:
            shared.fetch(run_dir)
        ft = read_json(stages_dir / "finetune.json")
        ft_ckpt = run_dir / "checkpoints" / "finetune" / "last.ckpt"
        if ft and usable_checkpoint(ft_ckpt):
            module = load_module(ft_ckpt)
            trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
        else:
            if layerdrop_p > 0:
                from infodyn.pruners.layerdrop import apply_layerdrop

                apply_layerdrop(module.model, layerdrop_p, seed=int(cfg.seed))
            trainer, callback, module = _fit_stage(
                cfg,
                run_dir,
                "finetune",
                module,
                dm,
                estimators,
                loggers,
                int(cfg.stages.finetune_epochs),
            )
            if layerdrop_p > 0:
                from infodyn.pruners.layerdrop import remove_layerdrop

                remove_layerdrop(module.model)
            # an evaluation trainer: under DDP the fit trainer would shard the dev set
            trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
            ft = {"metrics": evaluate(trainer, module, dm), "profiles": callback.profiles()}
            atomic_write_json(stages_dir / "finetune.json", finite(ft))
            _test_kill_point("finetune")
        if shared:
            shared.publish(run_dir)
    results["metrics"]["finetune"] = ft["metrics"]
    profiles.update(ft["profiles"])

    if pruner_name == "none" or k == 0:
        results["metrics"]["final"] = dict(ft["metrics"])
        results.update(
            layer_scores=None,
            pruned_layers=[],
            num_layers_after=num_layers,
            num_parameters_after=results["num_parameters_before"],
            throughput=None,
            profiles=profiles,
        )
        _export(cfg, run_dir, module, dm)
        return results

    # score ------------------------------------------------------------------------------------
    sc = read_json(stages_dir / "score.json")
    if sc is None:
        scores = _scores(cfg, pruner, estimators, profiles, module, dm, k)
        pruned = sorted(int(i) for i in pruner.select(scores, k))
        sc = {
            "layer_scores": [None if math.isnan(s) else float(s) for s in scores.tolist()],
            "pruned_layers": pruned,
        }
        atomic_write_json(stages_dir / "score.json", sc)
    results["layer_scores"], results["pruned_layers"] = sc["layer_scores"], sc["pruned_layers"]
    pruned = list(sc["pruned_layers"])

    # prune ------------------------------------------------------------------------------------
    pr = read_json(stages_dir / "prune.json")
    rec_module = build_module(cfg, split_names, pruned)
    full_model = module.model
    pruned_model = copy.deepcopy(full_model)
    from infodyn.pruners.surgery import remove_layers

    remove_layers(_hf(pruned_model), pruned)
    _copy_weights(pruned_model, rec_module.model)
    if pr is None:
        device = module.device
        batches = dm.calibration_batches(
            int(cfg.data.eval_batch_size) * int(cfg.run.get("throughput_batches", 8))
        )
        before = eval_throughput(full_model, batches, device)
        after = eval_throughput(rec_module.model.to(device), batches, device)
        trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
        pr = {
            "metrics": evaluate(trainer, rec_module, dm),
            "throughput": {
                "before": before,
                "after": after,
                "speedup": after / before,
                "batches": len(batches),
            },
        }
        atomic_write_json(stages_dir / "prune.json", pr)
    results["metrics"]["pruned"] = pr["metrics"]
    results["throughput"] = pr["throughput"]
    del module, full_model, pruned_model

    # recover ----------------------------------------------------------------------------------
    rc = read_json(stages_dir / "recover.json")
    rc_ckpt = run_dir / "checkpoints" / "recover" / "last.ckpt"
    epochs = int(cfg.stages.recover_epochs)
    if rc and (epochs == 0 or usable_checkpoint(rc_ckpt)):
        if epochs > 0:
            rec_module = load_module(rc_ckpt)
    elif epochs > 0:
        rec_estimators = build_estimators(cfg)
        trainer, callback, rec_module = _fit_stage(
            cfg, run_dir, "recover", rec_module, dm, rec_estimators, loggers, epochs
        )
        rc = {"profiles": {k_: v for k_, v in callback.profiles().items() if k_ != "indexing"}}
        atomic_write_json(stages_dir / "recover.json", finite(rc))
    else:
        rc = {"profiles": {}}
        atomic_write_json(stages_dir / "recover.json", rc)
    profiles.update(rc.get("profiles", {}))

    # final ------------------------------------------------------------------------------------
    trainer = build_trainer(cfg, 1, [], loggers, None, evaluation=True)
    results["metrics"]["final"] = evaluate(trainer, rec_module, dm)
    if epochs > 0:
        results["metrics"]["recover"] = dict(results["metrics"]["final"])
    results.update(
        num_layers_after=_num_blocks(rec_module.model),
        num_parameters_after=count_parameters(rec_module.model),
        profiles=profiles,
    )
    _export(cfg, run_dir, rec_module, dm)
    return results


def _fit_stage(cfg, run_dir, stage, module, dm, estimators, loggers, epochs):
    """Train `module` for `epochs` (resuming a half-done stage).

    Returns `(trainer, callback, module)`: the trained module, unsharded (reloaded from the
    stage checkpoint after FSDP).

    Randomness is a function of (seed, stage, epoch) only: the global RNGs are re-seeded and
    the data order is drawn afresh at every epoch start, so a stage resumed from its epoch-e
    checkpoint continues exactly as the uninterrupted run does.
    """
    import pytorch_lightning as pl

    from infodyn.estimators.callback import LayerDynamicsCallback

    seed = int(cfg.seed) * 100 + STAGES.index(stage)
    pl.seed_everything(seed % 2**32, workers=True, verbose=False)
    ckpt_dir = run_dir / "checkpoints" / stage
    probe = None
    probes = [e for e in estimators.values() if e.input_kind == "probe"]
    if probes:
        probe = dm.probe_dataloader(max(int(e.probe_size) for e in probes))
    callback = LayerDynamicsCallback(estimators, stage=stage, probe_dataloader=probe)
    extra = [callback, _epoch_seed_callback(seed)] + _test_kill_callbacks(stage)
    from infodyn.pruners.layerdrop import has_layerdrop

    trainer = build_trainer(
        cfg, epochs, extra, loggers, ckpt_dir, unused_parameters=has_layerdrop(module.model)
    )
    ckpt_path = usable_checkpoint(ckpt_dir / "last.ckpt")
    if ckpt_path:
        log.info("resuming stage %s from %s", stage, ckpt_path)
    module.train()  # throughput/eval passes may have left it in eval mode
    loader = _epoch_ordered(dm.train_dataloader(), seed, trainer)
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    except FloatingPointError as err:
        kept = ckpt_dir / "last.ckpt"
        where = f"the last good checkpoint is {kept}" if kept.is_file() else "no epoch finished"
        raise TrainingDivergedError(
            f"stage {stage} diverged: {err} ({where}; a rerun resumes from it.)"
        ) from err
    from pytorch_lightning.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        # FSDP leaves the module's parameters sharded across processes; scoring, surgery and
        # export need the whole model: the stage's checkpoint holds it (full state dict).
        module = load_module(ckpt_dir / "last.ckpt")
    return trainer, callback, module


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1000 + epoch) % 2**32


def _epoch_seed_callback(seed: int) -> Any:
    """Re-seeds Python, NumPy and torch before each epoch's first batch from (seed, epoch).

    (Not in `on_train_epoch_start`: Lightning skips that hook for the first epoch after a
    resume from an epoch-end checkpoint.)
    """
    import pytorch_lightning as pl

    class EpochSeed(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                pl.seed_everything(_epoch_seed(seed, trainer.current_epoch), verbose=False)

    return EpochSeed()


def _epoch_ordered(loader: Any, seed: int, trainer: Any) -> Any:
    """`loader` with its shuffle drawn from (seed, epoch), not from a generator's history.

    A resumed run builds a fresh loader; with a stateful generator its epoch e would replay
    epoch 0's order. Lightning iterates (and prefetches) before `on_train_epoch_start`, so the
    sampler asks the trainer for the epoch itself.

    Under DDP the sampler is this process's share of that one order: process r of W takes
    positions r, r + W, r + 2W, ... (padded with repeats to a multiple of W, as torch's
    DistributedSampler pads). It is a `DistributedSampler` so that Lightning does not wrap it
    in its own, which would reshuffle the order per process. W processes with batch b then see
    exactly the global batches one process with batch W * b sees, in the layout the estimators
    undo when they gather the global batch (`estimators/distributed.py`).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    class EpochShuffle(DistributedSampler):
        def __init__(self, n: int) -> None:
            # world and rank are read from the trainer when iterated: before DDP launches its
            # processes they are not known yet
            super().__init__(range(n), num_replicas=1, rank=0, shuffle=False)
            self.n = n

        def _share(self) -> tuple[int, int]:
            return max(1, int(trainer.world_size)), int(trainer.global_rank)

        def __len__(self) -> int:
            return math.ceil(self.n / self._share()[0])

        def __iter__(self):
            world, rank = self._share()
            gen = torch.Generator().manual_seed(_epoch_seed(seed, int(trainer.current_epoch)))
            order = torch.randperm(self.n, generator=gen).tolist()
            total = math.ceil(self.n / world) * world
            order += order[: total - self.n]
            return iter(order[rank:total:world])

    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=EpochShuffle(len(loader.dataset)),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        drop_last=loader.drop_last,
    )


def _test_kill_callbacks(stage: str) -> list:
    """Tests only: `INFODYN_TEST_KILL_AT=<stage>:<epoch>:<batch>` SIGKILLs this process there."""
    spec = os.environ.get(KILL_ENV, "")
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != stage:
        return []
    import pytorch_lightning as pl

    epoch, batch = int(parts[1]), int(parts[2])

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, batch_idx) -> None:
            if trainer.current_epoch == epoch and batch_idx == batch:
                os.kill(os.getpid(), signal.SIGKILL)

    return [Kill()]


def _test_kill_point(name: str) -> None:
    """Tests only: `INFODYN_TEST_KILL_AT=after:<stage>` SIGKILLs this process between stages."""
    if os.environ.get(KILL_ENV) == f"after:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def _scores(cfg, pruner, estimators, profiles, module, dm, k) -> torch.Tensor:
    source = getattr(pruner, "source", "none")
    num_layers = _num_blocks(module.model)
    if source == "estimator":
        how = str(getattr(pruner, "reduce", "last"))
        est = estimators[pruner.estimator]
        if how == "calibration":
            batches = dm.calibration_batches(int(cfg.data.calibration_size))
            return calibration_scores(est, _hf(module.model), batches)
        profile = profiles.get("finetune", {}).get(pruner.estimator, {})
        return reduce_profile(profile, est.name, how)
    if source == "calibration":
        batches = dm.calibration_batches(int(cfg.data.calibration_size))
        return pruner.calibrate(_hf(module.model).eval(), batches, k).double()
    return torch.full((num_layers,), math.nan, dtype=torch.float64)


def reduce_profile(profile: Mapping[str, Any], series: str, how: str) -> torch.Tensor:
    """Per-layer scores from an epoch profile: `last` epoch or `mean` over epochs (NaN-aware)."""
    epochs = profile.get(series) or []
    if not epochs:
        raise ConfigError(f"no '{series}' values were recorded; the pruner has nothing to rank.")
    table = torch.tensor(
        [[math.nan if v is None else v for v in row] for row in epochs], dtype=torch.float64
    )
    if how == "last":
        return table[-1]
    if how == "mean":
        return table.nanmean(dim=0)
    raise ConfigError(
        f"pruner.reduce={how!r} is unknown. Fix: reduce=last or reduce=mean "
        "(or reduce=calibration)."
    )


@torch.no_grad()
def calibration_scores(
    estimator: Any, model: torch.nn.Module, batches: list[dict]
) -> torch.Tensor:
    """An estimator's scores from eval forwards over calibration batches (no training)."""
    model.eval()
    estimator.reset()
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=True)
        if estimator.input_kind != "hidden_states":
            raise ConfigError("reduce=calibration supports hidden-state estimators (cosine) only.")
        estimator.update([h.float() for h in out.hidden_states], inputs["attention_mask"])
    return estimator.compute().double()


def evaluate(trainer: Any, module: Any, dm: Any) -> dict[str, float]:
    """Validation metrics as {metric: value}; MNLI's mismatched split adds `<metric>_mm`."""
    results = trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    merged: dict[str, float] = {}
    for res in results:
        for key, value in res.items():
            split, _, metric = key.partition("/")
            suffix = "" if split == "val" else "_" + split.removeprefix("validation_")
            merged[f"{metric}{suffix}"] = float(value)
    return merged


@torch.no_grad()
def eval_throughput(model: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """Examples per second of eval forwards over `batches` (one warm-up batch first)."""
    model.eval()
    batches = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches]
    model(**batches[0])
    n = sum(b["input_ids"].shape[0] for b in batches)
    start = time.perf_counter()
    for b in batches:
        model(**b)
    return n / (time.perf_counter() - start)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"pruned model weights do not match: missing={missing[:5]} unexpected={unexpected[:5]}"
        )


def _export(cfg: DictConfig, run_dir: Path, module: Any, dm: Any) -> None:
    from pytorch_lightning.utilities import rank_zero_only

    # under DDP every process holds the same model: one writes it (two renaming the same
    # folder at once could fail)
    if not cfg.run.get("export_pruned_model", True) or rank_zero_only.rank != 0:
        return
    from infodyn.models import merged_copy
    from infodyn.pruners.surgery import export_pruned

    export_pruned(merged_copy(module.model).cpu(), dm.tokenizer, run_dir / "model")


def _hf(model: torch.nn.Module) -> torch.nn.Module:
    from infodyn.models import find_hf_model

    return find_hf_model(model)


def _num_blocks(model: torch.nn.Module) -> int:
    from infodyn.layers import num_blocks

    return num_blocks(_hf(model))


def _needed_cfg(estimators: Mapping[str, Any]) -> dict[str, str]:
    """Estimators added for a pruner (not in cfg.estimator), by class: part of the cache key."""
    return {k: f"{type(e).__module__}.{type(e).__qualname__}" for k, e in estimators.items()}
