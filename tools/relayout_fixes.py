"""The hand-written part of issue 23, applied after ``tools/relayout.py`` (stdlib only).

    python tools/relayout.py [ROOT] && python tools/relayout_fixes.py [ROOT]

Each fix finds what it changes by name (a function, a method, a line), checks
that it is there, and says so when it is not: the other branches may have moved
things since this was written. A fix that finds its work done already says so.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(".")
REPORT: list[str] = []


class Skip(Exception):
    pass


def read(rel: str) -> str:
    return (ROOT / rel).read_text()


def write(rel: str, text: str) -> None:
    (ROOT / rel).write_text(text)
    TOUCHED.add(rel)


def find_def(tree: ast.AST, name: str, cls: str | None = None):
    """The (function or class) node called ``name``, inside class ``cls`` if given (any class if "*")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and (cls == "*" or node.name == cls):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and item.name == name:
                    return item
        if cls is None and isinstance(node, ast.Module):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Assign)):
                    names = [item.name] if hasattr(item, "name") else [
                        t.id for t in item.targets if isinstance(t, ast.Name)]
                    if name in names:
                        return item
    return None


def replace_node(text: str, node, new: str) -> str:
    """``text`` with ``node`` (decorators included) replaced by ``new`` (indented as given)."""
    lines = text.splitlines(keepends=True)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    lines[first : node.end_lineno] = [new.rstrip("\n") + "\n"]
    return "".join(lines)


def replace_def(rel: str, name: str, new: str, cls: str | None = None) -> None:
    text = read(rel)
    node = find_def(ast.parse(text), name, cls)
    if node is None:
        raise Skip(f"{rel}: no {cls + '.' if cls else ''}{name}")
    write(rel, replace_node(text, node, new))


def add_import(rel: str, line: str) -> None:
    """Add an import line after the module's last top-level import (if not there already)."""
    text = read(rel)
    if line in text:
        return
    tree = ast.parse(text)
    last = max(n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    lines = text.splitlines(keepends=True)
    lines.insert(last, line + "\n")
    write(rel, "".join(lines))


def prune_imports(rel: str) -> None:
    """Drop the names of top-level imports that the module no longer uses (``__all__`` counts as a use)."""
    text = read(rel)
    tree = ast.parse(text)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name):
                used.add(root.id)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            used |= set(ast.literal_eval(node.value))
    edits = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            keep = [a for a in node.names if (a.asname or a.name) in used]
            if len(keep) != len(node.names):
                edits.append((node, keep))
        elif isinstance(node, ast.Import):
            keep = [a for a in node.names if (a.asname or a.name.split(".")[0]) in used]
            if len(keep) != len(node.names):
                edits.append((node, keep))
    lines = text.splitlines(keepends=True)
    for node, keep in sorted(edits, key=lambda e: -e[0].lineno):
        if not keep:
            new = []
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep)
            new = [f"from {'.' * node.level}{node.module or ''} import {names}\n"]
        else:
            new = ["import " + ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep) + "\n"]
        lines[node.lineno - 1 : node.end_lineno] = new
    write(rel, re.sub(r"\n\n\n\n+", "\n\n\n", "".join(lines)))


def tidy_imports(rel: str) -> None:
    """Sort the module's top-level import block into isort's sections (as ``tools/relayout.py`` writes them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from relayout import build_imports

    text = read(rel)
    tree = ast.parse(text)
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    block = []
    for node in body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        block.append(node)
    if not block:
        return
    bound = {a.asname or a.name.split(".")[0] for n in block for a in n.names} | {"annotations"}
    lines = text.splitlines(keepends=True)
    new = build_imports(block, bound, "", False) + "\n"
    lines[block[0].lineno - 1 : block[-1].end_lineno] = [new]
    write(rel, "".join(lines))


TOUCHED: set = set()


def sub(rel: str, old: str, new: str, count: int = 1, regex: bool = False) -> None:
    text = read(rel)
    found = len(re.findall(old, text)) if regex else text.count(old)
    if not found:
        raise Skip(f"{rel}: {old[:70]!r} not found")
    write(rel, re.sub(old, new, text, count=count) if regex else text.replace(old, new, count if count else -1))


def files_defining(method: str, folder: str = "sklearn_tl") -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if find_def(ast.parse(path.read_text()), method, "*") is not None:
            out.append(str(path.relative_to(ROOT)))
    return out


# --------------------------------------------------------------------------- the fixes


def fix_source_registry():
    """The source registry imports nothing: ``ModelSource`` only types its annotations."""
    rel = "sklearn_tl/models/source_registry.py"
    text = read(rel)
    if "TYPE_CHECKING" in text:
        return "done already"
    sub(rel, "from .sources.base import ModelSource\n",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:  # annotations only: the adapters import this registry's users\n"
        "    from .sources.base import ModelSource\n")


def fix_make_trunk():
    """``ModelSource.make_trunk`` reads a spec's ``trunk`` without importing the spec (no circle)."""
    replace_def("sklearn_tl/models/sources/base.py", "make_trunk", '''    def make_trunk(self, backbone, network: nn.Module) -> nn.Module:
        """The trunk: from the spec's own ``trunk`` function where it has one, else :meth:`trunk`."""
        own = None if isinstance(backbone, nn.Module) else getattr(backbone, "trunk", None)  # a BackboneSpec's
        return own(network) if own is not None else self.trunk(backbone, network)''', cls="ModelSource")


