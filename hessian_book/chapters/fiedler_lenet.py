"""The Fiedler view: recursive spectral bipartition of the parameters (:func:`hessian_core.fiedler_linkage`) of
LeNet-tiny over the MNIST chapter's run, and of the grokking transformer before and after its transition.

The chapter reads other chapters' runs through *their* configurations: ``Config.mnist`` is a
:class:`mnist_lenet.Config` and ``Config.grokking`` a :class:`grokking_modadd.Config` (a notebook overrides them
with dicts). The LeNet trees are stored under the MNIST run's key plus the Hessian subsample and the tree options;
the transformer trees under the grokking run's key plus the same. The transformer's two checkpoints are the
grokking chapter's transition picks (:func:`grokking_modadd.transition_picks`): *memorised* is the last checkpoint
before test accuracy reaches ``transition_low``, *generalised* the first at or after ``transition_high``.

Besides the trees of ``|H|``, the chapter measures λ₂ of the coupling graph's largest connected component and its
isolated parameters (:func:`hessian_core.largest_component_connectivity`), the trees of the scale-invariant coupling
``|H_ij| / sqrt(|H_ii| |H_jj|)`` (:func:`hessian_core.coupling_graph` with ``normalize="diagonal"``), and how
stable the top cuts are across independent Hessian subsamples (ARI between the trees of independent draws, against
the same cuts with shuffled labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from hessian_core import (adjusted_rand_index, composition, coupling_graph, fiedler_linkage, full_hessian,
                          largest_component, largest_component_connectivity, parameter_labels, top_clusters)

from .. import config as checks
from ..config import ChapterConfig, nested
from ..measure import timed
from ..progress import show_progress
from ..runs import hessian_subsample
from ..store import ResultStore
from ..training import mnist_checkpoint_steps
from . import grokking_modadd, mnist_lenet

__all__ = ["Config", "Tree", "Result", "run", "top_cut", "ari_inside", "coupling_by_group", "shuffled_ari",
           "ari_between", "shuffled_ari_between", "stability_word", "count_word", "draw_pairs", "plot_stability",
           "plot_lenet_dendrograms", "plot_layer_agreement", "plot_lenet_composition", "plot_grokking_trees"]

_MNIST_TRAIN_IMAGES = 60_000
_LENET_LAYERS = {"0": "conv1", "3": "conv2", "7": "fc"}
_COMPONENTS = {"W_E": "embed", "W_pos": "embed", "W_Q": "attention", "W_K": "attention", "W_V": "attention",
               "W_O": "attention", "W_in": "MLP", "b_in": "MLP", "W_out": "MLP", "b_out": "MLP", "W_U": "unembed"}
_GROK_K = 4  # the transformer's top cut is compared with its four components
_N_SHUFFLES = 20  # shuffles per checkpoint for the chance level of the ARI
_GROK_NAMES = {"before": "memorised", "after": "generalised"}


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The Fiedler chapter's parameters.

    Attributes:
        mnist: the MNIST chapter's configuration, whose run (and Hessian subsample) the LeNet trees read.
        grokking: the grokking chapter's configuration, whose main run and transition picks the transformer
            trees read.
        checkpoint_indices: which of the MNIST run's checkpoints (indices into its schedule; negative counts from
            the end).
        split, laplacian, monotone, min_cluster_size, max_depth: the tree (:func:`hessian_core.fiedler_linkage`);
            ``max_depth=0`` means no limit.
        n_top_clusters: clusters read off the top of each LeNet tree for the composition and ARI figures.
        dendrogram_leaves: leaves of the drawn trees.
        grokking_max_depth: the transformer trees stop at this depth (their top splits are what is compared).
        top_max_depth: the trees of the scale-invariant coupling and of the subsample draws stop at this depth
            (only their top cuts are read; with ``monotone="clip"`` a node's height does not depend on the splits
            below it, so the top cuts are those of the full tree).
        stability_indices: the MNIST checkpoints (indices into its schedule) at which independent Hessian
            subsamples are drawn.
        stability_draws: independent ``hessian_samples``-image draws per such checkpoint (draw ``d`` is the
            subsample of seed ``mnist.seed + 2 + d``; the chapter's own subsample has seed ``mnist.seed + 1``).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # the MNIST and grokking chapters' smoke runs, in a fresh temporary directory so CI always recomputes
        "smoke": dict(checkpoint_indices=[0, -1], stability_indices=[-1], stability_draws=2, results_dir=""),
    }

    mnist: mnist_lenet.Config = nested(mnist_lenet.Config)
    grokking: grokking_modadd.Config = nested(grokking_modadd.Config)
    checkpoint_indices: list = field(default_factory=lambda: [0, 2, 5, 9, 14, 19, -1])
    split: str = "sign"
    laplacian: str = "normalized"
    monotone: str = "clip"
    min_cluster_size: int = 2
    max_depth: int = 0
    n_top_clusters: int = 4
    dendrogram_leaves: int = 24
    grokking_max_depth: int = 8
    top_max_depth: int = 8
    stability_indices: list = field(default_factory=lambda: [5, -1])
    stability_draws: int = 4

    def validate(self) -> None:
        checks.choice("split", self.split, ("sign", "sweep"))
        checks.choice("laplacian", self.laplacian, ("normalized", "combinatorial"))
        checks.choice("monotone", self.monotone, ("clip", "max"))
        for name in ("min_cluster_size", "n_top_clusters", "dendrogram_leaves", "grokking_max_depth",
                     "top_max_depth"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("max_depth", self.max_depth)
        checks.positive_int("stability_draws", self.stability_draws)
        n = self.n_mnist_checkpoints()
        for name in ("checkpoint_indices", "stability_indices"):
            indices = getattr(self, name)
            if (not isinstance(indices, (list, tuple)) or not indices
                    or not all(isinstance(i, int) and not isinstance(i, bool) and -n <= i < n for i in indices)):
                raise checks.ConfigError(f"{name}={indices!r} must be a non-empty list of indices into the MNIST "
                                         f"run's {n} checkpoints (-{n} to {n - 1})")

    def n_mnist_checkpoints(self) -> int:
        """How many checkpoints the MNIST run saves (known from its configuration, before any data is loaded)."""
        images = self.mnist.n_train or _MNIST_TRAIN_IMAGES
        return len(mnist_checkpoint_steps(-(-images // self.mnist.batch_size), self.mnist.epochs))

    def tree_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`hessian_core.fiedler_linkage` for the LeNet trees."""
        return dict(split=self.split, laplacian=self.laplacian, monotone=self.monotone,
                    min_cluster_size=self.min_cluster_size, max_depth=self.max_depth or None)

    def top_tree_options(self) -> dict[str, Any]:
        """:meth:`tree_options` stopped at ``top_max_depth`` (the scale-invariant and the subsample-draw trees)."""
        limit = self.top_max_depth if not self.max_depth else min(self.max_depth, self.top_max_depth)
        return {**self.tree_options(), "max_depth": limit}

    @property
    def smoke(self) -> bool:
        """A smoke run: its numbers are computed and glued, but no sentence renders a verdict on them."""
        return self.preset == "smoke"


