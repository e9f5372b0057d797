"""Exact per-decision feature contributions of a tree-ensemble model: path-dependent TreeSHAP.

A contribution is a Shapley value in the model's raw margin (log-odds for the LOGISTIC classifiers we
ship): how far this feature's value moves the margin from the average margin of the training rows, fairly
shared among the features (Lundberg, Erion and Lee, "Consistent individualized feature attribution for tree
ensembles", 2018). "Average" is taken the way path-dependent TreeSHAP takes it: at a split on a feature
that is not known, both children count, weighted by their cover (training rows reaching the node).
For every row, `base + contributions.sum()` equals the model's margin exactly (up to float rounding).

How it is computed. For one leaf with value v, the features on its root path (each counted once, however
many splits test it) are the only players with an effect. Feature j has a one-fraction o_j (1 when the
row satisfies every split on j along the path, else 0) and a zero-fraction z_j (the product of
child cover / parent cover over those splits). The leaf's value of a coalition S is v prod_{j in S} o_j
prod_{j not in S} z_j, so the Shapley value of feature i is

    v (o_i - z_i) sum_s w(s, K) [t^s] prod_{j != i} (z_j + o_j t),   w(s, K) = s! (K - 1 - s)! / K!

over the K path features. Lundberg's algorithm computes the same with EXTEND and UNWIND over a recursion
per row; here the paths are prepared once per model (`LeafPaths`) and the formula is evaluated for every
(row, leaf, path feature) at once in numpy: the product polynomial by K multiplications, the division by
(z_i + o_i t) by synthetic division from the top coefficient (stable: z_i <= 1). Leaves are grouped by
path length, each path padded up to its group's length (GROUP_SIZES) with players whose o = z = 1, which
change no Shapley value (null players): fewer groups, fewer numpy calls. The cost is about L K^2
multiply-adds per row for L leaves (default/2: 2,480 leaves, K mostly 4-8); figures in docs/models.md.

Covers are not in the ONNX file: training writes them beside the model (covers.npz, `write_covers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scorer.errors import ModelError
from scorer.model.trees import TreeEnsemble

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
COVERS_FILE = "covers.npz"
GROUP_SIZES = (4, 8, 12, 16)  # path lengths padded to these (_group_size): measured on default/2
ROW_BLOCK = 32  # rows per numpy pass: keeps the (path features, leaves, rows) temporaries in cache


def write_covers(path: Path, trees: TreeEnsemble, covers: F64, source: str) -> None:
    """covers.npz: each node's cover keyed by its ONNX (tree id, node id), and how they were obtained."""
    np.savez(
        path,
        tree_ids=trees.tree_id,
        node_ids=trees.node_id,
        covers=np.asarray(covers, dtype=np.float64),
        source=np.asarray(source),
    )


