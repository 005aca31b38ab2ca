"""3D automatic mode on synthetic nuclei stacks (seeded, with ground truth).

What each test proves is in its docstring. Proposals-only tests use no
model (fast); the model-check tests use the fake blob model and a model
that answers nothing, so they fail when the model's answers are ignored.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from fake_blob_backend import FakeBlobBackend
from napari_sam.automatic import Stack3DSettings, StackSegmenter, parse_spacing, split_instances_3d, stack_spacing
from napari_sam.errors import InputError
from napari_sam.evaluation import match_instances
from napari_sam.instance_errors import merge_split_counts
from napari_sam.intensity import resolve_window
from napari_sam.synthetic import nuclei_stack


def _window(image: np.ndarray) -> np.ndarray:
    return resolve_window(image, None, None, None).apply(image)


@pytest.fixture(scope="module")
def faint_stack():
    return nuclei_stack(contrast=1.3, seed=11)


def test_synthetic_stacks_are_reproducible_and_have_the_asked_contrast():
    """Same seed -> same stack bit for bit; the nuclei are brighter than the
    background by about the requested ratio; other seeds differ."""
    a, b = nuclei_stack(contrast=1.3, seed=5), nuclei_stack(contrast=1.3, seed=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, nuclei_stack(contrast=1.3, seed=6).labels)
    fg = a.labels > 0
    ratio = a.image[fg].mean() / a.image[~fg].mean()
    assert 1.1 < ratio < 1.4 and a.labels.max() >= 40
    with pytest.raises(InputError):
        nuclei_stack(contrast=0.9)


def test_3d_auto_finds_faint_nuclei_whole(faint_stack):
    """At 1.3:1 contrast on an anisotropic stack (z step 4x the pixel) the 3D
    proposals find the nuclei (F1@0.5 >= 0.80) with few merges of touching
    nuclei and few splits (fails when the spacing is ignored)."""
    s = faint_stack
    res = StackSegmenter(None, Stack3DSettings(spacing=s.spacing, use_model=False)).segment(_window(s.image))
    m = match_instances(res.labels, s.labels)
    ms = merge_split_counts(res.labels, s.labels)
    assert res.labels.shape == s.image.shape and res.labels.dtype == np.int32
    assert m.f1 >= 0.80, m.summary()
    assert ms.merges <= 0.12 * s.labels.max() and ms.splits <= 0.08 * s.labels.max(), ms


def test_linking_no_object_is_fragmented_across_slices(faint_stack):
    """Each matched nucleus is one id over (nearly) all the slices it spans:
    the 3D object is not cut into per-slice pieces (the slice-wise design's failure)."""
    s = faint_stack
    res = StackSegmenter(None, Stack3DSettings(spacing=s.spacing, use_model=False)).segment(_window(s.image))
    m = match_instances(res.labels, s.labels)
    covered = []
    for p, r, _ in m.pairs:
        ref_z = np.flatnonzero((s.labels == r).any(axis=(1, 2)))
        pred_z = np.flatnonzero((res.labels == p).any(axis=(1, 2)))
        covered.append(np.isin(ref_z, pred_z).mean())
    assert len(covered) >= 40 and np.mean(covered) >= 0.9 and np.median(covered) == 1.0


def _two_touching_spheres(spacing, axis: int):
    """Two spheres of radius 3 um touching along ``axis``, rendered at ``spacing`` (z, row, col)."""
    sp = np.asarray(spacing, float)
    shape = tuple(int(np.ceil(e / s)) for e, s in zip((24.0, 24.0, 24.0), sp))
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)], indexing="ij")
    c1 = np.array([12.0, 12.0, 12.0])
    c2 = c1.copy()
    c1[axis] -= 2.9
    c2[axis] += 2.9
    d1 = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, c1)))
    d2 = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, c2)))
    lab = np.where((d1 < 3.0) & (d1 <= d2), 1, np.where(d2 < 3.0, 2, 0)).astype(np.int32)
    return lab


