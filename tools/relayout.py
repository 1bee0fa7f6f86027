"""Codemod for issue 23: the flat ``sklearn_tl/_*.py`` layout becomes layered subpackages.

Run from a checkout of the flat layout (stdlib only)::

    python tools/relayout.py [ROOT] [--dry-run]

What it does, in order:

1. Plans where every top-level definition of every package module goes: a whole
   module moves to its default destination (:data:`MODULES`); the definitions
   named in :data:`MOVES` go elsewhere; every error and warning class goes to
   ``sklearn_tl.exceptions``. Definitions it does not know (added since this
   table was written) stay with their module's default destination; modules it
   does not know stay where they are. Both are printed.
2. Rewrites every package import (top-level and inside functions, relative and
   absolute) in the package, ``tests/`` and ``benchmarks/`` from the map of
   each (old module, name) to its new module; dotted paths in strings and
   comments (``monkeypatch.setattr("sklearn_tl._weights.X", ...)``, docs)
   follow too.
3. Writes the new modules (``git mv`` first where a module moves whole, so its
   history follows), deletes emptied modules, and writes
   ``sklearn_tl/_old_paths.py``: the map of old paths that lets pickles written
   by 0.1 find their classes.

Each new module gets the imports its code uses (pruned from the imports of the
modules it came from, plus imports of the definitions that moved away from it).
The hand-written part of the refactor is ``tools/relayout_fixes.py``, run after
this script.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PKG = "sklearn_tl"

# Old module (relative to the package; "" is the package __init__) -> its default destination.
MODULES = {
    "": "",
    "__main__": "__main__",
    "onnx_images": "onnx_images",
    "_defaults": "_defaults",
    "_augment": "data.augment",
    "_preprocess": "data.transforms",
    "_images": "data.inputs",
    "_datasets": "data.folders",
    "_cache": "cache.store",
    "_weights": "models.weights",
    "_backbones": "models.registry",
    "_sources": "models.sources",
    "_sources.cut": "models.sources.cut",
    "_sources.module": "models.sources.module",
    "_sources.timm": "models.sources.timm",
    "_sources.torchvision": "models.sources.torchvision",
    "_model": "models.build",
    "_engine": "runtime.forward",
    "_onnx": "runtime.onnx",
    "_head": "finetune.network",
    "_freeze": "finetune.freeze",
    "_callbacks": "finetune.callbacks",
    "_probe": "finetune.head_fit",
    "_lr_find": "finetune.lr_finder",
    "_finetune_hooks": "finetune.hooks",
    "_base": "estimators.base",
    "_state": "estimators.state",
    "_featurizer": "estimators.featurizer",
    "_finetune_base": "estimators.finetune_base",
    "_finetune": "estimators.classifier",
    "_finetune_regressor": "estimators.regressor",
    "_export": "deploy.export",
    "_persistence": "deploy.persistence",
    "_dask": "deploy.dask",
    "cli": "cli.commands",
    "_demo": "cli.demo",
    "_report": "cli.report",
    "_training": "cli.training",
}

# Definitions that leave their module's default destination: {new module: [(old module, name), ...]}.
# Entries whose old module or name does not exist (any more, or yet) are skipped.
_FT = ("_finetune", "_finetune_base")
MOVES = {
    "_version": [("", "__version__")],
    "data.config": [
        ("_preprocess", n) for n in ("IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_CROP_FRACTION", "DataConfig",
                                     "resolve_data_config")
    ],
    "data.decode": [
        ("_images", n) for n in ("SUPPORTED_CHANNELS", "_hwc_to_chw", "_drop_alpha", "pil_to_tensor", "_shrink_for",
                                 "_where", "_read_error", "read_file_bytes", "read_image_file", "decode_image",
                                 "_open_image", "_decode", "QUOTE_LIMIT", "SIGNATURE_BYTES", "_cut", "short_repr",
                                 "describe_encoded")
    ],
    "data.keys": [("_images", n) for n in ("_blake", "file_digest", "array_digest", "tensor_digest", "bytes_digest")],
    "data.dataset": [
        ("_images", n) for n in ("ON_ERROR", "LoadFailure", "PartialBatch", "KeyedImage", "KeyedBatch",
                                 "ImageDataset", "_stack", "collate_images")
    ] + [("_finetune_hooks", "with_transform")],
    "cache.fingerprint": [
        ("_cache", n) for n in ("_state_dict_digest", "_version_of", "model_fingerprint", "runtime_fingerprint")
    ],
    "models.spec": [("_backbones", "BackboneSpec")],
    "models.registry": [("_preprocess", "native_data_config"), ("_weights", "resolve_weights"),
                        ("_sources", "source_for")],
    "models.sources.base": [
        ("_sources", n) for n in ("ModelSource", "load_strict", "_CONVS", "_POOLS", "_has_params", "stage_blocks")
    ],
    # Outside the sources package, so that a spec finds its source without running the adapters' package.
    "models.source_registry": [("_sources", n) for n in ("_SOURCES", "register_source", "get_source", "sources")],
    "models.embedder": [("_model", n) for n in ("POOLINGS", "GlobalPool", "ImageEmbedder", "network_root",
                                                 "find_layer")],
    "runtime.device": [
        ("_engine", n) for n in ("DEVICES_HELP", "PRECISIONS", "AUTO_BATCH_SIZE", "_current_worker",
                                 "dask_worker_threads", "dask_worker_gpu", "resolve_device", "cpu_has_native_bf16",
                                 "resolve_precision", "resolve_batch_size", "autocast_context", "to_model_input",
                                 "module_device", "_same_device", "inference_module", "for_inference",
                                 "apply_worker_threads")
    ],
    "finetune.layers": [(m, n) for m in _FT for n in ("_LAYER_EMBEDDERS", "_LAYER_LOCK", "_layer_embedder")],
    "finetune.head_fit": [(m, n) for m in _FT for n in ("_image_dataset_parts", "_Labelled")],
    "finetune.labels": [(m, "_has_nan_label") for m in ("_finetune_hooks", *_FT)],
    "estimators.finetune_docs": [("_finetune_base", n) for n in ("_FINETUNE_DOCS", "finetune_docs")],
    # The parser and the entry point; the commands stay in cli.commands (the parser refers to them).
    "cli.app": [
        ("cli", n) for n in ("EXIT_USER_ERROR", "_Parser", "_one_line", "_weights_arg", "_auto_or_positive",
                             "_batch_size_arg", "_lr_arg", "_freeze_arg", "_OPTION_NAMES", "_in_cli_words",
                             "_add_backbone_args", "_examples", "build_parser", "_one_line_warnings", "main")
    ],
}

# Base classes that make a class an error or a warning (all of them go to sklearn_tl.exceptions).
EXCEPTION_BASES = {"Exception", "ValueError", "TypeError", "FileNotFoundError", "OSError", "RuntimeError",
                   "KeyError", "ImportError", "UserWarning", "Warning", "FutureWarning", "DeprecationWarning",
                   "RuntimeWarning"}

# Names a new module re-exports for users (its public API), from the modules that define them.
EXPORTS = {
    "models.sources": ["ModelSource", "register_source", "get_source", "sources", "stage_blocks", "load_strict"],
    "cli": ["main", "build_parser"],
}

SUBPACKAGES = ["data", "cache", "models", "models.sources", "runtime", "finetune", "estimators", "deploy", "cli"]

DOCS = {
    "exceptions": "Every error and warning class of sklearn_tl, in one module (as scikit-learn and skorch do).",
    "_version": "The package version, in a module that imports nothing of the package.",
    "data": """The data layer: images in, preprocessed tensors out; imports nothing that builds networks.