def fix_data_config_import():
    """``ModelSource.data_config`` imports :class:`DataConfig` at the top: a lower layer, no circle to hide."""
    rel = "sklearn_tl/models/sources/base.py"
    text = read(rel)
    if "        from ...data.config import DataConfig\n\n" not in text:
        return "done already"
    sub(rel, "        from ...data.config import DataConfig\n\n", "")
    add_import(rel, "from ...data.config import DataConfig")


def fix_blake():
    """One blake2b helper (``data.keys.blake2b_digest``) instead of ``_blake`` in two modules."""
    keys = "sklearn_tl/data/keys.py"
    text = read(keys)
    if "def blake2b_digest" in text:
        return "done already"
    replace_def(keys, "_blake", '''def blake2b_digest(*parts: bytes, size: int = 20) -> bytes:
    """The blake2b digest (``size`` bytes) of ``parts``, one after the other."""
    digest = hashlib.blake2b(digest_size=size)
    for part in parts:
        digest.update(part)
    return digest.digest()''')
    sub(keys, r"\b_blake\(", "blake2b_digest(", count=0, regex=True)
    for rel in ("sklearn_tl/cache/store.py", "sklearn_tl/cache/fingerprint.py"):
        text = read(rel)
        node = find_def(ast.parse(text), "_blake")
        if node is not None:
            text = replace_node(text, node, "").replace("\n\n\n\n\n", "\n\n\n")
        text = re.sub(r"^from \.store import _blake\n", "", text, flags=re.M)
        if "_blake" in text:
            text = re.sub(r"\b_blake\b", "blake2b_digest", text)
            write(rel, text)
            add_import(rel, "from ..data.keys import blake2b_digest")
        else:
            write(rel, text)
        prune_imports(rel)
    # the old-path table named the private helper; it is gone under that name
    old_paths = "sklearn_tl/_old_paths.py"
    write(old_paths, re.sub(r"^ +'_blake': '[\w.]+',\n", "", read(old_paths), flags=re.M))


def fix_version():
    """``package_version()``: the version the package reports, read without importing the package."""
    rel = "sklearn_tl/_version.py"
    text = read(rel)
    if "def package_version" not in text:
        text = text.rstrip("\n") + '''


def package_version() -> str:
    """``sklearn_tl.__version__`` as the package reports it (a test may set it), without importing the package."""
    package = sys.modules.get("sklearn_tl")
    return getattr(package, "__version__", __version__)
'''
        text = text.replace('"""\n\n', '"""\n\nimport sys\n\n', 1)
        write(rel, text)
    for path in (ROOT / "sklearn_tl").rglob("*.py"):
        src = path.read_text()
        if re.search(r"^[ \t]+from \.+_version import __version__\n", src, flags=re.M):
            new = re.sub(r"^([ \t]+)from (\.+)_version import __version__\n",
                         r"\1from \2_version import package_version\n", src, flags=re.M)
            new = re.sub(r'"sklearn_tl": __version__', '"sklearn_tl": package_version()', new)
            path.write_text(new)


def fix_pyproject():
    """setuptools reads the version statically from ``_version.py`` (no import of torch at build time)."""
    rel = "pyproject.toml"
    if "sklearn_tl._version.__version__" in read(rel):
        return "done already"
    sub(rel, 'attr = "sklearn_tl.__version__"', 'attr = "sklearn_tl._version.__version__"')