@pytest.mark.parametrize("axis", [0, 2])
def test_touching_nuclei_are_not_merged_on_an_anisotropic_grid(axis):
    """Two touching nuclei, z spacing 4x the in-plane spacing, touching along
    z or along x: two objects, each matched (not merged). The anisotropy
    itself is proven by test_3d_auto_finds_faint_nuclei_whole, which fails
    when the distance transform ignores the spacing (checked)."""
    spacing = (1.0, 0.25, 0.25)
    ref = _two_touching_spheres(spacing, axis)
    fg = ref > 0
    flat = fg.astype(np.float32)
    out = split_instances_3d(fg, flat, np.asarray(spacing), 6.0, 0.05, 10)
    assert out.max() == 2 and match_instances(out, ref).tp == 2


def test_stack_spacing_from_option_header_and_imagej_tiff(tmp_path):
    """Spacing comes from --spacing, else the header, else ImageJ TIFF metadata, else isotropic."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 16, 16), np.uint16),
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"},
    )
    assert stack_spacing(str(path), (1.0, 1.0, 1.0), False, None) == pytest.approx((1.5, 0.25, 0.25))
    assert stack_spacing(str(path), (2.0, 0.5, 0.5), True, None) == (2.0, 0.5, 0.5)
    assert stack_spacing(str(path), (2.0, 0.5, 0.5), True, "3,1,1") == (3.0, 1.0, 1.0)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((5, 16, 16), np.uint16))
    assert stack_spacing(str(plain), (1.0, 1.0, 1.0), False, None) == (1.0, 1.0, 1.0)
    assert parse_spacing("2,0.5") == (2.0, 0.5, 0.5)
    with pytest.raises(InputError):
        parse_spacing("1,a,2")


class _SilentModel(FakeBlobBackend):
    """A model whose decoder answers nothing (all-negative logits)."""

    def decode_low_res(self, *a, **k):
        low, scores = super().decode_low_res(*a, **k)
        return low * 0.0 - 10.0, scores * 0.0


def test_model_check_uses_the_models_answers():
    """The model's answers decide which weak objects stay: a working model
    keeps the nuclei (F1 >= 0.8), a model that answers nothing loses the
    fainter half of them. Fails when the model's answers are ignored."""
    s = nuclei_stack(shape=(16, 64, 64), contrast=3.0, seed=4)
    vol = _window(s.image)
    st = Stack3DSettings(spacing=s.spacing, use_model=True)
    good = StackSegmenter(FakeBlobBackend(threshold=0.3), st).segment(vol)
    silent = StackSegmenter(_SilentModel(threshold=0.3), st).segment(vol)
    f_good = match_instances(good.labels, s.labels).f1
    f_silent = match_instances(silent.labels, s.labels).f1
    assert good.proposals > 0 and good.encoder_calls > 0
    assert f_good >= 0.8 and f_silent < f_good - 0.2, (f_good, f_silent)


def test_progress_and_cancel():
    """A run reports jobs.Progress events (integer steps) and stops at the step
    after its Cancel token is set."""
    from napari_sam.jobs import Cancel, Cancelled

    s = nuclei_stack(shape=(12, 48, 48), contrast=2.0, seed=2)
    seen = []
    seg = StackSegmenter(None, Stack3DSettings(spacing=s.spacing, use_model=False))
    seg.segment(_window(s.image), progress=seen.append)
    assert any("proposals" in e.stage for e in seen) and seen[-1].stage == "done"
    assert all(isinstance(e.done, int) and e.done <= e.total for e in seen)
    cancel, stages = Cancel(), []

    def stop_at_foreground(e) -> None:
        stages.append(e.stage)
        if "foreground" in e.stage:
            cancel.set()

    with pytest.raises(Cancelled):
        seg.segment(_window(s.image), progress=stop_at_foreground, cancel=cancel)
    assert "foreground" in stages[-1]
