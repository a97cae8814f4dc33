"""Loading a model for scoring: integrity, card, I/O checks, provider choice that stays quiet on CPU machines."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from sklearn.pipeline import Pipeline

from services.errors import StreamscoreError
from services.models import runtime
from services.models.card import CARD_KEY
from services.models.onnx_export import export_onnx, source_scores
from services.models.runtime import (
    CPU,
    ModelIntegrityError,
    ModelLoadError,
    open_session,
    resolve_providers,
    sha256_hex,
)
from tests.models.test_onnx_export import WIDTH, fit_mlp, make_card, make_data

GPU_DRIVER = runtime._nvidia_driver_loadable()


@pytest.fixture(scope="module")
def model() -> Pipeline:
    return fit_mlp()


@pytest.fixture(scope="module")
def exported(model: Pipeline) -> bytes:
    return export_onnx(model, make_card("mlp"))


def with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    """The same graph with its metadata replaced: what a foreign or hand-edited file looks like."""
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    if props:
        helper.set_model_props(proto, props)
    return proto.SerializeToString()


def test_card_and_identity_round_trip(exported: bytes) -> None:
    digest = sha256_hex(exported)
    scorer = open_session(exported, expected_sha256=digest.upper(), providers="cpu", version="7")
    assert scorer.card == make_card("mlp")
    assert (scorer.sha256, scorer.version, scorer.provider) == (digest, "7", CPU)


def test_predict_returns_one_score_per_row(model: Pipeline, exported: bytes) -> None:
    scorer = open_session(exported, expected_sha256=None, providers="cpu")
    x, _ = make_data(n=7, seed=9)
    scores = scorer.predict(x)  # float64 in: converted, as a scorer assembling rows may hand us
    assert scores.dtype == np.float32
    assert scores.shape == (7,)
    np.testing.assert_allclose(scores, source_scores(model, x), rtol=0, atol=1e-5)
    scorer.warm((1, 3))


@pytest.mark.parametrize("shape", [(4, WIDTH - 1), (4, WIDTH + 1), (WIDTH,)])
def test_predict_refuses_wrong_width(exported: bytes, shape: tuple[int, ...]) -> None:
    scorer = open_session(exported, expected_sha256=None, providers="cpu")
    with pytest.raises(ValueError, match=rf"expected a \[N, {WIDTH}\] matrix"):
        scorer.predict(np.zeros(shape, dtype=np.float32))


def test_hash_mismatch_is_an_integrity_error(exported: bytes) -> None:
    wrong = sha256_hex(b"something else")
    with pytest.raises(ModelIntegrityError) as info:
        open_session(exported, expected_sha256=wrong)
    assert wrong in str(info.value)
    assert sha256_hex(exported) in str(info.value)
    assert isinstance(info.value, StreamscoreError)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "ONNX Runtime cannot load the model"),
        ("no card", "has no card"),
        ("bad card", "card is unusable"),
        ("card too wide", r"one input 'features' of shape \[batch, 6\]"),
    ],
)
def test_unusable_files_are_load_errors(exported: bytes, case: str, message: str) -> None:
    wide = make_card("mlp", width=WIDTH + 1)
    data = {
        "garbage": b"\x08\x07not an onnx model at all",
        "no card": with_metadata(exported, {}),
        "bad card": with_metadata(exported, {CARD_KEY: '{"model_name": "m"}'}),
        "card too wide": with_metadata(exported, {CARD_KEY: wide.to_json()}),
    }[case]
    with pytest.raises(ModelLoadError, match=message) as info:
        open_session(data, expected_sha256=None, providers="cpu")
    assert isinstance(info.value, StreamscoreError)


def test_resolve_explicit_providers() -> None:
    assert resolve_providers("cpu") == [CPU]
    with pytest.raises(ModelLoadError, match="unknown execution provider 'gpu'"):
        resolve_providers("gpu")


def test_auto_ends_with_cpu_and_only_names_available_providers() -> None:
    auto = resolve_providers("auto")
    assert auto[-1] == CPU
    assert auto.count(CPU) == 1
    assert set(auto) <= set(ort.get_available_providers())


def test_gpu_providers_need_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists the GPU providers even where no GPU exists; the driver check is what drops them."""
    monkeypatch.setattr(runtime, "_nvidia_driver_loadable", lambda: False)
    assert resolve_providers("auto") == [CPU]
    with pytest.raises(ModelLoadError, match="needs an NVIDIA GPU driver"):
        resolve_providers("cuda,cpu")


def test_provider_missing_from_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_nvidia_driver_loadable", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert resolve_providers("auto") == [CPU]
    with pytest.raises(ModelLoadError, match="has no TensorrtExecutionProvider"):
        resolve_providers("tensorrt")


def test_gpu_order_and_cpu_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_nvidia_driver_loadable", lambda: True)
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: [CPU, "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    )
    assert resolve_providers("auto") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert resolve_providers("cpu,cuda,cuda") == ["CUDAExecutionProvider", CPU]


def test_auto_prints_nothing_to_stdout(exported: bytes, capfd: pytest.CaptureFixture[str]) -> None:
    """ORT's own provider fallback prints a banner to stdout; a `--json` command cannot afford that."""
    scorer = open_session(exported, expected_sha256=None, providers="auto")
    scorer.predict(np.zeros((2, WIDTH), dtype=np.float32))
    out, err = capfd.readouterr()
    assert out == ""
    if not GPU_DRIVER:
        assert (scorer.provider, err) == (CPU, "")


@pytest.mark.skipif(GPU_DRIVER, reason="a GPU driver is present: the GPU provider may really start")
@pytest.mark.parametrize("spec", ["cuda", "tensorrt", "tensorrt,cuda"])
def test_explicit_gpu_that_cannot_start_is_an_error(
    exported: bytes, spec: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Pretend a driver exists: ORT then tries the GPU provider, fails, and would silently serve on CPU.

    A failing TensorRT is where ORT's own fallback would print its banner; ours must not.
    """
    monkeypatch.setattr(runtime, "_nvidia_driver_loadable", lambda: True)
    with pytest.raises(ModelLoadError, match=rf"providers='{spec}' asked for a GPU but only {CPU} started"):
        open_session(exported, expected_sha256=None, providers=spec)
    assert open_session(exported, expected_sha256=None, providers=f"{spec},cpu").provider == CPU
    assert capfd.readouterr().out == ""