``config`` (:class:`DataConfig` and its resolver), ``augment`` (crop policies),
``transforms`` (the geometric transforms), ``decode`` (files and PIL images to
tensors), ``keys`` (content digests), ``inputs`` (any ``X`` as an image source),
``dataset`` (the torch Dataset, collation), ``folders`` (image folders).""",
    "data.config": """This module contains :class:`DataConfig`, how images are prepared for a backbone, and its resolver.

A data type that imports nothing of the package: the model sources fill it
from their weights' metadata; explicit arguments override it
(:func:`resolve_data_config`).""",
    "data.decode": """This module contains the decoding of image files and PIL images into ``(C, H, W)`` tensors.

Errors name the file and its index (:class:`~sklearn_tl.ImageReadError`);
large JPEGs are decoded at reduced scale; EXIF orientation is applied.""",
    "data.keys": """This module contains the content digests the embedding cache keys a row on.

A key is computed from exactly the data that is decoded (see
:meth:`~sklearn_tl.data.inputs.ImageSource.load_keyed`).""",
    "data.dataset": """This module contains :class:`ImageDataset`, the torch Dataset over an image source, and collation.""",
    "cache": "The embedding cache: the store, and the fingerprint computed from fields the estimators hand it.",
    "cache.fingerprint": """This module contains the model fingerprint: the model's part of every cache key.

It is computed from explicit fields (the backbone's identity, layer, pooling,
preprocessing, image shape, width) that the estimators hand it; it reads no
estimator attribute.""",
    "models": """The model layer: backbone specs and their registry, weights, model sources, the embedder and its build.""",
    "models.spec": """This module contains :class:`BackboneSpec`, what the package knows about one architecture.""",
    "models.sources": """Model sources: one adapter per library that builds networks (the public extension point).

A *source* knows, for the networks of one library, how to build one, how its
named weights resolve, what preprocessing its weights were trained with, where
its feature map ends (the *trunk*), how to cut the trunk after named layers and
what its blocks are (for freezing). Supporting another library (Hugging Face
``transformers`` vision models, open_clip ...) is a :class:`ModelSource`
subclass registered with :func:`register_source`; a
:class:`~sklearn_tl.BackboneSpec` whose ``source`` names it then builds
through it.

The built-in sources register themselves here, at the top of the package:
``"torchvision"`` and ``"timm"`` (named backbones) and ``"module"`` (a
``torch.nn.Module`` the user passes). Each adapter imports :mod:`.base`, never
this package.""",
    "models.sources.base": """This module contains :class:`ModelSource`, the interface of a model source.""",
    "models.source_registry": """This module contains the registry of model sources: a name -> :class:`ModelSource` table.

It imports nothing, so a :class:`~sklearn_tl.BackboneSpec` finds its source
here without importing the adapters.""",
    "models.embedder": """This module contains :class:`ImageEmbedder` (normalise → trunk → global pool) and :class:`GlobalPool`.""",
    "runtime": "The runtime layer: device and precision, the batched forward pass, ONNX Runtime.",
    "runtime.device": """This module contains the choice of device, precision and batch size, and Dask worker introspection.""",
    "finetune": """The fine-tuning layer: network, freeze schedule, callbacks, head fit, LR finder, labels, skorch hooks.""",
    "finetune.layers": """This module contains the cut of a tuned embedder at ``layer=``, made once per state of the network.""",
    "finetune.labels": """This module contains the checks of classification labels.""",
    "estimators": "The estimators: the featurizer and the fine-tuners.",
    "estimators.finetune_docs": """This module contains the docstring parts the fine-tuners share.""",
    "deploy": "Deployment: ONNX export, saving and loading model files, Dask.",
    "cli": """The ``sklearn-tl`` command (``python -m sklearn_tl``).""",
    "cli.app": """This module contains the ``sklearn-tl`` argument parser and entry point (``main``).

