"""Model sources: one adapter per library that builds networks (the public extension point).

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
this package.
"""

from __future__ import annotations

from ..source_registry import get_source, register_source, sources
from .base import ModelSource, load_strict, stage_blocks
from .module import ModuleSource
from .timm import TimmSource
from .torchvision import TorchvisionSource

__all__ = ["ModelSource", "register_source", "get_source", "sources", "stage_blocks", "load_strict"]

for _source in (TorchvisionSource(), TimmSource(), ModuleSource()):
    register_source(_source)