@dataclass(frozen=True)
class Tree:
    """The Fiedler tree of one checkpoint's Hessian.

    Attributes:
        step: the checkpoint.
        linkage: ``[P-1, 4]`` scipy linkage over the parameters.
        lambda2: λ₂ of the normalized Laplacian of the whole coupling graph (0: disconnected).
        seconds_hessian, seconds_tree: wall time of the Hessian and of the tree when they were computed.
        lambda2_largest, largest_size, n_isolated: λ₂ of the normalized Laplacian of the largest connected
            component, its size, and the parameters without any coupling (NaN/0 when not measured).
    """

    step: int
    linkage: np.ndarray
    lambda2: float
    seconds_hessian: float
    seconds_tree: float
    lambda2_largest: float = float("nan")
    largest_size: int = 0
    n_isolated: int = 0

    @property
    def n_parameters(self) -> int:
        return self.linkage.shape[0] + 1

    @classmethod
    def from_record(cls, step: int, record: dict, suffix: str = "") -> Tree:
        """The tree of a stored record; ``suffix="_scaled"`` reads the scale-invariant coupling's tree."""
        size, P = int(record[f"largest_size{suffix}"]), len(record[f"linkage{suffix}"]) + 1
        lambda2 = float(record[f"lambda2_largest{suffix}"])
        return cls(step=step, linkage=np.asarray(record[f"linkage{suffix}"]), lambda2=lambda2 if size == P else 0.0,
                   seconds_hessian=float(record["seconds_hessian"]), seconds_tree=float(record[f"seconds_tree{suffix}"]),
                   lambda2_largest=lambda2, largest_size=size, n_isolated=int(record[f"n_isolated{suffix}"]))


# ---- the reading of a tree, used for both networks ------------------------------------------------------------

def top_cut(tree: Tree, k: int) -> np.ndarray:
    """Top-``k`` clusters of a tree (:func:`hessian_core.top_clusters`); for a disconnected coupling graph
    (``lambda2 == 0``) inside its largest connected component, the rest labelled ``-1`` -- otherwise the top
    merges only attach parameters that have no coupling at all."""
    root = largest_component(tree.linkage) if tree.lambda2 == 0 else None
    return top_clusters(tree.linkage, k, root=root)


def ari_inside(clusters: np.ndarray, groups: np.ndarray) -> float:
    """Adjusted Rand index of ``clusters`` against ``groups`` over the parameters with a cluster (label >= 0)."""
    clusters, groups = np.asarray(clusters), np.asarray(groups)
    inside = clusters >= 0
    return adjusted_rand_index(clusters[inside], groups[inside])