The commands themselves are in :mod:`sklearn_tl.cli.commands`; a mistake in
the input prints one line and exits with status 2.""",
}

# --------------------------------------------------------------------------- helpers


def full(rel: str) -> str:
    return PKG if rel == "" else f"{PKG}.{rel}"


def rel_of(dotted: str) -> str:
    return "" if dotted == PKG else dotted[len(PKG) + 1 :]


class Module:
    """One old module: its text, tree and top-level statements."""

    def __init__(self, rel: str, path: Path):
        self.rel = rel
        self.path = path
        self.is_package = path.name == "__init__.py"
        self.text = path.read_text()
        self.tree = ast.parse(self.text)

    @property
    def package(self) -> str:
        """The package relative imports in this module resolve against (full dotted name)."""
        name = full(self.rel)
        return name if self.is_package else name.rpartition(".")[0]


def discover(root: Path) -> dict[str, Module]:
    modules = {}
    for path in sorted((root / PKG).rglob("*.py")):
        parts = list(path.relative_to(root / PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = Module(".".join(parts), path)
    return modules


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        names = []
        for target in node.targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.append(sub.id)
        return names
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def is_exception_class(node: ast.stmt) -> bool:
    if not isinstance(node, ast.ClassDef):
        return False
    bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
    return bool(bases & EXCEPTION_BASES) or any(b.endswith(("Error", "Warning")) for b in bases)


def statement_lines(module: Module, node: ast.stmt, previous_end: int) -> tuple[int, int]:
    """1-based (first, last) lines of ``node``, with decorators and the comment lines above it."""
    lines = module.text.splitlines()
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    first = start
    line = start - 1
    while line > previous_end:
        stripped = lines[line - 1].strip()
        if stripped.startswith("#"):
            first = line
        elif stripped and not stripped.startswith("#"):
            break
        line -= 1
    return first, node.end_lineno


def relative(from_module: str, is_package: bool, target: str) -> tuple[int, str]:
    """``(level, module)`` of a relative import of ``target`` written in ``from_module`` (full names)."""
    package = from_module if is_package else from_module.rpartition(".")[0]
    pkg_parts, target_parts = package.split("."), target.split(".")
    common = 0
    while common < min(len(pkg_parts), len(target_parts)) and pkg_parts[common] == target_parts[common]:
        common += 1
    return len(pkg_parts) - common + 1, ".".join(target_parts[common:])


def absolute(package: str, level: int, module: str | None) -> str:
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


# --------------------------------------------------------------------------- the plan


class Plan:
    def __init__(self, modules: dict[str, Module]):
        self.modules = modules
        self.dest: dict[tuple[str, str], str] = {}  # (old rel, name) -> new rel
        self.stmt_dest: dict[tuple[str, int], str] = {}  # (old rel, statement index) -> new rel
        self.reexports: dict[tuple[str, str], tuple[str, str]] = {}  # (old rel, name) -> (old rel, name)
        self.unplaced: list[str] = []
        self.unknown_modules = [rel for rel in modules if rel not in MODULES]
        self.module_dest = {rel: MODULES.get(rel, rel) for rel in modules}
        wanted = {(old, name): new for new, entries in MOVES.items() for old, name in entries}
        self.listed_missing = []
        for (old, name), new in wanted.items():
            if old in modules and name not in self.top_level_names(old):
                self.listed_missing.append(f"{old}.{name}")
        for rel, module in modules.items():
            default = self.module_dest[rel]
            if rel not in MODULES:
                self.unplaced.append(f"module sklearn_tl.{rel} (not in MODULES: left where it is)")
            for index, node in enumerate(module.tree.body):
                names = defined_names(node)
                target = default
                if is_exception_class(node):
                    target = "exceptions"
                else:
                    for name in names:
                        if (rel, name) in wanted:
                            target = wanted[(rel, name)]
                self.stmt_dest[(rel, index)] = target
                for name in names:
                    self.dest[(rel, name)] = target
                if isinstance(node, ast.ImportFrom):
                    source = self.resolve_from(module, node)
                    if source is not None:
                        for alias in node.names:
                            self.reexports[(rel, alias.asname or alias.name)] = (source, alias.name)
        self.known_defs = set(self.dest)
        self.followed = self._follow_users(wanted)

    def _follow_users(self, wanted) -> list[str]:
        """An unlisted constant of a split module that only another destination's code uses goes there."""
        followed = []
        split = {old for old, _ in wanted}
        for rel in sorted(split & set(self.modules)):
            body = self.modules[rel].tree.body
            default = self.module_dest[rel]
            changed = True
            while changed:
                changed = False
                for node in body:
                    names = defined_names(node)
                    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or any((rel, n) in wanted for n in names):
                        continue  # constants only: a function follows the table (the layering test says which)
                    if any(self.dest.get((rel, n)) != default for n in names):
                        continue
                    users = set()
                    for other in body:
                        if other is node or isinstance(other, (ast.Import, ast.ImportFrom)):
                            continue
                        if {x.id for x in ast.walk(other) if isinstance(x, ast.Name)} & set(names):
                            users.add(self.target_of(rel, other))
                    if len(users) == 1 and (home := users.pop()) != default:
                        for n in names:
                            self.dest[(rel, n)] = home
                        followed.append(f"{rel}.{'/'.join(names)} -> {home} (its only users are there)")
                        changed = True
        return followed

    def target_of(self, rel: str, node: ast.stmt) -> str:
        """Where a top-level statement of old module ``rel`` goes."""
        if is_exception_class(node):
            return "exceptions"
        for name in defined_names(node):
            if (rel, name) in self.dest:
                return self.dest[(rel, name)]
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and (rel, "main") in self.dest:
            return self.dest[(rel, "main")]  # ``if __name__ == "__main__": main()`` goes with main
        return self.module_dest[rel]

    def top_level_names(self, rel: str) -> set[str]:
        return {n for node in self.modules[rel].tree.body for n in defined_names(node)}

    def resolve_from(self, module: Module, node: ast.ImportFrom) -> str | None:
        """The old module (relative name) an ImportFrom in ``module`` imports from; None if not ours."""
        if node.level:
            name = absolute(module.package, node.level, node.module)
        else:
            name = node.module or ""
        if name != PKG and not name.startswith(PKG + "."):
            return None
        return rel_of(name)

    def new_home(self, old: str, name: str, seen=()) -> str | None:
        """The new module (relative) that holds ``name`` as imported from old module ``old``."""
        if (old, name) in self.dest:
            return self.dest[(old, name)]
        if (old, name) in self.reexports and (old, name) not in seen:
            return self.new_home(*self.reexports[(old, name)], seen=(*seen, (old, name)))
        if old in self.module_dest:
            return None
        return None

    def module_home(self, old: str) -> str | None:
        if old in self.module_dest:
            return self.module_dest[old]
        return None


