"""Torch-free deployment: a fitted model as one ONNX file.

:func:`export_onnx` writes a featurizer pipeline or a fine-tuner as a single
graph whose input is ``images``, uint8 ``(N, H, W, 3)`` RGB at the fitted crop
size. The network is exported with torch and checked against it. The
scikit-learn steps after it (a pipeline's, or a hybrid fine-tuner's
``final_estimator_``) are converted by ``skl2onnx`` at the network's opset and
checked against their own ``predict`` and ``predict_proba``. The
preprocessing (resize, crop, interpolation) is stored in the model's metadata
and applied by :mod:`sklearn_tl.onnx_images`, which needs only numpy and Pillow.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..estimators.featurizer import PretrainedCNNFeaturizer
from ..runtime.onnx import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    check_agreement,
    export_module,
    make_session,
    run_session,
)
from ..onnx_images import METADATA_PREFIX

__all__ = ["export_onnx"]

LABEL, PROBABILITIES, VARIABLE = "label", "probabilities", "variable"
# The converted steps against their own predict_proba on the same embeddings (float32 vs float64).
PROBA_ATOL = 1e-4
MAX_MESSAGE = 300


class _Uint8Images(torch.nn.Module):
    """uint8 ``(N, H, W, 3)`` → the network's float ``(N, 3, H, W)`` in [0, 1] → its output."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.permute(0, 3, 1, 2).float() / 255.0)


class _Mapped(torch.nn.Module):
    """``function(network(x))``: a fine-tuner's network and its prediction nonlinearity."""

    def __init__(self, network: torch.nn.Module, function: Callable):
        super().__init__()
        self.network = network
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(self.network(x))


class _Head(NamedTuple):
    """How a fine-tuner's logits become the file's outputs."""

    nonlinearity: Callable  # exported with the network, on its logits
    output: str  # the name of what it gives
    nodes: list  # ONNX nodes after it
    initializers: list
    outputs: list  # value infos of the file's outputs besides ``output``


@dataclass
class _Parts:
    """What the file holds: a network (images in [0, 1] → ``output``), then sklearn steps or a head."""

    source: object  # the estimator whose data_config_ and backbone the file records
    network: torch.nn.Module
    output: str = OUTPUT_NAME
    steps: list = field(default_factory=list)
    head: _Head | None = None


def _bounded(text: str) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE] + "..."


def _describe(steps) -> str:
    return ", ".join(f"{name!r} ({type(step).__name__})" for name, step in steps)


# ---------------------------------------------------------------- what to export


def _fine_tuner_type():
    from ..finetune.hooks import ImageTrainingMixin

    return ImageTrainingMixin


def _best(model, name: str):
    """A fitted search's ``best_estimator_``; any other model as it is."""
    from sklearn.model_selection._search import BaseSearchCV

    if not isinstance(model, BaseSearchCV):
        return model
    if not hasattr(model, "best_estimator_"):
        why = "was fitted with refit=False" if hasattr(model, "cv_results_") else "is not fitted"
        raise ValueError(f"{name!r} ({type(model).__name__}) {why}: it has no best_estimator_ to export.")
    return _best(model.best_estimator_, name)


def _flat_steps(steps, prefix: str = "") -> list:
    """``(name, step)`` pairs with nested Pipelines flattened (``outer__inner``) and searches' best estimators."""
    flat = []
    for name, step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        step = _best(step, prefix + name)
        if isinstance(step, Pipeline):
            flat += _flat_steps(step.steps, f"{prefix}{name}__")
        else:
            flat.append((prefix + name, step))
    return flat


def _label_tensor(name: str, classes):
    """``classes`` as an ONNX constant: int64 for integer (and bool) labels, float64 or strings."""
    from onnx import numpy_helper

    classes = np.asarray(classes)
    if classes.dtype.kind in "iub":
        return numpy_helper.from_array(classes.astype(np.int64), name)
    if classes.dtype.kind == "f":
        return numpy_helper.from_array(classes.astype(np.float64), name)
    if all(isinstance(c, str) for c in classes.tolist()):
        return numpy_helper.from_array(np.asarray(classes.tolist(), dtype=object), name)
    raise TypeError(f"export_onnx writes int, float or str class labels; classes_ has dtype {classes.dtype}.")