def read_covers(path: Path, trees: TreeEnsemble) -> F64:
    """The covers of `trees`' nodes (in its node order) from covers.npz; ModelError when the file is
    unreadable, does not cover every node, or holds a negative cover, or a split whose children's
    covers do not add up to its own."""
    try:
        with np.load(path) as doc:
            tree_ids, node_ids, covers = doc["tree_ids"], doc["node_ids"], doc["covers"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable covers ({exc})") from exc
    known = {(t, n): c for t, n, c in zip(tree_ids.tolist(), node_ids.tolist(), covers.tolist(), strict=True)}
    try:
        out = np.asarray(
            [known[(t, n)] for t, n in zip(trees.tree_id.tolist(), trees.node_id.tolist(), strict=True)],
            dtype=np.float64,
        )
    except KeyError as exc:
        raise ModelError(f"{path}: no cover for node {exc} (tree, node) of the model") from exc
    split = ~trees.is_leaf
    sums = out[trees.left[split]] + out[trees.right[split]]
    if (out < 0).any() or not np.allclose(sums, out[split], rtol=1e-6, atol=1e-6):
        raise ModelError(f"{path}: covers are negative or a split's children do not add up to it")
    return out


@dataclass(frozen=True, slots=True)
class PathGroup:
    """The leaves whose root paths test the same number K of distinct features, as (K, leaves) arrays:
    the row-independent half of path-dependent TreeSHAP, prepared once per model."""

    feature: I64  # (K, L) the path's features
    lower: F32  # (K, L) the row follows the path when lower < x <= upper ...
    upper: F32
    nan_ok: B  # (K, L) ... or when x is missing and every split on it sends NaN along the path
    zero: F64  # (K, L) z: the product of child/parent cover over the path's splits on the feature
    value: F64  # (L,) the leaf's value
    weights: F64  # (K,) w(s, K) = s! (K-1-s)! / K!
    scatter: F64  # (n_features, K * L) one-hot: sums each (path feature, leaf) entry into its feature

    def contributions(self, X: F32) -> F64:
        """(n_features, n) the Shapley values these leaves give the rows of X (see the module docstring)."""
        k, n_leaves = self.feature.shape
        n = len(X)
        x = np.ascontiguousarray(X.T)[self.feature]  # (K, L, n): rows last, so every slice is contiguous
        inside = (x > self.lower[..., None]) & (x <= self.upper[..., None])
        one = np.where(np.isnan(x), self.nan_ok[..., None], inside).astype(np.float64)
        zero = self.zero[..., None]
        # the product polynomial prod_j (z_j + o_j t), coefficient of t^s at poly[s]
        poly = np.zeros((k + 1, n_leaves, n))
        poly[0] = 1.0
        for j in range(k):
            poly[1 : j + 2] = poly[1 : j + 2] * zero[j] + poly[: j + 1] * one[j]
            poly[0] *= zero[j]
        w = self.weights
        # o_i = 1: divide by (t + z_i) from the top coefficient, for every i at once:
        # q_{K-1} = p_K, q_{s-1} = p_s - z_i q_s; the sum of w_s q_s gathered on the way
        q = np.broadcast_to(poly[k], (k, n_leaves, n))
        total = w[k - 1] * q
        for s in range(k - 1, 0, -1):
            q = poly[s] - zero * q
            total += w[s - 1] * q
        # o_i = 0: the factor is the constant z_i (when z_i = 0, o_i - z_i = 0 and nothing is lost)
        plain = np.tensordot(w, poly[:k], axes=1)
        by_zero = np.divide(plain, zero, out=np.zeros_like(one), where=zero > 0)
        phi = (one - zero) * np.where(one > 0, total, by_zero) * self.value[:, None]
        return np.asarray(self.scatter @ phi.reshape(k * n_leaves, n), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class LeafPaths:
    """Every leaf's root path reduced to its distinct features, grouped by their number."""

    groups: tuple[PathGroup, ...]
    base: float  # the model's margin averaged over its covers: what the contributions start from
    n_features: int

    @classmethod
    def build(cls, trees: TreeEnsemble, covers: F64, n_features: int) -> LeafPaths:
        """Walk every tree once; ModelError when a split has no cover."""
        paths: list[dict[int, tuple[float, float, bool, float]]] = []  # feature -> (lower, upper, nan_ok, z)
        values: list[float] = []
        expected = trees.base
        stack: list[tuple[int, dict[int, tuple[float, float, bool, float]]]] = [
            (int(r), {}) for r in trees.roots.tolist()
        ]
        while stack:
            node, path = stack.pop()
            if trees.is_leaf[node]:
                paths.append(path)
                values.append(float(trees.value[node]))
                expected += float(trees.value[node]) * math.prod(p[3] for p in path.values())
                continue
            parent = float(covers[node])
            if parent <= 0:
                raise ModelError(f"tree {int(trees.tree_id[node])}: a split with no cover")
            f, t = int(trees.feature[node]), float(trees.threshold[node])
            for child, goes_left in ((int(trees.left[node]), True), (int(trees.right[node]), False)):
                lower, upper, nan_ok, zero = path.get(f, (-math.inf, math.inf, True, 1.0))
                lower, upper = (lower, min(upper, t)) if goes_left else (max(lower, t), upper)
                nan_ok = nan_ok and bool(trees.nan_left[node]) == goes_left
                stack.append(
                    (child, {**path, f: (lower, upper, nan_ok, zero * float(covers[child]) / parent)})
                )
        groups = []
        sizes = [_group_size(len(p)) for p in paths]
        null = (0, (-math.inf, math.inf, True, 1.0))  # a player with o = z = 1: changes no Shapley value
        for k in sorted(set(sizes) - {0}):  # a tree that is one leaf explains nothing
            members = [i for i, size in enumerate(sizes) if size == k]
            items = [sorted(paths[i].items()) + [null] * (k - len(paths[i])) for i in members]
            feature = np.asarray([[f for f, _ in row] for row in items], dtype=np.int64).T
            bounds = np.asarray([[b for _, b in row] for row in items], dtype=np.float64).transpose(1, 0, 2)
            scatter = np.zeros((n_features, feature.size))
            scatter[feature.ravel(), np.arange(feature.size)] = 1.0
            groups.append(
                PathGroup(
                    feature=feature,
                    lower=bounds[..., 0].astype(np.float32),
                    upper=bounds[..., 1].astype(np.float32),
                    nan_ok=bounds[..., 2] > 0,
                    zero=bounds[..., 3],
                    value=np.asarray([values[i] for i in members], dtype=np.float64),
                    weights=np.asarray(
                        [math.factorial(s) * math.factorial(k - 1 - s) / math.factorial(k) for s in range(k)]
                    ),
                    scatter=scatter,
                )
            )
        return cls(tuple(groups), expected, n_features)

    @property
    def depth(self) -> int:
        """The most distinct features on one path."""
        return max((g.feature.shape[0] for g in self.groups), default=0)

    def contributions(self, X: F32) -> F64:
        """(n, n_features) Shapley values of each row in margin space; each row sums to its margin - base."""
        rows = np.asarray(X, dtype=np.float32)
        out = np.zeros((len(rows), self.n_features), dtype=np.float64)
        for start in range(0, len(rows), ROW_BLOCK):
            block = rows[start : start + ROW_BLOCK]
            for group in self.groups:
                out[start : start + ROW_BLOCK] += group.contributions(block).T
        return out


def _group_size(k: int) -> int:
    """The path length a path of k features is padded to: a few groups cost fewer numpy calls (the
    fixed cost of explaining one row) than one per length, at some padded work (GROUP_SIZES)."""
    return next((size for size in GROUP_SIZES if size >= k), k)


class TreeExplainer:
    """A model's TreeSHAP: its trees read from model.onnx, the covers from covers.npz beside it."""

    def __init__(self, trees: TreeEnsemble, covers: F64, n_features: int) -> None:
        self.trees = trees
        self.paths = LeafPaths.build(trees, covers, n_features)

    @property
    def base(self) -> float:
        """The margin the contributions start from: the cover-weighted average margin."""
        return self.paths.base

    def contributions(self, X: F32) -> F64:
        """(n, n_features) exact contributions to each row's margin (see the module docstring)."""
        return self.paths.contributions(X)

    def margin(self, X: F32) -> F64:
        return self.trees.margin(X)
