"""napari-sam: Segment Anything models for napari, scripts and the command line.

The public API (the compute core; it never imports napari or Qt)::

    import napari_sam as ns

    vol = ns.read_image("ct/dicom")                     # (z, y, x) + geometry
    model = ns.load_model()                             # embedded LiteMedSAM
    win = ns.resolve_window(vol.array, "soft-tissue")
    pred = ns.SlicePredictor(model)
    pred.set_image(win.apply(vol.array[10]))            # embed once
    p = pred.predict(box=(r0, c0, r1, c1))              # decode many times
    p = pred.predict(points=[(r, c)], labels=[1])       # clicks work too
    p.masks, p.scores                                   # up to 3 candidates

    seg = ns.AutomaticSegmenter(model, ns.AutoSettings.for_microscopy())
    res = seg.segment(image01)                          # every object, no prompt
    res.labels                                          # (H, W) int32 instances

Coordinates are array indices in napari's order everywhere: (row, col) in
2D, (z, row, col) in 3D; boxes are (r0, c0, r1, c1), inclusive.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "InputError": "errors",
    "ModelError": "errors",
    "NapariSamError": "errors",
    "UsageError": "errors",
    "Window": "intensity",
    "resolve_window": "intensity",
    "parse_window": "intensity",
    "CT_PRESETS": "intensity",
    "SlicePrompt": "prompts",
    "ObjectPrompts": "prompts",
    "PromptsFile": "prompts",
    "load_prompts": "prompts",
    "parse_prompts": "prompts",
    "SlicePredictor": "predictor",
    "Prediction": "prediction",
    "Crop": "geometry",
    "Volume": "io",
    "Geometry": "io",
    "read_image": "io",
    "write_labels": "io",
    "read_labels_aligned": "io",
    "SliceEmbeddings": "embeddings",
    "CropEmbeddings": "embeddings",
    "EmbeddingProvider": "embeddings",
    "segment_volume": "segmentation",
    "SegmentationResult": "segmentation",
    "load_model": "models.registry",
    "REGISTRY": "models.registry",
    "pick_device": "models.registry",
    "fetch_checkpoint": "models.registry",
    "model_cache_dir": "models.download",
    "AutomaticSegmenter": "automatic",
    "AutoSettings": "automatic",
    "AutoResult": "automatic",
    "ZoomSettings": "zoom",
    "TileGrid": "tiling",
    "stitch_tile_labels": "tiling",
    "match_instances": "evaluation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import on first use: ``import napari_sam`` stays light (no torch until needed)."""
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
