"""What the model sees: intensity windows, presets and normalisation.

A :class:`Window` maps raw intensities (CT in Hounsfield units, MR, microscopy
counts, 8-bit RGB) linearly onto [0, 1], clipping outside ``[lo, hi]``.
:func:`resolve_window` picks the window from, in order of precedence: an
explicit ``[lo, hi]`` or preset name, the DICOM header's window, or an
automatic choice (a soft-tissue window for CT in HU, robust percentiles for
everything else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: CT presets as (level, width) in Hounsfield units; the usual radiology values.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "abdomen": (40.0, 350.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
}

#: percentiles used for MR, microscopy and any non-HU image
AUTO_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    """A linear intensity window: ``lo`` maps to 0, ``hi`` to 1, clipped.

    source: where it came from ("explicit", "preset:lung", "dicom", "auto-ct",
    "percentile", "dtype"), for reports and for the cache key.
    """

    lo: float
    hi: float
    source: str = "explicit"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)) or self.hi <= self.lo:
            raise InputError(f"intensity window [{self.lo}, {self.hi}]: needs finite lo < hi")

    @classmethod
    def from_level_width(cls, level: float, width: float, source: str = "explicit") -> Window:
        return cls(level - width / 2.0, level + width / 2.0, source)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Raw intensities -> float32 in [0, 1], same shape."""
        out = (np.asarray(image, dtype=np.float32) - np.float32(self.lo)) * np.float32(1.0 / (self.hi - self.lo))
        return np.clip(out, 0.0, 1.0, out=out)

    def key(self) -> str:
        """A stable text form for cache keys."""
        return f"{self.lo:.6g},{self.hi:.6g}"


def parse_window(spec: str | Sequence[float] | Window) -> Window:
    """``"-160,240"``, ``[-160, 240]``, ``"lung"`` or a Window -> Window."""
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        name = spec.strip().lower().replace("_", "-")
        if name in CT_PRESETS:
            return Window.from_level_width(*CT_PRESETS[name], source=f"preset:{name}")
        parts = spec.split(",")
        if len(parts) != 2:
            raise InputError(f"window {spec!r}: expected LO,HI (e.g. -160,240) or a preset ({', '.join(CT_PRESETS)})")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"window {spec!r}: LO and HI must be numbers") from None
        return Window(lo, hi)
    try:
        lo, hi = (float(v) for v in spec)
    except (TypeError, ValueError):
        raise InputError(f"window {spec!r}: expected [lo, hi]") from None
    return Window(lo, hi)


def check_window_spec(spec: str | Sequence[float] | Window | None) -> Window | str | None:
    """A window given by a user (``--window``, a manifest's column), checked
    before any image is read: None, "auto" and "dicom" (resolved per image by
    :func:`resolve_window`) as they are, anything else parsed into a Window
    (:func:`parse_window`: LO,HI or a preset). Raises InputError when malformed."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("auto", "dicom")):
        return spec
    return parse_window(spec)


def looks_like_hounsfield(volume: np.ndarray) -> bool:
    """True for CT-like data in HU: air near -1000 and values above 200."""
    if not np.issubdtype(volume.dtype, np.number) or volume.ndim < 2:
        return False
    sample = volume[:: max(1, volume.shape[0] // 8)] if volume.ndim == 3 else volume
    lo, hi = np.percentile(sample, [1, 99])
    return bool(lo <= -700 and hi >= 100)


def percentile_window(volume: np.ndarray, percentiles: tuple[float, float] = AUTO_PERCENTILES) -> Window:
    """Robust window from percentiles of the non-background voxels."""
    data = np.asarray(volume)
    flat = data.reshape(-1)
    if flat.size > 4_000_000:
        flat = flat[:: flat.size // 4_000_000 + 1]
    fg = flat[flat > flat.min()] if np.any(flat > flat.min()) else flat
    lo, hi = np.percentile(fg.astype(np.float64), percentiles)
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
        if hi <= lo:
            hi = lo + 1.0
    return Window(float(lo), float(hi), "percentile")


def resolve_window(
    volume: np.ndarray,
    spec: str | Sequence[float] | Window | None = None,
    modality: str | None = None,
    dicom_window: tuple[float, float] | None = None,
) -> Window:
    """The window the model will see, from the most specific source available.

    spec: explicit window or preset; "dicom" asks for the header's window;
        "auto" or None chooses automatically.
    modality: "CT", "MR", ... from the file's metadata, when known.
    dicom_window: (level, width) from the DICOM header, when present.
    """
    if isinstance(spec, str) and spec.strip().lower() == "dicom":
        if dicom_window is None:
            raise InputError("window 'dicom': this image has no DICOM window in its header")
        return Window.from_level_width(*dicom_window, source="dicom")
    if spec is not None and not (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return parse_window(spec)
    if volume.dtype == np.uint8:
        return Window(0.0, 255.0, "dtype")
    is_ct = (modality or "").upper() == "CT" or (modality is None and looks_like_hounsfield(volume))
    if is_ct:
        if dicom_window is not None:
            return Window.from_level_width(*dicom_window, source="dicom")
        return Window.from_level_width(*CT_PRESETS["soft-tissue"], source="auto-ct")
    return percentile_window(volume)


def to_model_range(slice_: np.ndarray, window: Window) -> np.ndarray:
    """One slice (H, W) or RGB (H, W, 3) -> float32 in [0, 1] through ``window``."""
    return window.apply(slice_)
