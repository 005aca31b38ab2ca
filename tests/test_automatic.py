"""Automatic mode: the logic on a fake blob model (fast), and what users see
on real data with the embedded model (nuclei, one CT slice)."""

from __future__ import annotations

import numpy as np
import pytest

from fake_blob_backend import FakeBlobBackend, SilentBackend, blob_image
from napari_sam.automatic import (
    AutomaticSegmenter,
    AutoSettings,
    Candidate,
    estimate_object_diameter,
    estimate_polarity,
    link_slices,
    non_max_suppression,
    point_grid,
    resolve_overlaps,
    structure_proposals,
)
from napari_sam.errors import InputError
from napari_sam.evaluation import iou_matrix, match_instances
from napari_sam.jobs import Cancel, Cancelled, Progress


# ----------------------------------------------------------------------------- image structure
def test_diameter_and_polarity_estimates_follow_the_image():
    """Polarity flips with the image; the estimated diameter fits the discs and doubles with them."""
    img, _ = blob_image((192, 192), radius=7.0, touching_pair=False)
    assert estimate_polarity(img) == "bright"
    assert estimate_polarity(1.0 - img) == "dark"
    d = estimate_object_diameter(img)
    assert 9.0 <= d <= 22.0
    big, _ = blob_image((384, 384), radius=14.0, touching_pair=False)
    assert estimate_object_diameter(big) > 1.5 * d


def test_blob_proposals_find_every_blob_and_split_a_touching_pair():
    """Blob proposals (no model) find every disc, bright or dark, and split two touching ones."""
    img, lab = blob_image((192, 192))
    props = structure_proposals(img, "blobs", 14.0, "bright", 20, 10_000)
    s = match_instances(props.regions, lab)
    assert s.f1 >= 0.95, s.summary()
    assert len(props.boxes) == props.regions.max()
    dark = structure_proposals(1.0 - img, "blobs", 14.0, "dark", 20, 10_000)
    assert match_instances(dark.regions, lab).f1 >= 0.95


def test_point_grid_is_centred_in_cells():
    """SAM's point grid: n x n points at the centres of the cells."""
    pts = point_grid((100, 200), 4)
    assert pts.shape == (16, 2)
    assert np.allclose(sorted(set(pts[:, 0])), [12.5, 37.5, 62.5, 87.5])


def test_settings_are_validated_with_actionable_errors():
    """Bad settings are InputErrors that name the setting."""
    with pytest.raises(InputError, match="quality threshold"):
        AutoSettings(quality_threshold=1.5)
    with pytest.raises(InputError, match="proposals"):
        AutoSettings(proposals="everything")
    with pytest.raises(InputError, match="halo"):
        AutoSettings(tile_shape=(64, 64), halo=40)
    with pytest.raises(InputError, match="point-grid"):
        AutomaticSegmenter(FakeBlobBackend(), AutoSettings(proposals="point-grid")).segment(np.zeros((32, 32)))


# ----------------------------------------------------------------------------- NMS and overlaps
def _cand(mask: np.ndarray, score: float, top: int = 0, left: int = 0, logit: float = 4.0) -> Candidate:
    return Candidate(
        top=top,
        left=left,
        logits=np.where(mask, logit, -logit).astype(np.float32),
        score=score,
        stability=0.9,
        box_iou=0.9,
        prompt=0,
    )


def test_nms_drops_duplicates_parts_and_groups():
    """NMS keeps the best of duplicates, drops parts of a kept mask and masks that hold two kept ones."""
    a = np.zeros((40, 40), bool)
    a[5:20, 5:20] = True
    b = np.zeros((40, 40), bool)
    b[5:20, 22:37] = True
    dup = a.copy()
    dup[5:21, 5:21] = True  # nearly a
    part = np.zeros((40, 40), bool)
    part[8:15, 8:15] = True  # inside a
    group = a | b  # a and b together
    kept = non_max_suppression(
        [_cand(a, 0.9), _cand(b, 0.9), _cand(dup, 0.8), _cand(part, 0.7), _cand(group, 0.6)], 0.5
    )
    assert [c.score for c in kept] == [0.9, 0.9]
    # a group that ranks higher than its parts wins instead
    kept = non_max_suppression([_cand(group, 0.99), _cand(a, 0.5), _cand(b, 0.5)], 0.5)
    assert len(kept) == 1 and kept[0].score == 0.99


