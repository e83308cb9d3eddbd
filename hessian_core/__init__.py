"""hessian_core: exact, verified Hessian spectra of small neural networks.

The numerical core only: Hessian operators, Lanczos, stochastic trace and density estimators, dense spectra,
ε-dendrograms of eigenvalues, Fiedler trees of parameters and partition comparisons. It depends on torch, numpy,
scipy, tqdm and threadpoolctl, and imports no plotting or notebook stack. The book's chapters build on it in the
separate package ``hessian_book``.
"""

from .density import SpectralDensity, TraceEstimate, hutchinson_trace, spectral_density
from .dendrogram import cluster_counts, cluster_labels, eigen_linkage, merge_heights, spectral_gaps
from .fiedler import (ComponentConnectivity, algebraic_connectivity, coupling_graph, fiedler_linkage,
                      fiedler_vector, largest_component_connectivity)
from .gauss_newton import gauss_newton
from .lanczos import LanczosConvergenceError, LanczosResult, lanczos, lanczos_solve, top_eigenvalue
from .operators import HessianOperator, full_hessian, hessian_operator, hvp
from .partitions import adjusted_rand_index, composition, largest_component, parameter_labels, top_clusters
from .spectrum import DenseSpectrum, eigendecomposition, spectrum_stats
from .warm import WarmLanczosResult, warm_lanczos

__version__ = "0.2.0"

__all__ = [
    # operators
    "hvp", "full_hessian", "hessian_operator", "HessianOperator", "gauss_newton",
    # lanczos
    "lanczos", "lanczos_solve", "top_eigenvalue", "LanczosResult", "LanczosConvergenceError",
    # warm-started lanczos
    "warm_lanczos", "WarmLanczosResult",
    # density
    "hutchinson_trace", "spectral_density", "SpectralDensity", "TraceEstimate",
    # spectrum
    "eigendecomposition", "spectrum_stats", "DenseSpectrum",
    # dendrogram
    "eigen_linkage", "cluster_counts", "cluster_labels", "spectral_gaps", "merge_heights",
    # fiedler
    "coupling_graph", "algebraic_connectivity", "fiedler_vector", "fiedler_linkage",
    "largest_component_connectivity", "ComponentConnectivity",
    # partitions
    "parameter_labels", "adjusted_rand_index", "composition", "top_clusters", "largest_component",
]