# --------------------------------------------------------------------------- import rewriting


def format_from(level: int, module: str, aliases: list[tuple[str, str | None]], indent: str = "") -> str:
    names = [f"{n} as {a}" if a and a != n else n for n, a in aliases]
    head = f"{indent}from {'.' * level}{module} import "
    line = head + ", ".join(names)
    if len(line) <= 120:
        return line
    return head + "(\n" + "".join(f"{indent}    {n},\n" for n in names) + f"{indent})"


class Rewriter:
    """Rewrites the package imports of one file to the new layout (absolute or relative)."""

    def __init__(self, plan: Plan, notes: list):
        self.plan = plan
        self.notes = notes

    def targets_of_from(self, package: str, node: ast.ImportFrom, outside: bool, where: str):
        """[(new module full name, name, asname)] for an ImportFrom, or None when it is not the package's."""
        name = absolute(package, node.level, node.module) if node.level else (node.module or "")
        if name != PKG and not name.startswith(PKG + "."):
            return None
        old = rel_of(name)
        if outside and old == "":
            # The public names: ``from sklearn_tl import X`` stays; a submodule (``_onnx``) follows its move.
            moved = [a for a in node.names if a.name in self.plan.module_dest and self.plan.module_dest[a.name] != a.name]
            if not moved:
                return None
            out = [(PKG, a.name, a.asname) for a in node.names if a not in moved]
            for alias in moved:
                parent, _, last = full(self.plan.module_dest[alias.name]).rpartition(".")
                out.append((parent, last, alias.asname or alias.name))
            return out
        out = []
        for alias in node.names:
            sub = f"{old}.{alias.name}" if old else alias.name
            if sub in self.plan.module_dest and (old, alias.name) not in self.plan.dest:
                new = self.plan.module_dest[sub]  # a submodule imported by name
                parent, _, last = full(new).rpartition(".")
                out.append((parent, last, alias.asname or (alias.name if last != alias.name else None)))
                continue
            home = self.plan.new_home(old, alias.name)
            if outside:  # users' code takes a name from the public module that exports it
                default = self.plan.module_dest.get(old)
                if alias.name in EXPORTS.get(old, ()):
                    home = old
                elif default is not None and alias.name in EXPORTS.get(default, ()):
                    home = default
            if home is None:
                # Not in that module (any more): where the only module that defines it sends it.
                owners = {r for (r, n) in self.plan.dest if n == alias.name and r in self.plan.modules}
                if len(owners) == 1:
                    owner = owners.pop()
                    self.notes.append(f"{where}: {alias.name!r} is not in sklearn_tl.{old}: taken from {owner}")
                    out.append((full(self.plan.dest[(owner, alias.name)]), alias.name, alias.asname))
                    continue
                home = self.plan.module_dest.get(old, old)
                if old in self.plan.modules and alias.name != "*":
                    self.notes.append(f"{where}: {alias.name!r} from sklearn_tl.{old} not found; kept with its module")
            out.append((full(home), alias.name, alias.asname))
        return out

    def rewrite_text(self, text: str, package: str, outside: bool, where: str, attr_uses=None) -> str:
        """``text`` with every package import rewritten, in absolute form."""
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        edits = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = self.targets_of_from(package, node, outside, where)
                if targets is None:
                    continue
                indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)
                grouped = defaultdict(list)
                for module, name, asname in targets:
                    grouped[module].append((name, asname))
                new = "\n".join(format_from(0, m, a, indent) for m, a in grouped.items())
                edits.append((node, new))
            elif isinstance(node, ast.Import):
                changed, parts = False, []
                for alias in node.names:
                    if alias.name.startswith(PKG + "."):
                        old = rel_of(alias.name)
                        new = self.plan.module_dest.get(old)
                        if new is not None and alias.asname and attr_uses is not None:
                            # Defined names go with their definition; imported ones with the code that uses them.
                            homes = {self.plan.dest.get((old, a), new) for a in attr_uses.get(alias.asname, ())}
                            if len(homes) == 1:
                                new = homes.pop()
                            elif len(homes) > 1:
                                self.notes.append(f"{where}: {alias.asname}.* spans {sorted(homes)}; kept {new}")
                        if new is not None:
                            changed = True
                            parts.append(f"{full(new)} as {alias.asname}" if alias.asname else full(new))
                            continue
                    parts.append(f"{alias.name} as {alias.asname}" if alias.asname else alias.name)
                if changed:
                    indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)
                    edits.append((node, "\n".join(f"{indent}import {p}" for p in parts)))
        return apply_edits(text, edits)


