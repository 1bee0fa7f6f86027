"""The embedding cache: one small file per (image content, model) pair.

A frozen backbone maps the same image to the same embedding, so
``PretrainedCNNFeaturizer(cache=...)`` stores each row under a key made of

- the image's *content*: dtype, shape and bytes of an array or tensor, the
  decoded pixels of a PIL image, the bytes of an image file (never its position
  in ``X`` or its path alone);
- the model's *fingerprint*: package, torch, torchvision, timm and Pillow versions, the
  backbone (its name, or for a ``torch.nn.Module`` its class, structure and
  state dict), the weights' sha256 (or a hash of the loaded state dict when
  there is no file, e.g. ``weights=None``), ``layer``, ``pooling``, every field of
  ``data_config_`` (crop, resize, interpolation, mean, std), ``image_shape``,
  the resolved device type, autocast dtype and backend (ONNX Runtime with its
  version; int8 with a hash of its calibration images), and the cache's ``extra_key``.

``batch_size``, ``num_workers``, ``progress`` and the device index are not in the
key: they do not change the output.

Entries are written to a temporary file and moved into place with
``os.replace``, so a reader never sees a partial entry; each entry carries a
checksum of its key and payload, so a corrupt file is recomputed, never
returned. Entries live in ``<location>/sklearn_tl_embeddings/<2 hex>/`` (256
shards). Rows are stored as each batch finishes, so a run stopped by an error
or killed keeps every finished batch. There is no lock: ``n_jobs`` workers on
disjoint images run side by side, and on overlapping images may compute a row
twice, never store a torn one. An image file is read once per batch, hashed
and decoded from the same bytes, so a file replaced during a run cannot put one
image's row under another's key. A location that cannot be written is still
read; writes are skipped with one :class:`EmbeddingCacheWarning`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import threading
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..data.keys import blake2b_digest
from ..exceptions import EmbeddingCacheWarning

__all__ = ["EmbeddingCache", "as_embedding_cache", "content_key"]

SUBDIR = "sklearn_tl_embeddings"
ENTRY_SUFFIX = ".emb"
_MAGIC = b"SKTLEMB1"
# magic, blake2b-16 checksum of (key + payload), number of float32 values
_HEADER = struct.Struct("<8s16sI")


# ---------------------------------------------------------------- content keys


def content_key(source, index: int) -> bytes | None:
    """A digest of image ``index`` of ``source`` that depends only on its content.

    The dtype, shape and bytes of an array or tensor, the bytes of a file, the
    decoded pixels of a PIL image; never its position in ``X`` or a path alone.
    Returns None for an image that cannot be keyed (an unreadable file): such
    images are always computed, so their errors surface as usual. The rows
    computed are stored under the key of exactly the data decoded
    (:meth:`ImageSource.load_keyed`), not under this first look-up's key.
    """
    return source.content_key(index)


# ---------------------------------------------------------------- the store


def as_embedding_cache(cache) -> EmbeddingCache | None:
    """The store for a featurizer's ``cache`` parameter (None: no caching)."""
    if cache is None or isinstance(cache, EmbeddingCache):
        return cache
    location = getattr(cache, "location", cache)  # joblib.Memory
    if location is None:
        return None  # joblib.Memory(location=None) caches nothing
    return EmbeddingCache(location)


