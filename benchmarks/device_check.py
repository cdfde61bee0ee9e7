"""Device check: one run that measures, side by side, what a GPU machine has to show.

On one CUDA GPU with a random-weight RoBERTa-base (`conf/model/roberta_base_random.yaml`, built
from a RobertaConfig: nothing is downloaded) it prints, per section, a ratio or
`skipped: <reason>`:
  (a) bf16 training throughput of infodyn's Lightning path (`build_module` + `build_trainer`)
      against a plain `transformers.Trainer` on the same batches (alternating rounds);
  (b) estimator overhead per training step: cosine + knowledge_entropy tracked by
      `LayerDynamicsCallback` against no callback;
  (c) eval speed-up of the model pruned 12 -> 8 blocks by `pruners/surgery.py`;
  (d) Lightning's FSDP strategy (`conf/trainer/fsdp.yaml`, one device) through `fit_stage`.
A failing section prints its error and the others still run; the exit status is 1 if any failed.

`--cpu-smoke`: the same sections on the CPU with `roberta_tiny` and a few steps (fp32: CPU bf16
autocast would time the emulation), to check the script itself.

Run: benchmarks/device_check.sh   (or python benchmarks/device_check.py [--cpu-smoke])
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)  # a fit's banner per round hides the figures
warnings.filterwarnings("ignore", module="pytorch_lightning")


@dataclass(frozen=True)
class Plan:
    """What one run measures: the model, the trainer option and the sizes."""

    gpu: bool
    model: str
    trainer: str
    batch: int
    seq: int
    steps: int  # timed training steps per round (after `warmup`)
    warmup: int
    rounds: int
    drop: tuple[int, ...]  # blocks (c) removes
    fsdp_steps: int


def plan_for(cpu_smoke: bool, rounds: int | None = None, steps: int | None = None) -> Plan:
    if cpu_smoke:
        plan = Plan(False, "roberta_tiny", "cpu", 4, 32, 3, 1, 2, (1,), 2)
    else:
        plan = Plan(True, "roberta_base_random", "gpu", 32, 128, 30, 3, 3, (4, 5, 6, 7), 4)
    return replace(plan, rounds=rounds or plan.rounds, steps=steps or plan.steps)


def config(plan: Plan, *extra: str) -> DictConfig:
    """The real `conf/config.yaml` with the plan's model and trainer, no logger, no dev set."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "task=mrpc",
                f"model={plan.model}",
                f"trainer={plan.trainer}",
                "logger=none",
                "callbacks=none",
                "pruner=none",
                "estimator=none",
                "trainer.check_val_every_n_epoch=0",
                f"data.batch_size={plan.batch}",
                f"data.max_seq_length={plan.seq}",
                *extra,
            ],
        )