def apply_edits(text: str, edits) -> str:
    lines = text.splitlines(keepends=True)
    for node, new in sorted(edits, key=lambda e: e[0].lineno, reverse=True):
        first, last = node.lineno - 1, node.end_lineno - 1
        tail = lines[last][node.end_col_offset :]
        if new == "":  # a dropped statement takes the blank line after it along
            blank_after = last + 1 < len(lines) and not lines[last + 1].strip()
            lines[first : last + 1 + blank_after] = []
            continue
        # Keep a comment after the statement on its last line (``# noqa`` ...).
        lines[first : last + 1] = [new + (tail if tail.strip() else "\n")]
    return "".join(lines)


def attribute_uses(tree: ast.AST) -> dict[str, set]:
    uses = defaultdict(set)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            uses[node.value.id].add(node.attr)
    return uses


DOTTED = re.compile(r"\bsklearn_tl((?:\.[A-Za-z_]\w*)+)")


def rewrite_dotted(text: str, plan: Plan) -> str:
    """Dotted paths ``sklearn_tl._x.name`` in strings, comments and docs, to the new layout."""

    taken = set(plan.module_dest.values()) | set(MOVES) | set(SUBPACKAGES)

    def repl(match):
        parts = match.group(1)[1:].split(".")
        for cut in range(len(parts), 0, -1):
            old = ".".join(parts[:cut])
            if old in taken:
                return match.group(0)  # a path of the new layout (``sklearn_tl.cli`` is a package again)
            if old in plan.module_dest and old in plan.modules and not old.startswith("__"):
                new = plan.module_dest[old]
                if cut < len(parts):
                    new = plan.new_home(old, parts[cut]) or new
                if new == old:
                    return match.group(0)
                return ".".join([full(new)] + parts[cut:])
        return match.group(0)

    return DOTTED.sub(repl, text)


def rewrite_lazy_tables(text: str, plan: Plan, rel: str) -> str:
    """Dicts of ``name -> "_old_module"`` (a PEP 562 lazy ``__init__``) point at each name's new module."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Dict) or not value.values:
            continue
        pairs = list(zip(value.keys, value.values))
        if not all(isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str)
                   for k, v in pairs):
            continue
        package = full(rel) if plan.modules[rel].is_package else full(rel).rpartition(".")[0]
        olds = [rel_of(absolute(package, 1, v.value)) for _, v in pairs]
        if not all(old in plan.module_dest for old in olds):
            continue
        for (key, val), old in zip(pairs, olds):
            home = plan.new_home(old, key.value) or plan.module_dest[old]
            level, rest = relative(full(rel), plan.modules[rel].is_package, full(home))
            edits.append((val, repr(rest if level == 1 else "." * (level - 1) + rest).replace("'", '"')))
    for val, new in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        line = lines[val.lineno - 1]
        lines[val.lineno - 1] = line[: val.col_offset] + new + line[val.end_col_offset :]
    return "".join(lines)


def to_relative(text: str, module: str, is_package: bool) -> str:
    """Absolute package imports in ``text`` (the source of ``module``) made relative; self-imports dropped."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits = []
    package = module if is_package else module.rpartition(".")[0]
    at_top = {(absolute(package, n.level, n.module) if n.level else n.module, a.name, a.asname)
              for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
            node.module == PKG or node.module.startswith(PKG + ".")
        ):
            indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)
            aliases = [(a.name, a.asname) for a in node.names]
            nested = node not in tree.body
            # an import of the module itself, or one inside a function that the top already makes: dropped
            if node.module == module or (nested and all((node.module, n, a) in at_top for n, a in aliases)):
                edits.append((node, f"{indent}pass" if _only_statement(tree, node) else ""))
                continue
            level, rest = relative(module, is_package, node.module)
            edits.append((node, format_from(level, rest, aliases, indent)))
    return sort_nested_imports(apply_edits(text, edits))


def sort_nested_imports(text: str) -> str:
    """Each run of imports inside a function merged and sorted as isort would."""
    tree = ast.parse(text)
    runs = []
    for node in ast.walk(tree):
        if node is tree:
            continue
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            run = []
            for stmt in block + [None]:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)) and (
                    not run or stmt.lineno == run[-1].end_lineno + 1
                ):
                    run.append(stmt)
                    continue
                if len(run) > 1:
                    runs.append(run)
                run = [stmt] if isinstance(stmt, (ast.Import, ast.ImportFrom)) else []
    lines = text.splitlines(keepends=True)
    for run in sorted(runs, key=lambda r: r[0].lineno, reverse=True):
        indent = re.match(r"\s*", lines[run[0].lineno - 1]).group(0)
        bound = {a.asname or a.name.split(".")[0] for n in run for a in n.names}
        block = build_imports(run, bound, "", False)
        new = "".join(indent + line + "\n" if line else "\n" for line in block.split("\n"))
        lines[run[0].lineno - 1 : run[-1].end_lineno] = [new]
    return "".join(lines)


