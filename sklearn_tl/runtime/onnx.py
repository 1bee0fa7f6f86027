"""The ONNX Runtime inference backend: export once, verify, run.

A fitted embedding module (``normalise → trunk → pool``, float images in
[0, 1] ``(N, 3, H, W)``) is exported with :func:`torch.onnx.export` (dynamic
batch axis), loaded into an ``onnxruntime.InferenceSession`` on the
``CPUExecutionProvider`` and checked against torch on a probe batch. It is
used only if every row agrees (cosine >= 0.9999 and ``allclose``); otherwise
the engine runs torch and says why in one warning.

Sessions live in a registry keyed weakly on the torch module, never in an
estimator's ``__dict__``: a pickle never holds one, inference leaves the
estimator unchanged, and a session is rebuilt where the model runs. A session
is tied to a signature of the module's tensors (their storage and version
counters), so a module trained further after export is exported again.
``InferenceSession.run`` is thread-safe; building one is guarded by a lock.

``precision="int8"`` quantizes the exported graph statically (QDQ, weights
int8 per channel, activations uint8), calibrated on images the estimator kept
in ``fit``.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
import weakref

import numpy as np
import torch

from ..exceptions import OnnxFallbackWarning

__all__ = ["BACKENDS", "resolve_backend", "onnx_forward", "export_module"]

BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17
# fp32 graph vs torch: the same function, so only rounding may differ.
MIN_COSINE = 0.9999
# int8 vs fp32 is lossy (real MobileNetV2 rows: cosine 0.97 on average, 0.79 at worst; README,
# "Backends"); a mean below this means a broken quantization, and fp32 ONNX Runtime is used instead.
MIN_INT8_MEAN_COSINE = 0.9
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


def resolve_backend(
    backend: str, device: torch.device, precision: str = "auto", compile: bool = False, user_module: bool = False
) -> str:
    """``"torch"`` or ``"onnxruntime"`` for a call's ``backend``, device, precision and ``compile``.

    ``"auto"`` is ONNX Runtime on the CPU and torch on CUDA and MPS; torch too
    when the call asks for something only torch does (a bf16/fp16 autocast,
    ``compile=True``), and for a user's own ``torch.nn.Module`` backbone
    (``user_module``): its ``forward`` may hold Python side effects or
    data-dependent branches that an export freezes and one probe batch cannot
    rule out, so it runs on ONNX Runtime only when asked by name.
    ``precision="int8"`` runs on ONNX Runtime only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    torch_only = precision in ("bfloat16", "float16") or compile
    if precision == "int8":
        if backend == "torch" or device.type != "cpu":
            raise ValueError(
                f"precision='int8' runs on ONNX Runtime on the CPU only; got backend={backend!r} on "
                f"device {device.type!r}. Use backend='auto' or 'onnxruntime' with device='cpu'."
            )
        return "onnxruntime"
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" and not (torch_only or user_module) else "torch"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"backend='onnxruntime' runs on the CPU only; device is {device.type!r}.")
        if torch_only:
            what = "compile=True" if compile else f"precision={precision!r}"
            raise ValueError(f"{what} needs backend='torch' (ONNX Runtime computes in float32 or int8).")
    return backend


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def backend_key(backend: str, precision: str, calibration=None) -> str:
    """What the resolved backend adds to the cache fingerprint."""
    if backend == "torch":
        return "torch"
    key = f"onnxruntime-{onnxruntime_version()}"
    if precision == "int8":
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(calibration).tobytes(), digest_size=8).hexdigest()
        key += f"-int8-{digest}"
    return key


CALIBRATION_IMAGES = 64


def calibration_sample(dataset, limit: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``limit`` preprocessed uint8 images ``(n, 3, H, W)``, spread evenly over ``dataset``."""
    indices = np.unique(np.linspace(0, len(dataset) - 1, num=min(limit, len(dataset))).round().astype(int))
    images = [dataset[int(i)] for i in indices]  # a dataset without targets that raises on bad files
    batch = torch.stack(images)
    if batch.dtype != torch.uint8:  # float images in [0, 1]
        batch = (batch.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return batch.numpy()


# ---------------------------------------------------------------- export


def export_module(module: torch.nn.Module, example: torch.Tensor, opset: int = ONNX_OPSET) -> bytes:
    """The ONNX graph of ``module`` for inputs shaped like ``example``, batch axis dynamic.

    ``opset`` is the TorchScript exporter's; the dynamo exporter keeps its own.

    The TorchScript exporter goes first: it exports every registered seed
    family (VGG, MobileNet, DenseNet, Inception, ResNet, EfficientNet, NASNet)
    in 0.2-2 s where the dynamo exporter takes 2-10 s for the same graph, and
    export runs at the first transform. The dynamo exporter is the fallback
    (and the only one once torch removes the other).
    """
    errors = []
    for dynamo in (False, True):
        try:
            return _export(module, example, dynamo, opset)
        except Exception as exc:  # any exporter failure: try the other, then report both
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'} exporter: {type(exc).__name__}: {exc}")
    raise RuntimeError("; ".join(line.splitlines()[0][:300] for line in errors))


def _export(module, example, dynamo: bool, opset: int = ONNX_OPSET) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
        if dynamo:
            import logging

            logger = logging.getLogger("torch.onnx")
            level, logger.level = logger.level, logging.ERROR
            try:
                program = torch.onnx.export(
                    module,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    verbose=False,
                )
            finally:
                logger.level = level
            program.save(buffer, external_data=False)
        else:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )
    return buffer.getvalue()


def make_session(model: bytes | str, threads: int | None = None):
    """An ``InferenceSession`` on the CPU with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no notices on stderr
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(session, batch: np.ndarray, dtype=np.float32) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=dtype)})[0]


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    # Two all-zero rows are the same embedding.
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.abs(a - b).sum(1) == 0, 1.0, 0.0))