class EmbeddingCache:
    """A directory of embeddings keyed on image content and model.

    Pass it (or just a directory path, or a ``joblib.Memory``) as the ``cache``
    of :class:`PretrainedCNNFeaturizer`. Entries are stored under
    ``<location>/sklearn_tl_embeddings``; other files in ``location`` are never
    touched, so it can share a directory with ``Pipeline(memory=...)``.

    Parameters
    ----------
    location : str or path-like
        The directory; created on the first write. ``~`` is expanded.
    extra_key : str or None, default=None
        Mixed into every entry's key. The fingerprint of a ``torch.nn.Module``
        backbone covers its class, structure (``repr``) and state dict, not
        plain Python attributes its ``forward`` reads: change ``extra_key``
        (e.g. to a version string) when such a thing changes.

    Attributes
    ----------
    root : pathlib.Path
        ``location / "sklearn_tl_embeddings"``, where the entries live.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_tl import EmbeddingCache
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> cache.n_entries, cache.size()
    (0, 0)
    >>> cache.clear()
    """

    def __init__(self, location, *, extra_key=None):
        self.location = os.path.expanduser(os.fspath(location))
        self.extra_key = extra_key
        self.root = Path(self.location) / SUBDIR
        self._writable = True
        self._shards: set[str] = set()

    def __repr__(self):
        extra = "" if self.extra_key is None else f", extra_key={self.extra_key!r}"
        return f"EmbeddingCache({self.location!r}{extra})"

    def __eq__(self, other):
        return (
            isinstance(other, EmbeddingCache)
            and other.location == self.location
            and other.extra_key == self.extra_key
        )

    def __hash__(self):
        return hash((self.location, self.extra_key))

    def __getstate__(self):
        return {"location": self.location, "extra_key": self.extra_key}

    def __setstate__(self, state):
        self.__init__(state["location"], extra_key=state.get("extra_key"))

    # -- reporting

    def _entry_files(self):
        if not self.root.is_dir():
            return
        for shard in os.scandir(self.root):
            if shard.is_dir() and len(shard.name) == 2:
                for entry in os.scandir(shard.path):
                    if entry.name.endswith(ENTRY_SUFFIX):
                        yield entry

    @property
    def n_entries(self) -> int:
        """Number of stored embeddings (all models)."""
        return sum(1 for _ in self._entry_files())

    def size(self) -> int:
        """Bytes used by the stored embeddings."""
        return sum(entry.stat().st_size for entry in self._entry_files())

    def clear(self) -> None:
        """Delete every stored embedding (do not run it while a search writes)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self._shards.clear()

    # -- entries

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ENTRY_SUFFIX)

    def get(self, key: str, n_features: int):
        """The stored row for ``key``: an array, None if absent, or False if corrupt."""
        try:
            with open(self._path(key), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError:
            return None
        if len(data) != _HEADER.size + 4 * n_features:
            return False
        magic, checksum, count = _HEADER.unpack_from(data)
        payload = data[_HEADER.size :]
        if magic != _MAGIC or count != n_features or checksum != blake2b_digest(key.encode(), payload, size=16):
            return False
        return np.frombuffer(payload, dtype="<f4")

    def put(self, key: str, row: np.ndarray) -> bool:
        """Store ``row`` atomically; False (after one warning) if the location is not writable."""
        if not self._writable:
            return False
        payload = np.ascontiguousarray(row, dtype="<f4").tobytes()
        data = _HEADER.pack(_MAGIC, blake2b_digest(key.encode(), payload, size=16), len(payload) // 4) + payload
        shard = os.path.join(self.root, key[:2])
        tmp = os.path.join(shard, f".{key}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if shard not in self._shards:
                os.makedirs(shard, exist_ok=True)
                self._shards.add(shard)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, self._path(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            self._writable = False
            reason = "is read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "cannot be written"
            warnings.warn(
                f"Embedding cache {self.location!r} {reason} ({exc.strerror or exc}); embeddings are "
                "computed but not stored.",
                EmbeddingCacheWarning,
                stacklevel=3,
            )
            return False
        return True

    # -- the featurizer's path

    def embed(self, source, indices_dataset, fingerprint: bytes, n_features: int, compute) -> np.ndarray:
        """Rows for every image of ``source``, computing only those not stored.

        Parameters
        ----------
        source : ImageSource
        indices_dataset : callable
            ``indices -> Dataset`` over those images of ``source``, keyed
            (items carry the content key of what was decoded).
        fingerprint : bytes
            :func:`runtime_fingerprint` of the model.
        n_features : int
        compute : callable
            ``(Dataset, on_batch) -> ndarray (len, n_features)``, the forward
            pass; it calls ``on_batch(positions, rows, keys)`` as each batch
            finishes, and each finished row is stored at once, so a run stopped
            by an error (or killed) keeps what it computed.
        """
        fingerprint = self._salted(fingerprint)
        n = len(source)
        out = np.empty((n, n_features), dtype=np.float32)
        keys: list[str | None] = []
        for index in range(n):
            digest = content_key(source, index)
            keys.append(None if digest is None else blake2b_digest(fingerprint, digest).hex())
        missing = self._fill(out, keys, range(n), n_features)
        if missing:
            # No lock: workers on disjoint images run side by side; on overlapping
            # ones they may compute a row twice, and each entry is written atomically.
            self._compute(out, keys, missing, indices_dataset, compute, n_features, fingerprint)
        return out

    def _salted(self, fingerprint: bytes) -> bytes:
        return fingerprint if self.extra_key is None else blake2b_digest(fingerprint, b"|extra|", self.extra_key.encode())

    def _fill(self, out, keys, indices, n_features, report=True) -> list[int]:
        missing, corrupt = [], 0
        for index in indices:
            key = keys[index]
            row = None if key is None else self.get(key, n_features)
            if row is None or row is False:
                corrupt += row is False
                missing.append(index)
            else:
                out[index] = row
        if corrupt and report:
            warnings.warn(
                f"{corrupt} corrupt entr{'y' if corrupt == 1 else 'ies'} in embedding cache "
                f"{self.location!r} {'was' if corrupt == 1 else 'were'} recomputed.",
                EmbeddingCacheWarning,
                stacklevel=4,
            )
        return missing

    def _compute(self, out, keys, missing, indices_dataset, compute, n_features, fingerprint):
        # Identical images within X are embedded once.
        first_of: dict[str, int] = {}
        todo, copies = [], []
        for index in missing:
            key = keys[index]
            if key is not None and key in first_of:
                copies.append((index, first_of[key]))
                continue
            if key is not None:
                first_of[key] = index
            todo.append(index)

        def store(_positions, rows, digests):
            for row, digest in zip(rows, digests or [None] * len(rows)):
                if digest is None or not np.isfinite(row).all():
                    continue  # unreadable image (on_error="warn"): never store its NaN row
                # The key of what was decoded: a file replaced since the look-up gets its own key.
                if not self.put(blake2b_digest(fingerprint, digest).hex(), row):
                    return  # not writable: warned once

        rows = compute(indices_dataset(todo), store)
        if rows.shape != (len(todo), n_features):
            raise RuntimeError(f"The backbone gave embeddings of shape {rows.shape}; expected width {n_features}.")
        out[todo] = rows
        for index, original in copies:
            out[index] = out[original]
