"""Known answers for the cosine redundancy score (paper Theorem 2, eq. 20-25)."""

import io
import math

import numpy as np
import pytest
import torch

from infodyn.estimators.base import LayerEstimator
from infodyn.estimators.cosine import CosineRedundancy, redundancy_score


def _states(batch, num_layers=3, t=5, d=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, t, d, generator=gen, dtype=dtype) for _ in range(num_layers + 1)]


def _padded_mask(lengths, t=5):
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return mask


def _loop_reference(states, lengths):
    """Plain per-sample loop: mean over real tokens, consecutive differences, cos^2."""
    pooled = [
        [np.asarray(h[i, :n], dtype=np.float64).mean(0) for i, n in enumerate(lengths)]
        for h in states
    ]
    out = []
    for b in range(len(states) - 1):
        total = 0.0
        for i in range(len(lengths) - 1):
            lo = pooled[b][i + 1] - pooled[b][i]
            hi = pooled[b + 1][i + 1] - pooled[b + 1][i]
            total += (lo @ hi) ** 2 / ((lo @ lo) * (hi @ hi))
        out.append(total / (2 * (len(lengths) - 1)))
    return np.array(out)


def test_satisfies_protocol():
    metric = CosineRedundancy()
    assert isinstance(metric, LayerEstimator)
    assert metric.name == "redundancy" and metric.input_kind == "hidden_states"


def test_identical_consecutive_layers_give_one_half():
    z = torch.randn(16, 4, 8)
    states = [z, z.clone(), 3.0 * z]  # a rescaled copy has the same direction too
    r = redundancy_score(states, torch.ones(16, 4))
    torch.testing.assert_close(r, torch.full((2,), 0.5, dtype=torch.float64))


def test_independent_isotropic_layers_give_one_over_2d():
    d, batch = 16, 20001
    gen = torch.Generator().manual_seed(1)
    states = [torch.randn(batch, 1, d, generator=gen) for _ in range(3)]
    r = redundancy_score(states, torch.ones(batch, 1))
    # E[cos^2] = 1/d for independent isotropic directions; the standard error of the mean over
    # 20000 pairs is ~6e-4 of E, so a 5% tolerance is > 3 standard errors.
    torch.testing.assert_close(
        r, torch.full((2,), 1 / (2 * d), dtype=torch.float64), rtol=0.05, atol=0
    )


def test_matches_per_sample_loop_with_padding():
    lengths = [5, 2, 4, 1, 3, 5, 2]
    states = _states(len(lengths), num_layers=4, seed=3)
    r = redundancy_score(states, _padded_mask(lengths))
    np.testing.assert_allclose(r.numpy(), _loop_reference(states, lengths), atol=1e-6, rtol=0)


@pytest.mark.parametrize("garbage", [1e4, math.nan])
def test_padding_garbage_does_not_change_result(garbage):
    lengths = [5, 2, 4, 1, 3]
    states = _states(len(lengths), seed=4)
    mask = _padded_mask(lengths)
    clean = redundancy_score(states, mask)
    dirty = [h.clone() for h in states]
    for h in dirty:
        h[mask == 0] = garbage
    torch.testing.assert_close(redundancy_score(dirty, mask), clean)
    metric = CosineRedundancy()
    metric.update(dirty, mask)
    assert metric.summary()["nonfinite_batches"] == 0
    torch.testing.assert_close(metric.compute(), clean)


def test_batch_of_one_is_nan_and_skipped():
    states = _states(1)
    assert torch.isnan(redundancy_score(states, torch.ones(1, 5))).all()
    metric = CosineRedundancy()
    metric.update(states, torch.ones(1, 5))
    summary = metric.summary()
    assert summary["skipped_batches"] == 1 and summary["num_batches"] == 0
    assert torch.isnan(summary["redundancy"]).all() and summary["redundancy"].shape == (3,)


