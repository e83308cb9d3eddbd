"""hessian_core: exact, verified Hessian spectra of small neural networks.

The public API is re-exported here; each module has one job (see the README's table).
"""

from .curves import first_crossing, grokking_delay, phase_statistics, transition_checkpoints, transition_window
from .data import download_mnist, load_mnist, modular_addition_split, resolve_mnist_dir
from .dendrogram import cluster_counts, cluster_labels, eigen_linkage, merge_heights, spectral_gaps
from .experiments import MnistLenetRun, hessian_subsample, mnist_lenet_run
from .fiedler import algebraic_connectivity, coupling_graph, fiedler_linkage, fiedler_vector
from .grokking import (ModAddRun, dense_spectrum, extreme_eigenvalues, hessian_batch, modadd_checkpoint_steps,
                       slq_density, slq_stats, train_modadd)
from .krylov import (
    LanczosConvergenceError,
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    lanczos,
    spectral_density,
    top_eigenvalue,
)
from .mlp_depth import checkpoint_hessian_extremes, full_batch_evaluator, modadd_mlp_run, value_at_step
from .models import ModAddMLP, ModAddTransformer, lenet_tiny, n_parameters, parameter_groups
from .notebook import glue_value
from .operators import HessianOperator, full_hessian, hessian_operator, hvp
from .partitions import adjusted_rand_index, composition, largest_component, parameter_labels, top_clusters
from .plots import (
    plot_cluster_counts,
    plot_cluster_heatmap,
    plot_conv_filters,
    plot_density_evolution,
    plot_fiedler_dendrogram,
    plot_gap_barcode,
    plot_grokking_curves,
    plot_signed_spectrum,
    plot_spectrum_evolution,
    plot_seed_spread,
    plot_summary,
    plot_truncated_dendrogram,
    save_dendrogram_gif,
)
from .results import ResultStore, parameter_key
from .sharpness import (
    PreconditionedOperator,
    adam_preconditioner,
    adam_stability_threshold,
    hessian_extremes,
    seed_spread,
    stack_logs,
)
from .spectrum import DenseSpectrum, eigendecomposition, spectrum_stats
from .training import (
    accuracy,
    epoch_permutation,
    grokking_checkpoint_steps,
    mnist_checkpoint_steps,
    train_full_batch_adamw,
    train_sgd_with_checkpoints,
)

__version__ = "0.1.0"

__all__ = [
    # operators
    "hvp", "full_hessian", "hessian_operator", "HessianOperator",
    # krylov
    "lanczos", "top_eigenvalue", "hutchinson_trace", "spectral_density", "LanczosConvergenceError",
    "SpectralDensity", "TraceEstimate",
    # spectrum
    "eigendecomposition", "spectrum_stats", "DenseSpectrum",
    # dendrogram
    "eigen_linkage", "cluster_counts", "cluster_labels", "spectral_gaps", "merge_heights",
    # fiedler
    "coupling_graph", "algebraic_connectivity", "fiedler_vector", "fiedler_linkage",
    # curves
    "first_crossing", "grokking_delay", "transition_window", "transition_checkpoints", "phase_statistics",
    # shared experiment set-ups
    "MnistLenetRun", "mnist_lenet_run", "hessian_subsample",
    # the grokking experiment
    "ModAddRun", "train_modadd", "modadd_checkpoint_steps", "hessian_batch", "extreme_eigenvalues", "slq_density",
    "slq_stats", "dense_spectrum",
    # partitions
    "parameter_labels", "adjusted_rand_index", "composition", "top_clusters", "largest_component",
    # models and data
    "lenet_tiny", "ModAddTransformer", "ModAddMLP", "parameter_groups", "n_parameters",
    "load_mnist", "download_mnist", "resolve_mnist_dir", "modular_addition_split",
    # training and results
    "train_sgd_with_checkpoints", "train_full_batch_adamw", "mnist_checkpoint_steps", "grokking_checkpoint_steps", "epoch_permutation", "accuracy",
    "ResultStore", "parameter_key", "glue_value",
    # sharpness over training
    "hessian_extremes", "adam_preconditioner", "adam_stability_threshold", "PreconditionedOperator",
    "stack_logs", "seed_spread",
    # the depth chapter's runs
    "modadd_mlp_run", "full_batch_evaluator", "checkpoint_hessian_extremes", "value_at_step",
    # plots
    "plot_signed_spectrum", "plot_cluster_counts", "plot_truncated_dendrogram", "plot_spectrum_evolution",
    "plot_cluster_heatmap", "plot_gap_barcode", "plot_summary", "save_dendrogram_gif", "plot_conv_filters",
    "plot_fiedler_dendrogram",
    "plot_grokking_curves", "plot_density_evolution", "plot_seed_spread",
]