def test_overlaps_go_to_the_highest_logit_and_fragments_are_dropped():
    """Contested pixels go to the mask with the higher logit; objects below min_size vanish."""
    a = np.zeros((30, 30), bool)
    a[5:20, 5:20] = True
    b = np.zeros((30, 30), bool)
    b[5:20, 15:28] = True
    ca = _cand(a, 0.9, logit=2.0)
    cb = _cand(b, 0.8, logit=5.0)
    labels, scores = resolve_overlaps([ca, cb], (30, 30), min_size=10)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.all(labels[5:20, 15:20] == 2)  # b's logit is higher where they overlap
    assert scores == [0.9, 0.8]
    tiny = np.zeros((30, 30), bool)
    tiny[0:2, 0:2] = True
    labels, _ = resolve_overlaps([_cand(tiny, 0.9)], (30, 30), min_size=10)
    assert labels.max() == 0


# ----------------------------------------------------------------------------- the pipeline (fake model)
def test_segment_everything_on_blobs_with_a_box_model():
    """model_role "masks": each blob is decoded once on the one embedding and
    the model's masks are the objects (F1 >= 0.95); with the decoder
    answering nothing there are no objects at all."""
    img, lab = blob_image((192, 192))
    backend = FakeBlobBackend()
    st = AutoSettings.for_microscopy(model_role="masks", keep_unanswered=False)
    res = AutomaticSegmenter(backend, st).segment(img)
    s = match_instances(res.labels, lab)
    assert s.f1 >= 0.95, s.summary()
    assert res.encoder_calls == 1 and backend.decoded_prompts == res.proposals
    assert AutomaticSegmenter(SilentBackend(), st).segment(img).labels.max() == 0
    assert set(res.timings) >= {"proposals", "encoder", "decoder", "postprocess", "total"}
    assert len(res.scores) == res.labels.max()


def test_point_grid_for_point_capable_models():
    """A point-capable model gets SAM's point grid (20 x 20 prompts) and its
    masks are the objects (no structure proposals to fall back on)."""
    img, lab = blob_image((160, 160), touching_pair=False)
    backend = FakeBlobBackend(supports_points=True)
    seg = AutomaticSegmenter(backend, AutoSettings(points_per_side=20))
    assert seg.proposal_kind() == "point-grid"
    res = seg.segment(img)
    assert res.proposals == 400
    assert match_instances(res.labels, lab).f1 >= 0.95


def test_zoomed_automatic_mode_embeds_crops_and_caches_them():
    """model_role "masks" with zoom: blobs decoded on crop embeddings (several
    encoder runs), cached, so a second run encodes nothing and gives the same
    labels."""
    img, lab = blob_image((256, 256), radius=5.0, touching_pair=False)
    from napari_sam.embeddings import CropEmbeddings
    from napari_sam.zoom import ZoomSettings

    backend = FakeBlobBackend(image_size=64)
    seg = AutomaticSegmenter(
        backend,
        AutoSettings.for_microscopy(zoom=ZoomSettings(min_crop=32), model_role="masks", keep_unanswered=False),
        embeddings=CropEmbeddings(backend, max_in_memory=1000),
    )
    res = seg.segment(img)
    assert res.encoder_calls > 1
    assert match_instances(res.labels, lab).f1 >= 0.95
    again = seg.segment(img)
    assert again.encoder_calls == 0
    assert np.array_equal(again.labels, res.labels)


def test_progress_and_cancel():
    """A run reports jobs.Progress events through its stages, and a Cancel
    token set mid-run (here: at the first decoding step) stops it there."""
    img, _ = blob_image((128, 128))
    events: list[Progress] = []
    seg = AutomaticSegmenter(FakeBlobBackend(), AutoSettings.for_microscopy(batch_size=2, model_role="masks"))
    seg.segment(img, progress=events.append)
    assert any("decoding" in e.stage for e in events) and events[-1].stage == "done"
    assert all(isinstance(e.done, int) and 0 <= e.done <= e.total for e in events)
    cancel, seen = Cancel(), []

    def stop_at_decoding(e: Progress) -> None:
        seen.append(e.stage)
        if "decoding" in e.stage:
            cancel.set()

    with pytest.raises(Cancelled):
        seg.segment(img, progress=stop_at_decoding, cancel=cancel)
    assert "decoding" in seen[-1] and len(seen) < len(events)


def test_volume_objects_keep_one_id_across_slices():
    """Slice-wise mode on a volume: each object keeps one id through the slices (linking)."""
    img, lab = blob_image((128, 128), touching_pair=False)
    vol = np.stack([img, np.roll(img, 1, axis=1), np.roll(img, 2, axis=1)])
    res = AutomaticSegmenter(FakeBlobBackend(), AutoSettings.for_microscopy()).segment_volume(vol)
    assert res.labels.shape == vol.shape
    n = lab.max()
    assert res.labels.max() == n  # each blob is one 3D object
    for z in range(3):
        assert set(np.unique(res.labels[z])) == set(range(n + 1))