FINGERPRINT_FUNCTIONS = '''def identified_by_name(backbone, weights_sha256) -> bool:
    """Whether a backbone name and its weights' sha256 identify the network (else: the module itself)."""
    return not isinstance(backbone, torch.nn.Module) and weights_sha256 is not None


def backbone_identity(backbone, weights_sha256=None, module=None) -> dict:
    """The network's part of a key: its name and weights sha256, or (``module`` given) the module itself.

    A module has no other identity than its class, structure and state dict.
    The package's own classes are named by their 0.1 paths, so the cache rows
    stored before the 0.2 layout stay valid.
    """
    if module is None:
        return {"name": str(backbone).lower(), "weights_sha256": weights_sha256}
    cls = type(backbone) if isinstance(backbone, torch.nn.Module) else type(module)
    return {
        "module": old_path_of(f"{cls.__module__}.{cls.__qualname__}"),
        "structure": repr(module),
        "state": _state_dict_digest(module),
    }


def model_fingerprint(backbone: dict, *, layer, pooling, data_config: dict, image_shape, n_features: int) -> str:
    """The device-independent part of the keys of one model, from the fields that decide its output.

    Hashing a state dict costs a fraction of a second for large networks, so
    an estimator computes this once per fit; it is combined with the device
    type and autocast dtype at each call (:func:`runtime_fingerprint`).

    Parameters
    ----------
    backbone : dict
        :func:`backbone_identity`.
    layer, pooling :
        What the fitted module does (its cut and pooling), not what the parameters say now.
    data_config : dict
        ``DataConfig.as_dict()``.
    image_shape : tuple or None
    n_features : int
    """
    import PIL
    import torchvision

    fields = {
        "format": 1,
        "sklearn_tl": package_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        # Decoding (Pillow) and timm models can change between versions.
        "pillow": PIL.__version__,
        "timm": _version_of("timm"),
        "backbone": backbone,
        "layer": layer,
        "pooling": pooling,
        "data_config": data_config,
        "image_shape": None if image_shape is None else [int(s) for s in image_shape],
        "n_features": int(n_features),
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()'''

FEATURIZER_FINGERPRINT = '''def featurizer_fingerprint(featurizer, exact: bool = False) -> str:
    """The model fingerprint of a fitted featurizer, from the fields that decide its output.

    ``exact=True`` identifies the fitted module by its structure and state
    dict, for when the parameters may have changed since ``fit``.
    """
    backbone, sha256 = featurizer.backbone, featurizer.weights_sha256_
    exact = exact or not identified_by_name(backbone, sha256)
    # Called in fit, a not-yet-built module (see backbone_) has fit's parameters.
    module = featurizer.backbone_ if exact else featurizer._built_backbone()
    return model_fingerprint(
        backbone_identity(backbone, sha256, module if exact else None),
        layer=featurizer.layer if module is None else module.layer,
        pooling=featurizer.pooling if module is None else module.pool.mode,
        data_config=featurizer.data_config_.as_dict(),
        image_shape=featurizer.image_shape,
        n_features=featurizer.n_features_out_,
    )'''

HEAD_FIT_FINGERPRINT = '''    def _head_fit_fingerprint(self, embedder, width: int) -> bytes:
        """The cache key of the untrained embedder: a featurizer's with the same settings and backend="torch"."""
        module = None if identified_by_name(self.backbone, self.weights_sha256_) else embedder
        static = model_fingerprint(
            backbone_identity(self.backbone, self.weights_sha256_, module),
            layer=None,
            pooling=embedder.pool.mode,
            data_config=self.data_config_.as_dict(),
            image_shape=self.image_shape,
            n_features=width,
        )
        return runtime_fingerprint(static, self.device_, self.autocast_dtype_)'''


def fix_fingerprint():
    """The cache fingerprint from explicit fields; the estimators hand them over (no SimpleNamespace)."""
    rel = "sklearn_tl/cache/fingerprint.py"
    text = read(rel)
    if "def backbone_identity" in text:
        return "done already"
    replace_def(rel, "model_fingerprint", FINGERPRINT_FUNCTIONS)
    add_import(rel, "from .._old_paths import old_path_of")
    add_import(rel, "from .._version import package_version")
    text = read(rel)
    text = re.sub(r"^[ \t]+from \.\._version import (__version__|package_version)\n\n?", "", text, flags=re.M)
    text = re.sub(r"__all__ = \[[^\]]*\]", '__all__ = ["backbone_identity", "identified_by_name", "model_fingerprint", '
                  '"runtime_fingerprint"]', text)
    write(rel, text)
    prune_imports(rel)

    featurizer = "sklearn_tl/estimators/featurizer.py"
    text = read(featurizer)
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PretrainedCNNFeaturizer")
    lines = text.splitlines(keepends=True)
    first = min([cls.lineno] + [d.lineno for d in cls.decorator_list]) - 1
    lines.insert(first, FEATURIZER_FINGERPRINT + "\n\n\n")
    text = "".join(lines)
    text = text.replace("model_fingerprint(self, exact=True)", "featurizer_fingerprint(self, exact=True)")
    text = text.replace("model_fingerprint(self)", "featurizer_fingerprint(self)")
    write(featurizer, text)
    add_import(featurizer, "from ..cache.fingerprint import backbone_identity, identified_by_name, model_fingerprint")
    prune_imports(featurizer)

    done = 0
    for rel in files_defining("_head_fit_fingerprint", "sklearn_tl/estimators"):
        replace_def(rel, "_head_fit_fingerprint", HEAD_FIT_FINGERPRINT, cls="*")
        add_import(rel, "from ..cache.fingerprint import backbone_identity, identified_by_name, model_fingerprint")
        prune_imports(rel)
        done += 1
    if not done:
        raise Skip("no _head_fit_fingerprint in sklearn_tl/estimators")
    # the test that fingerprints a featurizer calls the featurizer's function (an import line)
    for path in (ROOT / "tests").glob("test_*.py"):
        src = path.read_text()
        old = "from sklearn_tl.cache.fingerprint import model_fingerprint\n"
        if old in src:
            path.write_text(src.replace(
                old, "from sklearn_tl.estimators.featurizer import featurizer_fingerprint as model_fingerprint\n"))


