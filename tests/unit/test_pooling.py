"""Known answers for per-sample pooling of token states."""

import math

import pytest
import torch

from infodyn.estimators.pooling import pool


def _right_padded(lengths, t=6, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), t, d, generator=gen)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return hidden, mask


def test_mean_uses_only_real_tokens():
    hidden, mask = _right_padded([6, 3, 1])
    out = pool(hidden, mask, "mean")
    for i, n in enumerate([6, 3, 1]):
        torch.testing.assert_close(out[i], hidden[i, :n].mean(0))


def test_cls_and_last_right_padding():
    hidden, mask = _right_padded([6, 3, 1])
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "last"), hidden[[0, 1, 2], [5, 2, 0]])


def test_cls_and_last_left_padding():
    hidden, mask = _right_padded([6, 3, 1])
    mask = mask.flip(1)  # real tokens at the end
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[[0, 1, 2], [0, 3, 5]])
    torch.testing.assert_close(pool(hidden, mask, "last"), hidden[:, 5])
    torch.testing.assert_close(pool(hidden, mask, "mean")[1], hidden[1, 3:].mean(0))


@pytest.mark.parametrize("how", ["mean", "cls", "last"])
@pytest.mark.parametrize("garbage", [1e6, math.nan, math.inf])
def test_padding_garbage_never_enters(how, garbage):
    hidden, mask = _right_padded([6, 3, 2])
    clean = pool(hidden, mask, how)
    dirty = hidden.clone()
    dirty[mask == 0] = garbage
    torch.testing.assert_close(pool(dirty, mask, how), clean)


def test_dtypes_and_no_mask():
    hidden, _ = _right_padded([6, 6])
    assert pool(hidden.bfloat16(), None).dtype == torch.float32
    assert pool(hidden.half(), None).dtype == torch.float32
    assert pool(hidden.double(), None).dtype == torch.float64
    torch.testing.assert_close(pool(hidden, None, "mean"), hidden.mean(1))


def test_bad_arguments_raise():
    hidden, mask = _right_padded([6, 3])
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="attention_mask"):
        pool(hidden, mask[:, :3], "mean")
    with pytest.raises(ValueError, match="B, T, D"):
        pool(hidden[0], mask, "mean")
