"""Torch-free deployment: a fitted featurizer pipeline as one ONNX file.

:func:`export_onnx` writes the featurizer's network and every scikit-learn
step after it (converted by ``skl2onnx``) into a single graph whose input is
``images``, uint8 ``(N, H, W, 3)`` RGB at the fitted crop size. The
preprocessing (resize, crop, interpolation) is stored in the model's metadata
and applied by :mod:`sklearn_tl.onnx_images`, which needs only numpy and Pillow.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._featurizer import PretrainedCNNFeaturizer
from ._onnx import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, check_agreement, export_module, make_session, run_session
from .onnx_images import METADATA_PREFIX

__all__ = ["export_onnx"]


class _Uint8Images(torch.nn.Module):
    """uint8 ``(N, H, W, 3)`` → the featurizer's float ``(N, 3, H, W)`` in [0, 1] → embeddings."""

    def __init__(self, embedder: torch.nn.Module):
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images.permute(0, 3, 1, 2).float() / 255.0)


def _split(model):
    """``(featurizer, the fitted sklearn steps after it)`` of a pipeline or a bare featurizer."""
    if isinstance(model, PretrainedCNNFeaturizer):
        return model, []
    if not isinstance(model, Pipeline):
        raise TypeError(
            f"export_onnx takes a fitted PretrainedCNNFeaturizer or a Pipeline starting with one; got "
            f"{type(model).__name__}."
        )
    steps = [(name, step) for name, step in model.steps if step is not None and step != "passthrough"]
    if not steps or not isinstance(steps[0][1], PretrainedCNNFeaturizer):
        first = type(steps[0][1]).__name__ if steps else "nothing"
        raise TypeError(f"export_onnx needs a Pipeline whose first step is a PretrainedCNNFeaturizer; it starts "
                        f"with {first}.")
    return steps[0][1], steps[1:]


def _sklearn_graph(steps, n_features: int, opset: int):
    """The ONNX graph of the sklearn ``steps``, its input named ``OUTPUT_NAME``."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx._supported_operators import sklearn_operator_name_map
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise ImportError("export_onnx of sklearn steps needs skl2onnx: pip install 'sklearn_tl[export]'") from exc
    missing = [f"{name!r} ({type(step).__name__})" for name, step in steps
               if type(step) not in sklearn_operator_name_map]
    if missing:
        raise ValueError(
            f"Pipeline step(s) {', '.join(missing)} cannot be converted to ONNX (skl2onnx has no converter for "
            "them); export a pipeline without them, or register a converter with skl2onnx."
        )
    pipeline = Pipeline(steps)
    options = {id(step): {"zipmap": False} for _, step in steps if hasattr(step, "predict_proba")}
    try:
        return convert_sklearn(
            pipeline,
            initial_types=[(OUTPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    except Exception as exc:  # a converter that exists but refuses this configuration
        names = ", ".join(f"{name!r} ({type(step).__name__})" for name, step in steps)
        raise ValueError(f"skl2onnx could not convert the step(s) {names}: {exc}") from exc


def _unprefix_outputs(model, prefix: str) -> None:
    renamed = {o.name: o.name[len(prefix):] for o in model.graph.output if o.name.startswith(prefix)}
    for node in model.graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
        node.input[:] = [renamed.get(name, name) for name in node.input]
    for output in model.graph.output:
        output.name = renamed.get(output.name, output.name)


def export_onnx(model, path, *, opset: int = ONNX_OPSET) -> str:
    """Write a fitted featurizer (or a Pipeline starting with one) as ONE ONNX file.

    The file runs with ``onnxruntime`` alone: no torch, no sklearn_tl. Its
    input ``images`` is uint8 ``(N, H, W, 3)`` RGB at the fitted crop size
    (``model[0].data_config_.crop_size``); :func:`sklearn_tl.onnx_images.prepare_images`
    resizes and crops with Pillow as the featurizer does. Its outputs are the
    embeddings for a bare featurizer, else those of ``skl2onnx`` for the steps
    after it (``label`` and ``probabilities`` for a classifier). The exported
    network is checked against torch on a probe batch before it is written.

    Parameters
    ----------
    model : PretrainedCNNFeaturizer or Pipeline
        Fitted; every step after the featurizer must have a ``skl2onnx``
        converter (a clear error names those that do not).
    path : str or path-like
        Where to write the ``.onnx`` file.
    opset : int, default=17
        ONNX opset of the graph.

    Returns
    -------
    path : str
    """
    import onnx

    featurizer, steps = _split(model)
    check_is_fitted(featurizer)
    for name, step in steps:
        check_is_fitted(step, msg=f"Pipeline step {name!r} ({type(step).__name__}) is not fitted.")
    config = featurizer.data_config_
    size = config.crop_size
    wrapper = _Uint8Images(featurizer.backbone_).eval()
    probe = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        graph = onnx.load_from_string(export_module(wrapper, probe[:2]))
        with torch.inference_mode():
            expected = wrapper(probe).float().numpy()
        why = check_agreement(expected, run_session(make_session(graph.SerializeToString()), probe.numpy(), np.uint8),
                              min_cosine=0.9999)
    except RuntimeError as exc:
        raise ValueError(f"The featurizer's network could not be exported to ONNX: {exc}") from exc
    if why is not None:
        raise ValueError(f"The exported network does not reproduce the featurizer: {why}")
    if steps:
        tail = _sklearn_graph(steps, featurizer.n_features_out_, opset)
        tail.ir_version = graph.ir_version
        graph = onnx.compose.merge_models(graph, tail, io_map=[(OUTPUT_NAME, OUTPUT_NAME)], prefix2="sklearn_")
        _unprefix_outputs(graph, "sklearn_")  # outputs keep skl2onnx's names: label, probabilities, ...
    metadata = {
        "crop_size": config.crop_size,
        "resize_size": config.resize_size,
        "interpolation": config.interpolation,
        "input": f"{INPUT_NAME}: uint8 (N, {size}, {size}, 3) RGB",
        "backbone": featurizer.backbone if isinstance(featurizer.backbone, str) else type(featurizer.backbone).__name__,
    }
    onnx.helper.set_model_props(graph, {METADATA_PREFIX + k: str(v) for k, v in metadata.items()})
    path = os.fspath(path)
    onnx.save_model(graph, path)
    return path
