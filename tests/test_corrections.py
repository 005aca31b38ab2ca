"""Corrections anywhere in the volume (napari_sam.corrections): API, prompts file, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.corrections import Correction, apply_correction, apply_corrections, carve
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError
from napari_sam.intensity import Window
from napari_sam.io import Volume
from napari_sam.prompts import ObjectPrompts, PromptsFile, parse_prompts
from napari_sam.propagation import PropagationState, Propagator
from napari_sam.segmentation import segment_volume
from test_propagation import BrightInBoxBackend, ball, dice, key_prompt


def leaky_scene():
    """Target ellipsoid (slices 5..19) with a neighbour of the same brightness
    fused to it on slices 12..19: a box model keeps adding the neighbour."""
    target = ball()
    other = ball(center=(16, 32, 52), radius=(4, 10, 9))
    bridge = np.zeros_like(target)
    bridge[12:20, 28:37, 38:46] = True
    vol = np.where(target | other | bridge, 200.0, 0.0).astype(np.float32)
    return vol, target, other & ~target


def run(vol, z0, target, corrections=(), axis=0):
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=axis)
    prop = Propagator(backend, emb)
    state = PropagationState(shape=vol.shape, axis=axis)
    state.add_prompt(z0, key_prompt(target, z0, axis))
    apply_corrections(state, prop, list(corrections))
    return state, prop


def test_negative_click_removes_the_neighbour_on_its_slice_and_the_neighbouring_ones():
    vol, target, other = leaky_scene()
    state, prop = run(vol, 10, target)
    before = state.volume_mask()
    assert (before & other).sum() > 500  # the leak: the neighbour came in with propagation
    d0 = dice(before, target)
    z, r, c = 16, 32, 54  # deep inside the neighbour
    assert other[z, r, c]
    affected = apply_correction(state, prop, Correction((z, r, c), 0))
    after = state.volume_mask()
    # removed on every slice, not just 16 (what is left: the fused part next to the target)
    assert (after & other).sum() < 0.25 * (before & other).sum()
    assert all((after & other)[i].sum() < 0.35 * max(1, (before & other)[i].sum()) for i in range(14, 19))
    assert dice(after, target) > max(0.9, d0 + 0.05)
    assert affected[0] <= z <= affected[1]
    # slices the neighbour never reached are kept bit for bit
    for i in range(0, 12):
        assert np.array_equal(after[i], before[i])


def test_positive_click_extends_an_object_cut_short_and_changes_only_the_affected_range():
    vol = np.where(ball(), 200.0, 0.0).astype(np.float32)
    target = ball()
    vol[14:16] = 0.0  # two dark slices: propagation from 8 stops there (cut short)
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255))
    prop = Propagator(backend, emb)
    state = PropagationState(shape=vol.shape)
    state.add_prompt(8, key_prompt(target, 8))
    state.add_prompt(3, key_prompt(target, 6))  # a second key below: 0..7 lies outside the range a click at 17 affects
    prop.propagate(state)
    before = {i: m.copy() for i, m in state.results.items()}
    assert not state.mask_slice(17).any()
    affected = apply_correction(state, prop, Correction((17, 32, 30), 1))
    assert affected == (9, 23)
    assert state.mask_slice(17).sum() > 0.9 * target[17].sum()
    assert state.mask_slice(19).any()  # re-propagated outwards from the click's slice
    for i in range(0, 9):
        assert (i in before) == (i in state.results)
        if i in before:
            assert np.array_equal(before[i], state.results[i])


def test_corrections_along_another_axis_take_volume_coordinates():
    vol, target, other = leaky_scene()
    state, _ = run(vol, 32, target, axis=1)
    wrong = state.volume_mask() & other
    assert wrong.sum() > 200
    deepest = np.unravel_index(np.argmax(ndimage.distance_transform_edt(wrong)), wrong.shape)
    state2, _ = run(vol, 32, target, [Correction(tuple(int(v) for v in deepest), 0)], axis=1)
    assert (state2.volume_mask() & other).sum() < 0.6 * wrong.sum()
    assert dice(state2.volume_mask(), target) > dice(state.volume_mask(), target) + 0.02


def test_bad_corrections_are_refused_with_one_line():
    vol, target, _ = leaky_scene()
    state, prop = run(vol, 10, target)
    with pytest.raises(InputError, match="outside the volume") as e:
        apply_correction(state, prop, Correction((24, 3, 3), 1))
    assert "\n" not in str(e.value)
    empty = PropagationState(shape=vol.shape)
    with pytest.raises(InputError, match="no prompt to start from"):
        apply_correction(empty, prop, Correction((10, 3, 3), 0))
    with pytest.raises(InputError, match="need a prompt to start from"):
        parse_prompts(
            {
                "objects": [
                    {"id": 1, "propagate": True, "prompts": [], "corrections": [{"point": [1, 2, 3], "label": 0}]}
                ]
            }
        )
    for bad, msg in (
        ({"point": [1, 2], "label": 0}, "point"),
        ({"point": [1, 2, 3], "label": 2}, "label"),
        ({"point": [1, 2, 3], "lable": 0}, "unknown key"),
    ):
        with pytest.raises(InputError, match=msg):
            parse_prompts(
                {
                    "objects": [
                        {
                            "id": 1,
                            "propagate": True,
                            "prompts": [{"slice": 1, "box": [1, 1, 5, 5]}],
                            "corrections": [bad],
                        }
                    ]
                }
            )
    pf = PromptsFile(
        objects=[
            ObjectPrompts(
                1, "t", [key_prompt(target, 10)], window=[0, 255], propagate=True, corrections=[((10, 64, 3), 0)]
            )
        ]
    )
    with pytest.raises(InputError, match="outside the volume"):
        segment_volume(Volume(vol), pf, BrightInBoxBackend())


def test_prompts_file_corrections_equal_the_api_applied_in_order():
    vol, target, other = leaky_scene()
    data = {
        "objects": [
            {
                "id": 1,
                "name": "t",
                "window": [0, 255],
                "propagate": True,
                "prompts": [key_prompt(target, 10).to_json()],
                "corrections": [{"point": [16, 32, 54], "label": 0}, {"point": [5, 32, 30], "label": 1}],
            }
        ]
    }
    pf = parse_prompts(data)
    assert pf.objects[0].corrections == [((16, 32, 54), 0), ((5, 32, 30), 1)]
    assert parse_prompts(pf.to_json()).objects[0].corrections == pf.objects[0].corrections
    res = segment_volume(Volume(vol), pf, BrightInBoxBackend())
    state, _ = run(vol, 10, target, [Correction((16, 32, 54), 0), Correction((5, 32, 30), 1)])
    assert np.array_equal(res.labels == 1, state.volume_mask())
    assert (res.labels == 1)[16, 32, 54] == 0


def test_carve_splits_at_the_neck_between_seeds():
    m = np.zeros((1, 20, 41), bool)
    m[0, 2:18, 2:16] = True  # left blob
    m[0, 2:18, 25:39] = True  # right blob
    m[0, 9:11, 16:25] = True  # thin neck
    cut = carve(m, positive=[(0, 10, 8)], negative=[(0, 10, 32)])
    assert cut[0, 2:18, 25:39].all() and not cut[0, 2:18, 2:16].any()
    assert not carve(m, [(0, 10, 8)], [(0, 0, 0)]).any()  # a seed outside the mask removes nothing


def thin_scene():
    """A thin tube (radius 2 px, like a rib) through every slice, drifting
    sideways, with a bright lump fused to it that grows from slice 11 to a
    radius of 6 px and ends after slice 20: propagation takes it in with the
    tube (it grows slowly enough for the stop rules)."""
    z, y, x = np.ogrid[:24, :64, :64]
    cx = 12 + 0.5 * z
    tube = (y - 30) ** 2 + (x - cx) ** 2 <= 4.5
    radius = np.clip(z - 10.0, 0, 6) * (z <= 20)
    lump = ((y - 30) ** 2 + (x - (cx + 1 + radius)) ** 2 <= radius**2) & (radius > 0)
    vol = np.where(tube | lump, 200.0, 0.0).astype(np.float32)
    return vol, tube, lump & ~tube


def test_negative_click_on_a_thin_structure_removes_the_leak_and_keeps_the_structure_elsewhere():
    vol, tube, lump = thin_scene()
    state, prop = run(vol, 3, tube)
    before = state.volume_mask()
    assert (before & lump).sum() > 200  # the leak is in
    z, r, c = 18, 30, int(12 + 0.5 * 18 + 1 + 6)  # the lump's centre
    assert lump[z, r, c]
    affected = apply_correction(state, prop, Correction((z, r, c), 0))
    after = state.volume_mask()
    assert affected[0] <= z <= affected[1]
    assert not (after & ~before).any()  # a negative click only removes
    assert (after & lump).sum() < 0.3 * (before & lump).sum()  # on its slice and the neighbouring ones
    # The tube is kept on every slice further than 2 from the click. Next to it the lump (thicker than the
    # tube, 1 px away) is removed as the click's inscribed disk, which clips the tube, and the removal that
    # holds on slices z +- 2 follows it: there at least a quarter of the tube stays (the old 3D carve took
    # the tube away on half of the slices).
    for i in range(24):
        kept = 0.25 if abs(i - z) <= 2 else 0.8
        assert (after[i] & tube[i]).sum() >= kept * (before[i] & tube[i]).sum(), i
    for i in [*range(0, 11), *range(21, 24)]:  # slices the lump never reached: bit for bit
        assert np.array_equal(after[i], before[i]), i
    assert dice(after, tube) > dice(before, tube) + 0.1


def test_positive_click_only_adds_and_only_in_the_affected_range():
    vol = np.where(ball(), 200.0, 0.0).astype(np.float32)
    target = ball()
    vol[14:16] = 0.0  # propagation from 8 stops at the dark slices
    state, prop = run(vol, 8, target)
    before = state.volume_mask()
    affected = apply_correction(state, prop, Correction((17, 32, 30), 1))
    after = state.volume_mask()
    assert not (before & ~after).any()  # a positive click only adds
    assert after[17].sum() > 0.9 * target[17].sum() and after[19].any()
    changed = np.flatnonzero((after ^ before).any((1, 2)))
    assert changed.min() >= affected[0] and changed.max() <= affected[1]


class LeakyBoxBackend(BrightInBoxBackend):
    """A box model that is not held by its box: the whole bright piece that the
    box's bright part belongs to (a fused neighbour comes in with it)."""

    name = "leaky-box"

    def decode_low_res(
        self, embedding, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, multimask=False
    ):
        low, scores = super().decode_low_res(embedding, points_rc, point_labels, boxes_rc, mask_input, multimask)
        h, w = embedding.original_size
        lab, _n = ndimage.label(embedding.features[0, 0].numpy()[:h, :w] > 0.5)
        for i in range(low.shape[0]):
            inside = low[i, 0].numpy() > 0
            low[i, 0][np.isin(lab, np.unique(lab[inside & (lab > 0)]))] = 8.0
        return low, scores


