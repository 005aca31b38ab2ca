"""Small fixes to how napari shows our layers.

- :func:`widen_contrast_range`: napari locks an image's contrast slider range
  to the contrast limits it was created with (the CT window, -110..190 HU), so
  lung or bone could not be looked at; the range is widened to the data's.
- :func:`object_features`: the Labels layer's features table (``index``,
  ``name``), so that hovering over a label shows its object's name in napari's
  status bar, not only its id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def widen_contrast_range(layer: Any) -> bool:
    """Set an Image layer's contrast slider range to its data's min..max (at least the
    current range). Returns True if it changed."""
    if getattr(layer, "rgb", False) or not hasattr(layer, "contrast_limits_range"):
        return False
    data = np.asarray(layer.data)
    if data.size == 0 or data.dtype.kind not in "iuf":
        return False
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    cur_lo, cur_hi = (float(v) for v in layer.contrast_limits_range)
    new = (min(lo, cur_lo), max(hi, cur_hi))
    if new == (cur_lo, cur_hi) or new[0] >= new[1]:
        return False
    limits = list(layer.contrast_limits)
    layer.contrast_limits_range = new
    layer.contrast_limits = limits  # keep the window the user sees
    return True


def object_features(names: dict[int, str]) -> pd.DataFrame:
    """id -> name as a Labels features table (``index`` column = label value; 0 is background)."""
    ids = [0] + sorted(int(i) for i in names if int(i) != 0)
    return pd.DataFrame({"index": ids, "name": ["background"] + [str(names[i]) for i in ids[1:]]})
