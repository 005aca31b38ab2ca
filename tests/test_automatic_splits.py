"""2D automatic mode, "split-check": blob outlines kept, touching objects split
where the model confirms the cut. What each test proves is in its docstring;
the pipeline tests fail when the model's answers are removed (SilentBackend)."""

from __future__ import annotations

import numpy as np
import pytest

from fake_blob_backend import FakeBlobBackend, SilentBackend, blob_image, touching_pairs_image
from napari_sam.automatic import AutomaticSegmenter, AutoSettings, structure_proposals
from napari_sam.automatic.mosaic import MosaicAnswer, MosaicRequest, decode_in_mosaics
from napari_sam.automatic.split_check import apply_splits, judge_split, split_requests
from napari_sam.automatic.splits import concavities, split_hypotheses
from napari_sam.errors import InputError
from napari_sam.evaluation import match_instances


def _ellipse(shape, centre, a, b, theta):
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    y, x = rr - centre[0], cc - centre[1]
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def test_concavity_cut_separates_two_touching_nuclei_and_leaves_a_convex_one():
    """Two ellipses pressed together along their long sides give one blob with
    two bays; the cut between them recovers each ellipse (IoU >= 0.85). A
    single ellipse has no bay deep enough and no hypothesis."""
    a = _ellipse((60, 60), (30, 24), 14, 7, 1.2)
    b = _ellipse((60, 60), (30, 37.5), 14, 7, 1.2)
    regions = np.zeros((60, 60), np.int32)
    regions[a | b] = 1
    single = _ellipse((60, 60), (30, 30), 14, 7, 0.3).astype(np.int32)
    assert len(concavities(a | b)) >= 2
    hyps = split_hypotheses(regions, diameter=20.0, min_size=60, min_score=0.15)
    assert len(hyps) == 1 and hyps[0].n_parts == 2
    parts = np.zeros((60, 60), np.int32)
    h = hyps[0]
    parts[h.top : h.top + h.parts.shape[0], h.left : h.left + h.parts.shape[1]] = h.parts
    truth = np.where(a, 1, np.where(b, 2, 0))
    assert match_instances(parts, truth, 0.85).f1 == 1.0
    assert split_hypotheses(single, diameter=20.0, min_size=60, min_score=0.15) == []


def _answer(parts_on_crop: np.ndarray, scores, covered: bool) -> MosaicAnswer:
    k = int(parts_on_crop.max())
    logits = np.full((k + 1,) + parts_on_crop.shape, -4.0, np.float32)
    logits[0][parts_on_crop > 0] = 4.0
    for i in range(k):
        if covered:
            logits[i + 1][parts_on_crop == i + 1] = 4.0
    return MosaicAnswer(logits=logits, scores=np.asarray(scores, np.float32))


def test_a_cut_is_kept_only_when_the_model_answers_every_part_as_an_object():
    """The verdict follows the model: confident answers that cover each part
    keep the cut; a doubtful answer for one part (predicted IoU below the
    threshold) or empty answers (the decoder broken, scores high) reject it."""
    regions = np.zeros((40, 60), np.int32)
    regions[10:30, 10:50] = 1
    hyps = split_hypotheses(regions, 20.0, 40, 0.15)
    assert hyps == []  # a rectangle is convex: build the hypothesis by hand
    from napari_sam.automatic.splits import SplitHypothesis

    parts = np.zeros((20, 40), np.int32)
    parts[:, :20], parts[:, 20:] = 1, 2
    h = SplitHypothesis(region=1, top=10, left=10, parts=parts, score=0.5)
    req = split_requests([h], crop_scale=1.5)[0]
    on_crop = np.zeros((req.side, req.side), np.int32)
    on_crop[10 - req.top : 30 - req.top, 10 - req.left : 50 - req.left] = parts
    good = judge_split(h, req, _answer(on_crop, [0.9, 0.85, 0.8], True), quality=0.7, min_iou=0.4)
    doubtful = judge_split(h, req, _answer(on_crop, [0.9, 0.85, 0.5], True), quality=0.7, min_iou=0.4)
    empty = judge_split(h, req, _answer(on_crop, [0.9, 0.85, 0.8], False), quality=0.7, min_iou=0.4)
    assert good.accepted and not doubtful.accepted and not empty.accepted
    out = apply_splits(regions, [h, h, h], [good, doubtful, empty])
    assert sorted(np.unique(out)) == [0, 1, 2] and (out == 2).sum() == 400


def test_mosaic_crops_come_back_where_they_were_taken():
    """Four crops in one encoder run: each box's answer lands on its own crop
    (the fake model's mask of each disc matches the disc, IoU >= 0.8), and one
    crop per run gives the same answers."""
    img, lab = blob_image((160, 160), touching_pair=False)
    reqs = []
    for i in (1, 2, 5, 7):
        rows, cols = np.nonzero(lab == i)
        box = np.array([[rows.min(), cols.min(), rows.max(), cols.max()]], np.float32)
        reqs.append(MosaicRequest(0, int(rows.min()) - 6, int(cols.min()) - 6, int(np.ptp(rows)) + 13, box))
    backend = FakeBlobBackend(image_size=128)
    four = decode_in_mosaics(backend, [img], reqs, per_side=2)
    one = decode_in_mosaics(backend, [img], reqs, per_side=1)
    assert backend.embed_calls == 1 + 4
    for i, req, a, b in zip((1, 2, 5, 7), reqs, four, one):
        truth = (lab == i)[req.slices]
        m = a.logits[0] > 0
        assert np.logical_and(m, truth).sum() / np.logical_or(m, truth).sum() >= 0.8
        assert np.logical_and(m, b.logits[0] > 0).sum() / np.logical_or(m, b.logits[0] > 0).sum() >= 0.8


def test_split_check_splits_touching_pairs_only_with_the_models_answers():
    """What the model adds in 2D: on touching pairs the blob proposals merge,
    automatic mode (microscopy preset) reaches F1 1.0 with a model that answers
    each half as an object, and stays at the blobs' F1 (about 0.5) when the
    decoder answers nothing: the model's answers are what splits the pairs."""
    img, lab = touching_pairs_image()
    st = AutoSettings.for_microscopy()
    blobs = structure_proposals(img, "blobs", 23.0, "bright", 83, img.size // 2).regions
    with_model = AutomaticSegmenter(FakeBlobBackend(), st).segment(img)
    silent = AutomaticSegmenter(SilentBackend(), st).segment(img)
    f_blobs = match_instances(blobs, lab).f1
    f_model = match_instances(with_model.labels, lab).f1
    f_silent = match_instances(silent.labels, lab).f1
    assert f_blobs < 0.7 and f_silent < 0.7, (f_blobs, f_silent)
    assert f_model >= 0.95, f_model
    assert with_model.candidates >= 4 and with_model.encoder_calls >= 1
    assert len(with_model.scores) == with_model.labels.max()


def test_split_check_settings_are_validated():
    with pytest.raises(InputError, match="model role"):
        AutoSettings(model_role="judge")
    with pytest.raises(InputError, match="mosaic side"):
        AutoSettings(mosaic_side=0)
    with pytest.raises(InputError, match="split quality"):
        AutoSettings(split_quality=1.2)
