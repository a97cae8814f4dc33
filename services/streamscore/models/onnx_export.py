"""Fitted scikit-learn models as ONNX graphs that compute the same fraud probability, byte for byte reproducible.

Both graphs are written by hand with :mod:`onnx.helper`: input :data:`INPUT_NAME` (float32 ``[batch, F]``),
output :data:`OUTPUT_NAME` (float32 ``[batch, 1]``), the card in the metadata. Nothing in the file depends on
the clock or on the converter's version, so the same fitted model and card always give the same bytes, and a
file's SHA-256 identifies what was trained.

* ``mlp``: the scaler is folded into the first layer, then one Gemm per layer and a final Sigmoid; only
  Gemm and activations, so the whole graph runs on the CUDA provider.
* ``gbt``: one ``ai.onnx.ml`` TreeEnsembleRegressor (raw score) then a Sigmoid node: onnxruntime ignores the
  regressor's ``post_transform="LOGISTIC"`` for a single target and would return the logit. skl2onnx 1.20 cannot
  convert a HistGradientBoostingClassifier under onnx >= 1.23 (it passes a Python ``bool`` where onnx now
  requires an int), and its thresholds are rounded to nearest float32, which can send a float32 input equal
  to the rounded threshold down the wrong branch; here they are rounded *down*, which is exact:

>>> t = 1.0 + 3 * 2.0**-24  # a split between the adjacent float32 values 1 + 2**-23 and 1 + 2**-22
>>> float(np.float32(t)) > t, float(_floor_float32(np.array([t]))[0]) <= t
(True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.errors import StreamscoreError
from streamscore.models.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, ModelCard
from streamscore.models.runtime import open_session

__all__ = ["EquivalenceError", "check_equivalence", "export_onnx", "source_scores"]

PRODUCER_NAME = "streamscore"
PRODUCER_VERSION = "1"  # bump when the graph layout changes, never per export: the bytes must be reproducible
OPSET = 17
ML_OPSET = 3  # TreeEnsembleRegressor with nodes_missing_value_tracks_true
# onnx >= 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses (it reads up to 13); IR 8 is opset 17's.
IR_VERSION = 8

_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": None}

Graph = tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[onnx.OperatorSetIdProto]]


class EquivalenceError(StreamscoreError, ValueError):
    """The ONNX graph does not compute what the source model computes: it must not be registered."""


def export_onnx(model: Any, card: ModelCard) -> bytes:
    """Serialize ``model`` (the kind ``card.kind`` names) with ``card`` embedded; checked by onnx before return.

    Raises ``ValueError`` when the model is not what the kind promises (type, binary classes, input width),
    since a silently different graph would only be caught later by the equivalence check, if at all.
    """
    width = int(getattr(model, "n_features_in_", -1))
    if width != len(card.features):
        raise ValueError(f"the model takes {width} inputs but the card lists {len(card.features)} features")
    nodes, initializers, opsets = _mlp_graph(model) if card.kind == "mlp" else _gbt_graph(model)
    graph = helper.make_graph(
        nodes,
        card.model_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), *opsets],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    helper.set_model_props(proto, {CARD_KEY: card.to_json()})
    onnx.checker.check_model(proto, full_check=True)
    data: bytes = proto.SerializeToString(deterministic=True)
    return data


def source_scores(model: Any, x: np.ndarray) -> np.ndarray:
    """The fraud probability (class 1) from the scikit-learn model itself, float64 ``[N]``."""
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


def check_equivalence(onnx_bytes: bytes, model: Any, x: np.ndarray, tolerance: float) -> float:
    """The largest ``|ONNX - source|`` score over the rows of ``x``; :class:`EquivalenceError` above ``tolerance``.

    The file is opened through :func:`~streamscore.models.runtime.open_session` (CPU) so its card and I/O are
    validated exactly as a scorer will. Both sides see ``x`` rounded to float32: a scorer can only ever feed
    float32, so input rounding is not an export defect, and comparing on the same inputs isolates the graph.
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if x32.ndim != 2 or len(x32) == 0:
        raise ValueError(f"need a non-empty [N, F] matrix to compare on, got shape {x32.shape}")
    exported = open_session(onnx_bytes, expected_sha256=None, providers="cpu").predict(x32).astype(np.float64)
    source = source_scores(model, x32.astype(np.float64))
    diff = np.abs(exported - source)
    worst = int(np.argmax(diff))  # the first NaN if any: a NaN score is a failure, and `<=` below says so
    largest = float(diff[worst])
    if not largest <= tolerance:
        raise EquivalenceError(
            f"ONNX scores differ from the source model by up to {largest:.3g} (tolerance {tolerance:.3g}), "
            f"worst at row {worst}: ONNX {exported[worst]:.6g} vs source {source[worst]:.6g}"
        )
    return largest


