"""Loading a model for scoring: integrity, card, I/O checks, provider choice that stays quiet on CPU machines,
and the GPU serving paths (padded batches, IO binding) checked against the plain path on CPU."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from sklearn.pipeline import Pipeline

from streamscore.errors import StreamscoreError
from streamscore.models import runtime
from streamscore.models.card import CARD_KEY, INPUT_NAME
from streamscore.models.onnx_export import export_onnx, source_scores
from streamscore.models.runtime import (
    CPU,
    ModelIntegrityError,
    ModelLoadError,
    ScoringSession,
    bucket_sizes,
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


class Recording:
    """An ORT session that remembers the batch size of every run, plain or IO-bound, and passes it through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs: list[tuple[str, int]] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.runs.append(("plain", len(feeds[INPUT_NAME])))
        return self.inner.run(names, feeds)

    def io_binding(self) -> Any:
        return RecordingBinding(self.inner.io_binding())

    def run_with_iobinding(self, binding: RecordingBinding) -> None:
        self.runs.append(("bound", binding.rows))
        self.inner.run_with_iobinding(binding.inner)


class RecordingBinding:
    def __init__(self, inner: Any) -> None:
        self.inner, self.rows = inner, -1

    def bind_cpu_input(self, name: str, x: np.ndarray) -> None:
        self.rows = len(x)
        self.inner.bind_cpu_input(name, x)

    def bind_output(self, name: str, device_type: str) -> None:
        assert device_type == "cpu"  # CPU provider: a "cuda" output here would be a bug
        self.inner.bind_output(name, device_type)

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return self.inner.copy_outputs_to_cpu()


def recording(scorer: ScoringSession) -> tuple[ScoringSession, Recording]:
    spy = Recording(scorer.session)
    return dataclasses.replace(scorer, session=spy), spy


@pytest.fixture(scope="module")
def plain(exported: bytes) -> ScoringSession:
    return open_session(exported, expected_sha256=None, providers="cpu")


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (4, (1, 4)),
        (5, (1, 4, 5)),
        (17, (1, 4, 16, 17)),
        (1000, (1, 4, 16, 64, 256, 1000)),
        (1024, (1, 4, 16, 64, 256, 1024)),
        (4096, (1, 4, 16, 64, 256, 1024, 4096)),
    ],
)
def test_bucket_sizes(max_batch: int, sizes: tuple[int, ...]) -> None:
    assert bucket_sizes(max_batch) == sizes


def test_buckets_cover_every_batch_with_bounded_waste() -> None:
    for max_batch in range(1, 300):
        sizes = bucket_sizes(max_batch)
        assert (sizes[0], sizes[-1]) == (1, max_batch)
        assert all(a < b <= 4 * a for a, b in itertools.pairwise(sizes)), sizes


@pytest.mark.parametrize("max_batch", [0, -4])
def test_bucket_sizes_refuses_an_empty_batch(max_batch: int) -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        bucket_sizes(max_batch)


@pytest.mark.parametrize(
    ("n", "batches"),
    [
        (1, [1]),
        (3, [4]),
        (64, [64]),
        (65, [256]),
        (1000, [1024]),
        (3000, [1024, 1024, 1024]),  # 1024 + 1024 + 952 padded to 1024
    ],
)
@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "bound"])
def test_padded_predictions_equal_unpadded(
    exported: bytes, plain: ScoringSession, n: int, batches: list[int], io_binding: bool
) -> None:
    padded, spy = recording(
        open_session(exported, expected_sha256=None, providers="cpu", pad_to=bucket_sizes(1024), io_binding=io_binding)
    )
    x, _ = make_data(n=n, seed=n)  # distinct rows, so a misplaced chunk or a padding row cannot go unnoticed
    expected = plain.predict(x)
    got = padded.predict(x)
    assert got.dtype == np.float32
    assert got.shape == (n,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert spy.runs == [("bound" if io_binding else "plain", size) for size in batches]


def test_padded_empty_batch_runs_nothing(exported: bytes) -> None:
    padded, spy = recording(open_session(exported, expected_sha256=None, providers="cpu", pad_to=(1, 4)))
    got = padded.predict(np.zeros((0, WIDTH)))
    assert (got.shape, got.dtype, spy.runs) == ((0,), np.float32, [])


def test_padded_predict_still_refuses_wrong_width(exported: bytes) -> None:
    padded = open_session(exported, expected_sha256=None, providers="cpu", pad_to=(1, 4))
    with pytest.raises(ValueError, match=rf"expected a \[N, {WIDTH}\] matrix"):
        padded.predict(np.zeros((3, WIDTH + 1), dtype=np.float32))


def test_io_binding_equals_the_plain_path(model: Pipeline, exported: bytes, plain: ScoringSession) -> None:
    bound, spy = recording(open_session(exported, expected_sha256=None, providers="cpu", io_binding=True))
    x, _ = make_data(n=37, seed=3)
    got = bound.predict(x)
    assert (got.dtype, got.shape) == (np.float32, (37,))
    np.testing.assert_allclose(got, plain.predict(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, source_scores(model, x), rtol=0, atol=1e-5)
    assert spy.runs == [("bound", 37)]


def test_options_default_to_the_plain_path_on_cpu(exported: bytes, plain: ScoringSession) -> None:
    assert (plain.pad_to, plain.io_binding) == ((), False)
    scorer, spy = recording(plain)
    scorer.predict(np.zeros((3, WIDTH)))
    assert spy.runs == [("plain", 3)]
    listed = open_session(exported, expected_sha256=None, providers="cpu", pad_to=[1, 8])
    assert listed.pad_to == (1, 8)  # a list in, a tuple kept: the session is frozen


@pytest.mark.parametrize("pad_to", [(4, 1), (1, 1), (0, 4), (-1,)])
def test_pad_to_must_be_increasing_and_positive(plain: ScoringSession, pad_to: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="pad_to must be strictly increasing positive"):
        dataclasses.replace(plain, pad_to=pad_to)


def test_warm_runs_every_padded_size(plain: ScoringSession) -> None:
    """With padding, a worker's warm((1, max_batch)) must still compile every shape requests will hit."""
    padded, spy = recording(dataclasses.replace(plain, pad_to=bucket_sizes(100)))
    padded.warm((1, 100))
    assert spy.runs == [("plain", size) for size in (1, 4, 16, 64, 100)]
    unpadded, spy = recording(plain)
    unpadded.warm((1, 3))
    assert spy.runs == [("plain", 1), ("plain", 3)]


@pytest.mark.skipif(not GPU_DRIVER, reason="needs an NVIDIA GPU driver")
def test_cuda_session_binds_by_default_and_matches_cpu(exported: bytes, plain: ScoringSession) -> None:
    scorer = open_session(exported, expected_sha256=None, providers="cuda", pad_to=bucket_sizes(1024))
    assert (scorer.provider, scorer.io_binding) == ("CUDAExecutionProvider", True)
    scorer.warm()
    x, _ = make_data(n=3000, seed=1)
    # CUDA may use TF32 matmuls: close to CPU, not to 1e-6.
    np.testing.assert_allclose(scorer.predict(x), plain.predict(x), rtol=0, atol=1e-3)