def test_positive_click_next_to_the_mask_adds_the_missed_part_not_a_fused_neighbour():
    from napari_sam.corrections import _added_region

    vol = np.zeros((3, 64, 64), np.float32)
    vol[:, 20:40, 10:30] = 200.0  # the target
    vol[:, 20:40, 30:56] = 200.0  # a neighbour of the same brightness fused to it along a whole side
    backend = LeakyBoxBackend()
    prop = Propagator(backend, SliceEmbeddings(backend, vol, Window(0, 255)))
    state = PropagationState(shape=vol.shape)
    target = np.zeros((64, 64), bool)
    target[20:40, 10:30] = True
    for z in range(3):
        state.results[z] = target.copy()
    state.results[1][36:40] = False  # the mask missed the target's bottom rows on slice 1
    added = _added_region(state, prop, 1, 38, 20, (1.0, 1.0))
    assert added[38, 20] and not added[:, 30:].any()  # no part of the neighbour
    assert (added & target & ~state.results[1]).sum() >= 0.5 * 4 * 20  # most of the missed rows


def test_positive_click_addition_ends_where_it_grows_away_from_the_click():
    from napari_sam.corrections import _changed_part

    shape = (12, 32, 40)
    state = PropagationState(shape=shape)
    body = np.zeros(shape[1:], bool)
    body[8:24, 8:16] = True
    before = {z: body.copy() for z in range(2, 10)}

    def add(cols):
        m = body.copy()
        m[8:24, cols[0] : cols[1]] = True
        return m

    # after the re-propagation: the click's slice 5 gained a bulge (cols 16-19); outwards the addition
    # shrinks on 4, 3, 2 and 6, then on 7 it takes in a neighbour (cols 16-35, larger than on 6), on 8 less
    state.results = {z: body.copy() for z in range(2, 10)}
    state.results.update({5: add((16, 20)), 4: add((16, 20)), 3: add((16, 18)), 2: add((16, 17)), 6: add((16, 19))})
    state.results.update({7: add((16, 36)), 8: add((16, 18))})
    state.results[1] = body.copy()  # slice 1 held nothing before: the re-propagation went past the end
    _changed_part(state, before, 5, 1, (1, 10))
    for z, cols in ((4, (16, 20)), (3, (16, 18)), (2, (16, 17)), (6, (16, 19))):
        assert np.array_equal(state.results[z], add(cols)), z
    for z in (7, 8):  # the addition ended on 7, which grows: 7 and 8 keep their earlier mask
        assert np.array_equal(state.results[z], body), z
    assert 1 not in state.results  # a click on a missed part does not extend the object past its end