def shuffled_ari(clusters: np.ndarray, groups: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Chance level of :func:`ari_inside`: ``ndarray[n]`` of ARIs with the cluster labels shuffled over the
    parameters (same cluster sizes)."""
    return np.array([ari_inside(rng.permutation(clusters), groups) for _ in range(n)])


def ari_between(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two cuts over the parameters that both assign to a cluster (label >= 0)."""
    a, b = np.asarray(a), np.asarray(b)
    both = (a >= 0) & (b >= 0)
    return adjusted_rand_index(a[both], b[both])


def shuffled_ari_between(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Chance level of :func:`ari_between`: ``ndarray[n]`` of ARIs with ``a``'s labels shuffled over the parameters
    both cuts assign (same cluster sizes)."""
    a, b = np.asarray(a), np.asarray(b)
    both = (a >= 0) & (b >= 0)
    a, b = a[both], b[both]
    return np.array([adjusted_rand_index(rng.permutation(a), b) for _ in range(n)])


def draw_pairs(n: int) -> list[tuple[int, int]]:
    """The pairs ``(i, j)``, ``i < j``, of ``n`` draws."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def stability_word(aris: np.ndarray, chance: np.ndarray, *, smoke: bool) -> str:
    """How draw-to-draw ARIs compare with the chance band (the ARIs of shuffled labels): "above the chance band for
    every pair of draws" only when the smallest ARI exceeds the band's top; "inside or below the chance band for
    every pair of draws" when the largest does not; otherwise "above the chance band for some pairs of draws only".
    A smoke run, or fewer than one pair, renders no verdict."""
    aris, chance = np.asarray(aris, dtype=float), np.asarray(chance, dtype=float)
    if smoke:
        return "not judged (a smoke run renders no verdict)"
    if aris.size == 0 or chance.size == 0 or np.isnan(aris).any():
        return "undefined (fewer than two draws)"
    if aris.min() > chance.max():
        return "above the chance band for every pair of draws"
    if aris.max() <= chance.max():
        return "inside or below the chance band for every pair of draws"
    return "above the chance band for some pairs of draws only"


def count_word(count: int, total: int, *, smoke: bool) -> str:
    """"at every one of the N", "at none of the N" or "at k of the N" (checkpoints); a smoke run renders no
    count as a finding: it says so."""
    if smoke:
        return f"(smoke run, not judged) at {count} of the {total}"
    if count == total:
        return f"at every one of the {total}"
    if count == 0:
        return f"at none of the {total}"
    return f"at {count} of the {total}"


def coupling_by_group(W: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean coupling ``W_ij`` over pairs ``i != j`` of the same group and over pairs of different groups."""
    groups = np.asarray(groups)
    same = groups[:, None] == groups[None, :]
    np.fill_diagonal(same, False)
    across = groups[:, None] != groups[None, :]
    return float(W[same].mean()), float(W[across].mean())


# ---- the computation --------------------------------------------------------------------------------------------

def _connectivity(W: np.ndarray, suffix: str = "") -> dict:
    lambda2, size, isolated = largest_component_connectivity(W, normalized=True)
    return {f"lambda2_largest{suffix}": lambda2, f"largest_size{suffix}": size, f"n_isolated{suffix}": isolated}


def _lenet_tree(model: torch.nn.Module, batch: tuple, layers: np.ndarray, options: dict, top_options: dict) -> dict:
    """The |H| tree (full depth), the scale-invariant coupling's tree (``top_options``) and their graphs' facts."""
    with timed() as hessian_timer:
        H = full_hessian(model, torch.nn.CrossEntropyLoss(), batch, progress=False).numpy()
    with timed() as tree_timer:
        Z = fiedler_linkage(H, progress=False, **options)
    W = coupling_graph(H)
    within, across = coupling_by_group(W, layers)
    degrees = W.sum(1)
    record = dict(linkage=Z, seconds_hessian=hessian_timer.seconds, seconds_tree=tree_timer.seconds,
                  coupling_within=within, coupling_across=across, **_connectivity(W),
                  degree_min=float(degrees.min()), degree_median=float(np.median(degrees)), n_parameters=H.shape[0],
                  n_zero_diagonal=int(np.count_nonzero(np.diag(H) == 0)))
    del W
    scaled = coupling_graph(H, normalize="diagonal")  # |H_ij| / sqrt(|H_ii| |H_jj|); fiedler_linkage keeps it as is
    record.update(_connectivity(scaled, "_scaled"))
    with timed() as tree_timer:
        record["linkage_scaled"] = fiedler_linkage(scaled, progress=False, **top_options)
    record["seconds_tree_scaled"] = tree_timer.seconds
    return record


def _draw_tree(model: torch.nn.Module, batch: tuple, options: dict) -> dict:
    """The |H| tree of one independent subsample draw (the top cuts are what is read)."""
    with timed() as hessian_timer:
        H = full_hessian(model, torch.nn.CrossEntropyLoss(), batch, progress=False).numpy()
    W = coupling_graph(H)
    record = _connectivity(W)
    del W
    with timed() as tree_timer:
        record["linkage"] = fiedler_linkage(H, progress=False, **options)
    return dict(record, seconds_hessian=hessian_timer.seconds, seconds_tree=tree_timer.seconds)


def _transformer_tree(model: torch.nn.Module, batch: tuple, options: dict) -> dict:
    with timed() as hessian_timer:
        H = full_hessian(model, torch.nn.functional.cross_entropy, batch, progress=False).numpy()
    # A 20K-parameter Hessian is 3 GB: its coupling graph is built once, and freed before the tree.
    record = _connectivity(coupling_graph(H))
    with timed() as tree_timer:
        Z = fiedler_linkage(H, progress=False, **options)
    return dict(record, linkage=Z, seconds_hessian=hessian_timer.seconds, seconds_tree=tree_timer.seconds)


@dataclass(frozen=True)
class Result:
    """What the chapter computed.

    Attributes:
        config: the configuration it ran with.
        steps: the MNIST checkpoints with a tree, ascending.
        layers, layer_names: ``int[P]`` layer of each LeNet parameter and the layers' names.
        trees: step -> LeNet :class:`Tree`.
        lenet: one row per step: ARIs of the top-2 and top-k cuts against the layers, their chance range,
            λ₂ of the largest connected component (``lambda2``) and of the whole graph (``lambda2_whole``), the
            component's size and the isolated parameters, mean coupling within and across layers, smallest and
            median degree, wall times; the same for the scale-invariant coupling (``*_scaled``), the ARIs between
            the two couplings' top cuts (``ari_scale_top2``, ``ari_scale_topk``) with their chance range.
        top2, topk: step -> cluster label per parameter of the top-2 and top-``n_top_clusters`` cuts (-1: outside
            the largest connected component).
        chance: ``[len(steps), 20]`` ARIs of the top-k cut with shuffled parameters.
        scaled_trees, top2_scaled, topk_scaled: the same for the scale-invariant coupling's trees.
        draws: step -> the trees of the independent subsample draws at the stability checkpoints.
        stability: one row per stability checkpoint and pair of draws: ARIs between the two draws' top-2 and
            top-k cuts, and the range of the same ARIs with one draw's labels shuffled (20 shuffles each).
        grok_window: the grokking run's transition ``{"start", "end"}`` (``None``: not reached).
        grok_steps: ``{"memorised": step, "generalised": step}``, the grokking chapter's before/after picks.
        grok_accuracy: name -> ``{"train_acc", "test_acc"}`` at that checkpoint.
        components, component_names: ``int[P]`` component (embed, attention, MLP, unembed) of each transformer
            parameter and the components' names.
        grok_trees: name -> transformer :class:`Tree`.
        grokking: the transformer trees' table (checkpoint, step, ARIs against the components, λ₂).
        timings: wall seconds per phase of this execution.
    """

    config: Config
    steps: list[int]
    layers: np.ndarray
    layer_names: list[str]
    trees: dict[int, Tree]
    lenet: pd.DataFrame
    top2: dict[int, np.ndarray]
    topk: dict[int, np.ndarray]
    chance: np.ndarray
    scaled_trees: dict[int, Tree]
    top2_scaled: dict[int, np.ndarray]
    topk_scaled: dict[int, np.ndarray]
    draws: dict[int, list[Tree]]
    stability: pd.DataFrame
    grok_window: dict
    grok_steps: dict[str, int]
    grok_accuracy: dict[str, dict[str, float]]
    components: np.ndarray
    component_names: list[str]
    grok_trees: dict[str, Tree]
    grokking: pd.DataFrame
    timings: dict[str, float]

    @property
    def n_parameters(self) -> int:
        return len(self.layers)

    def checks(self) -> dict[str, dict[str, Any]]:
        """Deterministic sanity checks and facts, ``{"lenet": {...}, "grokking": {...}}`` (printed by the notebook,
        compared by nbval)."""
        P, k = self.n_parameters, self.config.n_top_clusters
        ari = np.concatenate([self.lenet["ari_top2"], self.lenet["ari_topk"]])
        return {
            "lenet": {
                f"trees: {len(self.trees)}, each a valid linkage over {P} parameters": all(
                    t.linkage.shape == (P - 1, 4) and bool(np.all(np.diff(t.linkage[:, 2]) >= 0))
                    for t in self.trees.values()),
                f"top splits give 2 and {k} clusters": all(
                    len(np.unique(self.top2[s][self.top2[s] >= 0])) == 2
                    and len(np.unique(self.topk[s][self.topk[s] >= 0])) == k for s in self.steps),
                "ARI values in [-1, 1]": bool(np.all(np.abs(ari) <= 1)),
            },
            "grokking": {
                "transformer checkpoints": sorted(self.grok_trees),
                "each transformer tree a valid linkage": all(
                    t.linkage.shape == (len(self.components) - 1, 4) for t in self.grok_trees.values()),
            },
        }

    def grokking_table(self) -> pd.DataFrame:
        """The transformer trees' table for the page: ARIs to 3 decimals, λ₂ to 3 significant digits."""
        table = self.grokking.set_index("checkpoint")
        return table.round({"ARI top 2 vs components": 3, "ARI top 4 vs components": 3}).assign(
            **{column: [float(f"{v:.3g}") for v in table[column]]
               for column in ("λ₂ whole graph (normalized)", "λ₂ largest component (normalized)")})

    def lenet_table(self) -> pd.DataFrame:
        """The LeNet trees' table for the page: per checkpoint, λ₂ of the largest component and the isolated
        parameters for both couplings, and the ARIs of the two couplings' top cuts."""
        t, k = self.lenet, self.config.n_top_clusters
        return pd.DataFrame({
            "step": t["step"],
            "λ₂ whole graph": [float(f"{v:.3g}") for v in t["lambda2_whole"]],
            "λ₂ largest component": [float(f"{v:.3g}") for v in t["lambda2"]],
            "isolated": t["n_isolated"],
            "λ₂ largest component (scale-invariant)": [float(f"{v:.3g}") for v in t["lambda2_scaled"]],
            "isolated (scale-invariant)": t["n_isolated_scaled"],
            f"ARI top {k} vs layers, |H|": t["ari_topk"].round(3),
            f"ARI top {k} vs layers, scale-invariant": t["ari_topk_scaled"].round(3),
            f"ARI top {k}, |H| vs scale-invariant": t["ari_scale_topk"].round(3),
        }).set_index("step")

    def stability_table(self) -> pd.DataFrame:
        """The draw-to-draw ARIs for the page, with the shuffled range (3 decimals)."""
        return self.stability.round(3).set_index(["step", "draws"])

    def check_summary(self, part: str) -> str:
        """``checks()[part]`` (``part``: ``"lenet"`` or ``"grokking"``) as lines ``name: value``."""
        return "\n".join(f"{name}: {value}" for name, value in self.checks()[part].items())

    def glued(self) -> dict[str, Any]:
        """Every number and word the chapter's prose glues (words are computed; a smoke run renders no verdict)."""
        config, table, steps, smoke = self.config, self.lenet, self.steps, self.config.smoke
        P, final = self.n_parameters, steps[-1]
        ari2, arik, lambda2 = table["ari_top2"].to_numpy(), table["ari_topk"].to_numpy(), table["lambda2"].to_numpy()
        last = table.iloc[-1]
        inside = self.top2[final] >= 0
        fractions, sizes = composition(self.top2[final][inside], self.layers[inside], len(self.layer_names))
        ratio = last["coupling_within"] / last["coupling_across"]
        disconnected = [s for s in steps if self.trees[s].lambda2 == 0]
        isolated = table["n_isolated"].to_numpy()
        out: dict[str, Any] = {
            "n_steps": len(steps),
            "P": P,
            "hessian_disk_gb": len(steps) * P * P * 8 / 1e9,
            "mean_seconds_hessian": table["seconds_hessian"].mean(),
            "mean_seconds_tree": table["seconds_tree"].mean(),
            "max_seconds_tree": table["seconds_tree"].max(),
            "ari2_min": ari2.min(), "ari2_max": ari2.max(), "arik_min": arik.min(), "arik_max": arik.max(),
            "ari2_final": ari2[-1],
            "chance_abs_max": np.abs(self.chance).max(),
            "n_top_clusters": config.n_top_clusters,
            "lambda2_first": lambda2[0], "lambda2_last": lambda2[-1],
            "lambda2_min": lambda2.min(), "lambda2_max": lambda2.max(),
            "isolated_first": int(isolated[0]), "isolated_last": int(isolated[-1]), "isolated_max": int(isolated.max()),
            "largest_size_min": int(table["largest_size"].min()),
            "degree_min_final": last["degree_min"],
            "degree_bound_final": P / (P - 1) * last["degree_min"],
            "disconnected_note": (
                "At step(s) " + ", ".join(map(str, disconnected)) + " the whole graph is disconnected, so its λ₂ is "
                "exactly 0; the tree first splits off the connected components, and the λ₂ above is that of the "
                "largest one." if disconnected
                else "The graph is connected at every checkpoint shown (no isolated parameters), so the λ₂ above is "
                     "that of the whole graph."),
            "degree_median_final": last["degree_median"],
            "final_step": final,
        }
        for side in range(2):
            dominant = int(np.argmax(fractions[side]))
            out[f"side{side}_size"] = int(sizes[side])
            out[f"side{side}_layer"] = self.layer_names[dominant]
            out[f"side{side}_share"] = 100 * fractions[side, dominant]
        out["coupling_ratio_final"] = ratio
        above = min(ari2.min(), arik.min()) > self.chance.max()
        out["vs_chance"] = ("not judged (a smoke run renders no verdict)" if smoke else
                            "both lie above that band at every checkpoint" if above else
                            "they do not both lie above that band at every checkpoint")
        out["coupling_reading"] = ("not judged (a smoke run renders no verdict)" if smoke else
                                   "coupling is stronger within layers than across them, on average" if ratio > 1 else
                                   "coupling is not stronger within layers than across them, on average")
        out["follows"] = ("not judged (a smoke run renders no verdict)" if smoke else
                          "largely (ARI above 0.5)" if ari2[-1] > 0.5 else
                          "only in part (ARI between 0.1 and 0.5)" if ari2[-1] > 0.1 else "hardly (ARI at most 0.1)")
        out["layer_sizes"] = ", ".join(f"{n} {c}" for n, c in zip(self.layer_names, np.bincount(self.layers)))
        out["dendrogram_leaves"] = config.dendrogram_leaves
        out.update(self._glued_scaled())
        out.update(self._glued_stability())
        out.update(self._glued_grokking())
        return out

    def _glued_scaled(self) -> dict[str, Any]:
        table, smoke, n = self.lenet, self.config.smoke, len(self.steps)
        arik, arik_scaled = table["ari_topk"].to_numpy(), table["ari_topk_scaled"].to_numpy()
        scale2, scalek = table["ari_scale_top2"].to_numpy(), table["ari_scale_topk"].to_numpy()
        return {
            "top_max_depth": self.config.top_max_depth,
            "ari2_scaled_min": table["ari_top2_scaled"].min(), "ari2_scaled_max": table["ari_top2_scaled"].max(),
            "arik_scaled_min": arik_scaled.min(), "arik_scaled_max": arik_scaled.max(),
            "scale_ari2_min": scale2.min(), "scale_ari2_max": scale2.max(),
            "scale_arik_min": scalek.min(), "scale_arik_max": scalek.max(),
            "scale_chance_abs_max": np.abs(table[["chance_scale_min", "chance_scale_max"]].to_numpy()).max(),
            "scale_above_chance": count_word(int((scalek > table["chance_scale_max"].to_numpy()).sum()), n,
                                             smoke=smoke),
            "scaled_more_layered": count_word(int((arik_scaled > arik).sum()), n, smoke=smoke),
            "isolated_scaled_max": int(table["n_isolated_scaled"].max()),
            "zero_diagonal_max": int(table["n_zero_diagonal"].max()),
            "lambda2_scaled_first": table["lambda2_scaled"].iloc[0],
            "lambda2_scaled_last": table["lambda2_scaled"].iloc[-1],
        }

    def _glued_stability(self) -> dict[str, Any]:
        config, table, smoke = self.config, self.stability, self.config.smoke
        steps = sorted(self.draws)
        out: dict[str, Any] = {
            "stability_draws": config.stability_draws,
            "stability_pairs": len(draw_pairs(config.stability_draws)),
            "stability_samples": config.mnist.hessian_samples,
            "stability_steps": ", ".join(map(str, steps)),
        }
        for cut in ("top2", "topk"):
            aris = table[f"ari_{cut}"].to_numpy()
            chance = table[[f"chance_{cut}_min", f"chance_{cut}_max"]].to_numpy()
            out[f"stab_{cut}_min"] = aris.min() if aris.size else float("nan")
            out[f"stab_{cut}_max"] = aris.max() if aris.size else float("nan")
            out[f"stab_{cut}_chance_min"] = chance.min() if chance.size else float("nan")
            out[f"stab_{cut}_chance_max"] = chance.max() if chance.size else float("nan")
            out[f"stab_{cut}_word"] = stability_word(aris, chance, smoke=smoke)
        out["stab_layers_min"] = table["ari_topk_layers"].min() if len(table) else float("nan")
        out["stab_layers_max"] = table["ari_topk_layers"].max() if len(table) else float("nan")
        return out

    def _glued_grokking(self) -> dict[str, Any]:
        g, window = self.config.grokking, self.grok_window
        out: dict[str, Any] = {
            "grok_P": len(self.components),
            "grok_test_low_pct": f"{100 * g.transition_low:g}",
            "grok_test_high_pct": f"{100 * g.transition_high:g}",
            "grokking_max_depth": self.config.grokking_max_depth,
        }
        found = ", ".join(f"{name} at step {step}" for name, step in self.grok_steps.items())
        if window["start"] is None or window["end"] is None:
            found = (f"no transition in this run (test accuracy does not reach {100 * g.transition_high:g} %), so "
                     f"the first and the last checkpoint stand in: {found}")
        out["grok_found"] = found
        grok = self.grokking.set_index("checkpoint")
        for name in ("memorised", "generalised"):
            row, tree = grok.loc[name], self.grok_trees[name]
            out[f"grok_ari2_{name}"] = row["ARI top 2 vs components"]
            out[f"grok_ari4_{name}"] = row["ARI top 4 vs components"]
            out[f"grok_lambda2_{name}"] = tree.lambda2
            out[f"grok_lambda2_cc_{name}"] = tree.lambda2_largest
            out[f"grok_isolated_{name}"] = tree.n_isolated
            out[f"grok_cc_size_{name}"] = tree.largest_size
            out[f"grok_seconds_{name}"] = tree.seconds_hessian + tree.seconds_tree
            out[f"grok_train_{name}_pct"] = 100 * self.grok_accuracy[name]["train_acc"]
            out[f"grok_test_{name}_pct"] = 100 * self.grok_accuracy[name]["test_acc"]
            out[f"grok_outside_{name}"] = int((top_cut(tree, 2) < 0).sum())
        out["grok_ari_before_after"] = adjusted_rand_index(top_cut(self.grok_trees["memorised"], _GROK_K),
                                                           top_cut(self.grok_trees["generalised"], _GROK_K))
        return out


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Train or read the MNIST and grokking runs, compute (or read) the Fiedler trees, and read them."""
    timings: dict[str, float] = {}
    bars = not show_progress(progress)

    # LeNet-tiny: the MNIST chapter's run and Hessian subsample
    with timed() as timer:
        mnist_run = mnist_lenet.training_run(config.mnist)
        mnist_run.train_or_resume(progress=progress)  # reads the run; trains only what is missing
    timings["mnist_run"] = timer.seconds
    steps = sorted({mnist_run.checkpoints[i] for i in config.checkpoint_indices})
    options, top_options = config.tree_options(), config.top_tree_options()
    batch = mnist_lenet.hessian_batch(config.mnist, run=mnist_run)  # the MNIST chapter's subsample
    layers, names = parameter_labels(mnist_run.model_at(0))
    layer_names = [_LENET_LAYERS.get(n, n) for n in names]
    store = ResultStore(config.results_dir, "fiedler_lenet",
                        dict(run=mnist_run.store.key, hessian_samples=config.mnist.hessian_samples,
                             subsample_seed=config.mnist.seed + 1, **options, top_max_depth=top_options["max_depth"]))
    with timed() as timer:
        # "trees_": the |H| tree with the connectivity facts and the scale-invariant coupling's tree
        records = {step: store.cached(f"trees_{step:07d}", lambda: _lenet_tree(mnist_run.model_at(step), batch,
                                                                                layers, options, top_options))
                   for step in tqdm(steps, desc="Fiedler trees", disable=bars)}
    timings["lenet_trees"] = timer.seconds
    trees = {step: Tree.from_record(step, record) for step, record in records.items()}
    scaled_trees = {step: Tree.from_record(step, record, "_scaled") for step, record in records.items()}
    k = config.n_top_clusters
    top2, topk = {s: top_cut(trees[s], 2) for s in steps}, {s: top_cut(trees[s], k) for s in steps}
    top2_scaled = {s: top_cut(scaled_trees[s], 2) for s in steps}
    topk_scaled = {s: top_cut(scaled_trees[s], k) for s in steps}
    rng = np.random.default_rng(0)
    chance = np.array([shuffled_ari(topk[s], layers, rng, _N_SHUFFLES) for s in steps])
    chance_scale = np.array([shuffled_ari_between(topk[s], topk_scaled[s], rng, _N_SHUFFLES) for s in steps])
    lenet = pd.DataFrame({
        "step": steps,
        "ari_top2": [ari_inside(top2[s], layers) for s in steps],
        "ari_topk": [ari_inside(topk[s], layers) for s in steps],
        "chance_min": chance.min(1), "chance_max": chance.max(1),
        "lambda2": [trees[s].lambda2_largest for s in steps],
        "lambda2_whole": [trees[s].lambda2 for s in steps],
        "largest_size": [trees[s].largest_size for s in steps],
        "n_isolated": [trees[s].n_isolated for s in steps],
        **{key: [records[s][key] for s in steps]
           for key in ("coupling_within", "coupling_across", "degree_min", "degree_median", "seconds_hessian",
                       "seconds_tree", "n_zero_diagonal", "seconds_tree_scaled")},
        "ari_top2_scaled": [ari_inside(top2_scaled[s], layers) for s in steps],
        "ari_topk_scaled": [ari_inside(topk_scaled[s], layers) for s in steps],
        "ari_scale_top2": [ari_between(top2[s], top2_scaled[s]) for s in steps],
        "ari_scale_topk": [ari_between(topk[s], topk_scaled[s]) for s in steps],
        "chance_scale_min": chance_scale.min(1), "chance_scale_max": chance_scale.max(1),
        "lambda2_scaled": [scaled_trees[s].lambda2_largest for s in steps],
        "n_isolated_scaled": [scaled_trees[s].n_isolated for s in steps],
    })

    # Stability: independent subsample draws at a few checkpoints (draw d: seed mnist.seed + 2 + d)
    stability_steps = sorted({mnist_run.checkpoints[i] for i in config.stability_indices})
    draw_store = ResultStore(config.results_dir, "fiedler_lenet_draws",
                             dict(run=mnist_run.store.key, hessian_samples=config.mnist.hessian_samples,
                                  **top_options))
    seeds = [config.mnist.seed + 2 + d for d in range(config.stability_draws)]
    jobs = [(step, seed) for step in stability_steps for seed in seeds]
    with timed() as timer:
        draw_records = {
            job: draw_store.cached(f"draw_{job[1]}_{job[0]:07d}", lambda: _draw_tree(
                mnist_run.model_at(job[0]), hessian_subsample(*mnist_run.train, config.mnist.hessian_samples,
                                                              job[1]), top_options))
            for job in tqdm(jobs, desc="subsample draws", disable=bars)}
    timings["stability_draws"] = timer.seconds
    draws = {step: [Tree.from_record(step, draw_records[step, seed]) for seed in seeds] for step in stability_steps}
    rows = []
    for step in stability_steps:
        cuts = {"top2": [top_cut(t, 2) for t in draws[step]], "topk": [top_cut(t, k) for t in draws[step]]}
        for i, j in draw_pairs(len(seeds)):
            row: dict[str, Any] = {"step": step, "draws": f"{i}–{j}"}
            for cut, labels in cuts.items():
                shuffled = shuffled_ari_between(labels[i], labels[j], rng, _N_SHUFFLES)
                row[f"ari_{cut}"] = ari_between(labels[i], labels[j])
                row[f"chance_{cut}_min"], row[f"chance_{cut}_max"] = shuffled.min(), shuffled.max()
            row["ari_topk_layers"] = ari_inside(cuts["topk"][i], layers)
            rows.append(row)
    stability = pd.DataFrame(rows, columns=["step", "draws", "ari_top2", "chance_top2_min", "chance_top2_max",
                                            "ari_topk", "chance_topk_min", "chance_topk_max", "ari_topk_layers"])

    # The grokking transformer: the grokking chapter's main run, at its transition picks
    g = config.grokking
    with timed() as timer:
        grok_run = grokking_modadd.main_run(g, progress=progress)
    timings["grokking_run"] = timer.seconds
    picks = grokking_modadd.transition_picks(grok_run, g)
    grok_steps = {_GROK_NAMES[pick]: picks[pick] for pick in ("before", "after")}
    logged = {record["step"]: record for record in grok_run.log}
    grok_accuracy = {name: {key: float(logged[step][key]) for key in ("train_acc", "test_acc")}
                     for name, step in grok_steps.items()}
    tensor_labels, tensor_names = parameter_labels(grok_run.model_at(0), by="tensor")
    component_names = list(dict.fromkeys(_COMPONENTS[n] for n in tensor_names))
    components = np.array([component_names.index(_COMPONENTS[tensor_names[t]]) for t in tensor_labels])
    grok_batch = grokking_modadd.hessian_batch(g)
    grok_options = {**options, "max_depth": config.grokking_max_depth}
    grok_store = ResultStore(config.results_dir, "fiedler_grokking",
                             dict(run=grok_run.store.key, hessian_samples=g.hessian_samples,
                                  subsample_seed=g.seed + 1, subsample="stratified", **grok_options))
    with timed() as timer:  # "tree_": the tree with its largest component's λ₂ and the isolated parameters
        grok_trees = {name: Tree.from_record(step, grok_store.cached(
                          f"tree_{step:07d}", lambda: _transformer_tree(grok_run.model_at(step), grok_batch,
                                                                           grok_options)))
                      for name, step in tqdm(grok_steps.items(), desc="transformer trees", disable=bars)}
    timings["grokking_trees"] = timer.seconds
    grokking = pd.DataFrame([
        {"checkpoint": name, "step": tree.step,
         "ARI top 2 vs components": ari_inside(top_cut(tree, 2), components),
         "ARI top 4 vs components": ari_inside(top_cut(tree, _GROK_K), components),
         "λ₂ whole graph (normalized)": tree.lambda2,
         "λ₂ largest component (normalized)": tree.lambda2_largest,
         "largest component": tree.largest_size, "isolated parameters": tree.n_isolated}
        for name, tree in grok_trees.items()])

    return Result(config=config, steps=steps, layers=layers, layer_names=layer_names, trees=trees, lenet=lenet,
                  top2=top2, topk=topk, chance=chance, scaled_trees=scaled_trees, top2_scaled=top2_scaled,
                  topk_scaled=topk_scaled, draws=draws, stability=stability, grok_window=grokking_modadd.window(grok_run, g),
                  grok_steps=grok_steps, grok_accuracy=grok_accuracy, components=components,
                  component_names=component_names, grok_trees=grok_trees, grokking=grokking, timings=timings)


# ---- figures ----------------------------------------------------------------------------------------------------

def _composition_heatmap(ax, clusters: np.ndarray, groups: np.ndarray, names: list[str]) -> None:
    import seaborn as sns

    inside = clusters >= 0
    fractions, sizes = composition(clusters[inside], groups[inside], len(names))
    sns.heatmap(fractions, vmin=0, vmax=1, annot=True, fmt=".2f", cbar=False, cmap="mako", ax=ax,
                xticklabels=names, yticklabels=[str(n) for n in sizes], annot_kws=dict(fontsize=7))


def plot_lenet_dendrograms(result: Result):
    """The LeNet trees at the first, middle and last checkpoint, cut to ``dendrogram_leaves`` leaves coloured by
    layer."""
    import matplotlib.pyplot as plt

    from ..plots import plot_fiedler_dendrogram

    steps = result.steps
    picks = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
    fig, axes = plt.subplots(2 * len(picks), 1, figsize=(11, 3.6 * len(picks)),
                             gridspec_kw=dict(height_ratios=[3, 1] * len(picks)))
    for i, step in enumerate(picks):
        plot_fiedler_dendrogram(result.trees[step].linkage, result.layers, result.layer_names,
                                leaves=result.config.dendrogram_leaves, axes=(axes[2 * i], axes[2 * i + 1]))
        axes[2 * i].set_title(f"step {step}")
    fig.tight_layout()
    return fig


def plot_layer_agreement(result: Result):
    """ARI of the top cuts against the layers for |H| and the scale-invariant coupling (with the shuffled chance
    range), and λ₂ of the largest connected component for both couplings."""
    import matplotlib.pyplot as plt

    table, k = result.lenet, result.config.n_top_clusters
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    axes[0].plot(table["step"], table["ari_top2"], "o-", label="|H|: top split (2 clusters)")
    axes[0].plot(table["step"], table["ari_topk"], "s-", label=f"|H|: top {k} clusters")
    axes[0].plot(table["step"], table["ari_top2_scaled"], "o--", label="scale-invariant: top split")
    axes[0].plot(table["step"], table["ari_topk_scaled"], "s--", label=f"scale-invariant: top {k}")
    axes[0].fill_between(table["step"], table["chance_min"], table["chance_max"], color="0.8",
                         label="shuffled (chance)")
    axes[0].set(xscale="symlog", xlabel="training step", ylabel="ARI against layers", title="agreement with layers")
    axes[0].legend(fontsize=7)
    for column, label in (("lambda2", "|H|"), ("lambda2_scaled", "scale-invariant")):
        axes[1].plot(table["step"], table[column], "o-", label=label)
    values = table[["lambda2", "lambda2_scaled"]].to_numpy()
    axes[1].set(xscale="symlog", yscale="log" if np.all(values[np.isfinite(values)] > 0) else "linear",
                xlabel="training step", ylabel="λ₂ (normalized Laplacian)",
                title="algebraic connectivity of the largest component")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_stability(result: Result):
    """ARIs between the top cuts of independent subsample draws at each stability checkpoint (one point per pair
    of draws), beside the range of the same ARIs with shuffled labels."""
    import matplotlib.pyplot as plt

    table, k = result.stability, result.config.n_top_clusters
    steps = sorted(result.draws)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), sharey=True)
    for ax, cut, title in zip(axes, ("top2", "topk"), ("top split (2 clusters)", f"top {k} clusters")):
        for x, step in enumerate(steps):
            rows = table[table["step"] == step]
            ax.fill_between([x - 0.3, x + 0.3], rows[f"chance_{cut}_min"].min(), rows[f"chance_{cut}_max"].max(),
                            color="0.8", label="shuffled (chance)" if x == 0 else None)
            ax.plot(np.full(len(rows), x), rows[f"ari_{cut}"], "o", color="C0",
                    label="pair of draws" if x == 0 else None)
        ax.set(xticks=range(len(steps)), xticklabels=[f"step {s}" for s in steps], xlim=(-0.6, len(steps) - 0.4),
               ylabel="ARI between draws", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lenet_composition(result: Result):
    """Layer composition of the top-``n_top_clusters`` clusters at every checkpoint."""
    import matplotlib.pyplot as plt

    steps = result.steps
    fig, axes = plt.subplots(1, len(steps), figsize=(2.1 * len(steps), 2.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, step in zip(axes, steps):
        _composition_heatmap(ax, result.topk[step], result.layers, result.layer_names)
        ax.set_title(f"step {step}", fontsize=9)
    axes[0].set_ylabel("cluster (size)")
    fig.tight_layout()
    return fig


def plot_grokking_trees(result: Result):
    """The transformer trees, leaves coloured by component, and the component composition of their top 4
    clusters."""
    import matplotlib.pyplot as plt

    from ..plots import plot_fiedler_dendrogram

    n = len(result.grok_trees)
    fig, axes = plt.subplots(2 * n, 2, figsize=(15, 3.6 * n),
                             gridspec_kw=dict(height_ratios=[3, 1] * n, width_ratios=[3, 1]))
    axes = np.atleast_2d(axes)
    for i, (name, tree) in enumerate(result.grok_trees.items()):
        plot_fiedler_dendrogram(tree.linkage, result.components, result.component_names,
                                leaves=result.config.dendrogram_leaves, axes=(axes[2 * i, 0], axes[2 * i + 1, 0]))
        axes[2 * i, 0].set_title(f"{name}: step {tree.step}")
        _composition_heatmap(axes[2 * i, 1], top_cut(tree, _GROK_K), result.components, result.component_names)
        axes[2 * i, 1].set_title(f"top {_GROK_K} clusters by component", fontsize=9)
        axes[2 * i + 1, 1].axis("off")
    fig.tight_layout()
    return fig
