"""The tree ensemble inside an ONNX model, read from the file itself, for explanations (shap.py).

onnxruntime runs the model but does not expose its nodes, and the `onnx` package is a training dependency,
so this module reads the few protobuf messages it needs (ModelProto.graph, GraphProto.node, NodeProto's
attributes) from the wire format directly. It understands the ai.onnx.ml TreeEnsembleClassifier of a binary
classifier with one score per leaf (what onnxmltools writes for LightGBM and skl2onnx for scikit-learn's
gradient boosting: probabilities = [1 - sigmoid(margin), sigmoid(margin)]) and the TreeEnsembleRegressor with
one target. Anything else is refused with a ModelError that says what was found.

Every split is normalised to "x <= threshold goes left" on float32 values: BRANCH_LT becomes BRANCH_LEQ at
the next float32 below its threshold (x < t and x <= that float32 agree on every float32 x), and BRANCH_GT and
BRANCH_GTE swap their children. A missing value (NaN) follows the true branch when the node's
`nodes_missing_value_tracks_true` is set and the false branch otherwise, as onnxruntime does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorer.errors import ModelError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

ML_DOMAIN = "ai.onnx.ml"
ENSEMBLES = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
BRANCH_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT")

# protobuf field numbers (onnx.proto)
_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 4, 5, 7
_ATTR_NAME, _ATTR_F, _ATTR_I, _ATTR_S, _ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS = 1, 2, 3, 4, 7, 8, 9
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class TreeEnsemble:
    """Every node of every tree as flat arrays (one entry per node, trees in id order, each tree's root
    first); children are positions in these arrays, -1 at leaves. The model's output is
    `post_transform(base + sum of the leaf values reached)`; `base + sum` is the raw margin (log-odds for
    a LOGISTIC classifier)."""

    tree_id: I64
    node_id: I64
    feature: I64  # -1 at leaves
    threshold: F32  # x <= threshold goes left (NaN at leaves)
    left: I64
    right: I64
    nan_left: B  # a missing value goes left
    value: F64  # the leaf's value (0 at splits)
    base: float
    post_transform: str
    roots: I64  # position of each tree's root

    @property
    def is_leaf(self) -> B:
        return self.feature < 0

    def margin(self, X: F32) -> F64:
        """base + the sum of the leaf values each row reaches: the model's raw output before
        post_transform (tested against onnxruntime)."""
        rows = np.asarray(X, dtype=np.float32)
        total = np.full(len(rows), self.base, dtype=np.float64)
        for root in self.roots.tolist():
            total += self.value[self.leaves(rows, root)]
        return total

    def leaves(self, X: F32, root: int) -> I64:
        """The leaf (array position) each row of X reaches in the tree rooted at `root`."""
        at = np.full(len(X), root, dtype=np.int64)
        rows = np.arange(len(X))
        while True:
            split = ~self.is_leaf[at]
            if not split.any():
                return at
            node = at[split]
            x = X[rows[split], self.feature[node]]
            go_left = np.where(np.isnan(x), self.nan_left[node], x <= self.threshold[node])
            at[split] = np.where(go_left, self.left[node], self.right[node])


def read_tree_ensemble(onnx_bytes: bytes, where: str = "model.onnx") -> TreeEnsemble:
    """The single tree-ensemble node of an ONNX model as a TreeEnsemble; ModelError (naming `where`)
    when the file is not one this module understands."""
    try:
        nodes = [_node(raw) for raw in _repeated(_one(onnx_bytes, _MODEL_GRAPH), _GRAPH_NODE)]
    except (ValueError, IndexError, struct.error) as exc:
        raise ModelError(f"{where}: not a readable ONNX model ({exc})") from exc
    ensembles = [n for n in nodes if n[0] in ENSEMBLES and n[1] == ML_DOMAIN]
    if len(ensembles) != 1:
        found = sorted({n[0] for n in nodes})
        raise ModelError(f"{where}: expected one ai.onnx.ml tree ensemble, found the operators {found}")
    op_type, _, attrs = ensembles[0]
    try:
        return _ensemble(op_type, attrs)
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{where}: cannot read its {op_type} ({exc})") from exc


Attribute = int | float | bytes | list[int] | list[float] | list[bytes]


def _ensemble(op_type: str, attrs: dict[str, Attribute]) -> TreeEnsemble:
    prefix = "class" if op_type == "TreeEnsembleClassifier" else "target"
    if op_type == "TreeEnsembleClassifier":
        labels = attrs.get("classlabels_int64s", attrs.get("classlabels_strings", []))
        if not isinstance(labels, list) or len(labels) != 2:
            raise ValueError("only a binary classifier can be explained")
    if set(_ints(attrs, f"{prefix}_ids")) != {0}:
        raise ValueError(f"expected one score per leaf ({prefix}_ids all 0)")
    tree_ids = np.asarray(_ints(attrs, "nodes_treeids"), dtype=np.int64)
    node_ids = np.asarray(_ints(attrs, "nodes_nodeids"), dtype=np.int64)
    n = len(tree_ids)
    modes = [m.decode() for m in _strings(attrs, "nodes_modes")]
    features = np.asarray(_ints(attrs, "nodes_featureids"), dtype=np.int64)
    thresholds = np.asarray(_floats(attrs, "nodes_values"), dtype=np.float32)
    trues = np.asarray(_ints(attrs, "nodes_truenodeids"), dtype=np.int64)
    falses = np.asarray(_ints(attrs, "nodes_falsenodeids"), dtype=np.int64)
    tracks = _ints(attrs, "nodes_missing_value_tracks_true") or [0] * n
    if not n == len(node_ids) == len(modes) == len(features) == len(thresholds) == len(trues) == len(falses):
        raise ValueError("the nodes_* attributes differ in length")
    unknown = sorted(set(modes) - {"LEAF", *BRANCH_MODES})
    if unknown:
        raise ValueError(f"unsupported node modes {unknown}")
    order = np.lexsort((node_ids, tree_ids))
    position = {
        (t, i): p
        for p, (t, i) in enumerate(zip(tree_ids[order].tolist(), node_ids[order].tolist(), strict=True))
    }
    leaf = np.asarray([m == "LEAF" for m in modes])[order]
    mode = np.asarray(modes, dtype=object)[order]
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    nan_left = np.zeros(n, dtype=bool)
    threshold = np.full(n, np.nan, dtype=np.float32)
    tree_sorted, true_sorted, false_sorted = tree_ids[order], trues[order], falses[order]
    tracks_sorted = np.asarray(tracks, dtype=bool)[order]
    for p in np.flatnonzero(~leaf).tolist():
        t = int(tree_sorted[p])
        true_at, false_at = position[(t, int(true_sorted[p]))], position[(t, int(false_sorted[p]))]
        value = thresholds[order[p]]
        if mode[p] in ("BRANCH_LT", "BRANCH_GTE"):  # x < t is x <= the float32 below t
            value = np.nextafter(value, np.float32(-np.inf))
        swap = mode[p] in ("BRANCH_GT", "BRANCH_GTE")  # the true branch is the "greater" side
        left[p], right[p] = (false_at, true_at) if swap else (true_at, false_at)
        nan_left[p] = bool(tracks_sorted[p]) != swap
        threshold[p] = value
    value_of = np.zeros(n, dtype=np.float64)
    leaf_trees = np.asarray(_ints(attrs, f"{prefix}_treeids"), dtype=np.int64)
    leaf_nodes = np.asarray(_ints(attrs, f"{prefix}_nodeids"), dtype=np.int64)
    weights = np.asarray(_floats(attrs, f"{prefix}_weights"), dtype=np.float64)
    for t, i, w in zip(leaf_trees.tolist(), leaf_nodes.tolist(), weights.tolist(), strict=True):
        value_of[position[(t, i)]] += w
    base_values = _floats(attrs, "base_values")
    transform = attrs.get("post_transform", b"NONE")
    roots = _roots(tree_sorted, left, right)
    return TreeEnsemble(
        tree_id=tree_sorted,
        node_id=node_ids[order],
        feature=np.where(leaf, -1, features[order]),
        threshold=threshold,
        left=left,
        right=right,
        nan_left=nan_left,
        value=value_of,
        base=float(base_values[0]) if base_values else 0.0,
        post_transform=transform.decode() if isinstance(transform, bytes) else str(transform),
        roots=roots,
    )


def _roots(tree: I64, left: I64, right: I64) -> I64:
    """Each tree's root: its one node no other node points to (ValueError if not exactly one)."""
    child = np.zeros(len(tree), dtype=bool)
    child[left[left >= 0]] = True
    child[right[right >= 0]] = True
    roots = np.flatnonzero(~child)
    if len(roots) != len(np.unique(tree)) or len(np.unique(tree[roots])) != len(roots):
        raise ValueError("each tree must have exactly one root")
    return roots.astype(np.int64)