class _Unstandardised(torch.nn.Module):
    """A regressor's standardised outputs in the units of ``y``: ``outputs * scale + mean``."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.scale + self.mean


def _regressor_outputs(estimator) -> _Head:
    """A fine-tuned regressor's ``variable`` (skl2onnx's name): its ``predict``, ``(N, n_outputs_)`` float32."""
    return _Head(_Unstandardised(estimator.target_mean_, estimator.target_scale_), VARIABLE, [], [], [])


def _multilabel_outputs(estimator) -> _Head:
    """A multilabel fine-tuner's ``probabilities`` (each label's sigmoid) and ``label`` (the 0/1 matrix)."""
    from onnx import TensorProto, helper, numpy_helper

    threshold = numpy_helper.from_array(np.asarray(estimator.threshold, dtype=np.float32), "head_threshold")
    nodes = [
        helper.make_node("GreaterOrEqual", [PROBABILITIES, "head_threshold"], ["head_present"]),
        helper.make_node("Cast", ["head_present"], [LABEL], to=TensorProto.INT64),
    ]
    label = helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch", len(estimator.classes_)])
    return _Head(torch.sigmoid, PROBABILITIES, nodes, [threshold], [label])


def _head_outputs(estimator) -> _Head:
    """A fine-tuner's own outputs: ``probabilities`` = its predict nonlinearity of the logits, ``label`` its argmax.

    The same as its ``predict_proba`` and ``predict`` (``classes_[argmax]``); for several labels per
    image, each label's probability and the 0/1 matrix; for a regressor, its predictions.
    """
    from onnx import helper
    from sklearn.base import is_regressor

    if is_regressor(estimator):
        return _regressor_outputs(estimator)
    if getattr(estimator, "multilabel_", False) and estimator.predict_nonlinearity == "auto":
        return _multilabel_outputs(estimator)
    classes = _label_tensor("head_classes", estimator.classes_)
    nodes = [
        helper.make_node("ArgMax", [PROBABILITIES], ["head_label_index"], axis=1, keepdims=0),
        helper.make_node("Gather", ["head_classes", "head_label_index"], [LABEL], axis=0),
    ]
    label = helper.make_tensor_value_info(LABEL, classes.data_type, ["batch"])
    return _Head(estimator._get_predict_nonlinearity(), PROBABILITIES, nodes, [classes], [label])


def _fine_tuner_parts(model) -> _Parts:
    from ..finetune.callbacks import unwrapped_module

    check_is_fitted(model)
    final = getattr(model, "final_estimator_", None)
    if final is not None:  # hybrid: the tuned embeddings, then final_estimator_
        return _Parts(model, model._transform_module(), steps=_flat_steps([("final_estimator", final)]))
    if getattr(model, "tta", False):
        raise ValueError(
            f"{type(model).__name__}(tta=True) averages several crops of each image, which the exported file does "
            "not make; set_params(tta=False) to export the single-crop model."
        )
    head = _head_outputs(model)
    return _Parts(model, _Mapped(unwrapped_module(model), head.nonlinearity), head.output, head=head)


def _parts(model) -> _Parts:
    model = _best(model, type(model).__name__)
    tuner = _fine_tuner_type()
    if isinstance(model, PretrainedCNNFeaturizer):
        check_is_fitted(model)
        return _Parts(model, model.backbone_)
    if isinstance(model, tuner):
        return _fine_tuner_parts(model)
    if not isinstance(model, Pipeline):
        raise TypeError(
            "export_onnx takes a fitted PretrainedCNNFeaturizer, a fine-tuner, a Pipeline starting with either, or "
            f"a fitted GridSearchCV of one of them; got {type(model).__name__}."
        )
    steps = _flat_steps(model.steps)
    first = steps[0][1] if steps else None
    if isinstance(first, tuner) and len(steps) == 1:
        return _fine_tuner_parts(first)
    if isinstance(first, PretrainedCNNFeaturizer):
        check_is_fitted(first)
        network = first.backbone_
    elif isinstance(first, tuner):  # a fine-tuner as a transformer: its tuned embeddings
        check_is_fitted(first)
        network = first._transform_module()
    else:
        raise TypeError(
            "export_onnx needs a Pipeline whose first step is a PretrainedCNNFeaturizer or a fine-tuner; it starts "
            f"with {type(first).__name__ if steps else 'nothing'}."
        )
    for name, step in steps[1:]:
        check_is_fitted(step, msg=f"Pipeline step {name!r} ({type(step).__name__}) is not fitted.")
    return _Parts(first, network, steps=steps[1:])


# ---------------------------------------------------------------- graph editing


def _opsets(model) -> dict:
    return {entry.domain or "": entry.version for entry in model.opset_import}


def _rename_edges(model, renamed: dict) -> None:
    for node in model.graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
        node.input[:] = [renamed.get(name, name) for name in node.input]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renamed.get(value.name, value.name)


def _replace(repeated, items) -> None:
    """Set a repeated protobuf field to (copies of) ``items``."""
    items = [copy.deepcopy(item) for item in items]
    del repeated[:]
    repeated.extend(items)


def _node_inputs(node) -> set:
    """The edges a node reads, those of its subgraphs (If, Loop, Scan) included."""
    from onnx import AttributeProto

    names = set(node.input)
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names |= _node_inputs(inner)
    return names


def _drop_outputs(model, names) -> None:
    """Remove the outputs ``names`` and the nodes and constants only they needed."""
    kept = [output for output in model.graph.output if output.name not in names]
    needed = {output.name for output in kept}
    nodes = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed |= _node_inputs(node)
    _replace(model.graph.output, kept)
    _replace(model.graph.node, reversed(nodes))
    _replace(model.graph.initializer, [tensor for tensor in model.graph.initializer if tensor.name in needed])


def _with_label_of(tail, other):
    """``tail`` whose ``label`` is that of ``other``, another conversion of the same steps on the same input."""
    import onnx

    _drop_outputs(tail, {LABEL})
    _rename_edges(tail, {LABEL: "unused_" + LABEL})  # a node that made it with the probabilities
    other = onnx.compose.add_prefix(other, "scores_")
    _drop_outputs(other, {o.name for o in other.graph.output if o.name != "scores_" + LABEL})
    _rename_edges(other, {other.graph.input[0].name: tail.graph.input[0].name, "scores_" + LABEL: LABEL})
    tail.graph.node.extend(other.graph.node)
    tail.graph.initializer.extend(other.graph.initializer)
    _replace(tail.graph.output, [*other.graph.output, *tail.graph.output])  # label first, as skl2onnx orders them
    versions = _opsets(tail)
    for domain, version in _opsets(other).items():
        versions[domain] = max(version, versions.get(domain, 0))
    _replace(tail.opset_import, [onnx.helper.make_opsetid(d, v) for d, v in versions.items()])
    return tail


# ---------------------------------------------------------------- sklearn steps

_CONVERT_LOCK = threading.Lock()


@contextlib.contextmanager
def _int_flags():
    """Convert bool list attributes to ints while skl2onnx builds nodes.

    skl2onnx 1.20 writes Python bools into the int-list attribute
    ``nodes_missing_value_tracks_true`` of every HistGradientBoosting tree, and
    onnx 1.23 refuses them; elsewhere this changes nothing.
    """
    import onnx
    from skl2onnx.common import _container

    make_node = getattr(_container, "make_node", None)
    try:
        onnx.helper.make_attribute("flags", [0, False])
        refused = False
    except (TypeError, ValueError):
        refused = True
    if make_node is None or not refused:
        yield
        return

    def int_flags(*args, **attributes):
        for key, value in attributes.items():
            if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
                attributes[key] = [int(v) if isinstance(v, (bool, np.bool_)) else v for v in value]
        return make_node(*args, **attributes)

    _container.make_node = int_flags
    try:
        yield
    finally:
        _container.make_node = make_node


def _convert(steps, n_features: int, opset: int, options: dict):
    """``steps`` converted by skl2onnx, input ``OUTPUT_NAME``, its default domain at exactly ``opset``."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with _CONVERT_LOCK, _int_flags(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skl2onnx reads attributes sklearn deprecates (SVC probA_)
        model = convert_sklearn(
            Pipeline(steps),
            initial_types=[(OUTPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    if _opsets(model).get("", opset) != opset:  # skl2onnx declares the lowest opset its nodes need
        model = onnx.version_converter.convert_version(model, opset)
    return model


def _sklearn_graph(steps, n_features: int, opset: int):
    """The ONNX graph of the sklearn ``steps``: input ``OUTPUT_NAME``; ``label`` and, with predict_proba,
    ``probabilities`` for a classifier."""
    from sklearn.linear_model import SGDClassifier

    try:
        from skl2onnx._supported_operators import sklearn_operator_name_map
        from skl2onnx.common._registration import get_converter
    except ImportError as exc:
        raise ImportError("export_onnx of sklearn steps needs skl2onnx: pip install 'sklearn_tl[export]'") from exc
    missing = [(name, step) for name, step in steps if type(step) not in sklearn_operator_name_map]
    if missing:
        raise ValueError(
            f"Pipeline step(s) {_describe(missing)} cannot be converted to ONNX (skl2onnx has no converter for "
            "them); export a pipeline without them, or register a converter with skl2onnx."
        )
    options = {}
    for _, step in steps:
        allowed = get_converter(sklearn_operator_name_map[type(step)]).get_allowed_options() or {}
        # Plain tensors, not a list of dicts. Every step gets an entry: skl2onnx gives a classifier
        # without one in a Pipeline zipmap=True, which LinearSVC refuses.
        options[id(step)] = {"zipmap": False} if "zipmap" in allowed else {}
    final = steps[-1][1]
    classifier, with_proba = is_classifier(final), hasattr(final, "predict_proba")
    try:
        tail = _convert(steps, n_features, opset, options)
        if isinstance(final, SGDClassifier) and with_proba:
            # skl2onnx takes its label from the probabilities, which tie once two classes saturate;
            # SGDClassifier.predict is the argmax of the decision function, as with raw_scores.
            raw = {**options, id(final): {**options.get(id(final), {}), "raw_scores": True}}
            tail = _with_label_of(tail, _convert(steps, n_features, opset, raw))
    except Exception as exc:  # a converter that exists but refuses this configuration
        raise ValueError(f"skl2onnx could not convert the step(s) {_describe(steps)}: {_bounded(exc)}") from exc
    if classifier and not with_proba:  # skl2onnx's "probabilities" are then decision scores
        _drop_outputs(tail, {PROBABILITIES})
    return tail


def _check_steps(tail, steps, embeddings: np.ndarray) -> None:
    """Raise if the converted ``steps`` do not reproduce their own predict (predict_proba) on ``embeddings``."""
    session = make_session(tail.SerializeToString())
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {OUTPUT_NAME: embeddings})))
    features = embeddings
    for _, step in steps[:-1]:
        features = step.transform(features)
    final, problems = steps[-1][1], []
    if LABEL in outputs:
        expected = final.predict(features)
        wrong = int((np.asarray(outputs[LABEL]).reshape(len(expected)) != expected).sum())
        if wrong:
            problems.append(f"{wrong} of {len(expected)} labels differ")
    if PROBABILITIES in outputs:
        expected = final.predict_proba(features)
        if outputs[PROBABILITIES].shape != expected.shape:
            problems.append(f"probabilities of shape {outputs[PROBABILITIES].shape} instead of {expected.shape}")
        elif not np.allclose(outputs[PROBABILITIES], expected, atol=PROBA_ATOL, rtol=0):
            problems.append(f"probabilities differ by up to {np.abs(outputs[PROBABILITIES] - expected).max():.3g}")
    if problems:
        raise ValueError(
            f"The ONNX conversion of {_describe(steps)} does not reproduce it on a probe batch: {'; '.join(problems)}."
        )


