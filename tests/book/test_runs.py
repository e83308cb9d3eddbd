"""The shared MNIST run set-up: stable results key, subsets, nested Hessian subsamples."""

import os

import pytest
import torch

from hessian_book.runs import hessian_subsample, mnist_lenet_run
from hessian_book.store import parameter_key

needs_mnist = pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR not set")


@needs_mnist
def test_key_holds_the_training_parameters_only(tmp_path):
    run = mnist_lenet_run(str(tmp_path), None, seed=42, epochs=30, batch_size=128, lr=0.01, momentum=0.9, n_train=0,
                          n_test=0, download=False)
    # Changing these fields orphans stored runs; analysis settings (Hessian subsample, vectors) must not be here.
    expected = dict(seed=42, epochs=30, batch_size=128, lr=0.01, momentum=0.9, n_train=0, n_test=10_000,
                    model="lenet_tiny")
    assert run.store.key == parameter_key(expected)
    assert len(run.checkpoints) == 25 and run.checkpoints[-1] == 14_070
    assert len(run.train[0]) == 60_000 and len(run.test[0]) == 10_000


@needs_mnist
def test_subsets_and_bad_sizes(tmp_path):
    run = mnist_lenet_run(str(tmp_path), None, seed=1, epochs=1, batch_size=64, lr=0.1, momentum=0.0, n_train=300,
                          n_test=100, download=False)
    assert len(run.train[0]) == 300 and len(run.test[0]) == 100 and run.checkpoints == [0, 5]
    with pytest.raises(ValueError, match="n_train"):
        mnist_lenet_run(str(tmp_path), None, seed=1, epochs=1, batch_size=64, lr=0.1, momentum=0.0, n_train=-1,
                        n_test=0, download=False)


def test_hessian_subsamples_are_nested():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    small, large = hessian_subsample(x, y, 10, 3), hessian_subsample(x, y, 50, 3)
    assert torch.equal(small[0], large[0][:10]) and torch.equal(small[1], large[1][:10])
    with pytest.raises(ValueError, match="n="):
        hessian_subsample(x, y, 101, 3)


def test_modadd_checkpoint_steps():
    from hessian_book.runs import modadd_checkpoint_steps

    steps = modadd_checkpoint_steps(20000, dense_every=500, dense_until=3000, sparse_every=5000)
    assert steps == [0, 10, 50, 100, 200, 500, 1000, 1500, 2000, 2500, 3000, 8000, 13000, 18000, 20000]
    assert modadd_checkpoint_steps(300, dense_every=100, dense_until=5000, sparse_every=1000) == [
        0, 10, 50, 100, 200, 300]
    with pytest.raises(ValueError, match="dense_every"):
        modadd_checkpoint_steps(300, dense_every=0, dense_until=5000, sparse_every=1000)


def test_unfinished_top_spectrum_keeps_only_the_ritz_values_that_met_the_threshold():
    """An unfinished Lanczos run (a dense cluster at the top outlasting the cap) yields NaN where a residual
    exceeds the threshold, never an unresolved value passed off as an eigenvalue."""
    import pickle

    import numpy as np

    from hessian_book.runs import _certified_ritz_values
    from hessian_core import LanczosConvergenceError, lanczos
    from tests.cases import planted

    rng = np.random.default_rng(3)
    matrix, _ = planted(np.r_[rng.uniform(0.25, 0.31, 40), rng.uniform(-0.1, 0.2, 260)], seed=4)
    with pytest.raises(LanczosConvergenceError) as caught:
        lanczos(matrix, 10, which="largest", tol=1e-2, max_iter=40, progress=False)
    error = pickle.loads(pickle.dumps(caught.value))  # as it arrives from a worker process
    values = _certified_ritz_values(error)
    met = error.residual_norms <= error.threshold
    assert values.shape == (10,) and 0 < met.sum() < 10  # a case with both kinds
    np.testing.assert_array_equal(values[met], error.eigenvalues[met])
    assert np.isnan(values[~met]).all()
    truth = np.linalg.eigvalsh(matrix)
    for value in values[met]:  # each kept value lies within the threshold of an eigenvalue
        assert np.min(np.abs(truth - value)) <= error.threshold
