"""Old import paths of 0.1 (``sklearn_tl._model`` ...), kept loadable for files written by 0.1.

Pickles name classes by module path. Model files written by sklearn_tl 0.1
(joblib, pickle) refer to the flat layout, e.g. ``sklearn_tl._model.ImageEmbedder``
or ``sklearn_tl._finetune.FineTuneClassifier``. :class:`OldPathFinder`, installed
on ``sys.meta_path`` when ``sklearn_tl`` is imported, makes each old module
importable again as an alias whose attributes are looked up, lazily, in the
new layout (as scikit-learn kept its deprecated module paths for a while).
The aliases stay until sklearn_tl 0.3; write new files with the current version.
The tables below are data: every 0.1 module path and where its names live now (issue 23).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MODULES = {
    'sklearn_tl._augment': 'sklearn_tl.data.augment',
    'sklearn_tl._backbones': 'sklearn_tl.models.registry',
    'sklearn_tl._base': 'sklearn_tl.estimators.base',
    'sklearn_tl._cache': 'sklearn_tl.cache.store',
    'sklearn_tl._callbacks': 'sklearn_tl.finetune.callbacks',
    'sklearn_tl._dask': 'sklearn_tl.deploy.dask',
    'sklearn_tl._datasets': 'sklearn_tl.data.folders',
    'sklearn_tl._demo': 'sklearn_tl.cli.demo',
    'sklearn_tl._engine': 'sklearn_tl.runtime.forward',
    'sklearn_tl._export': 'sklearn_tl.deploy.export',
    'sklearn_tl._featurizer': 'sklearn_tl.estimators.featurizer',
    'sklearn_tl._finetune': 'sklearn_tl.estimators.classifier',
    'sklearn_tl._finetune_base': 'sklearn_tl.estimators.finetune_base',
    'sklearn_tl._finetune_hooks': 'sklearn_tl.finetune.hooks',
    'sklearn_tl._finetune_regressor': 'sklearn_tl.estimators.regressor',
    'sklearn_tl._freeze': 'sklearn_tl.finetune.freeze',
    'sklearn_tl._head': 'sklearn_tl.finetune.network',
    'sklearn_tl._images': 'sklearn_tl.data.inputs',
    'sklearn_tl._lr_find': 'sklearn_tl.finetune.lr_finder',
    'sklearn_tl._model': 'sklearn_tl.models.build',
    'sklearn_tl._onnx': 'sklearn_tl.runtime.onnx',
    'sklearn_tl._persistence': 'sklearn_tl.deploy.persistence',
    'sklearn_tl._preprocess': 'sklearn_tl.data.transforms',
    'sklearn_tl._probe': 'sklearn_tl.finetune.head_fit',
    'sklearn_tl._report': 'sklearn_tl.cli.report',
    'sklearn_tl._sources': 'sklearn_tl.models.sources',
    'sklearn_tl._sources.cut': 'sklearn_tl.models.sources.cut',
    'sklearn_tl._sources.module': 'sklearn_tl.models.sources.module',
    'sklearn_tl._sources.timm': 'sklearn_tl.models.sources.timm',
    'sklearn_tl._sources.torchvision': 'sklearn_tl.models.sources.torchvision',
    'sklearn_tl._state': 'sklearn_tl.estimators.state',
    'sklearn_tl._training': 'sklearn_tl.cli.training',
    'sklearn_tl._weights': 'sklearn_tl.models.weights',
}

# Names that left their module's new home: {old module: {name: new module}}.
MOVED = {
    'sklearn_tl._backbones': {
        'BackboneSpec': 'sklearn_tl.models.spec',
    },
    'sklearn_tl._cache': {
        'EmbeddingCacheWarning': 'sklearn_tl.exceptions',
        '_state_dict_digest': 'sklearn_tl.cache.fingerprint',
        '_version_of': 'sklearn_tl.cache.fingerprint',
        'model_fingerprint': 'sklearn_tl.cache.fingerprint',
        'runtime_fingerprint': 'sklearn_tl.cache.fingerprint',
    },
    'sklearn_tl._engine': {
        'AUTO_BATCH_SIZE': 'sklearn_tl.runtime.device',
        'DEVICES_HELP': 'sklearn_tl.runtime.device',
        'ImageReadWarning': 'sklearn_tl.exceptions',
        'PRECISIONS': 'sklearn_tl.runtime.device',
        '_current_worker': 'sklearn_tl.runtime.device',
        '_same_device': 'sklearn_tl.runtime.device',
        'apply_worker_threads': 'sklearn_tl.runtime.device',
        'autocast_context': 'sklearn_tl.runtime.device',
        'cpu_has_native_bf16': 'sklearn_tl.runtime.device',
        'dask_worker_gpu': 'sklearn_tl.runtime.device',
        'dask_worker_threads': 'sklearn_tl.runtime.device',
        'for_inference': 'sklearn_tl.runtime.device',
        'inference_module': 'sklearn_tl.runtime.device',
        'module_device': 'sklearn_tl.runtime.device',
        'resolve_batch_size': 'sklearn_tl.runtime.device',
        'resolve_device': 'sklearn_tl.runtime.device',
        'resolve_precision': 'sklearn_tl.runtime.device',
        'to_model_input': 'sklearn_tl.runtime.device',
    },
    'sklearn_tl._finetune': {
        '_has_nan_label': 'sklearn_tl.finetune.labels',
    },
    'sklearn_tl._finetune_base': {
        '_FINETUNE_DOCS': 'sklearn_tl.estimators.finetune_docs',
        '_LAYER_EMBEDDERS': 'sklearn_tl.finetune.layers',
        '_LAYER_LOCK': 'sklearn_tl.finetune.layers',
        '_Labelled': 'sklearn_tl.finetune.head_fit',
        '_image_dataset_parts': 'sklearn_tl.finetune.head_fit',
        '_layer_embedder': 'sklearn_tl.finetune.layers',
        'finetune_docs': 'sklearn_tl.estimators.finetune_docs',
    },
    'sklearn_tl._finetune_hooks': {
        'with_transform': 'sklearn_tl.data.dataset',
    },
    'sklearn_tl._images': {
        'ImageDataset': 'sklearn_tl.data.dataset',
        'ImageReadError': 'sklearn_tl.exceptions',
        'KeyedBatch': 'sklearn_tl.data.dataset',
        'KeyedImage': 'sklearn_tl.data.dataset',
        'LoadFailure': 'sklearn_tl.data.dataset',
        'ON_ERROR': 'sklearn_tl.data.dataset',
        'PATH_QUOTE_LIMIT': 'sklearn_tl.data.decode',
        'PartialBatch': 'sklearn_tl.data.dataset',
        'QUOTE_LIMIT': 'sklearn_tl.data.decode',
        'SIGNATURE_BYTES': 'sklearn_tl.data.decode',
        'SUPPORTED_CHANNELS': 'sklearn_tl.data.decode',
        '_cut': 'sklearn_tl.data.decode',
        '_drop_alpha': 'sklearn_tl.data.decode',
        '_hwc_to_chw': 'sklearn_tl.data.decode',
        '_read_error': 'sklearn_tl.data.decode',
        '_shrink_for': 'sklearn_tl.data.decode',
        '_stack': 'sklearn_tl.data.dataset',
        '_where': 'sklearn_tl.data.decode',
        'array_digest': 'sklearn_tl.data.keys',
        'collate_images': 'sklearn_tl.data.dataset',
        'describe_encoded': 'sklearn_tl.data.decode',
        'file_digest': 'sklearn_tl.data.keys',
        'pil_to_tensor': 'sklearn_tl.data.decode',
        'read_file_bytes': 'sklearn_tl.data.decode',
        'read_image_file': 'sklearn_tl.data.decode',
        'short_repr': 'sklearn_tl.data.decode',
        'tensor_digest': 'sklearn_tl.data.keys',
    },
    'sklearn_tl._lr_find': {
        'LRFinderWarning': 'sklearn_tl.exceptions',
    },
    'sklearn_tl._model': {
        'GlobalPool': 'sklearn_tl.models.embedder',
        'ImageEmbedder': 'sklearn_tl.models.embedder',
        'POOLINGS': 'sklearn_tl.models.embedder',
        'find_layer': 'sklearn_tl.models.embedder',
        'network_root': 'sklearn_tl.models.embedder',
    },
    'sklearn_tl._onnx': {
        'OnnxFallbackWarning': 'sklearn_tl.exceptions',
    },
    'sklearn_tl._persistence': {
        'ModelFileError': 'sklearn_tl.exceptions',
        'ModelVersionWarning': 'sklearn_tl.exceptions',
    },
    'sklearn_tl._preprocess': {
        'DEFAULT_CROP_FRACTION': 'sklearn_tl.data.config',
        'DataConfig': 'sklearn_tl.data.config',
        'IMAGENET_MEAN': 'sklearn_tl.data.config',
        'IMAGENET_STD': 'sklearn_tl.data.config',
        'native_data_config': 'sklearn_tl.models.registry',
        'resolve_data_config': 'sklearn_tl.data.config',
    },
    'sklearn_tl._sources': {
        'ModelSource': 'sklearn_tl.models.sources.base',
        '_CONVS': 'sklearn_tl.models.sources.base',
        '_POOLS': 'sklearn_tl.models.sources.base',
        '_SOURCES': 'sklearn_tl.models.source_registry',
        '_has_params': 'sklearn_tl.models.sources.base',
        'get_source': 'sklearn_tl.models.source_registry',
        'load_strict': 'sklearn_tl.models.sources.base',
        'register_source': 'sklearn_tl.models.source_registry',
        'source_for': 'sklearn_tl.models.registry',
        'sources': 'sklearn_tl.models.source_registry',
        'stage_blocks': 'sklearn_tl.models.sources.base',
    },
    'sklearn_tl._state': {
        'SafeFormatError': 'sklearn_tl.exceptions',
    },
    'sklearn_tl._weights': {
        'UnknownWeightsFileError': 'sklearn_tl.exceptions',
        'WeightsNotFoundError': 'sklearn_tl.exceptions',
        'resolve_weights': 'sklearn_tl.models.registry',
    },
}

# new dotted path of a class -> its 0.1 path (cache keys keep the old one: see cache.fingerprint)
OLD_PATH_OF = {
    f"{new}.{name}": f"{old}.{name}"
    for old, names in MOVED.items()
    for name, new in names.items()
}
OLD_PATH_OF.update(
    {f"{new}.": f"{old}." for old, new in MODULES.items()}  # prefixes of whole modules
)


def old_path_of(dotted: str) -> str:
    """The 0.1 path of the package object at ``dotted`` (the path itself when it did not move)."""
    if dotted in OLD_PATH_OF:
        return OLD_PATH_OF[dotted]
    module, _, name = dotted.rpartition(".")
    prefix = OLD_PATH_OF.get(module + ".")
    return dotted if prefix is None else prefix + name


class _AliasModule(types.ModuleType):
    """An old module path: each attribute is found in the module of the new layout that holds it."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        old = self.__name__
        new = MOVED.get(old, {}).get(name, MODULES[old])
        return getattr(importlib.import_module(new), name)


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _AliasModule(spec.name)
        module.__path__ = []  # old packages (_sources) keep their submodules importable
        return module

    def exec_module(self, module):
        pass


class OldPathFinder(importlib.abc.MetaPathFinder):
    """Finds the module paths of 0.1 that moved (see :data:`MODULES`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MODULES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader())
        return None


def install() -> None:
    if not any(isinstance(finder, OldPathFinder) for finder in sys.meta_path):
        # First: no file of the new layout has an old name, and an editable install's finder must not
        # answer for them with another checkout's files.
        sys.meta_path.insert(0, OldPathFinder())
