"""What the widget segments: a napari Image layer seen as a (z, y, x) volume.

:class:`ImageSource` checks that a layer can be segmented (2D grayscale or
RGB, or a 3D volume; not 4D, not multiscale) and gives the core what it
needs: the array in (z, y, x[, 3]) order, the window the user sees (the
layer's current contrast limits), and the physical geometry (from our
reader's metadata, else from the layer's transforms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..intensity import Window
from ..io import Geometry
from ._geometry import geometry_from_metadata, geometry_from_transform


@dataclass
class ImageSource:
    """A napari Image layer prepared for segmentation.

    layer: the napari Image layer; volume: (z, y, x) or (z, y, x, 3) array
    (z = 1 for a 2D image; a view of the layer's data where possible);
    is_2d / is_rgb: what the layer holds; geometry: its physical placement.
    """

    layer: Any
    volume: np.ndarray
    is_2d: bool
    is_rgb: bool
    geometry: Geometry

    @classmethod
    def from_layer(cls, layer: Any) -> ImageSource:
        """Check ``layer`` and wrap it. Raises InputError with a one-line reason."""
        from napari.layers import Image

        if layer is None:
            raise InputError("no image layer: open an image (File > Open, or a sample) and choose it in the widget")
        if not isinstance(layer, Image):
            raise InputError(f"layer {layer.name!r} is a {type(layer).__name__} layer; choose an Image layer")
        if layer.multiscale:
            raise InputError(f"layer {layer.name!r} is multiscale; napari-sam segments single-resolution images")
        data = layer.data
        rgb = bool(layer.rgb)
        spatial = data.ndim - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise InputError(
                f"layer {layer.name!r} has {spatial} spatial dimensions (shape {tuple(data.shape)}); "
                "napari-sam segments 2D images and 3D volumes (take a 3D subset first)"
            )
        arr = np.asarray(data)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"layer {layer.name!r}: unsupported data type {arr.dtype}")
        if rgb:
            if arr.shape[-1] not in (3, 4):
                raise InputError(f"layer {layer.name!r}: RGB with {arr.shape[-1]} channels; expected 3 or 4")
            arr = arr[..., :3]
        if min(arr.shape[:spatial]) < 2 and spatial == 2:
            raise InputError(f"layer {layer.name!r}: image of shape {arr.shape} is too small to segment")
        volume = arr[None] if spatial == 2 else arr
        if np.issubdtype(volume.dtype, np.floating) and not np.all(np.isfinite(volume[:: max(1, len(volume) // 8)])):
            raise InputError(f"layer {layer.name!r}: image holds NaN or infinite values")
        geom = geometry_from_metadata(layer.metadata)
        if geom is None:
            geom = geometry_from_transform(layer.scale, layer.translate, layer.affine.affine_matrix)
        return cls(layer, volume, spatial == 2, rgb, geom)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) voxel shape (z = 1 for a 2D image)."""
        return tuple(int(s) for s in self.volume.shape[:3])  # type: ignore[return-value]

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """Shape of a labels layer matching the image: (y, x) or (z, y, x)."""
        return self.shape[1:] if self.is_2d else self.shape

    def window(self) -> Window:
        """The window the user sees: the layer's current contrast limits."""
        lo, hi = (float(v) for v in self.layer.contrast_limits)
        if hi <= lo:
            hi = lo + 1.0
        return Window(lo, hi, "layer contrast")

    def transform_kwargs(self) -> dict[str, Any]:
        """scale/translate/rotate/shear/affine of the image layer, for layers that must overlay it."""
        lay = self.layer
        return {
            "scale": np.asarray(lay.scale),
            "translate": np.asarray(lay.translate),
            "rotate": np.asarray(lay.rotate),
            "shear": np.asarray(lay.shear),
            "affine": np.asarray(lay.affine.affine_matrix),
        }
