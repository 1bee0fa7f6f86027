"""The package version, in a module that imports nothing of the package."""

from __future__ import annotations

import sys

__version__ = "0.1.0"


def package_version() -> str:
    """``sklearn_tl.__version__`` as the package reports it (a test may set it), without importing the package."""
    package = sys.modules.get("sklearn_tl")
    return getattr(package, "__version__", __version__)