def random_batches(n: int, plan: Plan, vocab: int) -> list[dict[str, torch.Tensor]]:
    """`n` fixed-shape batches of random token ids (a quarter of each row padded)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (plan.batch, plan.seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[:, plan.seq * 3 // 4 :] = 0
        ids[mask == 0] = 1  # RoBERTa's pad id
        labels = torch.randint(0, 2, (plan.batch,), generator=gen)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a step's kernels are queued, not done, when Python returns


class StepTimer(pl.Callback):
    """Seconds and examples of the training steps after the first `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seconds, self.examples, self.steps = warmup, 0.0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync()
        self.steps += 1
        if self.steps > self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.examples += int(batch["input_ids"].shape[0])

    def rate(self) -> float:
        return self.examples / self.seconds


def lightning_rate(cfg: DictConfig, plan: Plan, batches: list[dict], callbacks=()) -> float:
    """Examples/s of infodyn's training path (its module, its Trainer builder) on `batches`."""
    from torch.utils.data import DataLoader

    from infodyn.builders import build_module, build_trainer

    pl.seed_everything(0, verbose=False)
    module = build_module(cfg, ["validation"])
    timer = StepTimer(plan.warmup)
    trainer = build_trainer(cfg, 1, [*callbacks, timer], [], None)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return timer.rate()


def hf_trainer_rate(cfg: DictConfig, plan: Plan, batches: list[dict], tmp: str) -> float:
    """Examples/s of a plain `transformers.Trainer` on the same batches, model and settings."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from infodyn.builders import build_module

    class Fixed(Dataset):
        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, i: int) -> dict:
            return batches[i]

    timer = StepTimer(plan.warmup)

    class Timed(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.on_train_batch_start(None, None, None, None)

        def on_step_end(self, args, state, control, **kwargs):
            timer.on_train_batch_end(None, None, None, batches[state.global_step - 1], None)

    pl.seed_everything(0, verbose=False)
    model = build_module(cfg, ["validation"]).model
    args = TrainingArguments(
        output_dir=os.path.join(tmp, "hf"),
        per_device_train_batch_size=1,  # one item = one prepared batch
        num_train_epochs=1,
        learning_rate=float(cfg.optim.lr),
        weight_decay=float(cfg.optim.weight_decay),
        warmup_steps=int(float(cfg.optim.warmup_ratio) * len(batches)),  # as GlueClassifier
        max_grad_norm=float(cfg.trainer.gradient_clip_val),
        bf16=plan.gpu,
        use_cpu=not plan.gpu,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=Fixed(),
        data_collator=lambda items: items[0],
        callbacks=[Timed()],
    ).train()
    return timer.rate()


def _median_ratio(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple:
    ours, theirs = [], []
    for _ in range(rounds):  # alternating: machine noise hits both alike
        ours.append(a())
        theirs.append(b())
    x, y = statistics.median(ours), statistics.median(theirs)
    return x, y, x / y


def section_throughput(plan: Plan, tmp: str) -> str:
    cfg = config(plan)
    batches = random_batches(plan.warmup + plan.steps, plan, int(cfg.model.config.vocab_size))
    ours, hf, ratio = _median_ratio(
        lambda: lightning_rate(cfg, plan, batches),
        lambda: hf_trainer_rate(cfg, plan, batches, tmp),
        plan.rounds,
    )
    return (
        f"infodyn Lightning {ours:.1f} ex/s | HF Trainer {hf:.1f} ex/s | ratio {ratio:.3f} "
        f"({cfg.trainer.precision}, median of {plan.rounds} alternating rounds of {plan.steps} "
        f"steps, batch {plan.batch} x {plan.seq} tokens)"
    )


def section_estimators(plan: Plan) -> str:
    from infodyn.builders import build_estimators
    from infodyn.estimators.callback import LayerDynamicsCallback

    cfg = config(plan)
    tracked = config(plan, "estimator=[cosine,knowledge_entropy]")
    batches = random_batches(plan.warmup + plan.steps, plan, int(cfg.model.config.vocab_size))
    with_est, without, ratio = _median_ratio(
        lambda: lightning_rate(
            tracked, plan, batches, [LayerDynamicsCallback(build_estimators(tracked))]
        ),
        lambda: lightning_rate(cfg, plan, batches),
        plan.rounds,
    )
    step_ms = 1e3 * plan.batch * (1 / with_est - 1 / without)
    return (
        f"cosine+knowledge_entropy {with_est:.1f} ex/s | none {without:.1f} ex/s | "
        f"step time ratio {1 / ratio:.3f} ({step_ms:+.2f} ms per step)"
    )


class Synced(torch.nn.Module):
    """`model`, returning only once the GPU has run the forward: measure_throughput times wall
    clock per call, and an unsynchronised CUDA call returns as soon as it is queued."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        out = self.model(**inputs)
        _sync()
        return out


def section_pruned(plan: Plan) -> str:
    from infodyn.builders import build_module
    from infodyn.evaluation import measure_throughput
    from infodyn.layers import num_blocks
    from infodyn.pruners.surgery import remove_layers

    cfg = config(plan)
    device = "cuda" if plan.gpu else "cpu"
    full = build_module(cfg, ["validation"]).model.to(device).eval()
    pruned = remove_layers(copy.deepcopy(full), plan.drop).eval()
    batch = random_batches(1, plan, int(cfg.model.config.vocab_size))[0]
    batch.pop("labels")
    dtype = torch.bfloat16 if plan.gpu else torch.float32
    with torch.autocast(device, dtype=dtype, enabled=plan.gpu):
        rates = measure_throughput(
            {"full": Synced(full), "pruned": Synced(pruned)},
            batch,
            min_seconds=1.0 if plan.gpu else 0.1,
        )
    a, b = rates["full"]["examples_per_s"], rates["pruned"]["examples_per_s"]
    return (
        f"{num_blocks(full)} blocks {a:.1f} ex/s | {num_blocks(pruned)} blocks {b:.1f} ex/s | "
        f"speed-up {b / a:.3f} (eval, {'bf16 autocast' if plan.gpu else 'fp32'}, "
        f"batch {plan.batch} x {plan.seq} tokens, infodyn.evaluation.measure_throughput)"
    )


class RandomData:
    """The part of `GlueDataModule` that `fit_stage` uses, over random fixed-shape batches."""

    def __init__(self, batches: list[dict]) -> None:
        self.rows = [
            {k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))
        ]
        self.batch_size = int(batches[0]["input_ids"].shape[0])

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        return DataLoader(self.rows, batch_size=self.batch_size)

    def val_dataloader(self):
        return [self.train_dataloader()]


def fsdp_steps(cfg: DictConfig, plan: Plan, tmp: str) -> str:
    """`fit_stage` (the pipeline's training stage) for `plan.fsdp_steps` steps under
    `cfg.trainer`, cosine tracked; checks the module it returns is whole and finite."""
    from infodyn.builders import build_estimators, build_module
    from infodyn.training import fit_stage

    pl.seed_everything(0, verbose=False)
    module = build_module(cfg, ["validation"])
    batches = random_batches(plan.fsdp_steps, plan, int(cfg.model.config.vocab_size))
    start = time.perf_counter()
    callback, module = fit_stage(
        cfg, Path(tmp) / "fsdp_run", "finetune", module, RandomData(batches),
        build_estimators(cfg), None, 1,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    module.eval()
    device = "cuda" if plan.gpu else "cpu"
    with torch.no_grad():
        inputs = {k: v.to(device) for k, v in batches[0].items()}
        loss = float(module.to(device)(inputs).loss)
    if not torch.isfinite(torch.tensor(loss)):
        raise FloatingPointError(
            f"the model after {cfg.trainer.strategy} training gives loss {loss}"
        )
    batches_seen = callback.tracker.history["finetune"]["cosine"]["num_batches"][-1]
    return (
        f"strategy={cfg.trainer.strategy}: {plan.fsdp_steps} steps in {seconds:.1f}s, "
        f"cosine saw {int(batches_seen)} batches, reloaded model loss {loss:.4f}"
    )


def section_fsdp(plan: Plan, tmp: str) -> str:
    if not torch.cuda.is_available():
        return "skipped: Lightning's FSDPStrategy refuses a CPU accelerator (needs a CUDA GPU)"
    cfg = config(
        plan, "trainer=fsdp", "trainer.devices=1", "estimator=[cosine]",
        f"trainer.limit_train_batches={plan.fsdp_steps}",
    )  # fmt: skip
    return fsdp_steps(cfg, plan, tmp)


def run_sections(plan: Plan) -> int:
    """Run every section, printing each line as it finishes; the number that failed."""
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("INFODYN_CACHE", os.path.join(tmp, "cache"))
        sections = {
            "(a) training throughput": lambda: section_throughput(plan, tmp),
            "(b) estimator overhead": lambda: section_estimators(plan),
            "(c) pruned speed-up": lambda: section_pruned(plan),
            "(d) FSDP, one device": lambda: section_fsdp(plan, tmp),
        }
        for title, section in sections.items():
            start = time.perf_counter()
            try:
                line = section()
            except Exception as err:  # noqa: BLE001 - one failed section must not hide the rest
                traceback.print_exc()
                line, failed = f"FAILED: {type(err).__name__}: {err}", failed + 1
            print(f"{title}: {line} [{time.perf_counter() - start:.0f}s]", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model, few steps, on the CPU"
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison")
    parser.add_argument("--steps", type=int, help="timed training steps per round")
    args = parser.parse_args(argv)
    plan = plan_for(args.cpu_smoke, args.rounds, args.steps)
    if plan.gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke on a CPU machine", file=sys.stderr)
        return 2
    device = (
        torch.cuda.get_device_name() if plan.gpu else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device check: {plan.model} on {device}, torch {torch.__version__}", flush=True)
    if not plan.gpu:
        print("cpu smoke: the figures check that the script runs; a few steps of a tiny model")
        print("are noise, not measurements", flush=True)
    start = time.perf_counter()
    failed = run_sections(plan)
    print(f"done in {time.perf_counter() - start:.0f}s; {failed} section(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
