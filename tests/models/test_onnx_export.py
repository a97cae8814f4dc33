"""ONNX export: the graph computes the source model's probability, reproducibly, with GPU-friendly ops only.

The fitting helpers here are shared with ``test_runtime.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.models.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, ModelCard
from streamscore.models.onnx_export import (
    IR_VERSION,
    OPSET,
    PRODUCER_NAME,
    EquivalenceError,
    check_equivalence,
    export_onnx,
    source_scores,
)

WIDTH = 5
GPU_FRIENDLY_OPS = {"Gemm", "MatMul", "Add", "Relu", "Tanh", "Sigmoid"}


def make_card(kind: str, width: int = WIDTH) -> ModelCard:
    names = tuple(f"f{i}" for i in range(width))
    return ModelCard(
        model_name="fraud-test", kind=kind, feature_service="fs", features=names, defaults=(0.0,) * width,
        request_features=names[-1:], threshold=0.5, data_start="2026-01-01T00:00:00+00:00",
        data_end="2026-01-02T00:00:00+00:00", seed=0,
    )  # fmt: skip


def make_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Columns on very different scales and offsets (so a wrong scaler fold shows), float32-representable."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WIDTH)) * [1.0, 10.0, 100.0, 0.1, 3.0] + [0.0, 5.0, -50.0, 1.0, 0.0]
    x = x.astype(np.float32).astype(np.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] / 100 + rng.normal(size=n) > 0.5).astype(int)
    return x, y


def fit_mlp(activation: str = "relu", seed: int = 0) -> Pipeline:
    """A few partial_fit epochs, as training does: fast, and no ConvergenceWarning (an error under pytest)."""
    x, y = make_data(seed=seed)
    scaler = StandardScaler().fit(x)
    mlp = MLPClassifier(hidden_layer_sizes=(8, 4), activation=activation, random_state=seed)
    for _ in range(20):
        mlp.partial_fit(scaler.transform(x), y, classes=np.array([0, 1]))
    return Pipeline([("scale", scaler), ("mlp", mlp)])


def fit_gbt(seed: int = 0) -> tuple[HistGradientBoostingClassifier, np.ndarray]:
    """A small ensemble trained with NaN holes, so the exported missing-value routing is exercised."""
    x, y = make_data(seed=seed)
    x[np.random.default_rng(seed + 1).random(x.shape) < 0.1] = np.nan
    return HistGradientBoostingClassifier(max_iter=30, random_state=seed).fit(x, y), x


@pytest.fixture(scope="module")
def mlp() -> Pipeline:
    return fit_mlp()


@pytest.fixture(scope="module")
def gbt() -> tuple[HistGradientBoostingClassifier, np.ndarray]:
    return fit_gbt()


def ort_scores(data: bytes, x: np.ndarray) -> np.ndarray:
    """Scores straight from ORT, independent of the module under test."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    assert out.shape == (len(x), 1)
    return out[:, 0]


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_mlp_scores_match_sklearn(activation: str) -> None:
    model = fit_mlp(activation)
    x, _ = make_data(n=200, seed=7)
    data = export_onnx(model, make_card("mlp"))
    np.testing.assert_allclose(ort_scores(data, x), model.predict_proba(x)[:, 1], rtol=0, atol=1e-5)
    assert check_equivalence(data, model, x, tolerance=1e-5) <= 1e-5
    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert ops <= GPU_FRIENDLY_OPS, ops - GPU_FRIENDLY_OPS
    assert "Gemm" in ops


def test_gbt_scores_match_sklearn_with_missing_values(
    gbt: tuple[HistGradientBoostingClassifier, np.ndarray],
) -> None:
    model, x = gbt
    assert np.isnan(x).any()
    data = export_onnx(model, make_card("gbt"))
    np.testing.assert_allclose(ort_scores(data, x), model.predict_proba(x)[:, 1], rtol=0, atol=1e-5)
    assert check_equivalence(data, model, x, tolerance=1e-5) <= 1e-5
    assert [o.name for o in onnx.load_from_string(data).graph.output] == [OUTPUT_NAME]


def test_gbt_split_between_adjacent_float32_values() -> None:
    """HGB splits at the float64 midpoint; rounding it to nearest float32 would send the upper value left."""
    rng = np.random.default_rng(3)
    low = np.float32(1.0) + np.float32(2.0**-23)  # odd mantissa: the midpoint rounds up to `high`
    high = np.nextafter(low, np.float32(2.0))
    column = np.where(rng.random(300) < 0.5, low, high).astype(np.float64)
    x = np.column_stack([column, rng.normal(size=300)])
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(x, (column == high).astype(int))
    data = export_onnx(model, make_card("gbt", width=2))
    np.testing.assert_allclose(ort_scores(data, x), model.predict_proba(x)[:, 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "gbt"])
def test_export_is_reproducible(kind: str) -> None:
    first, second = (fit_mlp(), fit_mlp()) if kind == "mlp" else (fit_gbt()[0], fit_gbt()[0])
    other = fit_mlp(seed=1) if kind == "mlp" else fit_gbt(seed=1)[0]
    card = make_card(kind)
    data = export_onnx(first, card)
    assert export_onnx(first, card) == data
    assert export_onnx(second, card) == data  # refitted with the same seed
    assert export_onnx(other, card) != data
    assert export_onnx(first, ModelCard.from_json(card.to_json())) == data


def test_metadata_and_versions(mlp: Pipeline) -> None:
    card = make_card("mlp")
    proto = onnx.load_from_string(export_onnx(mlp, card))
    assert ModelCard.from_json({p.key: p.value for p in proto.metadata_props}[CARD_KEY]) == card
    assert (proto.producer_name, proto.ir_version) == (PRODUCER_NAME, IR_VERSION)
    assert {o.domain: o.version for o in proto.opset_import} == {"": OPSET}
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert (proto.graph.input[0].name, dims) == (INPUT_NAME, ["batch", WIDTH])


def test_tampered_weights_fail_equivalence(mlp: Pipeline) -> None:
    proto = onnx.load_from_string(export_onnx(mlp, make_card("mlp")))
    first = proto.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.5), first.name))
    x, _ = make_data(n=100, seed=5)
    with pytest.raises(EquivalenceError, match=r"tolerance 1e-05\), worst at row \d+"):
        check_equivalence(proto.SerializeToString(), mlp, x, tolerance=1e-5)


def test_width_and_kind_mismatches_are_refused(
    mlp: Pipeline, gbt: tuple[HistGradientBoostingClassifier, np.ndarray]
) -> None:
    with pytest.raises(ValueError, match="5 inputs but the card lists 4"):
        export_onnx(mlp, make_card("mlp", width=4))
    with pytest.raises(ValueError, match="kind 'mlp' expects"):
        export_onnx(gbt[0], make_card("mlp"))
    with pytest.raises(ValueError, match="kind 'gbt' expects"):
        export_onnx(mlp, make_card("gbt"))


def test_source_scores_and_empty_comparison(mlp: Pipeline) -> None:
    x, _ = make_data(n=10)
    scores = source_scores(mlp, x)
    assert scores.dtype == np.float64
    assert scores.shape == (10,)
    np.testing.assert_array_equal(scores, mlp.predict_proba(x)[:, 1])
    with pytest.raises(ValueError, match="non-empty"):
        check_equivalence(export_onnx(mlp, make_card("mlp")), mlp, x[:0], tolerance=1e-5)
