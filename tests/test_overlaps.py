"""Overlap resolution (napari_sam.overlaps): one rule for the CLI and the widget."""

from __future__ import annotations

import numpy as np

from napari_sam.overlaps import ObjectMasks, resolve_overlaps


def disc(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_contested_voxels_go_to_the_object_holding_them_deepest_whatever_the_order():
    shape = (3, 40, 60)
    a = disc(shape[1:], (20, 16), 16)
    b = disc(shape[1:], (20, 42), 16)  # the two discs overlap on cols 26-32
    oa = ObjectMasks(1, 0, {z: a for z in range(3)}, key_slices=set())
    ob = ObjectMasks(2, 0, {z: b for z in range(3)}, key_slices=set())
    lab = resolve_overlaps(shape, [oa, ob], spacing_zyx=(50.0, 1.0, 1.0))  # thick slices
    both = a & b
    assert both.sum() > 20
    cols = np.nonzero(both)[1]
    # each voxel of the overlap goes to the nearer centre: split at col 29, not all to the first object
    assert np.all(lab[1][both & (np.arange(60) < 29)[None, :]] == 1)
    assert np.all(lab[1][both & (np.arange(60) > 29)[None, :]] == 2)
    assert cols.min() < 29 < cols.max()
    assert np.array_equal(resolve_overlaps(shape, [ob, oa], spacing_zyx=(50.0, 1.0, 1.0))[:, :, :29], lab[:, :, :29])
    assert np.array_equal(resolve_overlaps(shape, [ob, oa], spacing_zyx=(50.0, 1.0, 1.0))[:, :, 30:], lab[:, :, 30:])
    assert np.all(lab[1][a & ~b] == 1) and np.all(lab[1][b & ~a] == 2)


def test_key_slices_beat_deeper_propagated_claims_and_list_order_does_not_decide():
    shape = (5, 30, 30)
    big = np.ones((30, 30), bool)
    small = disc(shape[1:], (15, 15), 3)
    ob = ObjectMasks(1, 0, {z: big for z in range(5)}, key_slices={0})
    os_ = ObjectMasks(2, 0, {2: small}, key_slices={2})
    lab = resolve_overlaps(shape, [ob, os_])
    assert np.all(lab[2][small] == 2)  # the small object's key slice wins inside the big one
    small = disc(shape[1:], (10, 10), 3)  # off the big mask's centre
    os_prop = ObjectMasks(2, 0, {2: small}, key_slices=set())
    for order in ([ob, os_prop], [os_prop, ob]):
        lab = resolve_overlaps(shape, order, spacing_zyx=(10.0, 1.0, 1.0))
        # the small mask lies inside the big one: the more specific answer keeps all of it, its
        # rim included (relative depth 1/4 there against the big mask's 11/15)
        assert lab[2, 10, 10] == 2 and lab[2, 10, 13] == 2
        assert np.all(lab[2][small] == 2) and np.all(lab[2][~small] == 1)


def test_a_large_mask_running_over_a_small_one_does_not_take_its_core():
    """Relative depth: a runaway mask ten times the size of its neighbour does not win the
    neighbour's core by being deep in absolute mm (the MR liver over the gallbladder)."""
    shape = (4, 80, 80)
    runaway = disc(shape[1:], (40, 30), 28)
    small = disc(shape[1:], (40, 52), 7)  # half inside the runaway mask
    orun = ObjectMasks(1, 0, {z: runaway for z in range(4)}, key_slices=set())
    osm = ObjectMasks(2, 0, {z: small for z in range(4)}, key_slices=set())
    for order in ([orun, osm], [osm, orun]):
        lab = resolve_overlaps(shape, order, spacing_zyx=(3.0, 1.0, 1.0))
        core = disc(shape[1:], (40, 52), 3)
        assert np.all(lab[:, core] == 2)
        assert (lab == 2).sum() >= 0.6 * 4 * small.sum()
        assert np.all(lab[:, runaway & ~small] == 1)


def test_two_key_slices_on_one_slice_the_smaller_object_keeps_its_key_slice():
    """A large object's key mask spilling over a small object's key slice (both
    boxed on the same slice) does not take it: the smaller key claim wins, in any order."""
    shape = (3, 40, 40)
    big = disc(shape[1:], (20, 20), 15)
    small = disc(shape[1:], (20, 30), 4)  # inside the big mask's spill
    ob = ObjectMasks(1, 0, {1: big, 0: big}, key_slices={1})
    os_ = ObjectMasks(2, 0, {1: small}, key_slices={1})
    for order in ([ob, os_], [os_, ob]):
        lab = resolve_overlaps(shape, order, spacing_zyx=(3.0, 1.0, 1.0))
        assert np.all(lab[1][small] == 2)
        assert np.all(lab[1][big & ~small] == 1)  # the big one loses only the spill
        assert np.all(lab[0][big] == 1)


def test_a_propagation_run_over_its_neighbour_cedes_the_slices_nearer_the_neighbours_key_slice():
    """Two propagations answered with the same mask slice after slice (a vertebra's propagation
    run over the next vertebra): each slice goes whole to the object whose key slice is nearer,
    not split voxel by voxel; key slices are never dropped, in any order."""
    shape = (10, 40, 40)
    upper = disc(shape[1:], (20, 20), 10)
    lower = disc(shape[1:], (21, 20), 10)  # nearly the same answer, one row lower
    oa = ObjectMasks(1, 0, {z: upper for z in range(10)}, key_slices={0})
    ob = ObjectMasks(2, 0, {z: lower for z in range(10)}, key_slices={9})
    for order in ([oa, ob], [ob, oa]):
        lab = resolve_overlaps(shape, order, spacing_zyx=(2.0, 1.0, 1.0))
        for z in range(5):  # nearer object 1's key slice
            assert np.all(lab[z][upper] == 1) and np.all(lab[z][lower & ~upper] == 0)
        for z in range(5, 10):
            assert np.all(lab[z][lower] == 2) and np.all(lab[z][upper & ~lower] == 0)
    # a slice at the same distance from both key slices is shared by the relative depth
    oa2 = ObjectMasks(1, 0, {z: upper for z in range(9)}, key_slices={0})
    ob2 = ObjectMasks(2, 0, {z: lower for z in range(9)}, key_slices={8})
    lab = resolve_overlaps((9, 40, 40), [oa2, ob2], spacing_zyx=(2.0, 1.0, 1.0))
    assert (lab[4] == 1).sum() > 100 and (lab[4] == 2).sum() > 100


def test_masks_that_only_touch_or_partly_overlap_are_not_dropped():
    """The jump rule needs each mask mostly inside the other: two neighbours that overlap on
    their rims keep their slices and split the rim by relative depth."""
    shape = (6, 40, 60)
    a = disc(shape[1:], (20, 16), 14)
    b = disc(shape[1:], (20, 40), 14)  # overlap: a thin lens
    oa = ObjectMasks(1, 0, {z: a for z in range(6)}, key_slices={0})
    ob = ObjectMasks(2, 0, {z: b for z in range(6)}, key_slices={5})
    lab = resolve_overlaps(shape, [oa, ob], spacing_zyx=(2.0, 1.0, 1.0))
    for z in range(6):
        assert np.all(lab[z][a & ~b] == 1) and np.all(lab[z][b & ~a] == 2)


def test_a_mask_inside_a_larger_propagated_mask_keeps_its_rim():
    """A small organ's propagated mask lying inside a neighbour's runaway mask (the MR liver over
    the kidney) keeps all its voxels, its rim included, though the runaway mask is relatively
    deeper there; the runaway keeps the rest."""
    shape = (4, 80, 80)
    runaway = disc(shape[1:], (40, 40), 30)
    small = disc(shape[1:], (40, 55), 8)  # wholly inside, off the runaway's centre
    orun = ObjectMasks(1, 0, {z: runaway for z in range(4)}, key_slices={0})
    osm = ObjectMasks(2, 0, {z: small for z in range(1, 4)}, key_slices={3})
    for order in ([orun, osm], [osm, orun]):
        lab = resolve_overlaps(shape, order, spacing_zyx=(3.0, 1.0, 1.0))
        for z in (1, 2, 3):
            assert np.all(lab[z][small] == 2)
            assert np.all(lab[z][runaway & ~small] == 1)
        assert np.all(lab[0][runaway] == 1)  # the runaway's own key slice


def test_resolve_overlaps_into_applies_the_same_rules_as_resolve_overlaps():
    from napari_sam.overlaps import resolve_overlaps_into

    shape = (10, 40, 40)
    upper = disc(shape[1:], (20, 20), 10)
    inner = disc(shape[1:], (20, 26), 3)
    objs = [
        ObjectMasks(1, 0, {z: upper for z in range(10)}, key_slices={0}),
        ObjectMasks(2, 0, {z: disc(shape[1:], (21, 20), 10) for z in range(10)}, key_slices={9}),
        ObjectMasks(3, 0, {z: inner for z in range(2, 5)}, key_slices={2}),
    ]
    labels, best = np.zeros(shape, np.uint16), np.full(shape, -1.0, np.float32)
    resolve_overlaps_into(labels, best, objs, (2.0, 1.0, 1.0))
    expected = resolve_overlaps(shape, objs, (2.0, 1.0, 1.0))
    assert np.array_equal(labels, expected)
    assert np.all(expected[3][inner] == 3) and np.all(expected[7][upper & ~inner] != 1)
