from __future__ import annotations

import numpy as np
import pytest

from napari_sam.errors import InputError
from napari_sam.intensity import CT_PRESETS, Window, parse_window, resolve_window


def test_window_maps_linearly_and_clips():
    w = Window(-160, 240)
    out = w.apply(np.array([-1000, -160, 40, 240, 3000], np.int16))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "spec, lohi",
    [
        ("-160,240", (-160, 240)),
        ([0, 100], (0, 100)),
        ("lung", (-1350, 150)),
        ("Soft_Tissue", (-160, 240)),
        ("bone", (-500, 1300)),
        ("brain", (0, 80)),
    ],
)
def test_parse_window(spec, lohi):
    w = parse_window(spec)
    assert (w.lo, w.hi) == pytest.approx(lohi)


@pytest.mark.parametrize("bad", ["nonsense", "1,2,3", "a,b", "5,5", [3, 1]])
def test_bad_windows_are_one_line_input_errors(bad):
    with pytest.raises(InputError) as exc:
        parse_window(bad)
    assert "\n" not in str(exc.value)


def test_resolve_window_sources(ct_volume, data_dir):
    from napari_sam.io import read_image

    ct = ct_volume.array
    assert resolve_window(ct, "dicom", "CT", (40.0, 300.0)).source == "dicom"
    # automatic CT: the header's window when there is one, else soft tissue
    w = resolve_window(ct, None, "CT", (40.0, 300.0))
    assert (w.lo, w.hi) == (-110, 190)
    w = resolve_window(ct, None, None, None)
    assert w.source == "auto-ct" and (w.lo, w.hi) == (-160, 240)
    # MR and microscopy: robust percentiles
    mr = read_image(data_dir / "mr_small" / "image.nii.gz").array
    w = resolve_window(mr, None, None, None)
    assert w.source == "percentile" and mr.min() <= w.lo < w.hi <= mr.max()
    assert resolve_window(np.zeros((1, 4, 4, 3), np.uint8)).source == "dtype"
    with pytest.raises(InputError, match="no DICOM window"):
        resolve_window(mr, "dicom", None, None)


def test_presets_are_level_width():
    for name, (level, width) in CT_PRESETS.items():
        w = parse_window(name)
        assert w.hi - w.lo == pytest.approx(width) and (w.hi + w.lo) / 2 == pytest.approx(level)