def _ints(attrs: dict[str, Attribute], name: str) -> list[int]:
    return [int(v) for v in _items(attrs, name, int)]


def _floats(attrs: dict[str, Attribute], name: str) -> list[float]:
    return [float(v) for v in _items(attrs, name, float)]


def _strings(attrs: dict[str, Attribute], name: str) -> list[bytes]:
    return [v for v in _items(attrs, name, bytes) if isinstance(v, bytes)]  # all are: narrows the type


def _items(
    attrs: dict[str, Attribute], name: str, kind: type[int | float | bytes]
) -> list[int | float | bytes]:
    """The list attribute `name` ([] when absent); ValueError when it holds anything but `kind`."""
    value = attrs.get(name, [])
    if not isinstance(value, list) or any(not isinstance(v, kind) for v in value):
        raise ValueError(f"attribute {name} is not a list of {kind.__name__}")
    return list(value)


# --- the protobuf wire format, as much of it as ONNX's tree ensembles need ---


def _fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of a message: an int for varint and fixed-width
    fields (their raw bits), the bytes for length-delimited ones."""
    view = memoryview(buf)
    at = 0
    while at < len(view):
        key, at = _varint(view, at)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(view, at)
            yield field, wire, value
        elif wire == _FIXED64:
            yield field, wire, int.from_bytes(view[at : at + 8], "little")
            at += 8
        elif wire == _BYTES:
            size, at = _varint(view, at)
            if at + size > len(view):
                raise ValueError("truncated field")
            yield field, wire, view[at : at + size]
            at += size
        elif wire == _FIXED32:
            yield field, wire, int.from_bytes(view[at : at + 4], "little")
            at += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _one(buf: bytes | memoryview, field: int) -> memoryview:
    for number, wire, value in _fields(buf):
        if number == field and wire == _BYTES and isinstance(value, memoryview):
            return value
    raise ValueError(f"field {field} not found")


def _repeated(buf: bytes | memoryview, field: int) -> list[memoryview]:
    return [v for n, w, v in _fields(buf) if n == field and w == _BYTES and isinstance(v, memoryview)]


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _node(raw: memoryview) -> tuple[str, str, dict[str, Attribute]]:
    """A NodeProto's op_type, domain and attributes (name -> value)."""
    op_type, domain = "", ""
    attrs: dict[str, Attribute] = {}
    for number, _wire, value in _fields(raw):
        if isinstance(value, memoryview):
            if number == _NODE_OP_TYPE:
                op_type = bytes(value).decode()
            elif number == _NODE_DOMAIN:
                domain = bytes(value).decode()
            elif number == _NODE_ATTRIBUTE:
                name, attr = _attribute(value)
                attrs[name] = attr
    return op_type, domain, attrs


