"""This module contains the registry of model sources: a name -> :class:`ModelSource` table.

It imports nothing, so a :class:`~sklearn_tl.BackboneSpec` finds its source
here without importing the adapters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the adapters import this registry's users
    from .sources.base import ModelSource

__all__ = ["register_source", "get_source", "sources"]

_SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Add a model source; its ``name`` is what ``BackboneSpec.source`` refers to."""
    if not source.name or source.name in _SOURCES:
        raise ValueError(f"A model source needs a new, non-empty name; got {source.name!r}.")
    _SOURCES[source.name] = source
    return source


def get_source(name: str) -> ModelSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(f"Unknown model source {name!r}; known: {', '.join(_SOURCES)}.") from None


def sources() -> list[ModelSource]:
    """The registered sources, in registration order (the order names are looked up in)."""
    return list(_SOURCES.values())
