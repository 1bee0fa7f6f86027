"""The batched forward pass: device, precision, memory format, progress.

One function, :func:`forward_batches`, serves the featurizer and the
fine-tuner's inference. It streams a :class:`~sklearn_tl._images.ImageDataset`
through a ``DataLoader`` (so only one batch of decoded images is in memory),
runs the module under ``torch.inference_mode`` and autocast, in channels-last
layout, and backs off to smaller micro-batches when the device runs out of
memory instead of failing or losing rows.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import sys
import threading
import warnings
import zlib

import numpy as np
import torch

from ._images import ImageReadError, KeyedBatch, PartialBatch, collate_images
from ._onnx import onnx_forward, resolve_backend

__all__ = [
    "ImageReadWarning",
    "resolve_device",
    "resolve_precision",
    "cpu_has_native_bf16",
    "forward_batches",
    "inference_module",
    "dask_worker_threads",
    "dask_worker_gpu",
]

DEVICES_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_BATCH_SIZE = {"cuda": 256, "mps": 64, "cpu": 32}
AUTO_PROGRESS_MIN_IMAGES = 500
_COMPILE_LOCK = threading.Lock()


class ImageReadWarning(UserWarning):
    """Some images could not be read: their embedding rows are NaN, or they were left out of training."""


def first_messages(messages, limit: int = 5) -> str:
    """The first ``limit`` messages joined by "; " (then "; ..."): a warning about many files stays short."""
    messages = list(messages)
    return "; ".join(messages[:limit]) + ("; ..." if len(messages) > limit else "")


# ---------------------------------------------------------------- where the code runs


def _current_worker():
    """The ``distributed`` worker running this code, or None."""
    if "distributed" not in sys.modules:
        return None  # not imported, so not inside a worker: skip the costly import
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # not inside a worker
        return None


def dask_worker_threads() -> int | None:
    """Threads this Dask worker may use (its ``nthreads``), or None outside Dask.

    The engine sets torch's intra-op threads to it, so ``n`` workers with
    ``threads_per_worker=t`` never run more than ``n * t`` compute threads.
    """
    worker = _current_worker()
    if worker is None:
        return None
    state = getattr(worker, "state", worker)
    return int(getattr(state, "nthreads", 0) or getattr(worker, "nthreads", 0) or 1)


def dask_worker_gpu(device_count: int) -> int | None:
    """The CUDA device index for this Dask worker when several GPUs are visible.

    Workers of a ``LocalCluster`` are named 0, 1, ...; worker ``k`` takes GPU
    ``k % device_count``, so no two workers share one while there are enough.
    (``dask_cuda.LocalCUDACluster`` instead shows each worker only its own GPU,
    which makes this a no-op.)
    """
    worker = _current_worker()
    if worker is None or device_count < 2:
        return None
    suffix = str(worker.name).rsplit("-", 1)[-1]
    index = int(suffix) if suffix.isdigit() else zlib.crc32(str(worker.address).encode())
    return index % device_count


def resolve_device(device) -> torch.device:
    """``"auto"`` → CUDA, else MPS, else CPU; explicit devices must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            # Inside a Dask worker on a multi-GPU machine: one GPU per worker.
            return torch.device("cuda", dask_worker_gpu(torch.cuda.device_count()))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be {DEVICES_HELP}; got {device!r}.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for, but CUDA is not available on this machine.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif resolved.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError(f"device={device!r} was asked for, but MPS is not available on this machine.")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be {DEVICES_HELP}; got {device!r}.")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX).

    Without it, bf16 autocast is emulated and several times *slower* than fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, backend: str = "torch"):
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``"auto"`` on CUDA is float16, not bfloat16: measured on MobileNetV2
    embeddings, fp16 keeps a per-row cosine similarity to fp32 above 0.9999
    while bf16's 8-bit mantissa drops it to 0.95 on some images, for the same
    speed. Batches whose fp16 output overflows are recomputed in fp32.
    On the CPU ``"auto"`` is float32 whatever the CPU: even with native bf16
    (AVX-512 BF16 / AMX) bf16 rows were measured at cosine 0.9916 to fp32 at
    worst on real photos, below the 0.999 bound "auto" keeps, for 1.1-1.3x;
    so the default output does not depend on the CPU model, and bf16 stays an
    explicit choice. ONNX Runtime (``backend``) computes in float32, or int8.
    """
    if backend == "onnxruntime" or precision == "int8":
        return None
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.float16
    return None


def resolve_batch_size(batch_size, device: torch.device) -> int:
    return AUTO_BATCH_SIZE.get(device.type, 32) if batch_size == "auto" else int(batch_size)


def autocast_context(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_model_input(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to ``device`` and make it float in [0, 1] there."""
    batch = batch.to(device, non_blocking=device.type == "cuda")
    batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
    if channels_last and batch.ndim == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def make_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0, shuffle=False, **kwargs):
    if not shuffle:
        # A private generator: inference must not consume the caller's global torch random state.
        kwargs.setdefault("generator", torch.Generator())
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_images,
        persistent_workers=False,
        **kwargs,
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def module_device(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    index = lambda d: (torch.cuda.current_device() if d.index is None else d.index) if d.type == "cuda" else 0  # noqa: E731
    return index(a) == index(b)


def inference_module(module: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """``module`` ready for inference on ``device``, never changed in place.

    A fitted estimator's module may be shared by threads serving predictions,
    so converting it (``.to(device)``, channels-last, ``.eval()``) while another
    thread runs it would race. A module already on ``device`` and in eval mode
    is used as it is (estimators store it in channels-last at fit); otherwise
    this call runs on a private copy, freed when the call ends, so a fitted
    model does not keep GPU memory after a GPU ``transform``.
    """
    if _same_device(module_device(module), device) and not module.training:
        return module
    module = copy.deepcopy(module).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module.eval()


def for_inference(module: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
    """Convert a freshly built (not yet shared) module for inference, in place: eval, channels-last."""
    module.eval()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def forward_batches(
    module,
    dataset,
    *,
    batch_size="auto",
    device="auto",
    precision="auto",
    num_workers: int = 0,
    channels_last: bool = True,
    progress=False,
    description: str = "featurizing",
    n_features: int | None = None,
    compile: bool = False,
    compiled_modules: dict | None = None,
    on_batch=None,
    backend: str = "torch",
    calibration=None,
) -> np.ndarray:
    """Embeddings of every image of ``dataset`` as a float32 array ``(n, d)``.

    Rows come back in dataset order. On an out-of-memory error the failing
    batch is retried in halves (down to one image), and later batches keep the
    smaller size. Images the dataset could not read (``on_error="warn"``) give
    rows of NaN and one :class:`ImageReadWarning` naming the files.
    ``compile=True`` runs a ``torch.compile``d copy of the module, padding the
    last batch so that a single input shape is compiled; pass the same
    ``compiled_modules`` dict (owned by the estimator) to compile once per device.
    ``on_batch(positions, rows, keys)`` is called as each batch finishes
    (``keys``: the content keys of a keyed dataset, else None), so a caller can
    keep finished rows even if a later batch fails.
    ``backend`` is resolved by :func:`~sklearn_tl._onnx.resolve_backend`: with
    ONNX Runtime the module is exported at the first batch (once per module,
    see :mod:`sklearn_tl._onnx`), and torch runs it if that fails.
    ``calibration`` (uint8 images) calibrates ``precision="int8"``.
    While one batch computes, the next is decoded in a background thread.

    Safe to call from several threads on one module: the module is never
    converted in place (see :func:`inference_module`) and no global torch flag
    is changed (inside a Dask worker, torch's thread count is set once to the
    worker's ``nthreads``).
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    backend = resolve_backend(backend, device, precision, compile)
    dtype = resolve_precision(precision, device, backend)
    batch_size = resolve_batch_size(batch_size, device)
    fitted, module = module, inference_module(module, device, channels_last)
    onnx = _OnnxRun(fitted, module, precision == "int8", calibration) if backend == "onnxruntime" else None
    if compile:
        module = compiled(module, device, {} if compiled_modules is None else compiled_modules, owner=fitted)
    loader = make_loader(dataset, batch_size, device, num_workers)
    n = len(dataset)
    out = None if n_features is None else np.full((n, n_features), np.nan, dtype=np.float32)
    micro = batch_size
    failures = []
    bar = _progress_bar(n, description) if show_progress(progress, n) else None
    done = 0
    apply_worker_threads()
    try:
        with torch.inference_mode(), autocast_context(device, dtype):
            for batch in prefetched(loader):
                keys = None
                if isinstance(batch, KeyedBatch):
                    batch, keys = batch.images, batch.keys
                if isinstance(batch, PartialBatch):
                    failures.extend(batch.failures)
                    valid = np.flatnonzero(batch.valid.numpy())
                    size, batch = len(batch.valid), batch.images
                    positions = done + valid
                    keys = None if keys is None else [keys[i] for i in valid]
                else:
                    size = len(batch)
                    positions = np.arange(done, done + size)
                if batch is not None:
                    if onnx is not None and onnx.ready(batch):
                        rows = onnx.forward(to_model_input(batch, device, channels_last=False).numpy())
                    else:
                        rows, micro = _forward_with_backoff(
                            module, batch, device, channels_last, micro, dtype, pad=compile
                        )
                    if out is None:
                        out = np.full((n, rows.shape[1]), np.nan, dtype=np.float32)
                    out[positions] = rows
                    if on_batch is not None:
                        on_batch(positions, rows, keys)
                done += size
                if bar is not None:
                    bar.update(size)  # tqdm shows the rate (unit="img"): no second one
    finally:
        if bar is not None:
            bar.close()
    if failures:
        warnings.warn(
            f"{len(failures)} of {n} image(s) could not be read; their rows are NaN: "
            f"{first_messages(f.message for f in failures)}",
            ImageReadWarning,
            stacklevel=3,
        )
    if out is None:  # width unknown and no image readable
        raise ImageReadError(f"None of the {n} image(s) could be read: {failures[0].message}")
    return out


class _OnnxRun:
    """The ONNX Runtime forward of one call, resolved at its first batch (the input shape)."""

    def __init__(self, fitted, module, int8: bool, calibration):
        self.fitted, self.module, self.int8, self.calibration = fitted, module, int8, calibration
        self.forward, self.resolved = None, False

    def ready(self, batch) -> bool:
        if not self.resolved:
            calibration = None
            if self.int8 and self.calibration is not None:
                calibration = to_model_input(torch.as_tensor(self.calibration), torch.device("cpu"), False).numpy()
            # Keyed on the fitted module (one export per model), exported from its eval-mode inference copy.
            self.forward = onnx_forward(
                self.fitted, tuple(batch.shape[1:]), int8=self.int8, calibration=calibration, module=self.module
            )
            self.resolved = True
        return self.forward is not None


_DONE = object()


def prefetched(loader, depth: int = 1):
    """Iterate ``loader`` with the next batch decoded in a thread while the caller computes.

    Pillow's decoding and torch's resize release the GIL, so decoding batch
    k+1 overlaps the forward pass of batch k. An error raised while loading
    reaches the caller at that batch, after the batches before it.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for batch in loader:
                while not stop.is_set():
                    try:
                        items.put((batch, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            items.put((None, exc))

    thread = threading.Thread(target=produce, name="sklearn_tl-decode", daemon=True)
    thread.start()
    try:
        while True:
            batch, exc = items.get()
            if exc is not None:
                raise exc
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put, then let it end
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass


def apply_worker_threads() -> None:
    """Inside a Dask worker, use only the worker's threads (no oversubscription).

    Set once for the worker process and not restored: torch's thread count is
    process-wide, so saving and restoring it around each call would race with
    the worker's other threads. Outside Dask this does nothing.
    """
    threads = dask_worker_threads()
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def show_progress(progress, n_images: int) -> bool:
    """``progress="auto"``: a bar for long runs (>= 500 images) on a terminal."""
    if progress == "auto":
        return n_images >= AUTO_PROGRESS_MIN_IMAGES and sys.stderr.isatty()
    return bool(progress)


def _forward_with_backoff(module, batch, device, channels_last, micro, dtype, pad=False):
    while True:
        try:
            parts = [
                _forward_finite(
                    module, to_model_input(_padded(batch[i : i + micro], micro if pad else 0), device, channels_last),
                    device, dtype,
                )[: len(batch[i : i + micro])]
                for i in range(0, len(batch), micro)
            ]
            return torch.cat(parts).numpy(), micro
        except RuntimeError as exc:
            if not _is_out_of_memory(exc) or micro == 1:
                raise
            micro = max(1, micro // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _padded(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``batch`` repeated up to ``size`` rows (a compiled module then sees one shape)."""
    if len(batch) >= size:
        return batch
    return torch.cat([batch, batch[-1:].expand(size - len(batch), *batch.shape[1:])])


def compiled(module: torch.nn.Module, device: torch.device, cache: dict, owner=None):
    """``torch.compile(module)``, kept in ``cache`` per module and device.

    The cache belongs to the estimator, so a compiled graph lives as long as
    the estimator that uses it (a module-level cache would keep every
    network of a grid search alive). Inductor's ``freezing`` folds weights into
    the graph for inference. ``owner`` (the fitted module ``module`` was copied
    from for this device) keys the cache, so the copy is compiled once.
    """
    key = (id(module if owner is None else owner), device.type, device.index)
    with _COMPILE_LOCK:  # threads sharing an estimator compile its graph once
        if key not in cache:
            cache.clear()  # a new module or device: the old graph is of no further use
            cache[key] = torch.compile(module, dynamic=False, options={"freezing": True})
        return cache[key]


def _forward_finite(module, x, device, dtype):
    out = module(x).float()
    if dtype == torch.float16 and not torch.isfinite(out).all():
        with torch.autocast(device_type=device.type, enabled=False):
            out = module(x).float()  # fp16 overflowed: this batch in fp32
    return out.cpu()


def _progress_bar(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img")
