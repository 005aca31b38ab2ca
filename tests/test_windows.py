"""Logits in windows of tokens (napari_sam.models.windows): the per-axis resize
matrices reproduce logits_to_slice, a window's pixels equal the whole slice's
there, and SAM's decoder computes a window's logits as it computes the whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.models.base import Embedding, logits_to_slice
from napari_sam.models.windows import TOKEN_PIXELS, batch_windows, box_windows, gather_windows, resize_axis

# (low-res size, model size, input size inside the model input, slice size)
GEOMETRIES = [
    ((256, 256), 256, (256, 256), (256, 256)),  # LiteMedSAM on a 256 slice: identity
    ((256, 256), 256, (256, 256), (512, 512)),  # LiteMedSAM on the CT: x2
    ((256, 256), 256, (110, 256), (300, 700)),  # a wide slice, padding cropped, odd ratios
    ((64, 64), 256, (256, 187), (256, 187)),  # a low-res grid below the model size (SAM: 256 -> 1024)
]


@pytest.mark.parametrize("low_size,model,inside,out", GEOMETRIES)
def test_resize_matrices_equal_logits_to_slice(low_size, model, inside, out):
    low = torch.randn(2, 1, *low_size, generator=torch.Generator().manual_seed(0)) * 8
    ref = logits_to_slice(low, inside, model, out)
    rows = resize_axis(low_size[0], model, inside[0], out[0])
    cols = resize_axis(low_size[1], model, inside[1], out[1])
    mine = torch.from_numpy(rows.matrix) @ low @ torch.from_numpy(cols.matrix).T
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), rtol=0, atol=2e-5)
    # each output pixel's support: the weights outside [first, last] are 0
    for axis in (rows, cols):
        idx = np.arange(axis.matrix.shape[1])
        outside = (idx[None] < axis.first[:, None]) | (idx[None] > axis.last[:, None])
        assert not axis.matrix[outside].any() and (np.diff(axis.first) >= 0).all()
        np.testing.assert_allclose(axis.matrix.sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("low_size,model,inside,out", GEOMETRIES)
def test_a_window_equals_the_whole_slice_there(low_size, model, inside, out):
    grid = (low_size[0] // TOKEN_PIXELS, low_size[1] // TOKEN_PIXELS)
    low = torch.randn(1, 1, *low_size, generator=torch.Generator().manual_seed(1)) * 8
    whole = logits_to_slice(low, inside, model, out)[0, 0].numpy()
    rows = resize_axis(low_size[0], model, inside[0], out[0])
    cols = resize_axis(low_size[1], model, inside[1], out[1])
    h, w = out
    boxes = np.array([[0, 0, 5, 5], [h - 7, w - 9, h - 1, w - 1], [h // 3, w // 2, h // 3 + 20, w // 2 + 3]])
    wins = box_windows(boxes, grid, TOKEN_PIXELS, rows, cols)
    sw = batch_windows(wins, grid, TOKEN_PIXELS, rows, cols)
    f = TOKEN_PIXELS
    for i, box in enumerate(boxes):
        (tr, tc), (wh, ww) = sw.origins[i], sw.size
        part = low[0, :, f * tr : f * (tr + wh), f * tc : f * (tc + ww)]
        logits, (r0, c0) = sw.to_slice(part, i)
        r, c = logits.shape[1:]
        np.testing.assert_allclose(logits[0], whole[r0 : r0 + r, c0 : c0 + c], rtol=0, atol=2e-5)
        # the window holds its box
        assert r0 <= box[0] and c0 <= box[1] and r0 + r > box[2] and c0 + c > box[3]


def test_gather_windows_takes_each_prompts_tokens():
    grid = (6, 7)
    tokens = torch.arange(2 * 42 * 3, dtype=torch.float32).reshape(2, 42, 3)
    origins = torch.tensor([[0, 0], [3, 4]])
    got = gather_windows(tokens, grid, origins, (2, 3))
    img = tokens.reshape(2, 6, 7, 3)
    torch.testing.assert_close(got[0], img[0, 0:2, 0:3].reshape(6, 3))
    torch.testing.assert_close(got[1], img[1, 3:5, 4:7].reshape(6, 3))
    one = gather_windows(tokens[:1], grid, origins, (2, 3))  # one image shared by the prompts
    torch.testing.assert_close(one[1], img[0, 3:5, 4:7].reshape(6, 3))


def test_the_decoder_computes_a_window_as_the_whole(lite_medsam):
    """SAM's mask decoder with ``windows``: each prompt's window of the whole logits."""
    g = torch.Generator().manual_seed(2)
    emb = Embedding(
        features=torch.randn(1, 256, 64, 64, generator=g),
        original_size=(256, 256),
        input_size=(256, 256),
        model=lite_medsam.name,
    )
    boxes = np.array([[10, 12, 40, 30], [200, 150, 250, 250], [100, 100, 110, 104]], np.float32)
    whole, s_whole = lite_medsam.decode_low_res(emb, boxes_rc=boxes)
    origins = torch.tensor([[0, 0], [40, 30], [20, 22]])
    part, s_part = lite_medsam.decode_low_res(emb, boxes_rc=boxes, windows=(origins, (24, 34)))
    assert part.shape == (3, 1, 96, 136)
    torch.testing.assert_close(s_part, s_whole)
    for i, (r, c) in enumerate(origins.tolist()):
        torch.testing.assert_close(part[i], whole[i, :, 4 * r : 4 * r + 96, 4 * c : 4 * c + 136], rtol=1e-5, atol=1e-4)
