"""Automatic segmentation ("segment everything"): every object, no prompt.

The pipeline, for one 2D image (a slice, a tile-able micrograph)::

    proposals -> views and embeddings -> batched decoding -> filtering
      -> non-maximum suppression -> overlap resolution -> instance labels

Proposals. The embedded LiteMedSAM only understands boxes, and its decoder
costs tens of milliseconds per prompt on a CPU, so a dense box grid (SAM's
approach with points) would take minutes. Instead the default proposals
come from cheap image structure (:func:`structure_proposals`):

- ``"blobs"`` (microscopy: nuclei, cells, particles): the typical object
  diameter is estimated from the scale-normalised Laplacian of Gaussian,
  objects are separated from the background by a local threshold, and
  touching objects are split by a watershed on the distance transform. Each
  region's box is one prompt;
- ``"regions"`` (CT, MR, anything without a background): Felzenszwalb's
  graph segmentation at two scales (a small hierarchy: organs whole and in
  parts); each region large enough is one prompt, and each good mask that
  leaves its box is asked again with its own box (``refine_rounds``).

Point-capable models (SAM, MobileSAM, micro-sam) use a regular point grid,
three candidate masks per point, as SAM's automatic mask generator does
(``proposals="point-grid"``). A multi-scale box grid (``"box-grid"``) is
there for comparison (see docs/automatic.md for the measurements).

Views. Each proposal is decoded on the embedding of the tile that holds it
(:mod:`napari_sam.tiling`; a slice up to the tile shape is one tile), or, with
``zoom``, on a crop around it (:mod:`napari_sam.zoom`). Embeddings are kept
in an LRU so that re-running with other thresholds costs no encoder run.

Filtering. A candidate mask is kept when the model's predicted IoU is at
least ``quality_threshold``, its *stability* (IoU of the masks thresholded at
``-stability_offset`` and ``+stability_offset`` logits) at least
``stability_threshold``, its area at least ``min_size``, and, for box
prompts, its bounding box agrees with the prompt box (``box_agreement``): a
box model answers a box holding one object with a mask that fills it.

Overlaps. Duplicates are removed by greedy mask NMS (highest score first);
pixels still claimed by several masks go to the mask with the highest logit
there, which draws the border between touching objects where the model is
least sure. Each object keeps its largest connected part.

Volumes (:meth:`AutomaticSegmenter.segment_volume`): every slice is segmented,
then objects of neighbouring slices are linked by overlap (IoU of at least
``link_iou``; one-to-one), so that each 3D object has one id.

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive; images
are float32 in [0, 1] (use :mod:`napari_sam.intensity` to window raw data).

The package, in the order the data flows:

- :mod:`.settings`: :class:`AutoSettings` (what users tune; presets);
- :mod:`.proposals`: prompts from image structure, object scale;
- :mod:`.masks`: decoded masks (:class:`Candidate`), filtering, NMS, overlaps;
- :mod:`.linking`: per-slice maps linked into 3D objects;
- :mod:`.segmenter`: :class:`AutomaticSegmenter` (2D, and volumes slice by slice);
- :mod:`.volume`: :class:`StackSegmenter`, 3D proposals for nuclei stacks.

Every run is a job of :mod:`napari_sam.jobs` (a generator of ``Progress``
returning an :class:`AutoResult`; ``segment`` drives it with a progress
callback and a ``Cancel`` token).
"""

from __future__ import annotations

from .linking import link_slices
from .masks import (
    Candidate,
    candidates_from_logits,
    filter_candidates,
    non_max_suppression,
    resolve_overlaps,
    unanswered_regions,
)
from .proposals import (
    Proposals,
    blob_regions,
    box_grid,
    estimate_object_diameter,
    estimate_polarity,
    gray_image,
    intensity_region_boxes,
    point_grid,
    refine_diameter,
    structure_proposals,
)
from .segmenter import AutomaticSegmenter, AutoResult
from .settings import PROPOSAL_KINDS, AutoSettings
from .volume import (
    Stack3DSettings,
    StackSegmenter,
    foreground_3d,
    parse_spacing,
    split_instances_3d,
    stack_diameter,
    stack_settings_from_args,
    stack_spacing,
)

__all__ = [
    "PROPOSAL_KINDS",
    "AutoResult",
    "AutoSettings",
    "AutomaticSegmenter",
    "Candidate",
    "Proposals",
    "Stack3DSettings",
    "StackSegmenter",
    "blob_regions",
    "box_grid",
    "candidates_from_logits",
    "estimate_object_diameter",
    "estimate_polarity",
    "filter_candidates",
    "foreground_3d",
    "gray_image",
    "intensity_region_boxes",
    "link_slices",
    "non_max_suppression",
    "parse_spacing",
    "point_grid",
    "refine_diameter",
    "resolve_overlaps",
    "split_instances_3d",
    "stack_diameter",
    "stack_settings_from_args",
    "stack_spacing",
    "structure_proposals",
    "unanswered_regions",
]