FREEZE_SCHEDULE_DOC_ADD = """    freeze : None, "none", "backbone", int, float or list of str, default=None
        A freeze spec (:func:`~sklearn_tl.finetune.freeze.resolve_freeze`) of a
        :class:`~sklearn_tl.finetune.network.FineTuneNetwork`, resolved against
        the net's module each time it is used (as skorch's ``Freezer`` resolves
        its patterns), so the callback needs nothing from the net's start-up.
"""

FROZEN_IN = """    def frozen_in(self, network: nn.Module, epoch: int) -> set:
        \"\"\"Names of the parameters of ``network`` that epoch ``epoch`` (1-based) keeps fixed.\"\"\"
        if epoch <= self.unfreeze_after:
            return {n for n, _ in network.named_parameters() if n.startswith(self.prefix)}
        # Callbacks pickled by 0.1 have no ``freeze``: their ``frozen`` holds the resolved names.
        return set(self.frozen) | set(resolve_freeze(getattr(self, "freeze", None), network))"""


def fix_freeze_schedule():
    """The freeze schedule resolves its own spec; the fine-tuner's ``initialize()`` is skorch's order again."""
    rel = "sklearn_tl/finetune/callbacks.py"
    text = read(rel)
    if 'resolve_freeze(getattr(self, "freeze"' in text:
        return "done already"
    sub(rel, 'def __init__(self, frozen=(), unfreeze_after=0, prefix="embedder."):\n        self.frozen = frozen\n',
        'def __init__(self, frozen=(), unfreeze_after=0, prefix="embedder.", freeze=None):\n'
        "        self.frozen = frozen\n        self.freeze = freeze\n")
    replace_def(rel, "frozen_in", FROZEN_IN, cls="FreezeSchedule")
    text = read(rel)
    anchor = '    prefix : str, default="embedder."\n        The parameters frozen during the first phase (the backbone\'s).\n'
    if anchor in text:
        text = text.replace(anchor, anchor + FREEZE_SCHEDULE_DOC_ADD, 1)
        text = text.replace(
            "    frozen : sequence of str, default=()\n        Names of the module's parameters that never train.",
            "    frozen : sequence of str, default=()\n        Names of the module's parameters that never train"
            " (besides those ``freeze`` selects).", 1)
        write(rel, text)
    else:
        REPORT.append("FreezeSchedule docstring: the prefix entry changed; freeze= is not documented")
    add_import(rel, "from .freeze import resolve_freeze")

    done = False
    for rel in files_defining("_default_callbacks", "sklearn_tl/estimators"):
        text = read(rel)
        pattern = re.compile(
            r"( *)# Settings resolved here: initialize\(\) builds the module \(frozen_params_\) before the callbacks\.\n"
            r" *frozen = list\(getattr\(self, \"frozen_params_\", \(\)\)\)\n"
            r" *extra\.append\(\(\"freeze\", FreezeSchedule\(frozen, self\.unfreeze_after, prefix=BACKBONE_PREFIX\)\)\)\n"
        )
        match = pattern.search(text)
        if match is None:
            raise Skip(f"{rel}: the freeze callback lines of _default_callbacks changed")
        indent = match.group(1)
        text = text[: match.start()] + (
            f"{indent}# The schedule resolves `freeze` against the module when it runs: skorch's start-up order stands.\n"
            f"{indent}schedule = FreezeSchedule(unfreeze_after=self.unfreeze_after, prefix=BACKBONE_PREFIX, "
            f"freeze=self.freeze)\n"
            f'{indent}extra.append(("freeze", schedule))\n'
        ) + text[match.end():]
        skorch_order = re.compile(
            r"( *)# skorch's initialize\(\), with the callbacks after the module: they take its frozen layers\.\n"
            r"(?: *self\.[a-z_]+\(\)\n)+ *self\.initialized_ = True\n *return self\n"
        )
        match = skorch_order.search(text)
        if match is None:
            raise Skip(f"{rel}: initialize() no longer spells out skorch's start-up")
        text = text[: match.start()] + f"{match.group(1)}return super().initialize()\n" + text[match.end():]
        text = text.replace(
            '"""Check the parameters, resolve device and precision, build the network, then the callbacks."""',
            '"""Check the parameters, resolve device and precision, then initialise as skorch does."""',
        )
        write(rel, text)
        done = True
    if not done:
        raise Skip("no _default_callbacks in sklearn_tl/estimators")


