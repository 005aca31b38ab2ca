"""Step 0 that does not fail on whole structures (issue #12): the second look at a
refused slice (RescueStrategy) and the key slice's guard against a single output
that explains less than half of the user's box. Fake box models, synthetic volumes."""

from __future__ import annotations

import numpy as np

from napari_sam.annotation.keyslices import decode_key
from napari_sam.candidates import box_fit, uses_box_fit
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.geometry import box_of_mask
from napari_sam.intensity import Window
from napari_sam.predictor import SlicePredictor
from napari_sam.prompts import SlicePrompt
from napari_sam.propagation import PropagationState, Propagator, StopReason
from test_propagation import BrightInBoxBackend, WholeRegionBackend, ball, dice, key_prompt


class LooseBoxBackend(BrightInBoxBackend):
    """A box model whose answer jumps with the box's margin, as LiteMedSAM's does: on
    slices with a faint background (the "hard" tissue), a box that leaves 3 px or more
    between itself and the bright region inside it is answered, by every output, with
    a 2 x 2 blob in its top-left corner; a box that fits the region is answered right."""

    name = "loose-box"

    def decode_low_res(
        self, embedding, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, multimask=False
    ):
        low, scores = super().decode_low_res(embedding, points_rc, point_labels, boxes_rc, mask_input, False)
        h, w = embedding.original_size
        hard = float(embedding.features[0, 0, :h, :w].min()) > 0.05
        boxes = np.asarray(boxes_rc, np.float32).reshape(-1, 4)
        for i, box in enumerate(boxes):
            m = low[i, 0].numpy() > 0
            mb = box_of_mask(m)
            gaps = [] if mb is None else [mb[0] - box[0], mb[1] - box[1], box[2] - mb[2], box[3] - mb[3]]
            if hard and mb is not None and max(gaps) >= 3:
                r0, c0 = int(box[0]), int(box[1])
                low[i, 0] = -8.0
                low[i, 0, r0 : r0 + 2, c0 : c0 + 2] = 8.0
        k = 3 if multimask else 1
        return low.repeat(1, k, 1, 1), scores.repeat(1, k)


def test_a_refused_slice_gets_a_second_look_with_the_neighbours_tight_box():
    """From slice 14 on, the model answers the pass's padded box with a blob beside
    the object (every output), and the tight box with the object: without the
    second look the pass stops at slice 13 (DISCONTINUITY); with it the object is
    followed to its end, and the pass still ends where the object does."""
    obj = ball()
    z = np.arange(obj.shape[0])[:, None, None]
    vol = np.where(obj, 200.0, np.where(z >= 14, 25.0, 0.0)).astype(np.float32)
    backend = LooseBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    results = {}
    for rescue in ("default", None):
        state = PropagationState(shape=vol.shape)
        state.add_prompt(12, key_prompt(obj, 12))
        kw = {} if rescue == "default" else {"rescue": None}
        Propagator(backend, emb, **kw).propagate(state)
        results[rescue] = state
    old, new = results[None], results["default"]
    up_old = next(s for s in old.stops if s.direction == 1)
    assert (up_old.last, up_old.reason) == (13, StopReason.DISCONTINUITY)
    assert dice(old.volume_mask(), obj) < 0.85
    assert dice(new.volume_mask(), obj) > 0.97
    zs = np.flatnonzero(obj.any((1, 2)))
    assert new.extent[1] <= zs.max() + 1  # not past the object's end (beyond patience's look)
    # A tight box around a few pixels is answered with those pixels whatever the slice
    # holds: the second look would copy such an object onto every slice; it never keeps
    # the neighbour's mask echoed back.
    vol = np.zeros((8, 32, 32), np.float32)
    vol[4, 10:13, 10:13] = 128.5  # just over the model's 0.5
    vol[:4] = 127.0  # tissue just under it, as bright as the object to the stop rules

    class EchoBackend(LooseBoxBackend):
        name = "echo"

        def decode_low_res(self, embedding, points_rc=None, point_labels=None, boxes_rc=None, **kw):
            low, scores = super().decode_low_res(embedding, points_rc, point_labels, boxes_rc, **kw)
            for i, (r0, c0, r1, c1) in enumerate(np.asarray(boxes_rc, np.float32).reshape(-1, 4)):
                if r1 - r0 <= 2 and c1 - c0 <= 2:  # a tight box of a few pixels: its pixels
                    low[i] = -8.0
                    low[i, :, int(r0) : int(r1) + 1, int(c0) : int(c1) + 1] = 8.0
            return low, scores

    backend = EchoBackend()  # past a 3 x 3 object's only slice: the echo is refused
    state = PropagationState(shape=vol.shape)
    state.add_prompt(4, SlicePrompt(box=(10, 10, 12, 12), slice=4))
    Propagator(backend, SliceEmbeddings(backend, vol, Window(0, 255), axis=0)).propagate(state)
    assert state.extent == (4, 4)


