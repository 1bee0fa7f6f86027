"""This module contains the checks of classification labels."""

from __future__ import annotations

import math

import numpy as np


def _has_nan_label(y: np.ndarray) -> bool:
    if y.dtype.kind == "f":
        return bool(np.isnan(y).any())
    if y.dtype.kind == "O":
        return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in y.ravel())
    return False
