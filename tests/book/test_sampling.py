"""Stratified Hessian subsamples of modular-addition pairs cover every token and every answer class."""

import pytest
import torch

from hessian_book.data import modular_addition_split
from hessian_book.sampling import coverage, stratified_pairs

P = 113


@pytest.fixture(scope="module")
def train():
    return modular_addition_split(P, 0.3, 0)["train"]


def test_plain_seeded_subsample_misses_tokens_and_classes(train):
    # The chapter's old subsample (first 200 of a permutation seeded by seed + 1 = 1): the problem the
    # stratified subsample solves, so the test below is not vacuous.
    x, y = train
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:200]
    c = coverage(x[idx], y[idx], P)
    assert c["missing_tokens"] == [70, 87] and c["tokens"] == 111
    assert c["classes"] == 94 and c["min_per_class"] == 0 and len(c["missing_classes"]) == 19


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_subsample_covers_every_token_and_class(train, seed):
    x, y = train
    idx = stratified_pairs(x, y, 200, p=P, seed=seed)
    assert idx.dtype == torch.int64 and idx.shape == (200,)
    assert len(set(idx.tolist())) == 200 and 0 <= idx.min() and idx.max() < len(x)
    assert torch.equal(idx, idx.sort().values)
    c = coverage(x[idx], y[idx], P)
    assert c["tokens"] == P and c["classes"] == P and c["min_per_class"] >= 1 and c["min_per_token"] >= 1
    assert c["missing_tokens"] == [] and c["missing_classes"] == []


def test_smallest_subsample_n_equals_p_covers(train):
    x, y = train
    idx = stratified_pairs(x, y, P, p=P, seed=5)
    c = coverage(x[idx], y[idx], P)
    assert c["n"] == P and c["tokens"] == P and c["classes"] == P and c["min_per_class"] == 1


def test_deterministic_given_seed(train):
    x, y = train
    first = stratified_pairs(x, y, 200, p=P, seed=3)
    assert torch.equal(first, stratified_pairs(x, y, 200, p=P, seed=3))
    assert not torch.equal(first, stratified_pairs(x, y, 200, p=P, seed=4))


def test_works_without_equals_column():
    x, y = modular_addition_split(7, 0.6, 0, with_equals=False)["train"]
    idx = stratified_pairs(x, y, 10, p=7, seed=0)
    c = coverage(x[idx], y[idx], 7)
    assert c["tokens"] == 7 and c["classes"] == 7


def test_n_smaller_than_p_or_larger_than_the_pairs_is_refused(train):
    x, y = train
    with pytest.raises(ValueError, match=r"n=112 .*p=113"):
        stratified_pairs(x, y, 112, p=P, seed=0)
    with pytest.raises(ValueError, match=r"n=4000 exceeds"):
        stratified_pairs(x, y, 4000, p=P, seed=0)


def test_pairs_that_do_not_cover_the_task_are_named():
    x = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])
    y = (x[:, 0] + x[:, 1]) % 3  # token 2 never appears; class 2 appears (1 + 1)
    with pytest.raises(ValueError, match=r"missing tokens \[2\], missing classes \[\]"):
        stratified_pairs(x, y, 3, p=3, seed=0)
    y = torch.tensor([0, 1, 0, 1])
    x = torch.tensor([[0, 2], [1, 2], [2, 0], [1, 0]])
    with pytest.raises(ValueError, match=r"missing tokens \[\], missing classes \[2\]"):
        stratified_pairs(x, y, 3, p=3, seed=0)


def test_coverage_counts_and_input_checks():
    x = torch.tensor([[0, 0, 3], [0, 1, 3], [2, 0, 3]])
    y = (x[:, 0] + x[:, 1]) % 3
    c = coverage(x, y, 3)
    # token 0 is in all three pairs (once each, (0, 0) counted once); token 1 and 2 in one each
    assert c == {"n": 3, "tokens": 3, "classes": 3, "min_per_class": 1, "min_per_token": 1,
                 "missing_tokens": [], "missing_classes": []}
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 2\]"):
        coverage(torch.tensor([[0, 5]]), torch.tensor([2]), 3)
    with pytest.raises(ValueError, match="inputs must be"):
        coverage(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 3)
