"""What of FSDP can be tested on CPU: the estimators and the surgery around a sharded model.

Lightning's `FSDPStrategy` refuses a CPU accelerator, so `trainer=fsdp` itself needs GPUs. torch's
FSDP runs on CPU over gloo, so here two processes shard a tiny RoBERTa block by block (the large
model layout) and train it: the activation tap still sees every block's full hidden states and FFN
activations, the scores equal one unsharded process on the same global batches, and the full
state dict gathered from the shards loads into an unsharded model that the surgery then prunes.

The workers run as `python test_fsdp.py --worker RANK STORE OUT` so no port is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from infodyn.estimators.callback import ActivationTap, feed_estimators
from infodyn.estimators.cosine import CosineRedundancy
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy
from infodyn.pruners.surgery import remove_layers
from tiny_models import tiny_roberta

WORLD, LOCAL_BATCH, STEPS, LAYERS, FFN = 2, 3, 3, 4, 37
TOL = 1e-6


def global_batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        size = WORLD * LOCAL_BATCH
        ids = torch.randint(3, 99, (size, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[::2, 9:] = 0  # some padding
        ids[mask == 0] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(size) % 2})
    return out


def estimators() -> dict:
    return {
        "cosine": CosineRedundancy(num_layers=LAYERS),
        "knowledge_entropy": KnowledgeEntropy(num_layers=LAYERS, ffn_dim=FFN),
    }


def train(model, root, batches, ests) -> None:
    """SGD steps with the tap on; `root` is what is called (the FSDP wrapper or the model)."""
    tap = ActivationTap(
        model, True, True, lambda h, f, m: feed_estimators(ests, h, f, m), root=root
    )
    opt = torch.optim.SGD(root.parameters(), lr=0.5)
    root.train()
    for batch in batches:
        tap.start()
        loss = root(**batch).loss
        tap.stop()
        loss.backward()
        opt.step()
        opt.zero_grad()
    tap.remove()


def summaries(ests) -> dict:
    return {
        k: {s: v.tolist() if torch.is_tensor(v) else v for s, v in e.summary().items()}
        for k, e in ests.items()
    }


def _worker(rank: int, store: str, out: str) -> None:
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.roberta.modeling_roberta import RobertaLayer

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD
    )
    model = tiny_roberta(0, LAYERS)
    sharded = FSDP(
        model,
        auto_wrap_policy=ModuleWrapPolicy({RobertaLayer}),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    # rank r holds positions r, r + W, ... of each global batch (DistributedSampler's deal)
    local = [{k: v[rank::WORLD] for k, v in b.items()} for b in global_batches()]
    ests = estimators()
    train(model, sharded, local, ests)
    result = summaries(ests)
    cfg = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)  # already on the CPU
    with FSDP.state_dict_type(sharded, StateDictType.FULL_STATE_DICT, cfg):
        full = sharded.state_dict()
    if rank == 0:
        torch.save(full, Path(out) / "full.pt")
        (Path(out) / "scores.json").write_text(json.dumps(result))
    torch.distributed.barrier()  # no process leaves while another still talks to it
    torch.distributed.destroy_process_group()


def test_fsdp_shards_score_and_prune_like_one_process(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    store = tmp_path / "store"
    logs = [tmp_path / f"rank{r}.log" for r in range(WORLD)]
    with contextlib.ExitStack() as files:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(r), str(store), str(tmp_path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=files.enter_context(open(logs[r], "w")),  # a file: no pipe to fill
            )
            for r in range(WORLD)
        ]
        codes = [proc.wait(timeout=240) for proc in procs]
    assert codes == [0] * WORLD, [log.read_text()[-2000:] for log in logs]
    got = json.loads((tmp_path / "scores.json").read_text())

    # one unsharded process, the same global batches, the same SGD steps
    model = tiny_roberta(0, LAYERS)
    ests = estimators()
    train(model, model, global_batches(), ests)
    want = summaries(ests)
    assert got["cosine"]["num_batches"] == want["cosine"]["num_batches"] == STEPS
    for key, series in (("cosine", "redundancy"), ("knowledge_entropy", "knowledge_entropy")):
        assert torch.allclose(
            torch.tensor(got[key][series]), torch.tensor(want[key][series]), atol=TOL, rtol=0
        ), (key, got[key][series], want[key][series])

    # the gathered full state dict is the trained model; surgery works on it unsharded
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    restored = tiny_roberta(1, LAYERS)
    restored.load_state_dict(full)
    for name, param in model.state_dict().items():
        assert torch.allclose(restored.state_dict()[name], param, atol=1e-5), name
    remove_layers(restored, [1, 2])
    remove_layers(model, [1, 2])
    batch = global_batches()[0]
    restored.eval(), model.eval()
    with torch.no_grad():
        a = restored(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        b = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert restored.config.num_hidden_layers == 2
    assert torch.allclose(a.logits, b.logits, atol=1e-5)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker RANK STORE OUT_DIR")
