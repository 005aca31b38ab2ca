"""Images larger than a tile: overlapping tiles, and stitching their labels.

A :class:`TileGrid` covers an (H, W) image with tiles of ``tile_shape``
that overlap by at least ``2 * halo`` pixels. Each tile *owns* a core region;
the cores partition the image (their borders sit in the middle of the
overlaps). An object belongs to the tile whose core holds the centre of its
bounding box, and it is segmented in that tile, where it lies whole as long
as it is no larger than the halo (so no object is ever cut at a tile border).

Two ways to use it:

- box proposals known for the whole image (the automatic mode's structure
  proposals): :meth:`TileGrid.tile_for_box` picks the tile each box is
  decoded in; the embeddings of the tiles are cached like crops
  (:class:`napari_sam.embeddings.CropEmbeddings`);
- tiles segmented independently (point-grid proposals, or any per-tile
  segmenter): :func:`stitch_tile_labels` keeps each tile's owned objects,
  drops the ones cut by an inner tile edge and writes one label map with no
  seams and no duplicates.

Coordinates: (row, col) pixels; tiles are :class:`napari_sam.geometry.Crop`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError
from .geometry import Crop

#: default tile (what the model sees in one embedding) and halo, in pixels
DEFAULT_TILE_SHAPE = (512, 512)
DEFAULT_HALO = 64


def _axis_starts(extent: int, tile: int, halo: int) -> list[int]:
    """Tile starts along one axis: evenly spaced, overlaps of at least 2 * halo."""
    if extent <= tile:
        return [0]
    step = tile - 2 * halo
    n = int(np.ceil((extent - tile) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, extent - tile, n)]


def _axis_cuts(starts: list[int], tile: int, extent: int) -> list[int]:
    """Core borders along one axis: the middle of each overlap."""
    cuts = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        cuts.append((b + min(a + tile, extent)) // 2)
    cuts.append(extent)
    return cuts


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles over an image of ``shape`` (H, W).

    tile_shape: (rows, cols) of a tile, clipped to the image; halo: pixels of
    context on each side of a tile's core (the largest object that is never
    cut). Tiles are listed row by row.
    """

    shape: tuple[int, int]
    tile_shape: tuple[int, int] = DEFAULT_TILE_SHAPE
    halo: int = DEFAULT_HALO

    def __post_init__(self) -> None:
        H, W = (int(v) for v in self.shape)
        th, tw = (int(v) for v in self.tile_shape)
        if H < 1 or W < 1:
            raise InputError(f"image of shape {self.shape}: nothing to tile")
        if th < 16 or tw < 16:
            raise InputError(f"tile shape {self.tile_shape}: tiles need at least 16 x 16 pixels")
        if self.halo < 0:
            raise InputError(f"halo {self.halo}: expected >= 0 pixels")
        for t, ext in ((th, H), (tw, W)):
            if ext > t and 2 * self.halo >= t:
                raise InputError(
                    f"halo {self.halo} too large for tiles of {t} pixels: "
                    f"needs 2 * halo < tile side (try --halo {max(0, t // 4)})"
                )
        object.__setattr__(self, "shape", (H, W))
        object.__setattr__(self, "tile_shape", (min(th, H), min(tw, W)))

    @property
    def row_starts(self) -> list[int]:
        return _axis_starts(self.shape[0], self.tile_shape[0], self.halo)

    @property
    def col_starts(self) -> list[int]:
        return _axis_starts(self.shape[1], self.tile_shape[1], self.halo)

    @property
    def row_cuts(self) -> list[int]:
        return _axis_cuts(self.row_starts, self.tile_shape[0], self.shape[0])

    @property
    def col_cuts(self) -> list[int]:
        return _axis_cuts(self.col_starts, self.tile_shape[1], self.shape[1])

    @property
    def tiles(self) -> list[Crop]:
        th, tw = self.tile_shape
        return [Crop(r, c, th, tw) for r in self.row_starts for c in self.col_starts]

    @property
    def cores(self) -> list[Crop]:
        """The owned region of each tile (same order as :attr:`tiles`); they partition the image."""
        rc, cc = self.row_cuts, self.col_cuts
        return [
            Crop(rc[i], cc[j], rc[i + 1] - rc[i], cc[j + 1] - cc[j])
            for i in range(len(rc) - 1)
            for j in range(len(cc) - 1)
        ]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def owner(self, row: float, col: float) -> int:
        """Index of the tile whose core holds pixel (row, col)."""
        i = int(np.searchsorted(self.row_cuts, row, side="right")) - 1
        j = int(np.searchsorted(self.col_cuts, col, side="right")) - 1
        i = min(max(i, 0), len(self.row_starts) - 1)
        j = min(max(j, 0), len(self.col_starts) - 1)
        return i * len(self.col_starts) + j

    def tile_for_box(self, box: tuple[float, float, float, float] | np.ndarray) -> int:
        """The tile to segment a box (r0, c0, r1, c1) in: the owner of its centre
        when the box fits in that tile, else the tile holding it with the widest
        margin, else the tile covering most of it (an object larger than the halo)."""
        r0, c0, r1, c1 = (float(v) for v in box)
        own = self.owner((r0 + r1) / 2.0, (c0 + c1) / 2.0)
        tiles = self.tiles
        if tiles[own].contains_box((r0, c0, r1, c1)):
            return own
        best, best_key = own, (-np.inf, -np.inf)
        for k, t in enumerate(tiles):
            margin = min(r0 - t.top, c0 - t.left, t.top + t.height - 1 - r1, t.left + t.width - 1 - c1)
            ov = max(0.0, min(r1, t.top + t.height - 1) - max(r0, t.top) + 1) * max(
                0.0, min(c1, t.left + t.width - 1) - max(c0, t.left) + 1
            )
            key = (1.0 if margin >= 0 else 0.0, margin if margin >= 0 else ov)
            if key > best_key:
                best, best_key = k, key
        return best

    def inner_edges(self, index: int) -> tuple[bool, bool, bool, bool]:
        """(top, left, bottom, right): whether each edge of tile ``index`` lies inside the image."""
        t = self.tiles[index]
        H, W = self.shape
        return t.top > 0, t.left > 0, t.top + t.height < H, t.left + t.width < W


