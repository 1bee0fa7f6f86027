"""Saving and loading fitted models: skops (safe) or joblib files with a version header.

:func:`save_model` writes ``{"format", "header", "model"}`` with skops (the
default; a zip of JSON and ``.npy`` files that loads without running code) or
joblib (a pickle; the default for a path ending in ``.joblib``, ``.pkl`` or
``.pickle``). The
header records the versions of sklearn_tl, torch, torchvision and
scikit-learn, and the preprocessing fingerprint (backbone, weights, sha256,
``data_config_``) of every sklearn_tl step, so that :func:`load_model` can say
clearly when a file comes from an incompatible version or is no sklearn_tl
file at all. Models are stored device-independent: the estimators move their
torch modules to the CPU when pickled, and a model fitted on a GPU loads on a
CPU-only machine.

Security: a joblib file is a pickle, and unpickling runs code chosen by whoever
wrote the file: load only files you made or trust. A skops file is loaded
trusting only sklearn_tl's estimator classes (:func:`skops_trusted_types`) plus
the types the caller names; :func:`load_model` refuses any other type in it.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import joblib

from ..exceptions import ModelFileError, ModelVersionWarning

__all__ = ["load_model", "model_header", "save_model"]

FORMAT = "sklearn_tl.model/1"  # the content of a joblib model file
SKOPS_FORMAT = "sklearn_tl.model.skops/1"  # the content of a skops model file
FORMATS = ("skops", "joblib")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")  # a path named so gets a joblib file by default
_ZIP_MAGIC = b"PK\x03\x04"  # skops files are zip archives; joblib files never start so


def _versions() -> dict:
    import sklearn
    import torch
    import torchvision

    from .._version import package_version

    return {
        "sklearn_tl": package_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def _sklearn_tl_steps(model, prefix=""):
    """(name, estimator) of every fitted estimator in ``model`` that holds a ``data_config_``."""
    steps = getattr(model, "steps", None)
    if steps is not None:  # a Pipeline, possibly nested
        for name, step in steps:
            yield from _sklearn_tl_steps(step, f"{prefix}{name}__")
        return
    if hasattr(model, "data_config_"):
        yield prefix.rstrip("_") or type(model).__name__, model


def preprocessing_fingerprint(model) -> dict:
    """What each sklearn_tl step feeds its network: backbone, weights and ``data_config_``."""
    fingerprint = {}
    for name, step in _sklearn_tl_steps(model):
        backbone = step.backbone if isinstance(step.backbone, str) else type(step.backbone).__name__
        fingerprint[name] = {
            "estimator": type(step).__name__,
            "backbone": backbone,
            "weights": getattr(step, "weights_", None),
            "weights_sha256": getattr(step, "weights_sha256_", None),
            "data_config": step.data_config_.as_dict(),
        }
    return fingerprint


def model_header(model) -> dict:
    """The header :func:`save_model` stores next to ``model``."""
    classes = getattr(model, "classes_", None)
    return {
        "versions": _versions(),
        "estimator": type(model).__name__,
        "classes": None if classes is None else [str(c) for c in classes],
        "preprocessing": preprocessing_fingerprint(model),
    }


def _resolved_format(path: Path, format) -> str:
    if format is None:
        return "joblib" if path.suffix.lower() in PICKLE_SUFFIXES else "skops"
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (from the file name); got {format!r}.")
    return format


def save_model(model, path, *, format=None, compress: int = 3, include_optimizer: bool = True) -> dict:
    """Write a fitted model and its header to ``path``; return the header.

    Parameters
    ----------
    model : estimator
        A fitted sklearn_tl estimator, or a Pipeline (or other sklearn
        composite) holding them.
    path : str or path-like
        The file to write (atomically: an interrupted save leaves no file).
    format : {"skops", "joblib"} or None, default=None
        ``"skops"``: a zip of JSON and numpy arrays that :func:`load_model`
        and ``skops.io.load`` read without running code (use the extension
        ``.skops``). ``"joblib"``: a pickle, which runs code when loaded, but
        stores anything (a user's own ``torch.nn.Module`` backbone or head,
        custom callbacks). None: ``"joblib"`` for a path ending in
        ``.joblib``, ``.pkl`` or ``.pickle``, else ``"skops"``.
    compress : int, default=3
        Compression level (0 to 9).
    include_optimizer : bool, default=True
        Keep a fine-tuner's optimizer state (AdamW's moments: twice the
        network's size), so that ``partial_fit`` after loading continues as it
        would have without saving. False writes a file of a third the size
        for serving; ``partial_fit`` then starts the optimizer afresh.

    Returns
    -------
    header : dict
        Versions, the estimator's name, its classes and preprocessing.

    Raises
    ------
    sklearn_tl.exceptions.SafeFormatError
        With ``format="skops"`` for a model holding a user's ``torch.nn.Module``:
        it names the parameter and says to use ``format="joblib"``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_tl import PretrainedCNNFeaturizer, load_model, save_model
    >>> X = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    >>> model = make_pipeline(PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32),
    ...                       LogisticRegression()).fit(X, [0, 1, 0, 1])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skops")
    >>> header = save_model(model, path)
    >>> header["preprocessing"]["pretrainedcnnfeaturizer"]["data_config"]["crop_size"]
    32
    >>> bool((load_model(path).predict(X) == model.predict(X)).all())
    True
    """
    from ..estimators.state import safe_format, without_optimizer

    path = Path(path)
    format = _resolved_format(path, format)
    header = model_header(model)
    tmp = path.with_name(path.name + ".partial")
    try:
        with without_optimizer(not include_optimizer):
            if format == "joblib":
                joblib.dump({"format": FORMAT, "header": header, "model": model}, tmp, compress=compress)
            else:
                import zipfile

                import skops.io

                with safe_format():
                    skops.io.dump(
                        {"format": SKOPS_FORMAT, "header": header, "model": model},
                        tmp,
                        compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                        compresslevel=compress or None,
                    )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)  # atomic: an interrupted save never leaves half a model
    return header


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+", 1)[0].split(".") + ["0", "0"])[:2]
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


# Header field -> the types it may have; a file whose header breaks this is no model file of ours.
_HEADER_TYPES = {
    "versions": (dict,),
    "estimator": (str,),
    "classes": (list, type(None)),
    "preprocessing": (dict,),
}


def _check_header_shape(header, path) -> None:
    """Raise :class:`ModelFileError` unless ``header`` has the fields and types save_model writes."""
    def malformed(problem):
        return ModelFileError(
            f"{path} has a malformed header ({problem}); the file was altered or is no sklearn_tl model file."
        )

    if not isinstance(header, dict):
        raise malformed(f"a {type(header).__name__}, not a dict")
    for field, types in _HEADER_TYPES.items():
        if field not in header:
            raise malformed(f"no {field!r} field")
        if not isinstance(header[field], types):
            raise malformed(f"{field!r} is a {type(header[field]).__name__}")
    versions = header["versions"]
    if not isinstance(versions.get("sklearn_tl"), str):
        raise malformed("no sklearn_tl version")
    wrong = sorted(str(k) for k, v in versions.items() if not isinstance(v, str))
    if wrong:
        raise malformed(f"the versions of {', '.join(wrong)} are not strings")


def check_header(header: dict, path="model") -> None:
    """Raise :class:`ModelFileError` or warn :class:`ModelVersionWarning` for an incompatible header."""
    _check_header_shape(header, path)
    saved = header["versions"]
    here = _versions()
    saved_tl, here_tl = saved["sklearn_tl"], here["sklearn_tl"]
    if _major_minor(saved_tl)[0] != _major_minor(here_tl)[0]:
        raise ModelFileError(
            f"{path} was saved by sklearn_tl {saved_tl}, which is incompatible with the installed "
            f"{here_tl}; install sklearn_tl=={saved_tl} to load it, or retrain."
        )
    if _major_minor(saved_tl) > _major_minor(here_tl):
        warnings.warn(
            f"{path} was saved by sklearn_tl {saved_tl}, newer than the installed {here_tl}; "
            "it may not load or predict correctly: upgrade sklearn_tl.",
            ModelVersionWarning,
            stacklevel=3,
        )
    for package in ("torch", "torchvision", "scikit-learn"):
        if package in saved and _major_minor(saved[package]) != _major_minor(here[package]):
            warnings.warn(
                f"{path} was saved with {package} {saved[package]}; this machine has {here[package]}.",
                ModelVersionWarning,
                stacklevel=3,
            )


def _type_names(types) -> list[str]:
    return [t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in (types or [])]


def _read_skops(path: Path, trusted):
    import skops.io

    from ..estimators.state import skops_trusted_types

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged zip or schema: anything
        raise ModelFileError(
            f"Cannot read model file {str(path)!r} ({type(exc).__name__}: {str(exc)[:200]}); "
            "it is corrupt, truncated or not a skops file."
        ) from exc
    allowed = set(skops_trusted_types()) | set(_type_names(trusted))
    refused = [name for name in found if name not in allowed]
    if refused:
        shown = ", ".join(refused[:10]) + (f" and {len(refused) - 10} more" if len(refused) > 10 else "")
        raise ModelFileError(
            f"{str(path)!r} holds types that are not sklearn_tl's and that you did not trust: {shown}. "
            "Loading them may run their code; if you trust this file, pass them as "
            "load_model(path, trusted=[...])."
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Trying to unpickle estimator")
            return skops.io.load(path, trusted=found)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"Cannot read model file {str(path)!r} ({type(exc).__name__}: {str(exc)[:200]}); "
            "it is corrupt or was written by an incompatible version."
        ) from exc


def _read_joblib(path: Path):
    try:
        with warnings.catch_warnings():
            # scikit-learn's InconsistentVersionWarning repeats what check_header says once.
            warnings.filterwarnings("ignore", message="Trying to unpickle estimator")
            return joblib.load(path)
    except Exception as exc:  # unpickling raises anything: EOFError, UnpicklingError, KeyError...
        raise ModelFileError(
            f"Cannot read model file {str(path)!r} ({type(exc).__name__}: {exc}); "
            "it is corrupt, truncated or not a joblib file."
        ) from exc


def load_model(path, *, return_header: bool = False, trusted=None):
    """Load a model written by :func:`save_model`, checking its header.

    The format is read from the file's first bytes: a skops file (zip) or a
    joblib file (pickle, as every version up to 0.1 wrote).

    Parameters
    ----------
    path : str or path-like
    return_header : bool, default=False
        Also return the header.
    trusted : list of str or type, default=None
        For a skops file: types to trust beyond sklearn_tl's estimators
        (:func:`skops_trusted_types`), e.g. a custom transformer of yours in
        the Pipeline. Any other type in the file is refused. A joblib file is
        a pickle: it can run code whatever this says; load only files you
        trust.

    Raises
    ------
    ModelFileError
        The file is missing, unreadable or truncated, not an sklearn_tl model
        file, holds types not trusted, has a malformed header, was saved by an
        sklearn_tl of another major version, or its preprocessing does not
        match its header. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {str(path)!r} does not exist.")
    with open(path, "rb") as file:
        magic = file.read(len(_ZIP_MAGIC))
    content = _read_skops(path, trusted) if magic == _ZIP_MAGIC else _read_joblib(path)
    formats = (FORMAT, SKOPS_FORMAT)
    if not (isinstance(content, dict) and content.get("format") in formats and "model" in content):
        if isinstance(content, dict) and content.get("format") in formats:
            raise ModelFileError(f"{str(path)!r} is an sklearn_tl model file without its model; it was altered.")
        raise ModelFileError(
            f"{str(path)!r} is not an sklearn_tl model file (write one with `sklearn-tl train` or "
            "sklearn_tl.save_model)."
        )
    header, model = content.get("header"), content["model"]
    if "header" not in content:
        raise ModelFileError(f"{str(path)!r} has no header; the file was altered or is no sklearn_tl model file.")
    check_header(header, repr(str(path)))
    if preprocessing_fingerprint(model) != header.get("preprocessing"):
        raise ModelFileError(
            f"{str(path)!r}: the model's preprocessing does not match the one recorded in its header; "
            "the file was altered or written by an incompatible version."
        )
    return (model, header) if return_header else model
