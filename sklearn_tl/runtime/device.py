"""This module contains the choice of device, precision and batch size, and Dask worker introspection."""

from __future__ import annotations

import contextlib
import copy
import sys
import zlib

import torch

__all__ = [
    "resolve_device",
    "resolve_precision",
    "cpu_has_native_bf16",
    "inference_module",
    "dask_worker_threads",
    "dask_worker_gpu",
]

DEVICES_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_BATCH_SIZE = {"cuda": 256, "mps": 64, "cpu": 32}


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


def apply_worker_threads() -> None:
    """Inside a Dask worker, use only the worker's threads (no oversubscription).

    Set once for the worker process and not restored: torch's thread count is
    process-wide, so saving and restoring it around each call would race with
    the worker's other threads. Outside Dask this does nothing.
    """
    threads = dask_worker_threads()
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