def _attribute(raw: memoryview) -> tuple[str, Attribute]:
    """An AttributeProto's name and value: a scalar, bytes, or a list (packed or not, as proto2 allows)."""
    name = ""
    scalar: Attribute | None = None
    floats: list[float] = []
    ints: list[int] = []
    strings: list[bytes] = []
    for number, _wire, value in _fields(raw):
        if number == _ATTR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == _ATTR_F and isinstance(value, int):
            scalar = struct.unpack("<f", value.to_bytes(4, "little"))[0]
        elif number == _ATTR_I and isinstance(value, int):
            scalar = _signed(value)
        elif number == _ATTR_S and isinstance(value, memoryview):
            scalar = bytes(value)
        elif number == _ATTR_FLOATS:
            if isinstance(value, memoryview):  # packed
                floats.extend(np.frombuffer(value, dtype="<f4").tolist())
            else:
                floats.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
        elif number == _ATTR_INTS:
            if isinstance(value, memoryview):  # packed
                at = 0
                while at < len(value):
                    v, at = _varint(value, at)
                    ints.append(_signed(v))
            else:
                ints.append(_signed(value))
        elif number == _ATTR_STRINGS and isinstance(value, memoryview):
            strings.append(bytes(value))
    if scalar is not None:
        return name, scalar
    return name, floats or ints or strings