# ---------------------------------------------------------------- export


def _network_graph(parts: _Parts, opset: int):
    """The network's ONNX graph (input uint8 images), checked against torch, and its outputs on a probe batch."""
    import onnx

    size = parts.source.data_config_.crop_size
    wrapper = _Uint8Images(copy.deepcopy(parts.network).cpu().float()).eval()  # the fitted model is not touched
    probe = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        graph = onnx.load_from_string(export_module(wrapper, probe[:2], opset))
        with torch.inference_mode():
            expected = wrapper(probe).float().numpy()
        actual = run_session(make_session(graph.SerializeToString()), probe.numpy(), np.uint8)
        why = check_agreement(expected, actual, min_cosine=0.9999)
    except RuntimeError as exc:
        raise ValueError(f"The network of {type(parts.source).__name__} could not be exported to ONNX: {exc}") from exc
    if why is not None:
        raise ValueError(f"The exported network does not reproduce {type(parts.source).__name__}: {why}")
    if parts.output != OUTPUT_NAME:
        _rename_edges(graph, {OUTPUT_NAME: parts.output})
    return graph, actual


def _add_head(graph, head: _Head) -> None:
    graph.graph.node.extend(head.nodes)
    graph.graph.initializer.extend(head.initializers)
    # label first, as skl2onnx orders a classifier's outputs
    _replace(graph.graph.output, [*head.outputs, *graph.graph.output])


