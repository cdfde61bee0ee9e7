"""Fine-tuning benchmark: infodyn's Lightning loop vs. a plain `transformers.Trainer`, on this CPU.

For each task (MRPC, RTE, an SST-2 subset) it
1. measures training throughput (examples/s) of both loops side by side: alternating rounds of the
   same `--steps` batches (same data order, model, batch size, sequence length, optimizer), so
   machine noise hits both alike; prints the ratio of medians (target >= 0.95);
2. fine-tunes MiniLM-L6 with infodyn for `--epochs` epochs (the cosine estimator on, as users run
   it) and prints the dev metrics.

Run: GLUE_DIR=../shared/data/glue .venv/bin/python benchmarks/finetune.py [--tasks mrpc rte sst2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from infodyn.builders import build_datamodule, build_estimators, build_module  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(task: str, train_limit: int | None, epochs: int, seq: int, tmp: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"task={task}",
                "model=minilm_l6",
                "trainer=cpu",
                "logger=none",
                "pruner=none",
                "estimator=[cosine]",
                f"stages.finetune_epochs={epochs}",
                "optim.lr=5e-5",
                f"data.max_seq_length={seq}",
                f"data.train_limit={train_limit if train_limit else 'null'}",
            ],
        )
    with open_dict(cfg):
        cfg.paths.cache_dir = os.path.join(tmp, "cache")
        cfg.paths.glue_dir = os.environ.get("GLUE_DIR")
    OmegaConf.resolve(cfg)
    return cfg


class _Timer(pl.Callback):
    def __init__(self) -> None:
        self.seconds, self.examples = 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > 1:  # skip the warm-up step, as for the HF Trainer
            self.seconds += time.perf_counter() - self._t
            self.examples += batch["input_ids"].shape[0]


def our_trainer(cfg, epochs: int) -> tuple[pl.Trainer, _Timer]:
    """infodyn's training loop as users run it (cosine estimator on), with a step timer."""
    from infodyn.estimators.callback import LayerDynamicsCallback

    timer = _Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[LayerDynamicsCallback(build_estimators(cfg)), timer],
    )
    return trainer, timer


def lightning_throughput(cfg, dm, batches: list[dict]) -> float:
    """Examples/s of infodyn's training loop (module + callback + Lightning) on `batches`."""

    pl.seed_everything(0)
    module = build_module(cfg, dm.eval_split_names)
    trainer, timer = our_trainer(cfg, 1)
    from torch.utils.data import DataLoader

    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return timer.examples / timer.seconds


def hf_trainer_throughput(cfg, dm, batches: list[dict], tmp: str) -> float:
    """Examples/s of a plain `transformers.Trainer` on the same batches (same order)."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Fixed(Dataset):
        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, i: int) -> dict:
            return batches[i]

    pl.seed_everything(0)
    model = build_module(cfg, dm.eval_split_names).model
    args = TrainingArguments(
        output_dir=os.path.join(tmp, "hf"),
        per_device_train_batch_size=1,
        num_train_epochs=1,
        learning_rate=5e-5,
        weight_decay=0.01,
        warmup_steps=max(1, int(0.06 * len(batches))),  # our schedule: 6% linear warm-up
        max_grad_norm=1.0,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_drop_last=False,
        disable_tqdm=True,
    )
    from transformers import TrainerCallback

    timer = {"examples": 0, "seconds": 0.0, "steps": 0}

    class StepTimer(TrainerCallback):
        """Times whole optimizer steps (forward, backward, step), skipping the warm-up step."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            timer["steps"] += 1
            if timer["steps"] > 1:
                timer["seconds"] += time.perf_counter() - self.t
                timer["examples"] += batches[timer["steps"] - 1]["input_ids"].shape[0]

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Fixed(),
        data_collator=lambda items: items[0],
        callbacks=[StepTimer()],
    )
    trainer.train()
    return timer["examples"] / timer["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "rte", "sst2"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="batches per throughput round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sst2-limit", type=int, default=8000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--skip-metrics", action="store_true")
    a = ap.parse_args()
    if not os.environ.get("GLUE_DIR"):
        raise SystemExit("set GLUE_DIR=/path/to/glue_data (e.g. ../shared/data/glue)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            limit = a.sst2_limit if task == "sst2" else None
            cfg = config(task, limit, a.epochs, a.seq, tmp)
            from infodyn.models import build_tokenizer

            dm = build_datamodule(cfg, build_tokenizer(cfg.model), None)
            dm.setup("fit")
            it = iter(dm.train_dataloader())
            batches = [next(it) for _ in range(a.steps)]
            ours, theirs = [], []
            for _ in range(a.rounds):
                ours.append(lightning_throughput(cfg, dm, batches))
                theirs.append(hf_trainer_throughput(cfg, dm, batches, tmp))
            o, t = statistics.median(ours), statistics.median(theirs)
            print(
                f"[{task}] throughput examples/s: infodyn {o:.1f} | HF Trainer {t:.1f} | "
                f"ratio {o / t:.3f} (target >= 0.95; {a.rounds} alternating rounds of "
                f"{a.steps} batches of {cfg.data.batch_size})",
                flush=True,
            )
            metrics, wall = {}, 0.0
            if not a.skip_metrics:
                from infodyn.stages import evaluate

                pl.seed_everything(int(cfg.seed))
                module = build_module(cfg, dm.eval_split_names)
                trainer, timer = our_trainer(cfg, a.epochs)
                start = time.time()
                trainer.fit(module, train_dataloaders=dm.train_dataloader())
                wall = time.time() - start
                metrics = evaluate(trainer, module, dm)
                print(
                    f"[{task}] dev after {a.epochs} epochs ({len(dm.train_dataset)} train "
                    f"examples, {wall:.0f}s, {timer.examples / timer.seconds:.1f} ex/s): "
                    + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "loss"),
                    flush=True,
                )
            rows.append((task, o, t, metrics, wall))
    print("\n| task | infodyn ex/s | Trainer ex/s | ratio | dev metrics |")
    print("|---|---|---|---|---|")
    for task, o, t, metrics, _ in rows:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")
        print(f"| {task} | {o:.1f} | {t:.1f} | {o / t:.3f} | {shown} |")
    torch.set_num_threads(torch.get_num_threads())


if __name__ == "__main__":
    main()