HOOK_CONTRACT = """
    #: The estimator's parameters these hooks read.
    hook_parameters = (
        @PARAMS@
    )
    #: What the estimator resolves in ``initialize()``, before any hook runs.
    hook_resolved = (@RESOLVED@)
    #: The estimator's own methods these hooks call.
    hook_methods = (@METHODS@)

    def _check_hook_attributes(self) -> None:
        \"\"\"Fail with the missing names when the estimator lacks what these hooks read.\"\"\"
        stated = (*self.hook_parameters, *self.hook_resolved, *self.hook_methods)
        missing = [name for name in stated if not hasattr(self, name)]
        if missing:
            raise AttributeError(
                f"{type(self).__name__} mixes in ImageTrainingMixin but has no {', '.join(missing)}: the hooks "
                f"need the parameters {self.hook_parameters}, {self.hook_resolved} resolved in initialize(), "
                f"and the methods {self.hook_methods}."
            )
"""

# Optional state the mixin reads with a default, or writes itself: not part of the contract.
HOOK_OPTIONAL = {"_fit_seed", "_missing_device", "__dict__", "prefix"}


def fix_hooks_contract():
    """``ImageTrainingMixin`` states the attributes it needs and checks them where training and inference start."""
    rel = "sklearn_tl/finetune/hooks.py"
    text = read(rel)
    if "hook_parameters" in text:
        return "done already"
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ImageTrainingMixin")
    own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    read_attrs = {
        node.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        and isinstance(node.ctx, ast.Load)
    }
    import torch
    from skorch import NeuralNet

    net = NeuralNet(torch.nn.Linear, criterion=torch.nn.MSELoss)
    skorch_names = set(dir(NeuralNet)) | set(vars(net)) | {
        "module_", "criterion_", "optimizer_", "history_", "callbacks_", "initialized_", "_criteria", "_optimizers"}
    needed = sorted(read_attrs - own - skorch_names - HOOK_OPTIONAL)
    methods = [n for n in needed if n.startswith("_") and not n.endswith("_")]
    resolved = [n for n in needed if n.endswith("_") and not n.startswith("__")]
    params = [n for n in needed if n not in methods and n not in resolved]
    REPORT.append(f"ImageTrainingMixin contract: parameters {params}, resolved {resolved}, methods {methods}")

    def as_tuple(names):
        return ", ".join(f'"{n}"' for n in names) + ("," if len(names) == 1 else "")

    block = (HOOK_CONTRACT.replace("@PARAMS@", "\n        ".join(f'"{p}",' for p in params))
             .replace("@RESOLVED@", as_tuple(resolved)).replace("@METHODS@", as_tuple(methods)))
    lines = text.splitlines(keepends=True)
    lines.insert(cls.body[0].end_lineno, block)  # after the class docstring
    write(rel, "".join(lines))
    for method in ("get_iterator", "get_split_datasets"):
        text = read(rel)
        node = find_def(ast.parse(text), method, "ImageTrainingMixin")
        if node is None:
            raise Skip(f"{rel}: no ImageTrainingMixin.{method}")
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        lines = text.splitlines(keepends=True)
        indent = re.match(r"\s*", lines[first.lineno - 1]).group(0)
        lines.insert(first.end_lineno if has_doc else first.lineno - 1, f"{indent}self._check_hook_attributes()\n")
        write(rel, "".join(lines))
    text = read(rel)
    text = re.sub(
        r"It needs the attributes the estimator resolves in\s+``initialize\(\)``: ``device_``, ``autocast_dtype_``,"
        r"\s+``grad_scaler_`` and\s+``data_config_``\.",
        "What it needs from the\nestimator is stated as data (``hook_parameters``, ``hook_resolved``,\n"
        "``hook_methods``) and checked where training and inference start.",
        text,
    )
    write(rel, text)


FROZEN_EMBEDDINGS = '''def frozen_embeddings(embedder, dataset_train, data_config, *, batch_size, device, precision, num_workers,
                      store=None, fingerprint=None, backbone=None):
    """``(embeddings, targets, weights)`` of a training dataset, for the head fit: one forward pass, no grad.

    Parameters
    ----------
    embedder : ImageEmbedder
    dataset_train : Dataset
        ``(image, target)`` items (an :class:`ImageDataset`, a ``Subset`` of one, or any other).
    data_config : DataConfig
        The evaluation transform replaces the training augmentation.
    batch_size : callable
        ``n_images -> batch size`` of the forward pass.
    device, precision, num_workers :
        As :func:`~sklearn_tl.runtime.forward.forward_batches` takes them.
    store : EmbeddingCache or None
        With an :class:`ImageDataset` (or a Subset of one), rows of its whole
        source are looked up and stored, so other folds and fits reuse them.
    fingerprint : callable
        ``width -> runtime fingerprint`` of ``embedder`` (with ``store``).
    backbone :
        Named in the error of a backbone that fails on a probe image.
    """
    plain = with_transform(dataset_train, ImageTransform(data_config))

    def embed(images, on_batch=None):
        return forward_batches(embedder, images, batch_size=batch_size(len(images)), device=device,
                               precision=precision, num_workers=num_workers, on_batch=on_batch)

    parts = _image_dataset_parts(plain)
    if store is not None and parts is not None:
        dataset, indices = parts  # rows of the whole source, so other folds and fits reuse them
        keyed = ImageDataset(dataset.source, dataset.transform, keyed=True)
        width = sum(_probe_widths(embedder, data_config, backbone))
        rows = store.embed(dataset.source, lambda todo: torch.utils.data.Subset(keyed, todo), fingerprint(width),
                           width, embed)
        embeddings = rows[indices]
        targets = torch.as_tensor(np.asarray(dataset.targets)[indices])
        weights = None if dataset.weights is None else torch.as_tensor(dataset.weights[indices])
    else:
        labels = []
        embeddings = embed(_Labelled(plain), on_batch=lambda positions, rows, keys: labels.extend(keys))
        targets, weights = (torch.as_tensor(np.stack(column)) for column in zip(*labels))
    return torch.from_numpy(embeddings), targets, weights'''

