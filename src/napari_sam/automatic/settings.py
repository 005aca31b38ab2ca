"""What users tune in 2D automatic mode (:class:`AutoSettings`), with the
microscopy and CT presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError
from ..tiling import DEFAULT_HALO, DEFAULT_TILE_SHAPE, TileGrid
from ..zoom import ZoomSettings

MODEL_ROLES = ("masks", "split-check")
PROPOSAL_KINDS = ("auto", "blobs", "regions", "point-grid", "box-grid", "blobs+box-grid", "regions+box-grid")


@dataclass(frozen=True)
class AutoSettings:
    """What users tune in automatic mode. Defaults suit fluorescence
    microscopy; :meth:`for_ct` gives the CT defaults.

    proposals: "auto" (point grid for point-capable models, as SAM's
        generator; "blobs" for box-only models), "blobs", "regions",
        "point-grid", "box-grid", or structure plus grid ("blobs+box-grid",
        "regions+box-grid").
    object_diameter: typical object diameter in pixels; None estimates it.
    polarity: "bright" objects on a dark background, "dark" on bright, or "auto".
    points_per_side: density of the point grid (point-grid) per tile side.
    box_grid_sides: box sides of the box grid as multiples of the object
        diameter; the grid's stride is half a side.
    quality_threshold: minimum predicted IoU of a kept mask (0..1).
    stability_threshold: minimum stability score of a kept mask (0..1).
    stability_offset: logit offset of the stability score.
    box_agreement: minimum IoU between a mask's bounding box and its prompt box.
    box_clip_margin: a box prompt's mask is cut at the box grown by this
        fraction of its side (at least 1 px); None keeps masks whole. At the
        whole-slice scale the model's masks of small objects bleed past the box.
    nms_iou: masks overlapping a better one by more than this are duplicates.
    min_size: smallest object kept, pixels; None: a fifth of the typical
        object's area for blobs, 200 px for regions.
    max_size_fraction: largest object kept, as a fraction of the image.
    tile_shape, halo: tiling of images larger than a tile (pixels).
    zoom: decode each proposal on a crop around it (better outlines of small
        objects, one encoder run per crop); None decodes on the tiles.
    refine_rounds: rounds of re-prompting with the bounding box of each good
        mask that does not fit its prompt box (a box model answers a tight box
        best); each round costs up to one more decode per proposal.
    batch_size: prompts per decoder call.
    link_iou: volumes: minimum IoU linking objects of neighbouring slices.
    keep_unanswered: blob proposals: a blob that no kept mask covers (the
        model's answer failed the filters) is kept as the blob itself, ranked
        below every model mask.
    model_role: blob proposals: "masks" (each blob is decoded and the model's
        mask replaces it, filtered as above) or "split-check" (the blobs'
        outlines are kept; blobs that concavity analysis would cut are checked
        by the model at zoom, and a cut is kept when the model answers every
        part as an object: :mod:`napari_sam.automatic.split_check`).
    split_concavity: smallest concavity score of a cut worth checking (0..1;
        lower: more hypotheses, more model work).
    split_quality: a part's answer must have at least this predicted IoU.
    split_min_iou: and cover its part at least this well (IoU).
    split_crop_scale: the crop around a checked blob, in blob sizes.
    mosaic_side: crops per mosaic side in one encoder run (1: one crop per run).
    """

    proposals: str = "auto"
    object_diameter: float | None = None
    polarity: str = "auto"
    points_per_side: int = 32
    box_grid_sides: tuple[float, ...] = (1.0, 2.0)
    quality_threshold: float = 0.5
    stability_threshold: float = 0.6
    stability_offset: float = 1.0
    box_agreement: float = 0.6
    box_clip_margin: float | None = 0.05
    nms_iou: float = 0.5
    min_size: int | None = None
    max_size_fraction: float = 0.5
    tile_shape: tuple[int, int] = DEFAULT_TILE_SHAPE
    halo: int = DEFAULT_HALO
    zoom: ZoomSettings | None = None
    refine_rounds: int = 0
    batch_size: int = 16
    link_iou: float = 0.3
    keep_unanswered: bool = False
    model_role: str = "masks"
    split_concavity: float = 0.15
    split_quality: float = 0.7
    split_min_iou: float = 0.4
    split_crop_scale: float = 1.5
    mosaic_side: int = 2

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSAL_KINDS:
            raise InputError(f"proposals {self.proposals!r}: expected one of {', '.join(PROPOSAL_KINDS)}")
        if self.model_role not in MODEL_ROLES:
            raise InputError(f"model role {self.model_role!r}: expected one of {', '.join(MODEL_ROLES)}")
        if not 1 <= self.mosaic_side <= 8:
            raise InputError(f"mosaic side {self.mosaic_side}: expected 1..8 crops")
        if not 1.0 <= self.split_crop_scale <= 4.0:
            raise InputError(f"split crop scale {self.split_crop_scale}: expected 1..4 blob sizes")
        if self.polarity not in ("auto", "bright", "dark"):
            raise InputError(f"polarity {self.polarity!r}: expected auto, bright or dark")
        for name in (
            "quality_threshold",
            "stability_threshold",
            "box_agreement",
            "nms_iou",
            "link_iou",
            "split_concavity",
            "split_quality",
            "split_min_iou",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name.replace('_', ' ')} {v}: expected a number between 0 and 1")
        if self.object_diameter is not None and not 2.0 <= self.object_diameter <= 10000:
            raise InputError(f"object diameter {self.object_diameter}: expected 2..10000 pixels")
        if self.min_size is not None and self.min_size < 0:
            raise InputError(f"min size {self.min_size}: expected >= 0 pixels")
        if not 0.0 < self.max_size_fraction <= 1.0:
            raise InputError(f"max size fraction {self.max_size_fraction}: expected 0 < f <= 1")
        if self.points_per_side < 1 or self.points_per_side > 128:
            raise InputError(f"points per side {self.points_per_side}: expected 1..128")
        if not 0 <= self.refine_rounds <= 5:
            raise InputError(f"refine rounds {self.refine_rounds}: expected 0..5")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: expected >= 1")
        if self.box_clip_margin is not None and not 0.0 <= self.box_clip_margin <= 2.0:
            raise InputError(f"box clip margin {self.box_clip_margin}: expected 0..2 (fraction of the box side)")
        if self.stability_offset <= 0:
            raise InputError(f"stability offset {self.stability_offset}: expected > 0")
        if not self.box_grid_sides or min(self.box_grid_sides) <= 0:
            raise InputError(f"box grid sides {self.box_grid_sides}: expected positive multiples of the diameter")
        TileGrid((max(self.tile_shape) + 1,) * 2, self.tile_shape, self.halo)  # validates tile and halo

    @classmethod
    def for_microscopy(cls, **overrides) -> AutoSettings:
        """Nuclei, cells, particles: blobs on a background whose touching
        objects the model splits (box-only models), a point grid for
        point-capable models."""
        return cls(**{"proposals": "auto", "keep_unanswered": True, "model_role": "split-check", **overrides})

    @classmethod
    def for_ct(cls, **overrides) -> AutoSettings:
        """CT and MR slices (windowed): organs and tissues as intensity regions."""
        base = {
            "proposals": "regions",
            "quality_threshold": 0.6,
            "stability_threshold": 0.7,
            "box_agreement": 0.6,
            "min_size": 200,
            "nms_iou": 0.5,
            "max_size_fraction": 0.5,
            "box_clip_margin": None,
            "refine_rounds": 1,
        }
        return cls(**{**base, **overrides})

    def with_(self, **changes) -> AutoSettings:
        return replace(self, **changes)
