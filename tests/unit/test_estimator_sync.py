"""The per-step estimator path never reads a tensor on the host nor copies one to the CPU.

On a GPU either forces a host-device synchronisation every training step. On this CPU-only
machine it is caught by counting, inside the tap's hooks and the estimators' updates, every
tensor -> Python conversion (`item`, `bool`, `int`, `float`, `index`, `tolist`, `numpy`) and
every `.cpu()` / `.to(<cpu>)` call, no-ops included: the code must not ask for one at all.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from infodyn.estimators.callback import ActivationTap, feed_estimators
from infodyn.estimators.cosine import CosineRedundancy
from infodyn.estimators.gaussian import GaussianEntropyRate
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy
from tiny_models import tiny_roberta

CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def _is_cpu(target) -> bool:
    if isinstance(target, torch.Tensor):
        return target.device.type == "cpu"
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == "cpu"
    return False


class HostReads:
    """Counts host reads and CPU copies of tensors while `active` (see the module docstring)."""

    def __init__(self, monkeypatch) -> None:
        self.active = False
        self.calls: list[str] = []
        for name in CONVERSIONS:
            self._wrap(monkeypatch, name, lambda *a, **k: True)
        self._wrap(monkeypatch, "cpu", lambda *a, **k: True)
        self._wrap(
            monkeypatch,
            "to",
            lambda *args, **kwargs: (
                any(_is_cpu(a) for a in args[1:]) or _is_cpu(kwargs.get("device"))
            ),
        )

    def _wrap(self, monkeypatch, name: str, counts) -> None:
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if self.active and counts(*args, **kwargs):
                self.calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    @contextlib.contextmanager
    def counting(self):
        was, self.active = self.active, True
        try:
            yield
        finally:
            self.active = was

    def around(self, fn):
        """`fn`, counted while it runs (for hooks and consumers)."""

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            with self.counting():
                return fn(*args, **kwargs)

        return counted


def _batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (6, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[::2, 7:] = 0  # padding in every other row
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(6) % 2}


def test_counter_sees_each_kind_of_host_read(monkeypatch):
    reads = HostReads(monkeypatch)
    t = torch.ones(3)
    with reads.counting():
        bool(t.sum() > 0), int(t.sum()), float(t[0]), t.tolist(), t.cpu(), t.to("cpu")
        t.to(torch.float64)  # a dtype change is not a copy to the host
    assert reads.calls == ["__bool__", "__int__", "__float__", "tolist", "cpu", "to"]


def test_training_steps_feed_the_estimators_without_host_reads(monkeypatch):
    reads = HostReads(monkeypatch)
    model = tiny_roberta(0, 3).train()
    estimators = {
        "cosine": CosineRedundancy(),
        "knowledge_entropy": KnowledgeEntropy(),
        "gaussian": GaussianEntropyRate(probe_size=8, k=2),  # per epoch only: never fed here
    }
    monkeypatch.setattr(ActivationTap, "_on_model", reads.around(ActivationTap._on_model))
    monkeypatch.setattr(
        ActivationTap, "_request_hidden", reads.around(ActivationTap._request_hidden)
    )
    make_hook = ActivationTap._ffn_hook
    monkeypatch.setattr(
        ActivationTap, "_ffn_hook", lambda self, idx: reads.around(make_hook(self, idx))
    )
    tap = ActivationTap(
        model, True, True, lambda h, f, m: feed_estimators(estimators, h, f, m), root=model
    )
    steps = 3
    for step in range(steps):
        tap.start()
        model(**_batch(step)).loss.backward()
        tap.stop()
    tap.remove()
    assert reads.calls == [], f"host reads in the per-step path: {reads.calls}"
    # the path did run: every estimator fed per step holds every batch
    assert int(estimators["cosine"].num_batches) == steps
    assert int(estimators["knowledge_entropy"].num_batches) == steps
    assert int(estimators["knowledge_entropy"].num_tokens) == sum(
        int(_batch(s)["attention_mask"].sum()) for s in range(steps)
    )
    assert torch.isfinite(estimators["cosine"].compute()).all()