def export_onnx(model, path, *, opset: int = ONNX_OPSET) -> str:
    """Write a fitted featurizer pipeline or fine-tuner as ONE ONNX file.

    The file runs with ``onnxruntime`` alone: no torch, no sklearn_tl. Its
    input ``images`` is uint8 ``(N, H, W, 3)`` RGB at the fitted crop size
    (``data_config_.crop_size``); :func:`sklearn_tl.onnx_images.prepare_images`
    resizes and crops with Pillow as the estimator does. Its outputs are:

    - ``embeddings`` for a bare featurizer;
    - ``label`` and, if the model has ``predict_proba``, ``probabilities``
      (columns in the order of ``classes_``) for a classifier: a Pipeline
      ending in one, a fine-tuner (its own head, or its ``final_estimator_``);
      for a fine-tuner fitted on several labels per image, ``label`` is the
      0/1 int64 matrix ``predict`` gives and ``probabilities`` each label's;
    - ``variable``, float32 ``(N, n_outputs_)``, for a ``FineTuneRegressor``
      (its ``predict``, in the units of ``y``);
    - ``skl2onnx``'s outputs for other steps (e.g. ``variable``).

    The exported network is checked against torch, and the converted
    scikit-learn steps against their own ``predict`` and ``predict_proba``,
    on a probe batch before the file is written.

    Parameters
    ----------
    model : estimator
        Fitted: a ``PretrainedCNNFeaturizer``, a ``FineTuneClassifier`` or
        ``FineTuneRegressor`` (with or without ``final_estimator``), a ``Pipeline`` whose first
        step is one of them (nested Pipelines are flattened), or a
        ``GridSearchCV`` / ``RandomizedSearchCV`` of one (its
        ``best_estimator_``; searches inside a Pipeline too). Every step after
        the network needs a ``skl2onnx`` converter; a clear error names those
        that have none.
    path : str or path-like
        Where to write the ``.onnx`` file.
    opset : int, default=17
        ONNX opset of the graph (the network's exporter; the scikit-learn steps
        are converted to the same).

    Returns
    -------
    path : str
    """
    import onnx

    parts = _parts(model)
    graph, embeddings = _network_graph(parts, opset)
    if parts.steps:
        tail = _sklearn_graph(parts.steps, embeddings.shape[1], _opsets(graph)[""])
        _check_steps(tail, parts.steps, embeddings)
        tail.ir_version = graph.ir_version
        graph = onnx.compose.merge_models(graph, tail, io_map=[(OUTPUT_NAME, OUTPUT_NAME)], prefix2="sklearn_")
        # outputs keep skl2onnx's names: label, probabilities, ...
        _rename_edges(graph, {o.name: o.name[len("sklearn_"):] for o in graph.graph.output
                              if o.name.startswith("sklearn_")})
    elif parts.head is not None:
        _add_head(graph, parts.head)
    config = parts.source.data_config_
    size = config.crop_size
    backbone = parts.source.backbone
    metadata = {
        "crop_size": config.crop_size,
        "resize_size": config.resize_size,
        "interpolation": config.interpolation,
        "input": f"{INPUT_NAME}: uint8 (N, {size}, {size}, 3) RGB",
        "backbone": backbone if isinstance(backbone, str) else type(backbone).__name__,
    }
    onnx.helper.set_model_props(graph, {METADATA_PREFIX + k: str(v) for k, v in metadata.items()})
    path = os.fspath(path)
    onnx.save_model(graph, path)
    return path
