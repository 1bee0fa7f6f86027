"""Image data sets: folder loaders, image lists, and a small real data set that ships offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "load_image_folder", "load_textures", "read_image_list"]

#: File endings read as images (case-insensitive): what Pillow decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def load_image_folder(path, extensions=IMAGE_EXTENSIONS, return_X_y: bool = False):
    """Image file paths and labels from a ``root/<class>/<image>`` tree.

    The image counterpart of :func:`sklearn.datasets.load_files`: each
    sub-folder of ``path`` is a class (sorted by name), the images inside it
    (searched recursively) are its samples. Nothing is decoded here: pass the
    paths to ``fit``/``transform``, which stream them in batches. Hidden files
    and folders (``.name``) and files whose ending is not in ``extensions`` are
    skipped and counted.

    Parameters
    ----------
    path : str or path-like
        The root folder.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        File endings read as images, compared case-insensitively.
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``filenames`` (object array of str), ``target`` (int array),
        ``target_names`` (class folder names), ``n_skipped`` and ``skipped``
        (the paths passed over).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a folder.
    ValueError
        No class folders, or a class folder without images.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from sklearn_tl import load_image_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["cat/a.jpg", "cat/b.png", "dog/c.jpg", "dog/notes.txt"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     if name.endswith(".txt"):
    ...         _ = (root / name).write_text("not an image")
    ...     else:
    ...         Image.new("RGB", (8, 8)).save(root / name)
    >>> data = load_image_folder(root)
    >>> data.target_names, data.target.tolist(), data.n_skipped
    (['cat', 'dog'], [0, 0, 1], 1)
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist or is not a folder.")
    wanted = tuple(e.lower() for e in extensions)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"Image folder {str(root)!r} has no class sub-folders (expected root/<class>/<image>).")
    filenames, target, skipped = [], [], []
    for label, name in enumerate(classes):
        found = 0
        for directory, subdirs, files in os.walk(root / name):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for file_name in sorted(files):
                file_path = os.path.join(directory, file_name)
                if file_name.startswith(".") or not file_name.lower().endswith(wanted):
                    skipped.append(file_path)
                    continue
                filenames.append(file_path)
                target.append(label)
                found += 1
        if not found:
            raise ValueError(f"Class folder {str(root / name)!r} holds no images ({', '.join(wanted)}).")
    filenames = np.asarray(filenames, dtype=object)
    target = np.asarray(target, dtype=np.int64)
    if return_X_y:
        return filenames, target
    return Bunch(filenames=filenames, target=target, target_names=classes, n_skipped=len(skipped), skipped=skipped)

def is_image_file(path: Path) -> bool:
    """Whether ``path``'s ending is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _has_class_folders(directory: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in directory.iterdir())


def collect_images(inputs) -> tuple[list[str], list[str] | None]:
    """Image paths (and class names, for ``root/<class>/<image>`` folders) from folders, files and lists.

    Each input is a folder (with class sub-folders: :func:`load_image_folder`;
    without: its image files), an image file, or a text file listing one path a
    line (:func:`read_image_list`). Labels are ``None`` unless a class folder
    was given.

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    ValueError
        A folder or list holds no images, or nothing was given.
    """
    paths, labels = [], []
    for raw in inputs:
        item = Path(raw).expanduser()
        if item.is_dir():
            if _has_class_folders(item):
                data = load_image_folder(item)
                paths.extend(str(p) for p in data.filenames)
                labels.extend(data.target_names[t] for t in data.target)
                continue
            found = sorted(str(p) for p in item.iterdir() if p.is_file() and is_image_file(p) and p.name[0] != ".")
            if not found:
                raise ValueError(f"Folder {str(item)!r} holds no image files.")
            paths.extend(found)
            labels.extend([None] * len(found))
        elif item.is_file() and is_image_file(item):
            paths.append(str(item))
            labels.append(None)
        elif item.is_file():
            listed = read_image_list(item)
            paths.extend(listed)
            labels.extend([None] * len(listed))
        else:
            raise FileNotFoundError(f"{str(item)!r} does not exist.")
    if not paths:
        raise ValueError("No images given.")
    return paths, (labels if any(label is not None for label in labels) else None)


def read_image_list(list_file) -> list[str]:
    """The image paths a text file lists, one a line.

    Relative paths are relative to the list's folder; blank lines and ``#``
    comments are skipped; every listed file must exist.
    """
    list_file = Path(list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{str(list_file)!r} is neither an image nor a list of image paths ({exc}).") from None
    paths = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        if not path.is_file():
            from .decode import short_repr  # only here: the CLI reads list files before it needs torch

            raise FileNotFoundError(f"{str(list_file)!r} line {number}: image {short_repr(line)} does not exist.")
        paths.append(str(path))
    if not paths:
        raise ValueError(f"List file {str(list_file)!r} names no images.")
    return paths


TEXTURES = ("brick", "grass", "gravel")


def load_textures(n_per_class: int = 80, size: int = 64, random_state=0, return_X_y: bool = False):
    """Patches of scikit-image's real texture photos: brick, grass and gravel.

    Each patch is cut at a random position and scale (48 to 200 px) from the
    512x512 photograph, rotated by a random angle and resized to ``size``. It
    is a small material-recognition task on which raw pixels are weak and
    pretrained CNN features are strong. Needs scikit-image (the ``demo`` extra);
    nothing is downloaded.

    Returns
    -------
    data : Bunch
        ``images`` uint8 ``(n, size, size)``, ``target`` int labels,
        ``target_names``. With ``return_X_y=True``: ``(images, target)``.

    Examples
    --------
    >>> from sklearn_tl import load_textures
    >>> X, y = load_textures(n_per_class=5, return_X_y=True)
    >>> X.shape, sorted(set(y.tolist()))
    ((15, 64, 64), [0, 1, 2])
    """
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("load_textures needs scikit-image: pip install 'sklearn_tl[demo]'") from exc
    from PIL import Image

    rng = np.random.default_rng(random_state)
    images, labels = [], []
    for label, name in enumerate(TEXTURES):
        photo = getattr(data, name)()
        height, width = photo.shape[:2]
        for _ in range(n_per_class):
            side = int(rng.integers(48, 200))
            top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            patch = Image.fromarray(photo[top : top + side, left : left + side])
            patch = patch.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
            images.append(np.asarray(patch.resize((size, size), Image.BILINEAR)))
            labels.append(label)
    X, y = np.stack(images), np.asarray(labels)
    if return_X_y:
        return X, y
    return Bunch(images=X, target=y, target_names=list(TEXTURES))