def _held_on_2_to_5(nz: int):
    """An object (a 16 x 8 px rectangle) that slices 2-5 held before a click past
    its end: its mask there, the results before the click, and a state of ``nz`` slices."""
    body = np.zeros((32, 40), bool)
    body[8:24, 8:16] = True
    return body, {z: body.copy() for z in range(2, 6)}, PropagationState(shape=(nz, 32, 40))


def test_positive_click_past_the_end_extends_the_object():
    from napari_sam.corrections import _changed_part

    body, before, state = _held_on_2_to_5(12)
    state.results = {z: body.copy() for z in range(2, 10)}  # the click on 7 (empty before) went on to 9
    _changed_part(state, before, 7, 1, (6, 11))
    assert all(np.array_equal(state.results[z], body) for z in (6, 8, 9))


def test_positive_click_past_the_end_stops_where_the_extension_grows_away_from_the_object():
    from napari_sam.corrections import _changed_part

    body, before, state = _held_on_2_to_5(14)
    wide = body.copy()
    wide[8:24, 16:30] = True  # the moved box taking in a neighbour: larger than on the click's slice
    # the click on 7 (empty before): the gap slice 6 is filled, past it 8 holds as much as 7, then 9 grows
    state.results = {z: body.copy() for z in range(2, 9)}
    state.results.update({9: wide.copy(), 10: body.copy()})
    _changed_part(state, before, 7, 1, (6, 12))
    assert all(np.array_equal(state.results[z], body) for z in (6, 7, 8))
    assert 9 not in state.results and 10 not in state.results  # the extension ended where it grew