FIT_HEAD_METHOD = '''    def _fit_head(self, dataset_train):
        """Fit the head on the frozen embeddings: a forward pass of the images, then L-BFGS."""
        network = unwrapped_module(self)
        if not any(p.requires_grad for p in network.head.parameters()):
            return
        embeddings, targets, weights = frozen_embeddings(
            network.embedder, dataset_train, self.data_config_,
            batch_size=lambda n: self._loader_batch_size(self.get_params_for("iterator_valid"), n),
            device=self.device_, precision=self.precision, num_workers=self.num_workers,
            store=as_embedding_cache(self.cache), backbone=self.backbone,
            fingerprint=lambda width: self._head_fit_fingerprint(network.embedder, width),
        )
        self._fit_head_on(network.head, embeddings, targets, weights)'''

# What ``_fit_head`` said when this fix was written (the targets branch's version), whitespace aside.
FIT_HEAD_EXPECTED_CALLS = ("with_transform(dataset_train, ImageTransform(self.data_config_))", "_image_dataset_parts(plain)",
                           "torch.as_tensor(np.stack(column))", "self._fit_head_on(network.head, torch.from_numpy(embeddings), targets, weights)")

RANGE_TEST_FUNCTION = '''def lr_range_test_training(net, dataset, frozen: set, **kwargs) -> LRFinderResult:
    """:func:`lr_range_test` with exactly the parameters not in ``frozen`` trainable; the flags are put back."""
    network = getattr(net.module_, "_orig_mod", net.module_)  # through torch.compile
    flags = {name: p.requires_grad for name, p in network.named_parameters()}
    try:
        for name, param in network.named_parameters():
            param.requires_grad_(name not in frozen)
        return lr_range_test(net, dataset, **kwargs)
    finally:
        for name, param in network.named_parameters():
            param.requires_grad_(flags[name])'''

RANGE_TEST_METHOD = '''    def _lr_range_test(self, dataset_train, **kwargs) -> LRFinderResult:
        """The range test on the parameters the next epoch trains (as the ``freeze`` callback sets them)."""
        schedule = dict(self.callbacks_).get("freeze")
        network = unwrapped_module(self)
        frozen = set() if schedule is None else schedule.frozen_in(network, len(self.history) + 1)
        return lr_range_test_training(self, dataset_train, frozen, **kwargs)'''


