"""One exported model, verified and loaded into ONNX Runtime, ready to score ``[N, F]`` float32 matrices.

Loading refuses anything a scorer could feed wrongly: bytes that are not the registered ones (SHA-256), a file
ONNX Runtime cannot load, a missing or malformed card, or inputs and outputs that do not match the card.

Provider choice is quiet on purpose. onnxruntime-gpu lists the TensorRT and CUDA providers as *available* on
any machine, GPU or not, and when one cannot start it logs to stderr or, for TensorRT, *prints* a fallback
banner to stdout (which would corrupt ``--json`` output). So ``auto`` leaves GPU providers out when no NVIDIA
driver is loadable, and sessions are built with ORT's own fallback disabled; we retry without the provider
that failed instead.

For GPU serving a session can pad batches up to a few fixed sizes (:func:`bucket_sizes`), so CUDA graphs and
TensorRT engines see a handful of shapes instead of one per batch size, and can score through IO binding, so
the output is allocated on the device and copied back once. Both are plain CPU code paths too, and tested there.

>>> resolve_providers("cpu")
['CPUExecutionProvider']
>>> resolve_providers("auto")[-1]
'CPUExecutionProvider'
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from streamscore.errors import StreamscoreError
from streamscore.models.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, CardError, ModelCard

__all__ = [
    "ModelIntegrityError",
    "ModelLoadError",
    "ScoringSession",
    "bucket_sizes",
    "open_session",
    "resolve_providers",
    "sha256_hex",
]

CPU = "CPUExecutionProvider"
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": CPU}
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # auto's preference order
_BUCKET_GROWTH = 4  # at most 4x padding waste, and only log4(max_batch) shapes to capture and warm


class ModelIntegrityError(StreamscoreError):
    """The model bytes are not the ones registered: corrupted or swapped in transit or at rest."""


class ModelLoadError(StreamscoreError):
    """The bytes cannot be scored: not ONNX, refused by ONNX Runtime, no usable card, or no usable provider."""


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256, the registry's identity for a model file.

    >>> sha256_hex(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _nvidia_driver_loadable() -> bool:
    """Whether the CUDA driver library loads: without it neither GPU provider can start."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def resolve_providers(spec: str) -> list[str]:
    """ORT provider names for a ``Settings.model.providers`` spec, in preference order, CPU always last.

    ``auto`` takes TensorRT, then CUDA, where ORT offers them and a GPU driver is present. An explicit name
    that is unknown or cannot work here is a :class:`ModelLoadError` rather than a silent CPU fallback.
    """
    available = set(ort.get_available_providers())
    gpu = _nvidia_driver_loadable()
    names = [name.strip() for name in spec.split(",")]
    if names == ["auto"]:
        return [p for p in _GPU_PROVIDERS if gpu and p in available] + [CPU]
    resolved: list[str] = []
    for name in names:
        provider = PROVIDERS.get(name)
        if provider is None:
            raise ModelLoadError(
                f"unknown execution provider {name!r}: use 'auto' or a comma list of cpu, cuda, tensorrt"
            )
        if provider not in available:
            raise ModelLoadError(f"{name}: this onnxruntime build has no {provider} (it has {sorted(available)})")
        if provider in _GPU_PROVIDERS and not gpu:
            raise ModelLoadError(f"{name}: {provider} needs an NVIDIA GPU driver and none is loadable here")
        if provider not in resolved:
            resolved.append(provider)
    return [p for p in resolved if p != CPU] + [CPU]


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to pad to: few enough to capture and warm each one, close enough to waste at most 4x.

    >>> bucket_sizes(1024)
    (1, 4, 16, 64, 256, 1024)
    >>> bucket_sizes(100)
    (1, 4, 16, 64, 100)
    >>> bucket_sizes(1)
    (1,)
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    sizes: list[int] = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= _BUCKET_GROWTH
    return (*sizes, max_batch)