def test_zero_norm_differences_are_guarded_and_counted():
    states = _states(3, num_layers=2, seed=5)
    for h in states:
        h[1] = h[0]  # samples 0 and 1 identical in every layer: the first difference is 0
    metric = CosineRedundancy()
    metric.update(states, torch.ones(3, 5))
    r = metric.compute()
    assert metric.summary()["eps_guarded"] == 2  # one pair per block, 2 blocks
    assert torch.isfinite(r).all()
    # The guarded pair contributes 0; the other pair is an ordinary cos^2 / (2 * 2).
    pooled = [h.mean(1).double() for h in states]
    for b in range(2):
        lo, hi = pooled[b][2] - pooled[b][1], pooled[b + 1][2] - pooled[b + 1][1]
        cos2 = (lo @ hi) ** 2 / (lo @ lo) / (hi @ hi)
        torch.testing.assert_close(r[b], cos2 / 4)


def test_shuffled_pairing_is_reproducible_with_seed():
    batches = [_states(9, seed=s) for s in range(3)]
    mask = torch.ones(9, 5)

    def run(seed):
        metric = CosineRedundancy(pairing="shuffled", num_pairings=4, seed=seed)
        for states in batches:
            metric.update(states, mask)
        return metric.compute()

    torch.testing.assert_close(run(7), run(7))
    assert not torch.allclose(run(7), run(8))
    consecutive = CosineRedundancy()
    for states in batches:
        consecutive.update(states, mask)
    assert not torch.allclose(run(7), consecutive.compute())


def test_compute_is_mean_of_per_batch_scores_and_std_matches_numpy():
    sizes = [4, 7, 2, 9, 5]  # varying B: each batch uses its own B - 1
    metric = CosineRedundancy()
    per_batch = []
    for seed, batch in enumerate(sizes):
        states = _states(batch, seed=10 + seed)
        mask = _padded_mask([5 - i % 3 for i in range(batch)])
        metric.update(states, mask)
        per_batch.append(redundancy_score(states, mask).numpy())
    per_batch = np.stack(per_batch)
    summary = metric.summary()
    np.testing.assert_allclose(metric.compute().numpy(), per_batch.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        summary["redundancy_std"].numpy(), per_batch.std(0, ddof=1), rtol=1e-9
    )
    assert summary["num_batches"] == len(sizes)


def test_entropy_rate_is_constant_minus_redundancy():
    metric = CosineRedundancy(sigma2=0.5)
    metric.update(_states(6, d=8), torch.ones(6, 5))
    summary = metric.summary()
    const = 8 / 2 * math.log(2 * math.pi * math.e * 0.5)
    torch.testing.assert_close(summary["entropy_rate"], const - summary["redundancy"])


def test_nonfinite_batch_is_skipped_and_counted():
    clean = _states(6, seed=20)
    bad = _states(6, seed=21)
    bad[2][3, 0, 0] = math.nan  # a real token
    metric = CosineRedundancy()
    metric.update(clean, torch.ones(6, 5))
    metric.update(bad, torch.ones(6, 5))
    summary = metric.summary()
    assert summary["nonfinite_batches"] == 1 and summary["num_batches"] == 1
    torch.testing.assert_close(metric.compute(), redundancy_score(clean, torch.ones(6, 5)))


def test_bf16_close_to_fp32():
    states = _states(32, d=64, seed=30)
    mask = _padded_mask([5 - i % 4 for i in range(32)])
    fp32 = redundancy_score(states, mask)
    bf16 = redundancy_score([h.bfloat16() for h in states], mask)
    assert bf16.dtype == torch.float64
    torch.testing.assert_close(bf16, fp32, atol=1e-2, rtol=0)


def test_state_dict_round_trip():
    metric = CosineRedundancy()
    for seed in range(3):
        metric.update(_states(5, seed=seed), torch.ones(5, 5))
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    restored = CosineRedundancy()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    before, after = metric.summary(), restored.summary()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(after[key], value, equal_nan=True)
        else:
            assert after[key] == value
    restored.update(_states(5, seed=9), torch.ones(5, 5))  # keeps accumulating
    assert restored.summary()["num_batches"] == 4


