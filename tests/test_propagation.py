"""Propagation logic with a fake box model on synthetic volumes (fast), plus
corrections and cancel on the real CT with the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError, UsageError
from napari_sam.geometry import box_of_mask
from napari_sam.intensity import Window
from napari_sam.jobs import Cancel
from napari_sam.models.base import Backend, Embedding
from napari_sam.prompts import ObjectPrompts, PromptsFile, SlicePrompt
from napari_sam.propagation import PropagationState, Propagator, StepAnswer, StopReason, StopRules
from napari_sam.segmentation import ObjectMasks, paint_objects, segment_volume


class BrightInBoxBackend(Backend):
    """A fake box model: the mask is the bright part (> 0.5) of the image inside
    the box, its largest connected piece; predicted IoU 0.9 (0.1 when empty).
    Works at slice resolution (low-res logits = slice logits)."""

    name = "bright-in-box"
    image_size = 64
    supports_points = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.embed_calls = 0
        self.decode_calls = 0

    def embed(self, image: np.ndarray) -> Embedding:
        """The "features" are the image itself, padded to the square model frame."""
        self.embed_calls += 1
        h, w = image.shape[:2]
        t = np.zeros((self.image_size, self.image_size), np.float32)
        t[:h, :w] = image
        return Embedding(
            features=torch.from_numpy(t)[None, None], original_size=(h, w), input_size=(h, w), model=self.name
        )

    def decode_low_res(
        self, embedding, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, multimask=False
    ):
        from scipy import ndimage

        self.decode_calls += 1
        h, w = embedding.original_size
        img = embedding.features[0, 0].numpy()[:h, :w]
        boxes = np.asarray(boxes_rc, np.float32).reshape(-1, 4)
        low = np.full((len(boxes), 1, *img.shape), -8.0, np.float32)
        scores = np.zeros((len(boxes), 1), np.float32)
        for i, (r0, c0, r1, c1) in enumerate(boxes):
            m = np.zeros(img.shape, bool)
            r0, c0 = int(np.floor(r0)), int(np.floor(c0))
            r1, c1 = int(np.ceil(r1)), int(np.ceil(c1))
            m[r0 : r1 + 1, c0 : c1 + 1] = img[r0 : r1 + 1, c0 : c1 + 1] > 0.5
            lab, n = ndimage.label(m)
            if n:
                sizes = ndimage.sum(m, lab, range(1, n + 1))
                m = lab == 1 + int(np.argmax(sizes))
            low[i, 0][m] = 8.0
            scores[i, 0] = 0.9 if m.any() else 0.1
        return torch.from_numpy(low), torch.from_numpy(scores)

    def upsample(self, low_res, embedding):
        return low_res


def ball(shape=(24, 64, 64), center=(12, 32, 30), radius=(7.5, 14, 12)) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - center[0]) / radius[0]) ** 2 + ((y - center[1]) / radius[1]) ** 2 + (
        (x - center[2]) / radius[2]
    ) ** 2 <= 1.0


def dice(a, b):
    s = a.sum() + b.sum()
    return 2.0 * np.logical_and(a, b).sum() / s if s else 1.0


@pytest.fixture()
def synthetic():
    """A volume with one bright ellipsoid (slices 5..19) on a dark background."""
    obj = ball()
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    return vol, obj, backend, emb


def key_prompt(obj: np.ndarray, z: int, axis: int = 0) -> SlicePrompt:
    sl = [slice(None)] * 3
    sl[axis] = z
    return SlicePrompt(box=box_of_mask(obj[tuple(sl)]), slice=z)


def test_one_box_propagates_to_the_whole_object_and_stops_where_it_ends(synthetic):
    vol, obj, backend, emb = synthetic
    state = PropagationState(shape=vol.shape)
    state.add_prompt(12, key_prompt(obj, 12))
    events = list(Propagator(backend, emb).run(state))
    updates = [e for e in events if e.payload is not None]
    assert dice(state.volume_mask(), obj) > 0.99
    zs = np.flatnonzero(obj.any((1, 2)))
    assert state.extent == (zs.min(), zs.max())
    # one stop per direction, both because the mask vanished, right after the object's end
    assert sorted((s.direction, s.last, s.rejected, s.reason) for s in state.stops) == [
        (-1, zs.min(), zs.min() - 1, StopReason.EMPTY),
        (1, zs.max(), zs.max() + 1, StopReason.EMPTY),
    ]
    # progress: one event per finished slice (its payload the slice), done counts up, then one last
    # event without payload at done == total
    assert [u.done for u in updates] == list(range(1, len(updates) + 1))
    assert all(u.done <= u.total for u in updates)
    assert {u.payload.index for u in updates} == set(range(zs.min(), zs.max() + 1))
    assert all(np.array_equal(u.payload.mask, state.results[u.payload.index]) for u in updates[-3:])
    assert events[-1].payload is None and events[-1].done == events[-1].total == len(updates)
    assert not state.needs_run
    assert state.info[12].source == "key" and state.info[13].source == "propagated"
    # only slices the propagation reached were encoded: the object's, the refused one past each
    # end, and the ones after it that patience looks at before ending the pass
    assert backend.embed_calls == zs.max() - zs.min() + 1 + 2 * (1 + StopRules().patience)


class WholeRegionBackend(BrightInBoxBackend):
    """A box model that answers, with its single output, every bright region the box
    touches (whole: a lobe and the lung around it), and with its three candidates each
    of those regions alone, largest first: the object is among the candidates."""

    name = "whole-region"

    def decode_low_res(
        self, embedding, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, multimask=False
    ):
        from scipy import ndimage

        self.decode_calls += 1
        h, w = embedding.original_size
        img = embedding.features[0, 0].numpy()[:h, :w]
        lab, n = ndimage.label(img > 0.5)
        boxes = np.asarray(boxes_rc, np.float32).reshape(-1, 4)
        k = 3 if multimask else 1
        low = np.full((len(boxes), k, h, w), -8.0, np.float32)
        for i, (r0, c0, r1, c1) in enumerate(boxes):
            inside = lab[int(r0) : int(np.ceil(r1)) + 1, int(c0) : int(np.ceil(c1)) + 1]
            ids = [v for v in np.unique(inside) if v]
            ids.sort(key=lambda v: -int((lab == v).sum()))
            outs = [np.isin(lab, ids)] if not multimask else [lab == v for v in ids[:3]]
            for j, m in enumerate(outs):
                low[i, j][m] = 8.0
        return torch.from_numpy(low), torch.from_numpy(np.full((len(boxes), k), 0.9, np.float32))


def test_a_step_keeps_the_candidate_that_holds_the_object_when_the_single_output_takes_a_neighbour():
    """From slice 6 on, a large bright neighbour lies one dark pixel beside a small
    disc: the single output answers disc + neighbour (the stop rules then end the
    disc there), one of the model's candidates is the disc alone: it is taken, and
    the disc is followed to its end without the neighbour."""
    z, y, x = np.ogrid[:12, :64, :64]
    disc = np.broadcast_to((y - 32) ** 2 + (x - 24) ** 2 <= 36, (12, 64, 64))
    neighbour = (z >= 6) & (x >= 32) & (y >= 8) & (y < 56) & np.ones((12, 64, 64), bool)
    vol = np.where(disc | neighbour, 200.0, 0.0).astype(np.float32)
    backend = WholeRegionBackend()
    state = PropagationState(shape=vol.shape)
    state.add_prompt(2, key_prompt(disc, 2))
    Propagator(backend, SliceEmbeddings(backend, vol, Window(0, 255), axis=0)).propagate(state)
    got = np.zeros(vol.shape, bool)
    for i, m in state.results.items():
        got[i] = m
    assert dice(got, disc) > 0.95
    assert not (got & neighbour).any()


def test_propagation_along_another_axis(synthetic):
    vol, obj, backend, _ = synthetic
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=2)
    state = PropagationState(shape=vol.shape, axis=2)
    state.add_prompt(30, key_prompt(obj, 30, axis=2))
    Propagator(backend, emb).propagate(state)
    assert dice(state.volume_mask(), obj) > 0.99
    assert state.slice_shape == (24, 64)
    with pytest.raises(UsageError, match="axis"):  # embeddings along axis 2, state along axis 1
        Propagator(backend, emb).propagate(PropagationState(shape=vol.shape, axis=1))


def test_stop_slice_and_range_limit_propagation(synthetic):
    vol, obj, backend, emb = synthetic
    state = PropagationState(shape=vol.shape)
    state.add_prompt(12, key_prompt(obj, 12))
    state.add_stop(16)  # "the object is not here": propagation must not cross it
    state.set_range((8, 23))
    Propagator(backend, emb).propagate(state)
    assert state.extent == (8, 15)
    assert not state.mask_slice(16).any() and not state.results.get(17, np.zeros(1)).any()
    reasons = {s.direction: s.reason for s in state.stops}
    assert reasons == {1: StopReason.USER_STOP, -1: StopReason.RANGE}
    with pytest.raises(InputError, match="range"):
        state.set_range((3, 40))


def test_between_two_key_slices_both_ends_are_reconciled_and_keys_kept(synthetic):
    vol, obj, backend, emb = synthetic
    state = PropagationState(shape=vol.shape)
    state.add_prompt(8, key_prompt(obj, 8))
    painted = obj[16].copy()
    painted[:, 36:] = False  # the user's own (partial) mask on slice 16
    state.set_user_mask(16, painted)
    Propagator(backend, emb).propagate(state)
    for i in range(9, 16):
        assert state.info[i].source == "reconciled"
        assert state.info[i].origin == (8 if i - 8 <= 16 - i else 16)
    assert np.array_equal(state.results[16], painted)  # the user's slice is never overwritten
    for i in (8, 9, 10, 11):  # nearer slice 8: its pass wins
        assert np.array_equal(state.results[i], obj[i])
    assert dice(state.volume_mask()[:16], obj[:16]) > 0.97


def test_correction_redoes_only_the_affected_range(synthetic):
    vol, obj, backend, emb = synthetic
    prop = Propagator(backend, emb)
    state = PropagationState(shape=vol.shape)
    state.add_prompt(12, key_prompt(obj, 12))
    prop.propagate(state)
    before = {i: m.copy() for i, m in state.results.items()}
    affected = state.add_prompt(15, key_prompt(obj, 15))
    assert affected == (13, 23)
    assert state.dirty == set(range(13, 24))
    updates = [e.payload for e in prop.run(state) if e.payload is not None]
    assert {u.index for u in updates} <= set(range(13, 24)) | {15}
    for i in range(0, 13):
        assert (i in before) == (i in state.results)
        if i in before:
            assert np.array_equal(before[i], state.results[i])
    assert state.affected_range(12) == (0, 14)
    assert state.remove_prompt(15) == (13, 23)
    assert state.remove_prompt(15) is None


def test_cancel_keeps_finished_slices_and_next_run_resumes(synthetic):
    vol, obj, backend, emb = synthetic
    prop = Propagator(backend, emb)
    full = PropagationState(shape=vol.shape)
    full.add_prompt(12, key_prompt(obj, 12))
    prop.propagate(full)
    full_calls = backend.decode_calls

    state = PropagationState(shape=vol.shape)
    state.add_prompt(12, key_prompt(obj, 12))
    stop = Cancel()
    seen = []

    def progress(event):
        seen.append(event.done)
        if event.done == 4:
            stop.set()

    prop.propagate(state, progress=progress, cancel=stop)
    assert seen[-1] == 4 and state.needs_run
    finished = {i for i in state.results if i not in state.dirty}
    assert len(finished) == 4 and 12 in finished
    for i in finished:
        assert np.array_equal(state.results[i], full.results[i])
    # closing the generator works the same way
    gen = prop.run(state)
    next(gen)
    gen.close()
    kept = {i: state.results[i].copy() for i in state.results if i not in state.dirty}
    assert len(kept) == 5
    calls = backend.decode_calls
    prop.propagate(state)
    assert not state.needs_run
    assert state.volume_mask().sum() == full.volume_mask().sum()
    assert np.array_equal(state.volume_mask(), full.volume_mask())
    for i, m in kept.items():
        assert np.array_equal(state.results[i], m)
    # resumed: the slices finished before were not decoded again (a run from scratch decodes
    # each of the kept slices but the key slice at least once more)
    assert backend.decode_calls - calls <= full_calls - (len(kept) - 1)


def test_user_mask_is_a_key_slice_never_overwritten(synthetic):
    vol, obj, backend, emb = synthetic
    state = PropagationState(shape=vol.shape)
    painted = obj[12].copy()
    painted[:, :30] = False  # the user painted only half of it
    state.set_user_mask(12, painted)
    Propagator(backend, emb).propagate(state)
    assert np.array_equal(state.results[12], painted)
    assert state.info[12].source == "user_mask"
    with pytest.raises(InputError, match="shape"):
        state.set_user_mask(3, np.zeros((5, 5), bool))
    with pytest.raises(InputError, match="outside"):
        state.add_prompt(40, SlicePrompt(box=(1, 1, 5, 5)))
    with pytest.raises(InputError, match="outside"):
        state.add_prompt(3, SlicePrompt(box=(1, 1, 500, 5)))


def test_stop_rules_refuse_leaks_and_jumps():
    prop = Propagator.__new__(Propagator)
    prop.rules = StopRules()

    prev = np.zeros((64, 64), bool)
    prev[20:30, 20:30] = True

    def step(mask, score=0.9, shift=0.0, backward=1.0, features=1.0):
        inter, union = np.logical_and(mask, prev).sum(), np.logical_or(mask, prev).sum()
        return StepAnswer(
            mask=mask,
            score=score,
            logits=np.zeros(mask.shape, np.float32),
            iou_prev=inter / union,
            area_ratio=mask.sum() / prev.sum(),
            intensity_shift=shift,
            backward_iou=backward,
            feature_similarity=features,
        )

    assert prop.check(step(prev), prev) is None
    assert prop.check(step(np.zeros_like(prev)), prev)[0] is StopReason.EMPTY
    assert prop.check(step(prev, score=0.3), prev) is None  # the score rule is off by default
    prop.rules = StopRules(min_score=0.5)
    assert prop.check(step(prev, score=0.3), prev)[0] is StopReason.LOW_SCORE
    far = np.roll(prev, 25, axis=1)
    assert prop.check(step(far, backward=0.2), prev)[0] is StopReason.DISCONTINUITY
    assert prop.check(step(far, backward=0.9), prev) is None  # the backward check vouches for the jump
    assert prop.check(step(prev, features=0.3), prev)[0] is StopReason.APPEARANCE
    big = np.zeros_like(prev)
    big[15:40, 15:40] = True
    assert prop.check(step(big), prev)[0] is StopReason.GROWTH
    assert prop.check(step(prev, shift=5.0), prev)[0] is StopReason.INTENSITY


def test_overlap_rule_key_slices_first_then_list_order():
    a = ObjectMasks(1, 0, {0: np.ones((4, 4), bool), 1: np.ones((4, 4), bool)}, key_slices={0})
    b = ObjectMasks(2, 0, {0: np.ones((4, 4), bool), 1: np.eye(4, dtype=bool)}, key_slices={1})
    labels = paint_objects((2, 4, 4), [a, b])
    assert np.all(labels[0] == 1)  # both claim slice 0: a's key slice wins
    assert np.all(labels[1][np.eye(4, dtype=bool)] == 2)  # b's key slice beats a's propagation
    assert np.all(labels[1][~np.eye(4, dtype=bool)] == 1)
    # the same objects in the other order: the key-slice tier decides, not the order
    assert np.array_equal(paint_objects((2, 4, 4), [b, a])[1], labels[1])
    assert np.all(paint_objects((2, 4, 4), [b, a])[0] == 1)


def test_segment_volume_propagates_objects_from_the_prompts_file(synthetic):
    from napari_sam.io import Volume

    vol, obj, backend, _ = synthetic
    obj2 = ball(center=(12, 10, 52), radius=(4, 6, 6))
    raw = np.where(obj | obj2, 200.0, 0.0).astype(np.float32)
    pf = PromptsFile(
        objects=[
            ObjectPrompts(1, "big", [key_prompt(obj, 12)], window=[0, 255], propagate=True),
            ObjectPrompts(2, "small", [key_prompt(obj2, 12)], window=[0, 255], propagate=True, range=(10, 14)),
            ObjectPrompts(3, "flat", [key_prompt(obj, 6)], window=[0, 255]),
        ]
    )
    seen = []
    res = segment_volume(
        Volume(raw, metadata={"modality": "MR"}), pf, backend, progress=lambda ev: seen.append((ev.done, ev.total))
    )
    assert dice(res.labels == 1, obj & ~(np.arange(24) == 6)[:, None, None]) > 0.99
    assert (
        dice(res.labels == 2, obj2 & (np.arange(24)[:, None, None] >= 10) & (np.arange(24)[:, None, None] <= 14)) > 0.99
    )
    # object 3's prompted slice 6 beats object 1's propagation there
    assert np.array_equal(res.labels[6] == 3, obj[6])
    assert res.slices[2] == [10, 11, 12, 13, 14]
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)
    assert not res.cancelled and set(res.states) == {1, 2}


@pytest.mark.slow
def test_correction_on_ct_recovers_dice_and_keeps_slices_outside_the_affected_range(
    lite_medsam, ct_embeddings, ct_labels, ct_label_names
):
    """Real model, real CT: propagate the spleen from one box, break slice 15
    with a wrong box (on the liver), then correct it with the right box."""
    gt = ct_labels == ct_label_names["spleen"]
    rng = (6, 18)
    inside = np.zeros(gt.shape[0], bool)
    inside[rng[0] : rng[1] + 1] = True
    gt_r = gt & inside[:, None, None]
    prop = Propagator(lite_medsam, ct_embeddings)
    state = PropagationState(shape=gt.shape, range=rng)
    state.add_prompt(12, SlicePrompt(box=box_of_mask(gt[12]), slice=12))
    prop.propagate(state)
    good = dice(state.volume_mask(), gt_r)
    assert good > 0.9
    original = {i: m.copy() for i, m in state.results.items()}

    liver = ct_labels[15] == ct_label_names["liver"]
    assert state.add_prompt(15, SlicePrompt(box=box_of_mask(liver), slice=15)) == (13, 18)
    # a cancelled run keeps its finished slices: the key, then the gap 13-14
    # (first pass up from 12, then the pass down from 15 finishes 14 before 13)
    gen = prop.run(state)
    first = [next(gen).payload for _ in range(4)]
    gen.close()
    assert [u.index for u in first] == [15, 13, 14, 14] and state.needs_run
    assert 15 not in state.dirty and 14 not in state.dirty and 13 in state.dirty and 16 in state.dirty
    kept = state.results[14].copy()
    prop.propagate(state)
    assert state.info[14].source == "reconciled" and np.array_equal(state.results[14], kept)
    broken = dice(state.volume_mask(), gt_r)
    assert broken < good - 0.05
    outside = [i for i in original if not 13 <= i <= 18]
    assert outside and all(np.array_equal(state.results[i], original[i]) for i in outside)

    state.add_prompt(15, SlicePrompt(box=box_of_mask(gt[15]), slice=15))  # the correction
    prop.propagate(state)
    assert dice(state.volume_mask(), gt_r) >= good - 0.02
    assert all(np.array_equal(state.results[i], original[i]) for i in outside)
    assert state.info[15].source == "key"
