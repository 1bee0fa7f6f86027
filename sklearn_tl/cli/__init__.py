"""The ``sklearn-tl`` command (``python -m sklearn_tl``)."""

from .app import build_parser, main

__all__ = ["main", "build_parser"]