def _mlp_graph(model: Any) -> Graph:
    """Gemm per layer with the scaler folded into the first: ``(x - m) / s @ W + b = x @ (W / s) + (b - m/s @ W)``."""
    steps = getattr(model, "named_steps", {})
    scaler, mlp = steps.get("scale"), steps.get("mlp")
    if not (isinstance(model, Pipeline) and isinstance(scaler, StandardScaler) and isinstance(mlp, MLPClassifier)):
        raise ValueError("kind 'mlp' expects Pipeline([('scale', StandardScaler()), ('mlp', MLPClassifier())])")
    if len(mlp.classes_) != 2 or mlp.out_activation_ != "logistic" or mlp.activation not in _ACTIVATIONS:
        raise ValueError(f"need a binary MLP with a supported activation, got {mlp.classes_}, {mlp.activation}")
    width = len(mlp.coefs_[0])
    mean = np.zeros(width) if scaler.mean_ is None else np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.ones(width) if scaler.scale_ is None else np.asarray(scaler.scale_, dtype=np.float64)
    weights = [np.asarray(w, dtype=np.float64) for w in mlp.coefs_]
    biases = [np.asarray(b, dtype=np.float64) for b in mlp.intercepts_]
    biases[0] = biases[0] - (mean / scale) @ weights[0]
    weights[0] = weights[0] / scale[:, None]

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    hidden_op = _ACTIVATIONS[mlp.activation]
    current = INPUT_NAME
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        last = i == len(weights) - 1
        initializers += [
            numpy_helper.from_array(w.astype(np.float32), f"layer{i}.weight"),
            numpy_helper.from_array(b.astype(np.float32), f"layer{i}.bias"),
        ]
        nodes.append(helper.make_node("Gemm", [current, f"layer{i}.weight", f"layer{i}.bias"], [f"layer{i}.linear"]))
        current = f"layer{i}.linear"
        op = "Sigmoid" if last else hidden_op
        if op is not None:
            out = OUTPUT_NAME if last else f"layer{i}.{op.lower()}"
            nodes.append(helper.make_node(op, [current], [out]))
            current = out
    return nodes, initializers, []


def _gbt_graph(model: Any) -> Graph:
    """One TreeEnsembleRegressor summing every tree's leaf and the baseline (the logit), then a Sigmoid.

    Leaves are LEAF nodes with zeroed split fields; branches send ``x <= threshold`` and, when the tree
    learned so, NaN to the left (true) child, as scikit-learn's predictor does.
    """
    if not isinstance(model, HistGradientBoostingClassifier) or len(model.classes_) != 2:
        raise ValueError(f"kind 'gbt' expects a binary HistGradientBoostingClassifier, got {type(model).__name__}")
    if model.is_categorical_ is not None and bool(np.any(model.is_categorical_)):
        raise ValueError("categorical splits are not exported; encode categories as numbers before training")
    parts: dict[str, list[np.ndarray]] = {}
    for tree_id, (predictor,) in enumerate(model._predictors):  # binary: one tree per boosting round
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        split = ~leaf
        columns = {
            "nodes_treeids": np.full(len(nodes), tree_id),
            "nodes_nodeids": np.arange(len(nodes)),
            "nodes_featureids": np.where(split, nodes["feature_idx"], 0),
            "nodes_values": _floor_float32(np.where(split, nodes["num_threshold"], 0.0)),
            "nodes_truenodeids": np.where(split, nodes["left"], 0),
            "nodes_falsenodeids": np.where(split, nodes["right"], 0),
            "nodes_modes": np.where(split, "BRANCH_LEQ", "LEAF"),
            "nodes_missing_value_tracks_true": np.where(split, nodes["missing_go_to_left"], 0),
            "target_treeids": np.full(int(leaf.sum()), tree_id),
            "target_nodeids": np.flatnonzero(leaf),
            "target_ids": np.zeros(int(leaf.sum()), dtype=np.int64),
            "target_weights": nodes["value"][leaf].astype(np.float32),
        }
        for key, column in columns.items():
            parts.setdefault(key, []).append(column)
    # Python ints, floats and strs: onnx's attribute builder rejects some numpy scalar types.
    attributes = {key: np.concatenate(chunks).tolist() for key, chunks in parts.items()}
    node = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        ["raw_score"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[float(np.float32(model._baseline_prediction.ravel()[0]))],
        **attributes,
    )
    sigmoid = helper.make_node("Sigmoid", ["raw_score"], [OUTPUT_NAME])
    return [node, sigmoid], [], [helper.make_opsetid("ai.onnx.ml", ML_OPSET)]


def _floor_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each value: for float32 ``x``, ``x <= t`` iff ``x <= floor32(t)``."""
    rounded = values.astype(np.float32)
    down = np.nextafter(rounded, np.float32(-np.inf))
    return np.where(rounded.astype(np.float64) > values, down, rounded)