def fix_small_finetuner():
    """The head fit's forward pass and the LR test's freezing become functions that get their inputs as arguments."""
    owners = files_defining("_fit_head", "sklearn_tl/estimators")
    if not owners:
        raise Skip("no _fit_head in sklearn_tl/estimators")
    for rel in owners:
        text = read(rel)
        node = find_def(ast.parse(text), "_fit_head", "*")
        source = re.sub(r"\s+", "", "".join(text.splitlines(keepends=True)[node.lineno - 1 : node.end_lineno]))
        missing = [c for c in FIT_HEAD_EXPECTED_CALLS if re.sub(r"\s+", "", c) not in source]
        if "frozen_embeddings(" in source:
            return "done already"
        if missing:
            raise Skip(f"{rel}: _fit_head changed ({missing[0]} not found); write frozen_embeddings by hand")
        replace_def(rel, "_fit_head", FIT_HEAD_METHOD, cls="*")
        add_import(rel, "from ..finetune.head_fit import frozen_embeddings")
        node = find_def(ast.parse(read(rel)), "_lr_range_test", "*")
        if node is not None:
            original = "".join(read(rel).splitlines(keepends=True)[node.lineno - 1 : node.end_lineno])
            call = re.search(r"return lr_range_test\(self, dataset_train, (.*?)\*\*kwargs\)", original)
            if call is None:
                raise Skip(f"{rel}: _lr_range_test no longer calls lr_range_test(self, dataset_train, ..., **kwargs)")
            # the keyword arguments the method passed on (``default_lr=DEFAULT_LR``) are kept
            replace_def(rel, "_lr_range_test", RANGE_TEST_METHOD.replace(
                "frozen, **kwargs)", f"frozen, {call.group(1)}**kwargs)"), cls="*")
            add_import(rel, "from ..finetune.lr_finder import lr_range_test_training")
        prune_imports(rel)
    head_fit = "sklearn_tl/finetune/head_fit.py"
    text = read(head_fit).rstrip("\n") + "\n\n\n" + FROZEN_EMBEDDINGS + "\n"
    write(head_fit, text)
    for line in ("import numpy as np", "import torch", "from ..data.dataset import ImageDataset, with_transform",
                 "from ..data.transforms import ImageTransform", "from ..models.build import _probe_widths",
                 "from ..runtime.forward import forward_batches"):
        add_import(head_fit, line)
    write(head_fit, re.sub(r'(__all__ = \[[^\]]*)\]', r'\1, "frozen_embeddings"]', read(head_fit), count=1))
    lr_finder = "sklearn_tl/finetune/lr_finder.py"
    text = read(lr_finder).rstrip("\n") + "\n\n\n" + RANGE_TEST_FUNCTION + "\n"
    write(lr_finder, re.sub(r'(__all__ = \[[^\]]*)\]', r'\1, "lr_range_test_training"]', text, count=1))


SETTINGS_MODULE = '''"""This module contains :class:`SettingsParamsMixin`: scikit-learn parameters on a skorch net.

skorch treats a ``torch.nn.Module`` attribute as a component and routes
``set_params`` by prefixes; scikit-learn wants plain parameters and nested
estimators. The mixin reconciles the two for the fine-tuners.
"""

from __future__ import annotations

__all__ = ["SettingsParamsMixin"]


class SettingsParamsMixin:
    """Parameters that may hold a module, and ``final_estimator__<name>``, on a skorch ``NeuralNet``.

    Mixed in before the net class. It needs ``_plain_params`` (the names of
    parameters that are settings even when they hold a module) and a
    ``final_estimator`` parameter.
    """

    # Parameters that may hold a torch module but are settings, not components.
    _plain_params = ("backbone", "head")

@METHODS@
'''


def fix_settings_mixin():
    """The sklearn/skorch parameter plumbing of the fine-tuners becomes one stated mixin (``finetune/params.py``)."""
    names = ("__setattr__", "_get_param_names", "set_params")
    owners = [rel for rel in files_defining("set_params", "sklearn_tl/estimators")
              if find_def(ast.parse(read(rel)), "_get_param_names", "*") is not None]
    if (ROOT / "sklearn_tl/finetune/params.py").exists():
        return "done already"
    if len(owners) != 1:
        raise Skip(f"set_params/_get_param_names defined in {owners or 'no module'}")
    rel = owners[0]
    text = read(rel)
    tree = ast.parse(text)
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
               and all(find_def(ast.Module(body=[n], type_ignores=[]), m, n.name) for m in names))
    lines = text.splitlines(keepends=True)
    pieces, spans = [], []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            pieces.append("".join(lines[first - 1 : node.end_lineno]).rstrip("\n"))
            spans.append((first, node.end_lineno))
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_plain_params"]:
            value = ast.literal_eval(node.value)
            if tuple(value) != ("backbone", "head"):
                raise Skip(f"{rel}: _plain_params is {value}")
            first = node.lineno
            if lines[first - 2].strip().startswith("#"):
                first -= 1
            spans.append((first, node.end_lineno))
    for first, last in sorted(spans, reverse=True):
        del lines[first - 1 : last]
        while first - 2 < len(lines) and lines[first - 2].strip() == "" and lines[first - 1].strip() == "":
            del lines[first - 1]
    text = "".join(lines)
    bases = ", ".join(ast.unparse(b) for b in cls.bases)
    text = text.replace(f"class {cls.name}({bases}):", f"class {cls.name}(SettingsParamsMixin, {bases}):", 1)
    write(rel, text)
    add_import(rel, "from ..finetune.params import SettingsParamsMixin")
    write("sklearn_tl/finetune/params.py", SETTINGS_MODULE.replace("@METHODS@", "\n\n".join(pieces)))