def check_agreement(expected: np.ndarray, actual: np.ndarray, min_cosine: float, close: bool = True) -> str | None:
    """Why ``actual`` is not ``expected`` (None: it is).

    Every row's cosine must reach ``min_cosine`` and, with ``close``, the rows
    must be ``allclose``; without ``close`` only the mean cosine must reach it.
    """
    if expected.shape != actual.shape:
        return f"output shape {actual.shape} instead of {expected.shape}"
    if not np.isfinite(actual).all():
        return "non-finite outputs"
    cosine = _row_cosine(expected, actual)
    if not close and cosine.mean() < min_cosine:
        return f"mean cosine to float32 {cosine.mean():.4f} (< {min_cosine})"
    if close and cosine.min() < min_cosine:
        return f"per-row cosine to torch down to {cosine.min():.6f} (< {min_cosine})"
    scale = max(float(np.abs(expected).max()), 1e-6)
    if close and not np.allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale):
        return f"outputs differ from torch by up to {np.abs(actual - expected).max():.3g}"
    return None


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """Static QDQ quantization of ``model`` calibrated on float batches ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 16)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs its advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source, prepared, target = (os.path.join(folder, f"{n}.onnx") for n in ("fp32", "prep", "int8"))
            with open(source, "wb") as file:
                file.write(model)
            try:
                quant_pre_process(source, prepared, skip_symbolic_shape=True)
            except Exception:  # pre-processing only helps; quantize the graph as exported
                prepared = source
            quantize_static(
                prepared,
                target,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            with open(target, "rb") as file:
                return file.read()
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------- the registry


def _signature(module: torch.nn.Module, shape: tuple) -> tuple:
    """Changes when a tensor of ``module`` is replaced or modified in place."""
    tensors = [*module.parameters(), *module.buffers()]
    return (shape, len(tensors), *((t.data_ptr(), t._version) for t in tensors))


class _Exported:
    """One module's export at one input shape: graphs, sessions per thread count, or why not."""

    def __init__(self, signature):
        self.signature = signature
        self.lock = threading.Lock()
        self.graphs: dict[bool, bytes | None] = {}  # int8? → ONNX bytes (None: not usable)
        self.sessions: dict[tuple, object] = {}
        self.failed: dict[bool, str] = {}

    def session(self, module, shape, int8, calibration, threads):
        with self.lock:
            key = (int8, threads)
            if key in self.sessions:
                return self.sessions[key]
            if int8 not in self.graphs:
                self.graphs[int8] = self._build(module, shape, int8, calibration, threads)
            graph = self.graphs[int8]
            self.sessions[key] = None if graph is None else make_session(graph, threads)
            return self.sessions[key]

    def _build(self, module, shape, int8, calibration, threads):
        try:
            if int8:
                fp32 = self.graphs.get(False)
                if fp32 is None and False not in self.graphs:
                    fp32 = self.graphs[False] = self._build(module, shape, False, None, threads)
                if fp32 is None:
                    raise RuntimeError(self.failed[False])
                graph = quantize_int8(fp32, calibration)
                probe, reference = calibration, run_session(make_session(fp32, threads), calibration)
                why = check_agreement(reference, run_session(make_session(graph, threads), probe),
                                      MIN_INT8_MEAN_COSINE, close=False)
            else:
                generator = torch.Generator().manual_seed(0)
                example = torch.rand(2, *shape, generator=generator)
                probe = torch.rand(3, *shape, generator=generator)  # another batch size: the axis is dynamic
                graph = export_module(module, example)
                with torch.inference_mode():
                    reference = module(probe).float().numpy()
                why = check_agreement(reference, run_session(make_session(graph, threads), probe.numpy()), MIN_COSINE)
            if why is not None:
                raise RuntimeError(f"the exported graph does not reproduce the model: {why}")
            return graph
        except Exception as exc:
            self.failed[int8] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
            what = "int8 quantization" if int8 else "ONNX export"
            instead = "float32 ONNX Runtime" if int8 else "torch"
            warnings.warn(
                f"{what} of {type(module).__name__} failed, so {instead} runs this model: {self.failed[int8]}",
                OnnxFallbackWarning,
                stacklevel=6,
            )
            return None


_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def _exported(key: torch.nn.Module, shape: tuple) -> _Exported:
    signature = _signature(key, shape)
    with _REGISTRY_LOCK:
        per_shape = _REGISTRY.setdefault(key, {})
        entry = per_shape.get(shape)
        if entry is None or entry.signature != signature:
            entry = per_shape[shape] = _Exported(signature)
        return entry


def onnx_forward(key, shape, *, int8=False, calibration=None, threads=None, module=None):
    """A function ``float32 (N, *shape) → (N, D)`` running ``module`` on ONNX Runtime, or None.

    None means the model cannot run there (one :class:`OnnxFallbackWarning`
    said why, the first time); the caller runs torch. With ``int8`` a failed
    quantization falls back to the float32 graph. ``calibration`` holds float
    images in [0, 1] for int8. The export is kept per ``key`` (the fitted
    module) and made from ``module`` (its eval-mode copy; default ``key``).
    """
    shape = tuple(int(s) for s in shape)
    module = key if module is None else module
    threads = int(threads or torch.get_num_threads())
    entry = _exported(key, shape)
    session = entry.session(module, shape, bool(int8), calibration, threads)
    if session is None and int8:
        session = entry.session(module, shape, False, None, threads)
    if session is None:
        return None
    return lambda batch: run_session(session, batch)
