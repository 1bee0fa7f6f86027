"""The batched forward pass: device, precision, memory format, progress.

One function, :func:`forward_batches`, serves the featurizer and the
fine-tuner's inference. It streams a :class:`~sklearn_tl.data.dataset.ImageDataset`
through a ``DataLoader`` (so only one batch of decoded images is in memory),
runs the module under ``torch.inference_mode`` and autocast, in channels-last
layout, and backs off to smaller micro-batches when the device runs out of
memory instead of failing or losing rows.
"""

from __future__ import annotations

import queue
import sys
import threading
import warnings

import numpy as np
import torch

from ..data.dataset import KeyedBatch, PartialBatch, collate_images
from ..exceptions import ImageReadError, ImageReadWarning
from .device import (
    apply_worker_threads,
    autocast_context,
    inference_module,
    resolve_batch_size,
    resolve_device,
    resolve_precision,
    to_model_input,
)
from .onnx import onnx_forward, resolve_backend

__all__ = ["forward_batches"]

AUTO_PROGRESS_MIN_IMAGES = 500
_COMPILE_LOCK = threading.Lock()


def first_messages(messages, limit: int = 5) -> str:
    """The first ``limit`` messages joined by "; " (then "; ..."): a warning about many files stays short."""
    messages = list(messages)
    return "; ".join(messages[:limit]) + ("; ..." if len(messages) > limit else "")


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
    ``backend`` is resolved by :func:`~sklearn_tl.runtime.onnx.resolve_backend`: with
    ONNX Runtime the module is exported at the first batch (once per module,
    see :mod:`sklearn_tl.runtime.onnx`), and torch runs it if that fails.
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
