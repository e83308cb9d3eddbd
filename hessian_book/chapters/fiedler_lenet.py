"""The Fiedler view: recursive spectral bipartition of the parameters (:func:`hessian_core.fiedler_linkage`) of
LeNet-tiny over the MNIST chapter's run, and of the grokking transformer before and after its transition.

The chapter reads other chapters' runs through *their* configurations: ``Config.mnist`` is a
:class:`mnist_lenet.Config` and ``Config.grokking`` a :class:`grokking_modadd.Config` (a notebook overrides them
with dicts). The LeNet trees are stored under the MNIST run's key plus the Hessian subsample and the tree options;
the transformer trees under the grokking run's key plus the same. The transformer's two checkpoints are the
grokking chapter's transition picks (:func:`grokking_modadd.transition_picks`): *memorised* is the last checkpoint
before test accuracy reaches ``transition_low``, *generalised* the first at or after ``transition_high``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from hessian_core import (adjusted_rand_index, algebraic_connectivity, composition, coupling_graph, fiedler_linkage,
                          full_hessian, largest_component, parameter_labels, top_clusters)

from .. import config as checks
from ..config import ChapterConfig, nested
from ..measure import timed
from ..progress import show_progress
from ..store import ResultStore
from ..training import mnist_checkpoint_steps
from . import grokking_modadd, mnist_lenet

__all__ = ["Config", "Tree", "Result", "run", "top_cut", "ari_inside", "coupling_by_group", "shuffled_ari",
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
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # the MNIST and grokking chapters' smoke runs, in a fresh temporary directory so CI always recomputes
        "smoke": dict(checkpoint_indices=[0, -1], results_dir=""),
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

    def validate(self) -> None:
        if not isinstance(self.mnist, mnist_lenet.Config):
            raise checks.ConfigError(f"mnist={self.mnist!r} must be a mnist_lenet.Config (or, in from_parameters, "
                                     "a dict of its parameters)")
        if not isinstance(self.grokking, grokking_modadd.Config):
            raise checks.ConfigError(f"grokking={self.grokking!r} must be a grokking_modadd.Config (or, in "
                                     "from_parameters, a dict of its parameters)")
        checks.choice("split", self.split, ("sign", "sweep"))
        checks.choice("laplacian", self.laplacian, ("normalized", "combinatorial"))
        checks.choice("monotone", self.monotone, ("clip", "max"))
        for name in ("min_cluster_size", "n_top_clusters", "dendrogram_leaves", "grokking_max_depth"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("max_depth", self.max_depth)
        n = self.n_mnist_checkpoints()
        if (not isinstance(self.checkpoint_indices, (list, tuple)) or not self.checkpoint_indices
                or not all(isinstance(i, int) and not isinstance(i, bool) and -n <= i < n
                           for i in self.checkpoint_indices)):
            raise checks.ConfigError(f"checkpoint_indices={self.checkpoint_indices!r} must be a non-empty list of "
                                     f"indices into the MNIST run's {n} checkpoints (-{n} to {n - 1})")

    def n_mnist_checkpoints(self) -> int:
        """How many checkpoints the MNIST run saves (known from its configuration, before any data is loaded)."""
        images = self.mnist.n_train or _MNIST_TRAIN_IMAGES
        return len(mnist_checkpoint_steps(-(-images // self.mnist.batch_size), self.mnist.epochs))

    def tree_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`hessian_core.fiedler_linkage` for the LeNet trees."""
        return dict(split=self.split, laplacian=self.laplacian, monotone=self.monotone,
                    min_cluster_size=self.min_cluster_size, max_depth=self.max_depth or None)


@dataclass(frozen=True)
class Tree:
    """The Fiedler tree of one checkpoint's Hessian.

    Attributes:
        step: the checkpoint.
        linkage: ``[P-1, 4]`` scipy linkage over the parameters.
        lambda2: λ₂ of the normalized Laplacian of the whole coupling graph (0: disconnected).
        seconds_hessian, seconds_tree: wall time of the Hessian and of the tree when they were computed.
    """

    step: int
    linkage: np.ndarray
    lambda2: float
    seconds_hessian: float
    seconds_tree: float

    @property
    def n_parameters(self) -> int:
        return self.linkage.shape[0] + 1

    @classmethod
    def from_record(cls, step: int, record: dict) -> Tree:
        return cls(step=step, linkage=np.asarray(record["linkage"]), lambda2=float(record["lambda2_normalized"]),
                   seconds_hessian=float(record["seconds_hessian"]), seconds_tree=float(record["seconds_tree"]))


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


