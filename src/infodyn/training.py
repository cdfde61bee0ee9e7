"""One training stage (fine-tune or recover): a Lightning fit whose randomness is a function of
(seed, stage, epoch) only, so a stage resumed from its epoch-e checkpoint continues exactly as the
uninterrupted run does."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from infodyn.checkpoints import load_module, usable_checkpoint
from infodyn.errors import TrainingDivergedError
from infodyn.killpoints import kill_callbacks

log = logging.getLogger("infodyn")

STAGE_SEEDS = {"finetune": 0, "recover": 3}  # the stage offsets the seeds have always used


def fit_stage(
    cfg: DictConfig,
    run_dir: Path,
    stage: str,
    module: Any,
    dm: Any,
    estimators: dict[str, Any],
    loggers: list,
    epochs: int,
    block_ids: list[int] | None = None,
) -> tuple[Any, Any]:
    """Train `module` for `epochs` (resuming a half-done stage); returns `(callback, module)`.

    The module returned is whole (reloaded from the stage checkpoint after FSDP, which leaves the
    parameters sharded): scoring, surgery and export need the whole model.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import FSDPStrategy

    from infodyn.builders import build_trainer
    from infodyn.estimators.callback import LayerDynamicsCallback
    from infodyn.pruners.layerdrop import has_layerdrop

    seed = int(cfg.seed) * 100 + STAGE_SEEDS[stage]
    pl.seed_everything(seed % 2**32, workers=True, verbose=False)
    ckpt_dir = run_dir / "checkpoints" / stage
    probes = [e for e in estimators.values() if e.input_kind == "probe"]
    probe = dm.probe_dataloader(max(int(e.probe_size) for e in probes)) if probes else None
    callback = LayerDynamicsCallback(
        estimators, stage=stage, probe_dataloader=probe, block_ids=block_ids
    )
    extra = [callback, _epoch_seed_callback(seed), *kill_callbacks(stage)]
    trainer = build_trainer(
        cfg,
        epochs,
        extra,
        loggers.stage(stage) if loggers else [],
        ckpt_dir,
        unused_parameters=has_layerdrop(module.model),
    )
    ckpt_path = usable_checkpoint(ckpt_dir / "last.ckpt")
    if ckpt_path:
        log.info("resuming stage %s from %s", stage, ckpt_path)
    module.train()  # throughput/eval passes may have left it in eval mode
    loader = _epoch_ordered(dm.train_dataloader(), seed, trainer)
    try:
        trainer.fit(
            module,
            train_dataloaders=loader,
            val_dataloaders=dm.val_dataloader(),  # per-epoch dev metrics (trainer.check_val_*)
            ckpt_path=ckpt_path,
            weights_only=True,
        )
    except FloatingPointError as err:
        kept = ckpt_dir / "last.ckpt"
        where = f"the last good checkpoint is {kept}" if kept.is_file() else "no epoch finished"
        raise TrainingDivergedError(
            f"stage {stage} diverged: {err} ({where}; a rerun resumes from it.)"
        ) from err
    if isinstance(trainer.strategy, FSDPStrategy):
        module = load_module(ckpt_dir / "last.ckpt")
    return callback, module


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