def _only_statement(tree, node) -> bool:
    for parent in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(parent, field, None)
            if isinstance(block, list) and node in block:
                return len(block) == 1
    return False


# --------------------------------------------------------------------------- assembling new modules


STDLIB = set(sys.stdlib_module_names)


def import_group(node: ast.stmt) -> int:
    if isinstance(node, ast.ImportFrom):
        if node.module == "__future__":
            return 0
        if node.level:
            return 3
        top = (node.module or "").split(".")[0]
    else:
        top = node.names[0].name.split(".")[0]
    if top == PKG:
        return 3
    return 1 if top in STDLIB else 2


def used_names(nodes) -> set:
    names = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                pass
    return names


def all_list(node: ast.stmt) -> list[str] | None:
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
        try:
            return list(ast.literal_eval(node.value))
        except ValueError:
            return None
    return None


def build_imports(import_nodes: list[ast.stmt], used: set, module: str, is_package: bool) -> str:
    """Merged, pruned and grouped import statements (package imports relative)."""
    plain: dict[str, list] = {}  # "import x" lines
    froms: dict[tuple[int, str], list] = defaultdict(list)
    for node in import_nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if bound in used:
                    key = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                    plain[key] = [import_group(node), alias.name]
        else:
            mod = node.module or ""
            if node.module == "__future__":
                froms[(0, "__future__")] += [(a.name, a.asname) for a in node.names]
                continue
            for alias in node.names:
                bound = alias.asname or alias.name
                if bound in used or alias.name == "*":
                    froms[(node.level, mod)].append((alias.name, alias.asname))
    groups = defaultdict(list)
    for key, (group, name) in plain.items():
        groups[group].append((name.lower(), 0, key))
    for (level, mod), aliases in froms.items():
        seen, unique = set(), []
        for alias in aliases:
            if alias not in seen:
                seen.add(alias)
                unique.append(alias)
        if level == 0 and (mod == PKG or mod.startswith(PKG + ".")):
            if mod == full(module):
                continue
            level, rest = relative(full(module), is_package, mod)
            group = 3
        else:
            rest = mod
            group = 0 if mod == "__future__" else import_group(ast.ImportFrom(module=mod, names=[], level=level))
        unique.sort(key=lambda a: _isort_key(a[0]))
        sort_mod = ("." * level) + rest
        groups[group].append(((("~" * (10 - level)) if level else "") + sort_mod.lower(), 1, format_from(level, rest, unique)))
    blocks = []
    for group in sorted(groups):
        entries = sorted(groups[group], key=lambda e: (e[1] if group != 3 else 0, e[0]))
        if group in (1, 2):  # isort (ruff): "import x" before "from x import" within a section? no: by module name
            entries = sorted(groups[group], key=lambda e: (e[1], e[0]))
        blocks.append("\n".join(e[2] for e in entries))
    return "\n\n".join(blocks)


def _isort_key(name: str):
    # ruff/isort "force-sort-within-sections" off, order-by-type on: CONSTANTS, Classes, functions.
    if name.isupper() and len(name) > 1:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return (kind, name.lower())