def _touches(mask_box: tuple[int, int, int, int], tile: Crop, edges: tuple[bool, bool, bool, bool]) -> bool:
    r0, c0, r1, c1 = mask_box
    top, left, bottom, right = edges
    return (
        (top and r0 <= 0)
        or (left and c0 <= 0)
        or (bottom and r1 >= tile.height - 1)
        or (right and c1 >= tile.width - 1)
    )


def tile_kept_objects(grid: TileGrid, index: int, labels: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """The objects tile ``index`` keeps: (local id, bounding slices in the tile), in id order.

    labels: the tile's (height, width) integer map. An object is kept when the
    tile owns the centre of its bounding box and it touches no edge of the
    tile lying inside the image (the halo rule of this module).
    """
    t = grid.tiles[index]
    labels = np.asarray(labels)
    if labels.shape != t.shape:
        raise InputError(f"tile {index}: labels of shape {labels.shape}, expected {t.shape}")
    edges = grid.inner_edges(index)
    kept = []
    for lid, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        box = (sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1)
        centre = ((box[0] + box[2]) / 2.0 + t.top, (box[1] + box[3]) / 2.0 + t.left)
        if grid.owner(*centre) == index and not _touches(box, t, edges):
            kept.append((lid, sl))
    return kept


def stitch_tile_labels(
    grid: TileGrid, tile_labels: Iterable[np.ndarray], scores: Iterable[dict[int, float]] | None = None
) -> np.ndarray:
    """Stitch per-tile instance label maps into one (H, W) int32 label map.

    tile_labels: one (height, width) integer map per tile of ``grid`` (in
    :attr:`TileGrid.tiles` order), 0 = background, ids local to each tile.
    scores: optional per-tile {local id: score}; a higher score wins a pixel
    claimed by two kept objects (else the earlier tile keeps it).

    An object is kept by the tile that owns the centre of its bounding box,
    unless it touches an edge of that tile lying inside the image (it is cut
    there; the neighbouring tile, whose halo holds it, sees it whole). Each
    kept object gets a new global id, 1..N in tile order.
    """
    H, W = grid.shape
    out = np.zeros((H, W), np.int32)
    best = np.full((H, W), -np.inf, np.float32)
    next_id = 1
    tiles = grid.tiles
    score_list = list(scores) if scores is not None else None
    for k, labels in enumerate(tile_labels):
        t = tiles[k]
        labels = np.asarray(labels)
        for lid, sl in tile_kept_objects(grid, k, labels):
            m = labels[sl] == lid
            s = np.float32(score_list[k].get(lid, 0.0)) if score_list is not None else np.float32(-k)
            gsl = (slice(sl[0].start + t.top, sl[0].stop + t.top), slice(sl[1].start + t.left, sl[1].stop + t.left))
            win = m & (s > best[gsl])
            out[gsl][win] = next_id
            best[gsl][win] = s
            next_id += 1
    return out