def fix_tta_policy():
    """``tta=True``'s crop preset is resolved by a function of ``augment`` and ``final_estimator``."""
    owners = files_defining("_tta_policy", "sklearn_tl/estimators")
    if not owners:
        raise Skip("no _tta_policy in sklearn_tl/estimators")
    for rel in owners:
        text = read(rel)
        node = find_def(ast.parse(text), "_tta_policy", "*")
        source = "".join(text.splitlines(keepends=True)[node.lineno - 1 : node.end_lineno])
        if "tta_policy(self.augment" in source:
            return "done already"
        body = source.split('"""', 2)[2]  # after the docstring
        function = ("def tta_policy(augment, final_estimator) -> CropPolicy:\n"
                    '    """The crop preset ``tta=True`` takes its views from (checked in ``fit`` and at prediction)."""'
                    + re.sub(r"\n    ", "\n", body).replace("self.augment", "augment")
                    .replace("self.final_estimator", "final_estimator").rstrip() + "\n")
        replace_def(rel, "_tta_policy", '''    def _tta_policy(self) -> CropPolicy:
        """The crop preset ``tta=True`` takes its views from (checked in ``fit`` and at prediction)."""
        return tta_policy(self.augment, self.final_estimator)''', cls="*")
        add_import(rel, "from ..data.transforms import tta_policy")
        transforms = "sklearn_tl/data/transforms.py"
        tt = read(transforms).rstrip("\n") + "\n\n\n" + function
        tt = re.sub(r'(__all__ = \[[^\]]*)\]', r'\1, "tta_policy"]', tt, count=1)
        write(transforms, tt)
        add_import(transforms, "from .augment import CropPolicy, resolve_augment")
        prune_imports(rel)
        prune_imports(transforms)


def fix_constraints_as_data():
    """The fine-tuners' constraint and older-file-default tables are module data, as ``IMAGE_PARAMETER_CONSTRAINTS``."""
    tables = {"_finetune_constraints": "FINETUNE_PARAMETER_CONSTRAINTS",
              "_DEFAULTS_OF_OLDER_FILES": "DEFAULTS_OF_OLDER_FILES"}
    owners = files_defining("_check_finetune_params", "sklearn_tl/estimators")
    if not owners:
        raise Skip("no _check_finetune_params in sklearn_tl/estimators")
    moved = 0
    for rel in owners:
        text = read(rel)
        tree = ast.parse(text)
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            for node in cls.body:
                target = node.target if isinstance(node, ast.AnnAssign) else (
                    node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
                name = getattr(target, "id", None)
                if name not in tables or not isinstance(node.value, ast.Dict):
                    continue
                lines = text.splitlines(keepends=True)
                first = node.lineno
                while lines[first - 2].strip().startswith("#"):
                    first -= 1
                block = "".join(lines[first - 1 : node.end_lineno])
                block = re.sub(r"^    ", "", block, flags=re.M).replace(name, tables[name], 1)
                indent = "    "
                annotation = ": dict" if isinstance(node, ast.AnnAssign) else ""
                lines[first - 1 : node.end_lineno] = [f"{indent}{name}{annotation} = {tables[name]}\n"]
                class_first = min([cls.lineno] + [d.lineno for d in cls.decorator_list])
                lines.insert(class_first - 1, block + "\n\n")
                text = "".join(lines)
                write(rel, text)
                moved += 1
                break
            else:
                continue
            break
    if not moved:
        return "nothing to move"
    # a second table, if any, after the first moved
    return fix_constraints_as_data() if moved and any(
        re.search(rf"^    {n}(: dict)? = \{{", read(r), flags=re.M) for r in owners for n in tables) else None


def fix_readme():
    """README: the Architecture section (``tools/architecture.md``) and the model-source extension point."""
    rel = "README.md"
    text = read(rel)
    section = (Path(__file__).resolve().parent / "architecture.md").read_text()
    start = text.find("## Architecture\n")
    if start < 0:
        raise Skip("README has no '## Architecture' section")
    end = text.find("\n## ", start + 1)
    text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    text = text.replace(
        "a whole model library, with a `ModelSource` subclass (see `sklearn_tl/_sources`).",
        "a whole model library, with a `ModelSource` subclass registered by `register_source`\n"
        "(`sklearn_tl.models.sources`; see [Architecture](#architecture)).",
    )
    write(rel, text)


def run(root: Path, only=None) -> int:
    global ROOT
    ROOT = root
    failed = 0
    for fix in FIXES:
        if only and fix.__name__ not in only:
            continue
        try:
            result = fix()
            print(f"{fix.__name__}: {result or 'applied'}")
        except Skip as exc:
            failed += 1
            print(f"{fix.__name__}: NOT APPLIED ({exc})")
    for line in REPORT:
        print("  " + line)
    for rel in sorted(TOUCHED):
        if rel.endswith(".py") and rel.startswith("sklearn_tl/"):
            tidy_imports(rel)
    return 1 if failed else 0


FIXES = [fix_source_registry, fix_make_trunk, fix_data_config_import, fix_blake, fix_version, fix_pyproject,
         fix_fingerprint, fix_freeze_schedule, fix_hooks_contract, fix_small_finetuner, fix_settings_mixin,
         fix_tta_policy, fix_constraints_as_data, fix_readme]


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only = [a[len("--only="):] for a in sys.argv[1:] if a.startswith("--only=")]
    sys.exit(run(Path(args[0] if args else ".").resolve(), only))