def test_positive_click_past_the_end_reaches_no_further_past_the_click_than_the_click_lies_from_the_end():
    from napari_sam.corrections import _changed_part

    body, before, state = _held_on_2_to_5(14)
    # the click on 6, one slice past the end 5: the re-propagation ran on to 12, each slice smaller
    state.results = {z: body.copy() for z in range(2, 7)}
    for z in range(7, 13):
        m = np.zeros(body.shape, bool)
        m[8 : 24 - (z - 6), 8:16] = True
        state.results[z] = m
    _changed_part(state, before, 6, 1, (6, 13))
    assert 7 in state.results  # the missed run holds the click in its middle: one slice past it
    assert not any(z in state.results for z in range(8, 13))


def test_removal_held_on_neighbours_does_not_outgrow_the_region_the_click_removed():
    from napari_sam.corrections.removing import _hold_removal

    # an oblique bar (the object, 6 px wide) moving 3 px a slice; the click on 5 removed a small leak beside it
    shape = (11, 40, 60)

    def bar(z):
        m = np.zeros(shape[1:], bool)
        m[6:34, 10 + 3 * (z - 5) : 16 + 3 * (z - 5)] = True
        return m

    state = PropagationState(shape=shape)
    state.results = {z: bar(z) for z in range(2, 11)}
    removed = np.zeros(shape[1:], bool)
    removed[16:22, 16:20] = True
    _hold_removal(state, 5, removed, (1.0, 1.0), (0, 10), 0.4)
    # slice 6: the bar slid under the removed footprint, and a cut no larger than the removal is held there;
    # on 7 the cut would outgrow it (eating the bar behind the footprint): it stops, 7 onwards keep the bar
    assert 0 < (bar(6) & ~state.results[6]).sum() <= removed.sum()
    assert all(np.array_equal(state.results[z], bar(z)) for z in (2, 3, 4, 7, 8, 9, 10))


def test_removal_held_within_the_ball_of_the_click_depth_may_grow():
    from napari_sam.corrections.removing import _hold_removal, ball_slices

    disk = np.hypot(*np.ogrid[-20:21, -20:21]) <= 6.5  # a removed disk of radius ~6.5 px (mm)
    assert ball_slices(disk, 20, 20, (1.0, 1.0), 3.0) == 2 and ball_slices(disk, 20, 20, (1.0, 1.0), 8.0) == 0
    shape = (11, 40, 60)

    def bar(z):
        m = np.zeros(shape[1:], bool)
        m[6:34, 10 + 3 * (z - 5) : 16 + 3 * (z - 5)] = True
        return m

    removed = np.zeros(shape[1:], bool)
    removed[16:22, 16:20] = True
    state = PropagationState(shape=shape)
    state.results = {z: bar(z) for z in range(2, 11)}
    _hold_removal(state, 5, removed, (1.0, 1.0), (0, 10), 0.4, ball=2)
    # slice 7 lies within the ball: the wrong region there holds at least the ball's disk, and the cut may grow
    assert (bar(7) & ~state.results[7]).sum() > removed.sum()


def test_positive_click_past_the_end_may_grow_within_the_ball_of_the_click_depth():
    from napari_sam.corrections import _changed_part

    body, before, state = _held_on_2_to_5(14)
    wide = body.copy()
    wide[8:24, 16:30] = True
    state.results = {z: body.copy() for z in range(2, 8)}
    state.results.update({8: wide.copy(), 9: wide.copy()})
    # the click on 7 lies 1 slice deep in the missed region: 8 (within the ball) may grow, 9 may not
    _changed_part(state, before, 7, 1, (6, 12), ball=1)
    assert np.array_equal(state.results[8], wide) and 9 not in state.results