def assemble(plan: Plan, rewritten: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """New module (relative name) -> source text; and new module -> old modules it came from."""
    contributions = defaultdict(list)  # new -> [(old rel, node, text)]
    imports = defaultdict(list)  # new -> [import nodes]
    docstrings = {}
    all_lists = defaultdict(list)
    sources_of = defaultdict(list)
    trees = {rel: ast.parse(text) for rel, text in rewritten.items()}
    for rel, tree in trees.items():
        module = plan.modules[rel]
        text_lines = rewritten[rel].splitlines()
        previous_end = 0
        default = plan.module_dest[rel]
        # the old module's own top-level imports go to every new module that takes code from it
        own_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for index, node in enumerate(tree.body):
            first, last = statement_lines_from(text_lines, node, previous_end)
            previous_end = node.end_lineno
            if index == 0 and is_docstring(node):
                docstrings.setdefault(default, ast.get_docstring(tree, clean=False))
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = all_list(node)
            if names is not None:
                all_lists[rel] = names
                continue
            target = plan.target_of(rel, node)
            text = "\n".join(text_lines[first - 1 : last])
            contributions[target].append((rel, node, text, first))
            if rel not in sources_of[target]:
                sources_of[target].append(rel)
                imports[target].extend(own_imports)
        if rel not in sources_of[default]:
            sources_of[default].append(rel)
    out = {}
    # A module that moves whole (nothing in, nothing out) keeps its text: only its imports change.
    whole = {}
    for rel in trees:
        target = plan.module_dest[rel]
        intact = all(
            plan.target_of(rel, node) == target
            for node in trees[rel].body
            if not isinstance(node, (ast.Import, ast.ImportFrom)) and all_list(node) is None
        )
        shims = set(all_lists.get(rel, [])) - plan.top_level_names(rel)  # re-exports listed in __all__
        if intact and not shims and sources_of[target] == [rel] and target not in EXPORTS and target not in DOCS:
            whole[target] = rewritten[rel]
    targets = set(contributions) | {plan.module_dest[rel] for rel in trees} | set(EXPORTS) | set(SUBPACKAGES)
    for target in sorted(targets):
        if target in whole:
            out[target] = whole[target]
            continue
        # The module whose default this is comes first, then the others in the order MOVES lists them.
        listed = list(dict.fromkeys(old for old, _ in MOVES.get(target, [])))

        def rank(rel):
            if plan.module_dest.get(rel) == target:
                return 0
            return 1 + listed.index(rel) if rel in listed else len(listed) + 1

        pieces = sorted(contributions.get(target, []), key=lambda piece: rank(piece[0]))  # stable: source order kept
        is_package = target in SUBPACKAGES or target == "" or any(
            m.is_package and plan.module_dest[m.rel] == target for m in plan.modules.values()
        )
        defined = {n for _, node, _, _ in pieces for n in defined_names(node)}
        body_nodes = [node for _, node, _, _ in pieces]
        used = used_names(body_nodes)
        extra_imports = []
        # definitions that moved away from the old module this code came from
        for rel, node, _, _ in pieces:
            old_names = plan.top_level_names(rel)
            for name in used_names([node]) & old_names:
                home = plan.dest.get((rel, name))
                if home is not None and home != target and name not in defined:
                    extra_imports.append((full(home), name))
        if target == "":
            for (rel, name), home in plan.dest.items():
                if rel == "" and home != "" and rel in plan.modules:
                    extra_imports.append((full(home), name))  # ``sklearn_tl.__version__`` stays
                    used.add(name)
        exports = EXPORTS.get(target, [])
        for name in exports:
            if name not in defined:
                home = None
                for (rel, defname), new in plan.dest.items():
                    if defname == name and new != target and rel in plan.modules:
                        home = new
                        break
                if home is not None:
                    extra_imports.append((full(home), name))
        public = []
        for rel in sources_of.get(target, []):
            package_init = rel == "" and target == ""
            for name in all_lists.get(rel, []):
                # A package __init__ keeps its re-exports (the public names); other modules' re-exports go.
                if (name in defined or package_init) and name not in public:
                    public.append(name)
                    if name not in defined and package_init:
                        home = plan.new_home(rel, name)
                        if home is not None and home != target:
                            extra_imports.append((full(home), name))
        public += [n for n in exports if n not in public]
        used |= set(public)
        import_nodes = list(imports.get(target, []))
        for module_name, name in sorted(set(extra_imports)):
            import_nodes.append(ast.ImportFrom(module=module_name, names=[ast.alias(name=name)], level=0))
        header = DOCS.get(target) or docstrings.get(target) or f"sklearn_tl.{target}."
        parts = ['"""' + header.strip("\n") + ('\n' if "\n" in header.strip("\n") else "") + '"""']
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in import_nodes)
        if pieces and not future:
            import_nodes.insert(0, ast.ImportFrom(module="__future__", names=[ast.alias(name="annotations")], level=0))
        block = build_imports(import_nodes, used | ({"annotations"} if pieces else set()), target, is_package)
        if block:
            parts.append(block)
        if public:
            items = ", ".join(f'"{n}"' for n in public)
            line = f"__all__ = [{items}]"
            parts.append(line if len(line) <= 120 else "__all__ = [\n" + "".join(f'    "{n}",\n' for n in public) + "]")
        text = "\n\n".join(parts) + "\n"
        previous = None
        defs = (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)
        for rel, node, piece, first in pieces:
            if isinstance(node, defs) or (previous is not None and isinstance(previous[1], defs)):
                sep = "\n\n"
            elif previous is not None and previous[0] == rel and first - previous[1].end_lineno <= 2:
                sep = "\n" * (first - previous[1].end_lineno - 1)  # the original spacing
            else:
                sep = "\n"
            text += sep + piece.rstrip("\n") + "\n"
            previous = (rel, node)
        out[target] = text
    return out, sources_of