def test_layer_count_is_checked_and_reset_frees_it():
    metric = CosineRedundancy()
    metric.update(_states(4, num_layers=3), torch.ones(4, 5))
    with pytest.raises(ValueError, match="L=2 blocks"):
        metric.update(_states(4, num_layers=2), torch.ones(4, 5))
    metric.reset()
    metric.update(_states(4, num_layers=2), torch.ones(4, 5))
    assert metric.compute().shape == (2,)
    with pytest.raises(ValueError, match="L=2 blocks"):
        CosineRedundancy(num_layers=3).update(_states(4, num_layers=2), torch.ones(4, 5))


def test_exclude_embedding_pair_gives_nan_at_block_zero():
    metric = CosineRedundancy(include_embedding_pair=False)
    metric.update(_states(5), torch.ones(5, 5))
    r = metric.compute()
    assert torch.isnan(r[0]) and torch.isfinite(r[1:]).all()


def test_forward_returns_batch_value_and_accumulates():
    metric = CosineRedundancy()
    first, second = _states(5, seed=1), _states(5, seed=2)
    metric(first, torch.ones(5, 5))
    batch_value = metric(second, torch.ones(5, 5))
    torch.testing.assert_close(batch_value, redundancy_score(second, torch.ones(5, 5)))
    assert metric.summary()["num_batches"] == 2


def test_compute_before_update_raises():
    with pytest.raises(RuntimeError, match="no update"):
        CosineRedundancy().summary()


def test_shuffled_pairing_resumes_the_same_pairings():
    # the permutation generator is part of the state: a restored metric draws what the
    # uninterrupted one draws next
    def fresh() -> CosineRedundancy:
        return CosineRedundancy(pairing="shuffled", num_pairings=3, seed=5)

    going = fresh()
    going.update(_states(6, seed=1), torch.ones(6, 5))
    buffer = io.BytesIO()
    torch.save(going.state_dict(), buffer)
    buffer.seek(0)
    restored = fresh()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for metric in (going, restored):
        metric.update(_states(6, seed=2), torch.ones(6, 5))
    assert torch.equal(going.summary()["redundancy"], restored.summary()["redundancy"])


def test_constant_pooled_input_gives_nan_not_zero():
    # `pooling: cls` on a real encoder: every sample's first token is <s> at position 0, so z_0
    # pooled is the same vector for all samples; block 0 has no direction to compare
    from tiny_models import tiny_roberta

    model = tiny_roberta(0, 3)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (6, 9), generator=gen)
    ids[:, 0] = 0  # <s>
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    mask = torch.ones(6, 9, dtype=torch.long)
    metric = CosineRedundancy(pooling="cls")  # the embedding pair included: still NaN
    for _ in range(2):
        metric.update(hs, mask)
    summary = metric.summary()
    assert math.isnan(summary["redundancy"][0]), summary["redundancy"]
    assert math.isnan(redundancy_score(hs, mask, pooling="cls")[0])
    assert torch.isfinite(summary["redundancy"][1:]).all()
    assert summary["degenerate_batches"].tolist() == [2, 0, 0]
    assert summary["num_batches"] == 2


def test_a_degenerate_batch_leaves_only_its_block_out_of_the_mean():
    good, flat = _states(4, num_layers=2, seed=1), _states(4, num_layers=2, seed=2)
    flat[0] = flat[0][:1].expand_as(flat[0]).clone()  # z_0 constant over the batch
    metric = CosineRedundancy()
    metric.update(good, torch.ones(4, 5))
    metric.update(flat, torch.ones(4, 5))
    r = metric.compute()
    torch.testing.assert_close(r[0], redundancy_score(good, None)[0])  # block 0: one batch
    both = torch.stack([redundancy_score(good, None), redundancy_score(flat, None)])
    torch.testing.assert_close(r[1], both[:, 1].mean())  # block 1: both batches
