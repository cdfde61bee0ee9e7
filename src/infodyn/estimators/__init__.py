"""Per-layer estimators of redundancy / entropy rate (``conf/estimator/*.yaml`` is the registry).

Conventions (all estimators): ``hidden_states`` are z_0..z_L from HF ``output_hidden_states``
(z_0 = embedding output), each ``[B, T, D]``, with a ``[B, T]`` attention mask; outputs are
``[L]`` indexed by 0-based block b, scoring block b from (z_b, z_{b+1}); higher = more redundant.
"""

from infodyn.estimators.base import LayerEstimator, ProbeEstimator
from infodyn.estimators.cosine import CosineRedundancy, redundancy_score
from infodyn.estimators.exact import ExactEntropyRate
from infodyn.estimators.gaussian import GaussianEntropyRate, gaussian_conditional_entropy
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy
from infodyn.estimators.pooling import pool

__all__ = [
    "CosineRedundancy",
    "ExactEntropyRate",
    "GaussianEntropyRate",
    "KnowledgeEntropy",
    "LayerEstimator",
    "ProbeEstimator",
    "gaussian_conditional_entropy",
    "pool",
    "redundancy_score",
]
