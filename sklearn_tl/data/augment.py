"""Training augmentation presets, resolved from ``FineTuneClassifier(augment=...)``.

The rule for ``"auto"``: keep at least 70 % of the image's area in every random
crop (aspect 0.9-1.1) and never flip. Random crops down to a third of the area
and flips, the ImageNet recipe (``"standard"``), suit natural photos but wipe
out small or low-resolution images (an 8x8 digit keeps a 5x5 corner) and
change the class where orientation matters (digits, text, many medical and
satellite images). A flip is opt-in: ``"standard"`` (and a ``(min, max)``
crop-area tuple, today's recipe with its own range) include one; a callable
(any torchvision transform) does anything else; its output is then brought
to the network's input size by the evaluation resize and centre crop, unless
it already is that size.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUGMENT_PRESETS", "CropPolicy", "resolve_augment"]


@dataclass(frozen=True)
class CropPolicy:
    """A random resized crop: area ``scale`` range, ``ratio`` range, and whether to flip."""

    scale: tuple = (0.7, 1.0)
    ratio: tuple = (0.9, 1.1)
    flip: bool = False


AUGMENT_PRESETS = {
    "auto": CropPolicy(scale=(0.7, 1.0), ratio=(0.9, 1.1), flip=False),
    "light": CropPolicy(scale=(0.85, 1.0), ratio=(0.95, 1.05), flip=False),
    "standard": CropPolicy(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True),
}
AUGMENT_HELP = (
    "augment must be 'auto', 'light', 'standard', False (no augmentation), True ('standard'), "
    "a (min, max) crop-area range, or a callable taking and returning a (C, H, W) image tensor"
)


def resolve_augment(augment):
    """``augment`` as a :class:`CropPolicy`, a callable, or None (no augmentation)."""
    if augment is False or augment is None:
        return None
    if isinstance(augment, CropPolicy):
        return augment
    if augment is True:
        return AUGMENT_PRESETS["standard"]
    if isinstance(augment, str):
        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"Unknown augment={augment!r}; {AUGMENT_HELP}.")
        return AUGMENT_PRESETS[augment]
    if isinstance(augment, (tuple, list)):
        scale = tuple(augment)
        if len(scale) != 2 or not all(isinstance(v, (int, float)) for v in scale) or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"augment=(min, max) is the crop's area range, 0 < min <= max <= 1; got {augment!r}.")
        return CropPolicy(scale=scale, ratio=(3 / 4, 4 / 3), flip=True)
    if callable(augment):
        return augment
    raise ValueError(f"{AUGMENT_HELP}; got {augment!r}.")