def statement_lines_from(lines: list[str], node: ast.stmt, previous_end: int) -> tuple[int, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    first, line = start, start - 1
    while line > previous_end:
        stripped = lines[line - 1].strip()
        if stripped.startswith("#"):
            first = line
        elif stripped:
            break
        line -= 1
    return first, node.end_lineno


# --------------------------------------------------------------------------- old paths


def old_paths_source(plan: Plan) -> str:
    moved: dict[str, dict[str, str]] = defaultdict(dict)
    for (old, name), new in sorted(plan.dest.items()):
        if old in plan.modules and old in MODULES and not name.startswith("__") and MODULES[old] != old:
            if new != plan.module_dest[old]:
                moved[full(old)][name] = full(new)
    # An old path that names a module of the new layout (``sklearn_tl.cli``, now a package) is that module.
    taken = set(plan.module_dest.values()) | set(MOVES) | set(SUBPACKAGES)
    modules = {full(old): full(new) for old, new in sorted(plan.module_dest.items())
               if old in plan.modules and old != new and old not in taken}
    moved = {old: names for old, names in moved.items() if old in modules}
    lines = ["MODULES = {"] + [f"    {k!r}: {v!r}," for k, v in modules.items()] + ["}", ""]
    lines += ["# Names that left their module's new home: {old module: {name: new module}}.", "MOVED = {"]
    for old, names in moved.items():
        lines.append(f"    {old!r}: {{")
        lines += [f"        {n!r}: {m!r}," for n, m in names.items()]
        lines.append("    },")
    lines.append("}")
    return OLD_PATHS_TEMPLATE.replace("@TABLES@", "\n".join(lines))


OLD_PATHS_TEMPLATE = '''"""Old import paths of 0.1 (``sklearn_tl._model`` ...), kept loadable for files written by 0.1.

Pickles name classes by module path. Model files written by sklearn_tl 0.1
(joblib, pickle) refer to the flat layout, e.g. ``sklearn_tl._model.ImageEmbedder``
or ``sklearn_tl._finetune.FineTuneClassifier``. :class:`OldPathFinder`, installed
on ``sys.meta_path`` when ``sklearn_tl`` is imported, makes each old module
importable again as an alias whose attributes are looked up, lazily, in the
new layout (as scikit-learn kept its deprecated module paths for a while).
The aliases stay until sklearn_tl 0.3; write new files with the current version.
The tables below are data: generated by ``tools/relayout.py`` (issue 23).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

@TABLES@

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
'''


# --------------------------------------------------------------------------- driver


def path_of(root: Path, rel: str, is_package: bool) -> Path:
    base = root / PKG
    if rel == "":
        return base / "__init__.py"
    parts = rel.split(".")
    return base.joinpath(*parts, "__init__.py") if is_package else base.joinpath(*parts[:-1], parts[-1] + ".py")


def git(root: Path, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def run(root: Path, dry_run: bool = False) -> int:
    modules = discover(root)
    plan = Plan(modules)
    notes: list[str] = []
    rewriter = Rewriter(plan, notes)
    rewritten = {}
    for rel, module in modules.items():
        text = rewriter.rewrite_text(module.text, module.package, False, f"sklearn_tl.{rel or '__init__'}",
                                     attribute_uses(module.tree))
        text = rewrite_lazy_tables(text, plan, rel)
        rewritten[rel] = rewrite_dotted(text, plan)
    new_texts, sources_of = assemble(plan, rewritten)
    packages = set(SUBPACKAGES) | {""} | {plan.module_dest[m.rel] for m in modules.values() if m.is_package}
    final = {}
    for rel, text in new_texts.items():
        is_package = rel in packages
        final[rel] = to_relative(text, full(rel), is_package)
    final["_old_paths"] = old_paths_source(plan)
    # the package installs the old-path finder
    init = final[""]
    if "_old_paths" not in init:
        tree = ast.parse(init)
        relative_imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level]
        at = relative_imports[0].lineno - 1 if relative_imports else max(
            n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        lines = init.splitlines(keepends=True)
        lines.insert(at, "from . import _old_paths\n")  # isort: ``from . import`` first among relative imports
        init = "".join(lines).rstrip("\n") + "\n\n\n_old_paths.install()  # files written by 0.1 keep loading\n"
        init = init.replace("# Public name -> the private module defining it", "# Public name -> the module defining it")
        final[""] = init.replace("from ._version import __version__\n",
                                 "from ._version import __version__ as __version__  # re-exported\n")

    # outside the package: tests, benchmarks, tools' siblings
    others = {}
    for folder in ("tests", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            tree = ast.parse(text)
            new = rewriter.rewrite_text(text, "", True, str(path.relative_to(root)), attribute_uses(tree))
            new = rewrite_dotted(new, plan)
            if new != text:
                others[path] = new

    readme = root / "README.md"
    if readme.exists():
        text = readme.read_text()
        new = rewrite_dotted(text, plan)
        if new != text:
            others[readme] = new

    print(f"relayout: {len(modules)} modules -> {len(final)} modules")
    for line in plan.unplaced:
        print("  NOT PLACED:", line)
    for line in plan.followed:
        print("  followed its users:", line)
    listed = {(old, name) for entries in MOVES.values() for old, name in entries}
    split = {old for old, _ in listed}
    for rel in sorted(split & set(modules)):
        unknown = sorted(n for n in plan.top_level_names(rel) if (rel, n) not in listed
                         and plan.dest.get((rel, n)) == plan.module_dest[rel] and n != "__all__")
        if unknown:
            print(f"  sklearn_tl.{rel}: not in the table, kept with its default sklearn_tl.{plan.module_dest[rel]}: "
                  + ", ".join(unknown))
    for line in sorted(set(plan.listed_missing)):
        print("  (table entry absent in this checkout:", line + ")")
    for line in notes:
        print("  NOTE:", line)
    if dry_run:
        for rel, text in sorted(final.items()):
            print(f"--- sklearn_tl.{rel or '__init__'}: {text.count(chr(10))} lines (from {sources_of.get(rel, [])})")
        return 0

    # 1. whole moves with git mv (history follows the default destination)
    moved_to = {}
    for rel, module in sorted(modules.items(), key=lambda kv: -kv[0].count(".")):
        new = plan.module_dest[rel]
        if new == rel:
            continue
        target = path_of(root, new, new in packages)
        if target.exists() or target in moved_to.values():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        git(root, "mv", str(module.path.relative_to(root)), str(target.relative_to(root)))
        moved_to[module.path] = target
    # 2. write every new module; remove the old files no new module took
    written = set()
    for rel, text in final.items():
        target = path_of(root, rel, rel in packages)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.add(target.resolve())
    for module in modules.values():
        if module.path.exists() and module.path.resolve() not in written:
            git(root, "rm", "-q", "-f", str(module.path.relative_to(root)))
    for path in sorted((root / PKG).rglob("*"), reverse=True):
        if path.is_dir() and not any(p for p in path.iterdir() if p.name != "__pycache__"):
            for cache in path.glob("__pycache__"):
                subprocess.run(["rm", "-rf", str(cache)], check=True)
            path.rmdir()
    for path, text in others.items():
        path.write_text(text)
    git(root, "add", "-A", PKG, "tests", "benchmarks", "README.md")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=".", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    return run(args.root.resolve(), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
