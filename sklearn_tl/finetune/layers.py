"""This module contains the cut of a tuned embedder at ``layer=``, made once per state of the network."""

from __future__ import annotations

import copy
import threading
import weakref

from ..models.build import _probe
from ..models.embedder import ImageEmbedder, find_layer
from ..models.registry import source_for
from ..runtime.device import module_device
from ..runtime.onnx import _signature

# The tuned embedder -> (layers, signature of its tensors, a cut of a private copy at those layers).
_LAYER_EMBEDDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LAYER_LOCK = threading.Lock()


def _layer_embedder(embedder: ImageEmbedder, backbone, layers: tuple, record, config) -> ImageEmbedder:
    """``embedder`` cut after ``layers``: the pooled outputs of those layers, with the tuned weights.

    The cut is made on a private copy of the trunk: tracing switches train and
    eval mode, and the hook fallback registers hooks, neither of which may
    touch a network that other threads are predicting with. It is built once
    per state of the tuned network (a signature of its tensors, which training
    changes in place) and rebuilt after further training or a device move, on
    a probe image of ``config``'s size.
    """
    signature = _signature(embedder, ())
    with _LAYER_LOCK:
        cached = _LAYER_EMBEDDERS.get(embedder)
        if cached is None or cached[0] != layers or cached[1] != signature:
            for name in layers:
                find_layer(embedder.trunk, name)  # the list of layer names, not an FX error
            device = module_device(embedder)
            probe = _probe(config).to(device)
            trunk = source_for(backbone)[0].cut(copy.deepcopy(embedder.trunk), layers, probe)
            cut = ImageEmbedder(trunk, embedder.mean.flatten().tolist(), embedder.std.flatten().tolist(),
                                pooling=embedder.pool.mode, layer=record).to(device).eval()
            cached = _LAYER_EMBEDDERS[embedder] = (layers, signature, cut)
        return cached[2]
