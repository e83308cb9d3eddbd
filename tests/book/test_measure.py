"""The grokking chapter's helpers: the transition window read off a curve, and its figures."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hessian_book.curves import transition_checkpoints, transition_window  # noqa: E402
from hessian_book.plots import plot_density_evolution, plot_grokking_curves  # noqa: E402


def test_transition_window():
    steps = [0, 100, 1000, 2000, 3000]
    assert transition_window(steps, [0.0, 0.3, 0.6, 0.9, 0.97]) == {"start": 1000, "end": 3000}
    assert transition_window(steps, [0.0, 0.3, 0.6, 0.9, 0.97], low=0.2, high=0.9) == {"start": 100, "end": 2000}
    assert transition_window(steps, [0.0] * 5) == {"start": None, "end": None}
    with pytest.raises(ValueError, match="low"):
        transition_window(steps, [0.0] * 5, low=0.9, high=0.5)


def test_plot_grokking_curves_panels_and_shading():
    steps = np.array([0, 10, 100, 1000])
    acc = [0.0, 0.5, 1.0, 1.0]
    axes = plot_grokking_curves(steps, acc, acc, window=(10, 100), marks={"memorised": 100, "never": None})
    assert len(axes) == 1 and axes[0].get_xscale() == "log"
    labels = axes[0].get_legend_handles_labels()[1]
    assert labels == ["train", "test", "transition", "memorised"]
    axes = plot_grokking_curves(steps, acc, acc, train_loss=[1, 0.5, 0.1, 0.01], test_loss=[1, 1, 1, 0.1],
                                window=(None, 100))
    assert len(axes) == 2 and axes[1].get_yscale() == "log"
    assert "transition" not in axes[0].get_legend_handles_labels()[1]  # an open window is not shaded
    plt.close("all")


def test_plot_density_evolution_grid_and_validation():
    rng = np.random.default_rng(0)
    densities = [SimpleNamespace(nodes=rng.normal(size=(3, 5)) * 10 ** k, weights=np.full((3, 5), 0.2))
                 for k in range(3)]
    ax = plot_density_evolution([0, 10, 100], densities)
    mesh = ax.collections[0]
    assert mesh.get_array().shape[1] == 3 if mesh.get_array().ndim == 2 else mesh.get_array().size % 3 == 0
    with pytest.raises(ValueError, match="scale"):
        plot_density_evolution([0], densities[:1], scale=0)
    plt.close("all")


def test_transition_checkpoints():
    checkpoints = [0, 100, 500, 1000, 2000, 4000, 8000]
    picks = transition_checkpoints(checkpoints, {"start": 900, "end": 3500})
    assert picks == {"before": 500, "during": 2000, "after": 4000}  # sqrt(900 * 3500) ~ 1775
    assert transition_checkpoints(checkpoints, {"start": 1000, "end": 1000})["before"] == 500
    assert transition_checkpoints(checkpoints, {"start": None, "end": None}) == {
        "before": 0, "during": 1000, "after": 8000}
    assert transition_checkpoints(checkpoints, {"start": 9000, "end": 9500})["after"] == 8000


def test_slq_stats_match_exact_statistics_when_quadrature_is_exact():
    from hessian_core import spectral_density
    from hessian_book.measure import slq_stats
    from hessian_core.spectrum import spectrum_stats

    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    lam = np.concatenate([-np.logspace(-3, 0, 5), np.logspace(-4, 2, 25)])
    A = Q @ np.diag(lam) @ Q.T
    density = spectral_density(A, n_probes=4, n_steps=30, progress=False)  # full Krylov space: exact rules
    est, exact = slq_stats(density.nodes, density.weights, 30), spectrum_stats(lam)
    assert est["trace"] == pytest.approx(exact["trace"], rel=0.5)  # Rademacher probes: unbiased, not exact
    assert est["abs_trace"] == pytest.approx(np.abs(lam).sum(), rel=0.5)
    assert est["spectral_entropy"] == pytest.approx(exact["spectral_entropy"], rel=0.5)
    exact_rule = slq_stats(lam[None, :], np.full((1, 30), 1 / 30), 30)  # the spectral measure itself
    assert exact_rule["trace"] == pytest.approx(exact["trace"])
    assert exact_rule["spectral_entropy"] == pytest.approx(exact["spectral_entropy"])
    assert exact_rule["negative_mass_fraction"] == pytest.approx(exact["negative_mass_fraction"])
    assert exact_rule["n_negative"] == pytest.approx(5)


def test_train_modadd_resumes_and_spectra_agree(tmp_path):
    import torch

    from hessian_book.measure import dense_spectrum, extreme_eigenvalues, slq_density
    from hessian_book.runs import hessian_batch, train_modadd

    torch.set_num_threads(1)
    kwargs = dict(p=7, train_fraction=0.5, split_seed=0, seed=0, d_model=4, n_heads=1, d_mlp=8, lr=1e-2, weight_decay=0.5,
                  betas=(0.9, 0.98), n_steps=20, log_every=5, checkpoint_steps=[0, 10])
    run = train_modadd(str(tmp_path), "t", progress=False, **kwargs)
    assert run.checkpoint_steps == [0, 10, 20] and list(run.curve("step")) == [0, 5, 10, 15, 20]
    again = train_modadd(str(tmp_path), "t", progress=False, **kwargs)
    assert again.log == run.log  # loaded, not retrained
    model, batch = run.model_at(20), hessian_batch(7, 0.5, 0, 10, subsample_seed=1)
    dense = dense_spectrum(model, batch, n_vectors=2)
    extremes = extreme_eigenvalues(model, batch, k=3, tol=1e-10)
    lam = dense.eigenvalues
    assert np.allclose(extremes.eigenvalues, np.concatenate([lam[:3], lam[-3:]]), atol=1e-8 * abs(lam).max())
    slq = slq_density(model, batch, n_probes=2, n_steps=5)
    assert slq.nodes.shape == (2, 5) and slq.hvps == 10
    with pytest.raises(ValueError, match="n_samples"):
        hessian_batch(7, 0.5, 0, 100, subsample_seed=1)
    with pytest.raises(ValueError, match="log_every"):
        train_modadd(str(tmp_path), "t", progress=False, **{**kwargs, "log_every": 0})


def test_extreme_eigenvalues_warm_started_from_the_previous_checkpoint(tmp_path):
    """Chained as the grokking chapter chains it: the second checkpoint starts from the first one's vectors,
    matches the dense spectrum within the residual bound, and the stored copy carries no vectors."""
    import torch

    from hessian_book.measure import dense_spectrum, extreme_eigenvalues
    from hessian_book.runs import hessian_batch, train_modadd

    torch.set_num_threads(1)
    run = train_modadd(str(tmp_path), "t", progress=False, p=7, train_fraction=0.5, split_seed=0, seed=0, d_model=4,
                       n_heads=1, d_mlp=8, lr=1e-2, weight_decay=0.5, betas=(0.9, 0.98), n_steps=20, log_every=5,
                       checkpoint_steps=[0, 10])
    batch = hessian_batch(7, 0.5, 0, 10, subsample_seed=1)
    first = extreme_eigenvalues(run.model_at(10), batch, k=3, tol=1e-10)
    assert not first.warm and first.vectors.shape == (first.vectors.shape[0], 6)
    second = extreme_eigenvalues(run.model_at(20), batch, k=3, tol=1e-10, start=first.vectors)
    assert second.warm
    lam = dense_spectrum(run.model_at(20), batch, n_vectors=2).eigenvalues
    assert np.allclose(second.eigenvalues, np.concatenate([lam[:3], lam[-3:]]), atol=1e-10 * abs(lam).max())
    stored = second.without_vectors()
    assert stored.vectors is None and np.array_equal(stored.eigenvalues, second.eigenvalues) and stored.warm