@dataclass(frozen=True, eq=False)
class ScoringSession:
    """A loaded model and its card. ``provider`` is what ORT really runs on, not what was asked for.

    ``pad_to`` (strictly increasing batch sizes, empty for none) pads every run with zero rows to one of those
    sizes, so the graph only ever sees those shapes. ``io_binding`` binds the output to the provider's device.
    """

    card: ModelCard
    sha256: str
    version: str
    provider: str
    session: Any  # onnxruntime.InferenceSession
    pad_to: tuple[int, ...] = ()
    io_binding: bool = False

    def __post_init__(self) -> None:
        sizes = self.pad_to
        if any(size < 1 for size in sizes) or any(a >= b for a, b in itertools.pairwise(sizes)):
            raise ValueError(f"pad_to must be strictly increasing positive batch sizes, got {sizes}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Fraud probabilities, float32 ``[N]``, for rows of ``x`` in ``card.features`` order."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        width = len(self.card.features)
        if x32.ndim != 2 or x32.shape[1] != width:
            raise ValueError(f"expected a [N, {width}] matrix ({', '.join(self.card.features)}), got {x32.shape}")
        if not self.pad_to:
            return self._run(x32)
        largest = self.pad_to[-1]
        if len(x32) <= largest:
            return self._run_padded(x32)
        chunks = [self._run_padded(x32[start : start + largest]) for start in range(0, len(x32), largest)]
        return np.concatenate(chunks)

    def warm(self, batch_sizes: Sequence[int] = (1, 64)) -> None:
        """Run each batch size once so allocation (and GPU kernel selection) is not paid by the first request.

        With padding only the ``pad_to`` sizes ever reach the graph, so those are what is warmed, all of them.
        """
        width = len(self.card.features)
        for size in self.pad_to or batch_sizes:
            self.predict(np.zeros((size, width), dtype=np.float32))

    def _run_padded(self, x32: np.ndarray) -> np.ndarray:
        """Scores for at most ``pad_to[-1]`` rows, computed at the smallest bucket that holds them."""
        n = len(x32)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        size = next(size for size in self.pad_to if size >= n)
        if size == n:
            return self._run(x32)
        padded = np.zeros((size, x32.shape[1]), dtype=np.float32)
        padded[:n] = x32
        # Rows are scored independently, so the zero rows change nothing but their own (dropped) scores.
        return self._run(padded)[:n]

    def _run(self, x32: np.ndarray) -> np.ndarray:
        if self.io_binding:
            binding = self.session.io_binding()  # one per call: a binding is not safe to share between threads
            binding.bind_cpu_input(INPUT_NAME, x32)
            binding.bind_output(OUTPUT_NAME, _device_type(self.provider))
            self.session.run_with_iobinding(binding)
            scores: np.ndarray = binding.copy_outputs_to_cpu()[0]
        else:
            scores = self.session.run([OUTPUT_NAME], {INPUT_NAME: x32})[0]
        return scores.reshape(len(x32))


def _device_type(provider: str) -> str:
    """Where ORT should leave the output: on the GPU for the GPU providers (TensorRT runs on CUDA memory)."""
    return "cuda" if provider in _GPU_PROVIDERS else "cpu"


def open_session(
    data: bytes,
    *,
    expected_sha256: str | None,
    providers: str = "auto",
    intra_op_threads: int = 1,
    version: str = "",
    pad_to: Sequence[int] = (),
    io_binding: bool | None = None,
) -> ScoringSession:
    """Verify ``data`` against ``expected_sha256`` (when given), load it, and check it against its own card.

    An explicit GPU spec without ``cpu`` (say ``cuda``) must get that GPU: a session silently on CPU would
    serve at a fraction of the planned throughput, so it is a :class:`ModelLoadError` instead.

    ``pad_to`` is usually ``bucket_sizes(max_batch)``. ``io_binding=None`` turns IO binding on exactly when
    the session got a GPU provider: on CPU it only adds a binding per call.
    """
    digest = sha256_hex(data)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelIntegrityError(f"model bytes hash to {digest}, but {expected_sha256} was registered")
    wanted = resolve_providers(providers)
    session, errors = _start(data, wanted, intra_op_threads)
    got = session.get_providers()[0]
    if providers != "auto" and "cpu" not in [n.strip() for n in providers.split(",")] and got == CPU:
        detail = "; ".join(errors) or "ONNX Runtime fell back to CPU"
        raise ModelLoadError(f"providers={providers!r} asked for a GPU but only {CPU} started: {detail}")
    card = _read_card(session)
    _check_io(session, card)
    return ScoringSession(
        card=card,
        sha256=digest,
        version=version,
        provider=got,
        session=session,
        pad_to=tuple(pad_to),
        io_binding=got in _GPU_PROVIDERS if io_binding is None else io_binding,
    )


def _start(data: bytes, providers: list[str], intra_op_threads: int) -> tuple[Any, list[str]]:
    """An InferenceSession on the first provider list that starts, dropping the failing head each time."""
    errors: list[str] = []
    for first in range(len(providers)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            # enable_fallback=0: ORT's own fallback prints to stdout; failures come back to us instead.
            session = ort.InferenceSession(data, options, providers=providers[first:], enable_fallback=0)
        except Exception as exc:  # ORT's exception types (Fail, InvalidProtobuf, ...) derive from Exception only
            errors.append(f"{providers[first]}: {exc}")
            continue
        return session, errors
    raise ModelLoadError(f"ONNX Runtime cannot load the model: {errors[-1]}")


def _read_card(session: Any) -> ModelCard:
    text = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    if text is None:
        raise ModelLoadError(f"the model has no card (metadata key {CARD_KEY!r}); export it with export_onnx")
    try:
        return ModelCard.from_json(text)
    except CardError as exc:
        raise ModelLoadError(f"the model's card is unusable: {exc}") from None


def _check_io(session: Any, card: ModelCard) -> None:
    """The graph must take exactly the card's inputs and give a score, or predictions would be misaligned."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    width = len(card.features)
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(shape) != 2 or shape[1] != width:
        found = [(i.name, i.shape) for i in inputs]
        raise ModelLoadError(f"the model must take one input {INPUT_NAME!r} of shape [batch, {width}], got {found}")
    if inputs[0].type != "tensor(float)":
        raise ModelLoadError(f"input {INPUT_NAME!r} must be float32, got {inputs[0].type}")
    if OUTPUT_NAME not in [o.name for o in outputs]:
        raise ModelLoadError(f"the model has no output {OUTPUT_NAME!r}: {[o.name for o in outputs]}")
