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
        assert lab[2, 10, 10] == 2  # the small mask's centre is its most certain part: it keeps it
        assert lab[2, 10, 13] == 1  # its rim (relative depth 1/4) loses to the big mask (11/15 there)
        assert np.all(lab[2][~small] == 1)


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