def test_link_slices_starts_new_ids_for_new_objects():
    """Linking: a moved object keeps its id, an object that appears gets a new one."""
    a = np.zeros((3, 20, 20), np.int32)
    a[0, 2:8, 2:8] = 5
    a[1, 2:8, 3:9] = 9  # same object, moved
    a[1, 12:18, 12:18] = 4  # a new one
    a[2, 12:18, 12:18] = 1
    out = link_slices(a)
    assert out[0, 4, 4] == out[1, 4, 5]
    assert out[1, 14, 14] == out[2, 14, 14] != out[0, 4, 4]
    assert out.max() == 2


# ----------------------------------------------------------------------------- real data, embedded model
def _nuclei(data_dir):
    import tifffile

    from napari_sam.intensity import resolve_window

    d = data_dir / "nuclei_2d"
    img = tifffile.imread(d / "image.tif")
    return resolve_window(img).apply(img), tifffile.imread(d / "labels.tif")


def test_nuclei_automatic_f1_and_what_the_model_adds(data_dir, lite_medsam, monkeypatch):
    """Issue #17's 2D figures on nuclei_2d with no prompts: F1@0.5 >= 0.92 and
    mean matched IoU >= 0.83 with the embedded model, and the model adds: with
    its decoder's answers removed (empty masks, scores unchanged) no split is
    confirmed, the result is the blob proposals alone, and F1 is at least
    0.015 lower (measured: 0.939 against 0.912)."""
    import torch

    img, lab = _nuclei(data_dir)
    seg = AutomaticSegmenter(lite_medsam, AutoSettings.for_microscopy())
    res = seg.segment(img)
    s = match_instances(res.labels, lab)
    assert res.candidates >= 3 and 1 <= res.encoder_calls <= 8
    decode = lite_medsam.decode_low_res

    def answers_nothing(*args, **kwargs):
        low, scores = decode(*args, **kwargs)
        return torch.full_like(low, -20.0), scores

    monkeypatch.setattr(lite_medsam, "decode_low_res", answers_nothing)
    blobs_alone = match_instances(seg.segment(img).labels, lab)
    assert s.f1 >= 0.92 and s.mean_matched_iou >= 0.83, s.summary()
    assert s.f1 >= blobs_alone.f1 + 0.015, (s.summary(), blobs_alone.summary())


def test_ct_slice_recovers_the_large_organs(ct_volume, ct_labels, ct_label_names, lite_medsam):
    """One soft-tissue slice: liver, spleen and stomach (>= 2000 px) found at
    IoU >= 0.5; the objects are the model's masks (CT preset: no structure
    fallback), so this fails when the model answers nothing."""
    from napari_sam.intensity import parse_window

    z = 10
    img = parse_window("soft-tissue").apply(ct_volume.array[z])
    res = AutomaticSegmenter(lite_medsam, AutoSettings.for_ct()).segment(img)
    gt = ct_labels[z]
    _, ref_ids, iou = iou_matrix(res.labels, gt)
    for name in ("liver", "spleen", "stomach"):
        k = list(ref_ids).index(ct_label_names[name])
        best = float(iou[:, k].max()) if iou.shape[0] else 0.0
        assert best >= 0.5, f"{name}: best IoU {best:.2f}"


def test_blobs_the_model_left_unanswered_are_kept_below_model_masks():
    """model_role "masks": a blob with no kept model mask is kept as itself,
    ranked below the model's masks."""
    from napari_sam.automatic import Candidate, non_max_suppression, unanswered_regions

    regions = np.zeros((40, 40), np.int32)
    regions[5:15, 5:15] = 1
    regions[25:35, 20:30] = 2
    answer = np.full((12, 12), -3.0, np.float32)
    answer[1:11, 1:11] = 4.0  # the model's mask of blob 1 (slightly different outline)
    kept = [Candidate(top=4, left=4, logits=answer, score=0.9, stability=0.9, box_iou=0.9, prompt=0)]
    extra = unanswered_regions(regions, kept)
    assert [c.prompt for c in extra] == [1]
    assert np.array_equal(extra[0].mask, regions[25:35, 20:30] == 2) and extra[0].rank < kept[0].rank
    assert unanswered_regions(regions, kept + extra) == []
    assert non_max_suppression(kept + extra, 0.5)[0] is kept[0]
