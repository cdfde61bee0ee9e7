"""Protocols every layer estimator satisfies, and the one torchmetrics shim they all use.

Indexing: ``states`` for ``input_kind="hidden_states"`` or ``"probe"`` is HF's
``output_hidden_states``: L + 1 tensors ``[B, T, D]``, ``states[0]`` the embedding output z_0.
For ``"ffn_activations"`` it is L tensors ``[B, T, F]``, the input of each block's FFN output
projection. Per-layer outputs have length L, entry b scoring block b from
``(states[b], states[b + 1])``; NaN marks a block without a score. Higher = more redundant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class LayerEstimator(Protocol):
    """A per-layer statistic accumulated over batches (a ``torchmetrics.Metric``)."""

    name: str  # key prefix in logs and results.json, e.g. "redundancy"
    input_kind: str  # "hidden_states" | "ffn_activations" | "probe"

    def update(self, states: Sequence[Tensor], attention_mask: Tensor) -> None: ...

    def compute(self) -> Tensor: ...  # [L]; higher = more redundant / more prunable

    def summary(self) -> dict[str, Tensor | float | int]: ...

    def reset(self) -> None: ...


@runtime_checkable
class ProbeEstimator(LayerEstimator, Protocol):
    """An estimator fed a fixed probe set once per epoch and once before training."""

    probe_size: int

    def commit(self) -> None: ...  # current probe pass becomes the "previous epoch" X^t


def keep_layer_axis(wrapped_compute: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a ``Metric._wrap_compute`` result so that ``compute()`` stays ``[L]``.

    torchmetrics squeezes a 1-element result to 0-dim; keep ``[L]`` even when L == 1.
    """
    return lambda *args, **kwargs: wrapped_compute(*args, **kwargs).reshape(-1)