def _disc_beside_a_neighbour():
    """One slice: a disc (the boxed object) and a large bright region, not connected
    to it, that reaches into a corner of the disc's box and far outside it."""
    y, x = np.ogrid[:64, :64]
    disc = (y - 32) ** 2 + (x - 20) ** 2 <= 25
    neighbour = (x >= 24) & (x < 60) & (y >= 4) & (y <= 27)
    return np.where(disc | neighbour, 200.0, 0.0).astype(np.float32), disc


def test_key_slice_under_single_fit_takes_the_box_fit_candidate_when_the_single_output_explains_little_of_the_box():
    """Under key rule "single_fit" (CT), a single output that explains less than half of
    the box the user drew (box fit < 0.5: here the disc and the large region in a
    corner of its box) is replaced by the candidate that explains the box best (the disc), in the
    annotation's key-slice rule and in the propagator's key slices alike."""
    img, disc = _disc_beside_a_neighbour()
    box = box_of_mask(disc)
    backend = WholeRegionBackend()
    vol = np.repeat(img[None], 3, 0)
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    predictor = SlicePredictor(backend)
    predictor.set_embedding(emb.get(1))
    single = predictor.predict(prompt=SlicePrompt(box=box, slice=1), multimask=False).mask
    assert box_fit(single, box) < 0.5 and uses_box_fit("single_fit", single, box)
    key = decode_key(predictor, SlicePrompt(box=box, slice=1), key_choice="single_fit").mask
    assert dice(key, disc) > 0.95
    state = PropagationState(shape=vol.shape, range=(1, 1))
    state.add_prompt(1, SlicePrompt(box=box, slice=1))
    Propagator(backend, emb, key_choice="single_fit").propagate(state)
    assert dice(state.results[1], disc) > 0.95
    assert not uses_box_fit("single", single, box)  # 2D images keep the single output
    # a single output that explains its box is kept (no neighbour in the box)
    img, disc = _disc_beside_a_neighbour()
    img[:28] = 0.0  # no neighbour: the single output is the disc
    box = box_of_mask(disc)
    backend = WholeRegionBackend()
    predictor = SlicePredictor(backend)
    predictor.set_embedding(SliceEmbeddings(backend, img[None], Window(0, 255), axis=0).get(0))
    single = predictor.predict(prompt=SlicePrompt(box=box, slice=0), multimask=False).mask
    assert not uses_box_fit("single_fit", single, box) and uses_box_fit("box_fit", single, box)
    assert np.array_equal(decode_key(predictor, SlicePrompt(box=box, slice=0), key_choice="single_fit").mask, single)


def test_batched_plain_boxes_on_ct_follow_the_key_slice_guard():
    """The prompts file's plain (not propagated) boxes are decoded in batches: on CT
    ("single_fit") they follow decode_key's guard too, so the disc's box gives the disc,
    not the disc and the region in a corner of its box."""
    from napari_sam.io import Volume
    from napari_sam.prompts import ObjectPrompts, PromptsFile
    from napari_sam.segmentation import key_choice_for, segment_volume

    img, disc = _disc_beside_a_neighbour()
    vol = Volume(np.repeat(img[None], 3, 0), metadata={"modality": "CT"})
    assert key_choice_for(vol) == "single_fit"
    box = box_of_mask(disc)
    pf = PromptsFile(objects=[ObjectPrompts(1, "disc", [SlicePrompt(box=box, slice=1)], window=[0, 255])])
    res = segment_volume(vol, pf, WholeRegionBackend())
    assert dice(res.labels[1] == 1, disc) > 0.95
