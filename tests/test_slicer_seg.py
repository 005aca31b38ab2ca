"""3D Slicer `.seg.nrrd` out and in: names, colours, label values, geometry,
checked with our reader and with slicerio (Slicer's own Python reader)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.errors import InputError
from napari_sam.io import Geometry
from napari_sam.slicer_seg import read_slicer_seg, write_slicer_seg

GEOM = Geometry((0.8, 0.7, 2.5), (-10.0, 20.0, 30.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def _labels() -> np.ndarray:
    lab = np.zeros((6, 40, 50), np.uint16)
    lab[1:4, 5:20, 10:30] = 5
    lab[2:6, 25:35, 30:45] = 52
    return lab


def test_round_trip_names_colours_values_geometry(tmp_path):
    lab = _labels()
    out = write_slicer_seg(tmp_path / "s.seg.nrrd", lab, GEOM, {5: "liver", 52: "kidney_right"}, {5: (200, 10, 0)})
    back = read_slicer_seg(out)
    assert np.array_equal(back.labels, lab)
    assert back.names == {5: "liver", 52: "kidney_right"}
    assert back.colors[5] == (200, 10, 0)
    assert np.allclose(back.geometry.spacing, GEOM.spacing) and np.allclose(back.geometry.origin, GEOM.origin)
    assert np.allclose(back.geometry.direction, GEOM.direction)
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_slicerio_reads_our_segments(tmp_path):
    slicerio = pytest.importorskip("slicerio", reason="slicerio (testing extra) not installed")
    lab = _labels()
    out = write_slicer_seg(tmp_path / "s.seg.nrrd", lab, GEOM, {5: "liver", 52: "kidney_right"}, {5: (200, 10, 0)})
    seg = slicerio.read_segmentation(str(out))
    segs = {s["labelValue"]: s for s in seg["segments"]}
    assert set(segs) == {5, 52}
    assert segs[5]["name"] == "liver" and segs[52]["name"] == "kidney_right"
    assert np.allclose(segs[5]["color"], [200 / 255, 10 / 255, 0], atol=1e-4)
    assert segs[5]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert segs[52]["terminology"]["type"] == ["SCT", "64033007", "Kidney"]
    assert segs[5]["extent"] == [10, 29, 5, 19, 1, 3]  # i (x), j (y), k (z)
    assert all(s["layer"] == 0 for s in segs.values())
    # slicerio's voxels are in (i, j, k) order
    assert np.array_equal(np.transpose(seg["voxels"], (2, 1, 0)), lab)


def test_slicer_multilayer_file_is_read_as_separate_objects(tmp_path):
    """Slicer stores overlapping segments in layers (one component each): ids 1..N, the
    segment listed first wins an overlap."""
    a = np.zeros((3, 8, 9), np.uint8)
    a[0:2, 1:5, 1:5] = 1
    b = np.zeros_like(a)
    b[1:3, 3:7, 3:8] = 1
    img = sitk.GetImageFromArray(np.stack([a, b], axis=-1), isVector=True)
    for n, (name, layer) in enumerate((("tumour", 0), ("liver", 1))):
        for k, v in (("ID", f"S{n}"), ("Name", name), ("Layer", str(layer)), ("LabelValue", "1"), ("Color", "1 0 0")):
            img.SetMetaData(f"Segment{n}_{k}", v)
    sitk.WriteImage(img, str(tmp_path / "m.seg.nrrd"))
    back = read_slicer_seg(tmp_path / "m.seg.nrrd")
    assert back.names == {1: "tumour", 2: "liver"}
    assert np.array_equal(back.labels == 1, a.astype(bool))
    assert np.array_equal(back.labels == 2, b.astype(bool) & ~a.astype(bool))


def test_refuses_wrong_suffix_and_existing_output(tmp_path):
    with pytest.raises(InputError, match="seg.nrrd"):
        write_slicer_seg(tmp_path / "s.nrrd", _labels(), GEOM)
    write_slicer_seg(tmp_path / "s.seg.nrrd", _labels(), GEOM)
    with pytest.raises(InputError, match="exists"):
        write_slicer_seg(tmp_path / "s.seg.nrrd", _labels(), GEOM)