def coupling_by_group(W: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean coupling ``W_ij`` over pairs ``i != j`` of the same group and over pairs of different groups."""
    groups = np.asarray(groups)
    same = groups[:, None] == groups[None, :]
    np.fill_diagonal(same, False)
    across = groups[:, None] != groups[None, :]
    return float(W[same].mean()), float(W[across].mean())


# ---- the computation --------------------------------------------------------------------------------------------

def _lenet_tree(model: torch.nn.Module, batch: tuple, layers: np.ndarray, options: dict) -> dict:
    with timed() as hessian_timer:
        H = full_hessian(model, torch.nn.CrossEntropyLoss(), batch, progress=False).numpy()
    with timed() as tree_timer:
        Z = fiedler_linkage(H, progress=False, **options)
    W = coupling_graph(H)
    within, across = coupling_by_group(W, layers)
    degrees = W.sum(1)
    return dict(linkage=Z, seconds_hessian=hessian_timer.seconds, seconds_tree=tree_timer.seconds,
                coupling_within=within, coupling_across=across,
                lambda2_normalized=algebraic_connectivity(W, normalized=True),
                degree_min=float(degrees.min()), degree_median=float(np.median(degrees)), n_parameters=H.shape[0])


def _transformer_tree(model: torch.nn.Module, batch: tuple, options: dict) -> dict:
    with timed() as hessian_timer:
        H = full_hessian(model, torch.nn.functional.cross_entropy, batch, progress=False).numpy()
    # A 20K-parameter Hessian is 3 GB: its coupling graph is built once, and freed before the tree.
    lambda2 = algebraic_connectivity(coupling_graph(H), normalized=True)
    with timed() as tree_timer:
        Z = fiedler_linkage(H, progress=False, **options)
    return dict(linkage=Z, seconds_hessian=hessian_timer.seconds, seconds_tree=tree_timer.seconds,
                lambda2_normalized=lambda2)


@dataclass(frozen=True)
class Result:
    """What the chapter computed.

    Attributes:
        config: the configuration it ran with.
        steps: the MNIST checkpoints with a tree, ascending.
        layers, layer_names: ``int[P]`` layer of each LeNet parameter and the layers' names.
        trees: step -> LeNet :class:`Tree`.
        lenet: one row per step: ARIs of the top-2 and top-k cuts against the layers, their chance range,
            λ₂, mean coupling within and across layers, smallest and median degree, wall times.
        top2, topk: step -> cluster label per parameter of the top-2 and top-``n_top_clusters`` cuts (-1: outside
            the largest connected component).
        chance: ``[len(steps), 20]`` ARIs of the top-k cut with shuffled parameters.
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
            **{"λ₂ (normalized)": [float(f"{v:.3g}") for v in table["λ₂ (normalized)"]]})

    def check_summary(self, part: str) -> str:
        """``checks()[part]`` (``part``: ``"lenet"`` or ``"grokking"``) as lines ``name: value``."""
        return "\n".join(f"{name}: {value}" for name, value in self.checks()[part].items())

    def glued(self) -> dict[str, Any]:
        """Every number and word the chapter's prose glues."""
        config, table, steps = self.config, self.lenet, self.steps
        P, final = self.n_parameters, steps[-1]
        ari2, arik, lambda2 = table["ari_top2"].to_numpy(), table["ari_topk"].to_numpy(), table["lambda2"].to_numpy()
        last = table.iloc[-1]
        inside = self.top2[final] >= 0
        fractions, sizes = composition(self.top2[final][inside], self.layers[inside], len(self.layer_names))
        ratio = last["coupling_within"] / last["coupling_across"]
        disconnected = [s for s in steps if self.trees[s].lambda2 == 0]
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
            "degree_min_final": last["degree_min"],
            "disconnected_note": (
                "At step(s) " + ", ".join(map(str, disconnected)) + " the graph is disconnected (λ₂ = 0): some "
                "parameters have all-zero Hessian rows on these images, i.e. no coupling at all, and the tree "
                "first splits off the connected components." if disconnected
                else "The graph is connected at every checkpoint shown."),
            "degree_median_final": last["degree_median"],
            "final_step": final,
        }
        for side in range(2):
            dominant = int(np.argmax(fractions[side]))
            out[f"side{side}_size"] = int(sizes[side])
            out[f"side{side}_layer"] = self.layer_names[dominant]
            out[f"side{side}_share"] = 100 * fractions[side, dominant]
        out["coupling_ratio_final"] = ratio
        out["vs_chance"] = ("above chance at every checkpoint" if min(ari2.min(), arik.min()) > self.chance.max()
                            else "not above chance at every checkpoint")
        out["coupling_reading"] = (
            "layers are not much more tightly knit inside than between them, so layer boundaries need not be where "
            "the graph is thinnest" if ratio < 2 else
            "layers are more tightly knit inside than between them, so a cut along layer boundaries is cheap")
        out["follows"] = "largely" if ari2[-1] > 0.5 else "only in part" if ari2[-1] > 0.1 else "hardly"
        out["layer_sizes"] = ", ".join(f"{n} {c}" for n, c in zip(self.layer_names, np.bincount(self.layers)))
        out["dendrogram_leaves"] = config.dendrogram_leaves
        out.update(self._glued_grokking())
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
    options = config.tree_options()
    batch = mnist_lenet.hessian_batch(config.mnist, run=mnist_run)  # the MNIST chapter's subsample
    layers, names = parameter_labels(mnist_run.model_at(0))
    layer_names = [_LENET_LAYERS.get(n, n) for n in names]
    store = ResultStore(config.results_dir, "fiedler_lenet",
                        dict(run=mnist_run.store.key, hessian_samples=config.mnist.hessian_samples,
                             subsample_seed=config.mnist.seed + 1, **options))
    with timed() as timer:
        records = {step: store.cached(f"fiedler_{step:07d}",
                                      lambda: _lenet_tree(mnist_run.model_at(step), batch, layers, options))
                   for step in tqdm(steps, desc="Fiedler trees", disable=bars)}
    timings["lenet_trees"] = timer.seconds
    trees = {step: Tree.from_record(step, record) for step, record in records.items()}
    top2 = {s: top_cut(trees[s], 2) for s in steps}
    topk = {s: top_cut(trees[s], config.n_top_clusters) for s in steps}
    rng = np.random.default_rng(0)
    chance = np.array([shuffled_ari(topk[s], layers, rng, _N_SHUFFLES) for s in steps])
    lenet = pd.DataFrame({
        "step": steps,
        "ari_top2": [ari_inside(top2[s], layers) for s in steps],
        "ari_topk": [ari_inside(topk[s], layers) for s in steps],
        "chance_min": chance.min(1), "chance_max": chance.max(1),
        "lambda2": [trees[s].lambda2 for s in steps],
        **{key: [records[s][key] for s in steps]
           for key in ("coupling_within", "coupling_across", "degree_min", "degree_median", "seconds_hessian",
                       "seconds_tree")},
    })

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
                                  subsample_seed=g.seed + 1, **grok_options))
    with timed() as timer:
        grok_trees = {name: Tree.from_record(step, grok_store.cached(
                          f"fiedler_{step:07d}", lambda: _transformer_tree(grok_run.model_at(step), grok_batch,
                                                                           grok_options)))
                      for name, step in tqdm(grok_steps.items(), desc="transformer trees", disable=bars)}
    timings["grokking_trees"] = timer.seconds
    grokking = pd.DataFrame([
        {"checkpoint": name, "step": tree.step,
         "ARI top 2 vs components": ari_inside(top_cut(tree, 2), components),
         "ARI top 4 vs components": ari_inside(top_cut(tree, _GROK_K), components),
         "λ₂ (normalized)": tree.lambda2}
        for name, tree in grok_trees.items()])

    return Result(config=config, steps=steps, layers=layers, layer_names=layer_names, trees=trees, lenet=lenet,
                  top2=top2, topk=topk, chance=chance, grok_window=grokking_modadd.window(grok_run, g),
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
    """ARI of the top cuts against the layers (with the shuffled chance range), and λ₂ of the whole graph."""
    import matplotlib.pyplot as plt

    table, k = result.lenet, result.config.n_top_clusters
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    axes[0].plot(table["step"], table["ari_top2"], "o-", label="top split (2 clusters)")
    axes[0].plot(table["step"], table["ari_topk"], "s-", label=f"top {k} clusters")
    axes[0].fill_between(table["step"], table["chance_min"], table["chance_max"], color="0.8",
                         label="shuffled (chance)")
    axes[0].set(xscale="symlog", xlabel="training step", ylabel="ARI against layers", title="agreement with layers")
    axes[0].legend(fontsize=8)
    lambda2 = table["lambda2"].to_numpy()
    axes[1].plot(table["step"], lambda2, "o-")
    axes[1].set(xscale="symlog", yscale="log" if np.all(lambda2 > 0) else "linear", xlabel="training step",
                ylabel="λ₂ (normalized Laplacian)", title="algebraic connectivity of the whole graph")
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
