"""Plot helpers draw what they are given (checked on the drawn artists, not by eye)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from scipy.cluster.hierarchy import linkage  # noqa: E402

from hessian_book.plots import plot_fiedler_dendrogram  # noqa: E402


def test_fiedler_dendrogram_bars_show_each_leafs_layer_shares():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.05, (10, 1)) for c in (0.0, 3.0, 9.0)])
    groups = np.repeat([0, 1, 2], 10)
    groups[0] = 1  # one parameter of the first block belongs to layer 1
    tree_ax, bar_ax = plot_fiedler_dendrogram(linkage(points, "single"), groups, ["a", "b", "c"], leaves=3)
    heights = np.array([p.get_height() for p in bar_ax.patches]).reshape(3, 3)  # leaf-major, group-minor
    np.testing.assert_allclose(heights.sum(1), 1.0)
    shares = sorted(map(tuple, heights.round(3)))
    assert shares == sorted([(0.9, 0.1, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
    matplotlib.pyplot.close("all")
