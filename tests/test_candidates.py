"""Key-slice candidate choice without the predicted-IoU head (napari_sam.candidates)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam.candidates import box_ellipse, box_fit, box_fit_key, box_fit_prediction, box_outputs, choose_candidate
from napari_sam.geometry import box_of_mask
from napari_sam.prediction import Prediction


def test_the_candidate_touching_all_four_sides_of_a_tight_box_wins():
    whole = np.zeros((40, 40), bool)
    whole[5:35, 8:30] = True
    part = np.zeros_like(whole)
    part[5:20, 8:30] = True  # a sub-part: misses the box's lower side
    spill = whole.copy()
    spill[20:25, 30:40] = True  # leaks out of the box on the right
    box = box_of_mask(whole)
    assert box_fit(whole, box) == pytest.approx(1.0)
    assert box_fit(part, box) < 0.6 and box_fit(spill, box) < box_fit(whole, box)
    assert choose_candidate([part, spill, whole], box) == 2
    assert box_fit(np.zeros_like(whole), box) == 0.0


def _prediction(masks: list[np.ndarray], scores: list[float]) -> Prediction:
    k = len(masks)
    return Prediction(
        masks=np.stack(masks),
        scores=np.array(scores, np.float32),
        low_res_logits=np.arange(k, dtype=np.float32)[:, None, None] * np.ones((k, 4, 4), np.float32),
        boxes=np.zeros((k, 4), np.float32),
    )


def test_box_fit_prediction_puts_the_best_fit_first_then_distinct_others():
    """The one box-fit key rule (annotation key slices and propagation both use
    it): best fit first with its own score and logits, duplicates dropped, three at most."""
    whole = np.zeros((40, 40), bool)
    whole[5:35, 8:30] = True
    part = np.zeros_like(whole)
    part[5:20, 8:30] = True
    spill = whole.copy()
    spill[20:25, 30:40] = True
    box = box_of_mask(whole)
    single = _prediction([part], [0.9])
    many = _prediction([spill, part, whole], [0.5, 0.4, 0.3])
    out = box_fit_prediction(single, many, box)
    assert np.array_equal(out.mask, whole) and out.scores[0] == pytest.approx(0.3)
    assert out.low_res_logits[0, 0, 0] == 2.0  # the multimask candidate's own logits
    assert len(out.masks) == 3 and np.array_equal(out.masks[1], part) and np.array_equal(out.masks[2], spill)
    # a tie goes to the single answer
    tie = box_fit_prediction(_prediction([whole], [0.1]), _prediction([whole.copy()], [0.9]), box)
    assert len(tie.masks) == 1 and tie.scores[0] == pytest.approx(0.1)


@pytest.mark.slow
def test_on_mr_box_fit_beats_the_single_mask_output(data_dir, lite_medsam):
    """The shared MR, one tight box per labelled structure on its largest
    slice: the box-fit choice among the single and the three multimask
    outputs beats the single-mask output the IoU head would keep."""
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import resolve_window
    from napari_sam.io import read_image, read_labels_aligned

    d = data_dir / "mr_small"
    vol = read_image(d / "image.nii.gz")
    labels = read_labels_aligned(d / "labels.nii.gz", vol)
    assert len(json.loads((d / "labels.json").read_text())) == 23
    emb = SliceEmbeddings(lite_medsam, vol.array, resolve_window(vol.array, None, vol.metadata.get("modality")))
    single, chosen = [], []
    for i in [int(v) for v in np.unique(labels) if v]:
        gt = labels == i
        z = int(gt.sum((1, 2)).argmax())
        b = np.asarray(box_of_mask(gt[z]), np.float32)
        with torch.inference_mode():
            s = lite_medsam.decode(emb.get(z), boxes_rc=b[None]).masks[0, 0]
            m = lite_medsam.decode(emb.get(z), boxes_rc=b[None], multimask=True).masks[0]
        cands = [s] + list(m)
        dice = [2 * (c & gt[z]).sum() / (c.sum() + gt[z].sum()) for c in cands]
        single.append(dice[0])
        chosen.append(dice[choose_candidate(cands, b)])
    single, chosen = np.array(single), np.array(chosen)
    assert chosen.mean() > single.mean() + 0.08  # measured: 0.671 against 0.535
    assert np.all(chosen >= single - 0.02)  # never a loss worth the name


def test_box_ellipse_fills_a_tiny_box_and_is_never_empty():
    m = box_ellipse((10, 20, 17, 23), (40, 40))  # an 8 x 4 px box
    assert m.sum() >= 20 and box_of_mask(m) == (10, 20, 17, 23)
    assert box_ellipse((5.2, 5.2, 5.3, 5.3), (10, 10)).sum() == 1  # under a pixel: its nearest pixel


@pytest.mark.slow
def test_on_mr_a_tiny_box_key_slice_is_never_empty_and_the_zoomed_candidate_finds_it(data_dir, lite_medsam):
    """The shared MR's left iliopsoas: an 8 x 4 px box on its largest slice, which
    every whole-slice candidate answers empty. The box-fit key rule answers it on a
    magnified crop (and, without crops, still returns a non-empty key mask)."""
    from napari_sam.annotation import decode_key
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import resolve_window
    from napari_sam.io import read_image, read_labels_aligned
    from napari_sam.predictor import SlicePredictor
    from napari_sam.prompts import SlicePrompt

    d = data_dir / "mr_small"
    vol = read_image(d / "image.nii.gz")
    labels = read_labels_aligned(d / "labels.nii.gz", vol)
    names = {v: int(k) for k, v in json.loads((d / "labels.json").read_text()).items()}
    gt = labels == names["iliopsoas_left"]
    z = int(gt.sum((1, 2)).argmax())
    box = box_of_mask(gt[z])
    assert (box[2] - box[0] + 1) * (box[3] - box[1] + 1) <= 40  # a tiny box
    emb = SliceEmbeddings(lite_medsam, vol.array, resolve_window(vol.array, None, vol.metadata.get("modality")))
    predictor = SlicePredictor(lite_medsam)
    predictor.set_embedding(emb.get(z))
    prompt = SlicePrompt(box=box, slice=z)
    with torch.inference_mode():
        whole = box_outputs(lite_medsam, emb.get(z), box)
        plain = decode_key(predictor, prompt, key_choice="box_fit")
        zoomed = decode_key(predictor, prompt, key_choice="box_fit", crop_embedding=lambda c: emb.get(z, c))
    assert not whole.masks.any()  # the model's own answers on the whole slice: all empty
    assert plain.mask.any() and plain.mask[gt[z]].any()  # never empty: the box's ellipse
    assert zoomed.crop is not None and zoomed.mask.any()
    dice = 2 * (zoomed.mask & gt[z]).sum() / (zoomed.mask.sum() + gt[z].sum())
    assert dice > 0.5  # measured 0.65


def test_box_fit_key_asks_for_the_zoomed_answers_only_when_the_box_is_explained_poorly(monkeypatch):
    import napari_sam.candidates as cand

    whole = np.zeros((40, 40), bool)
    whole[5:35, 8:30] = True
    part = np.zeros_like(whole)
    part[5:12, 8:14] = True  # explains the box poorly (fit < 0.5)
    box = box_of_mask(whole)

    class Emb:
        original_size = (40, 40)

    asked = []

    def zoomed():
        asked.append(1)
        return _prediction([whole], [0.1])

    for found, expect_asked in ((whole, False), (part, True)):
        asked.clear()
        monkeypatch.setattr(cand, "box_outputs", lambda backend, emb, b, m=found: _prediction([m], [0.2]))
        out = box_fit_key(None, _prediction([found], [0.9]), _prediction([found], [0.9]), Emb(), box, zoomed)
        assert bool(asked) == expect_asked
        assert np.array_equal(out.mask, whole)  # the zoomed answer won where it was asked for
    empty = np.zeros_like(whole)
    monkeypatch.setattr(cand, "box_outputs", lambda backend, emb, b: _prediction([empty], [0.2]))
    out = box_fit_key(None, _prediction([empty], [0.9]), _prediction([empty], [0.9]), Emb(), box, lambda: None)
    assert out.mask.any() and np.array_equal(out.mask, box_ellipse(box, (40, 40)))  # never empty
