"""hessian_core stands alone: importing it loads no plotting, notebook or chapter code."""

import re
import subprocess
import sys
from pathlib import Path

import hessian_core

CORE = Path(hessian_core.__file__).parent


def test_import_loads_no_plotting_or_notebook_stack():
    code = ("import sys, hessian_core; "
            "print(' '.join(m for m in ('matplotlib', 'seaborn', 'IPython', 'pandas', 'myst_nb', 'hessian_book') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import hessian_core loads {loaded}"


def test_core_modules_never_import_the_book_package():
    offenders = [path.name for path in CORE.glob("*.py")
                 if re.search(r"^\s*(from|import)\s+hessian_book", path.read_text(), re.MULTILINE)]
    assert offenders == []


def test_documented_public_names_are_importable():
    # The names the README documents for the core (issue 10 keeps them importable with the same behaviour).
    for name in ("hvp", "full_hessian", "hessian_operator", "lanczos", "spectral_density", "hutchinson_trace",
                 "top_eigenvalue", "spectrum_stats", "eigen_linkage", "cluster_counts", "cluster_labels",
                 "spectral_gaps", "coupling_graph", "algebraic_connectivity", "fiedler_linkage",
                 "eigendecomposition"):
        assert callable(getattr(hessian_core, name)), name
    assert set(hessian_core.__all__) <= set(dir(hessian_core))
