"""A fake model for fast logic tests of automatic mode, zoom and tiling.

It "segments" bright blobs: the embedding is the image itself resized to the
model input; a box prompt answers the bright pixels inside the box (a little
margin allowed), a point prompt the bright connected region under the point.
Logits are +4 / -4 on the model's low-resolution grid, so masks go through
the same resize as a real model's. Predicted IoU: 0.9 for a clean answer,
0.3 for an empty one.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from napari_sam.models.base import Backend, Embedding, logits_to_slice, rc_to_model_xy, to_model_input


class FakeBlobBackend(Backend):
    def __init__(self, image_size: int = 128, supports_points: bool = False, threshold: float = 0.5) -> None:
        self.name = "fake_blobs"
        self.image_size = image_size
        self.supports_points = supports_points
        self.device = torch.device("cpu")
        self.threshold = threshold
        self.embed_calls = 0
        self.decoded_prompts = 0

    def embed(self, image: np.ndarray) -> Embedding:
        self.embed_calls += 1
        t, (h, w) = to_model_input(np.asarray(image, np.float32), self.image_size)
        return Embedding(
            features=t[:, :1].clone(), original_size=tuple(image.shape[:2]), input_size=(h, w), model=self.name
        )

    def decode_low_res(
        self, embedding, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, multimask=False
    ):
        img = embedding.features[0, 0].numpy()
        fg = img > self.threshold
        s = self.image_size
        outs, scores = [], []
        n = len(boxes_rc) if boxes_rc is not None else len(points_rc)
        self.decoded_prompts += n
        for i in range(n):
            m = np.zeros((s, s), bool)
            if boxes_rc is not None:
                b = rc_to_model_xy(
                    np.asarray(boxes_rc[i], np.float32).reshape(2, 2), embedding.original_size, embedding.input_size
                )
                x0, y0 = np.floor(b[0]).astype(int) - 1
                x1, y1 = np.ceil(b[1]).astype(int) + 1
                sub = np.zeros_like(fg)
                sub[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
                lab, _ = ndimage.label(fg & sub)
                if lab.max():  # the largest bright part in the box
                    sizes = np.bincount(lab.ravel())
                    sizes[0] = 0
                    m = lab == int(np.argmax(sizes))
            else:
                x, y = rc_to_model_xy(
                    np.asarray(points_rc[i][0], np.float32), embedding.original_size, embedding.input_size
                )
                lab, _ = ndimage.label(fg)
                v = lab[min(s - 1, int(y)), min(s - 1, int(x))]
                if v:
                    m = lab == v
            logit = np.where(m, 4.0, -4.0).astype(np.float32)
            k = 3 if multimask else 1
            outs.append(np.repeat(logit[None], k, axis=0))
            scores.append(np.full(k, 0.9 if m.any() else 0.3, np.float32))
        return torch.from_numpy(np.stack(outs)), torch.from_numpy(np.stack(scores))

    def upsample(self, low_res, embedding):
        return logits_to_slice(low_res, embedding.input_size, self.image_size, embedding.original_size)


def blob_image(shape=(192, 192), centres=None, radius=7.0, seed=0, touching_pair: bool = True):
    """A synthetic fluorescence image: bright discs on a dark, noisy background.

    Returns (image float32 in [0, 1], instance labels int32).
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    if centres is None:
        centres = []
        step = int(radius * 4)
        for r in range(step // 2 + 2, H - step // 2, step):
            for c in range(step // 2 + 2, W - step // 2, step):
                centres.append((r + rng.integers(-3, 4), c + rng.integers(-3, 4)))
        if touching_pair:
            centres.append((H // 2 + 1, W // 2 + step // 2))  # close to a neighbour
    rr, cc = np.mgrid[:H, :W]
    labels = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
        labels[disc & (labels == 0)] = k
    img = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    img = ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 0.02, shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32), labels


def touching_pairs_image(shape=(160, 160), seed: int = 0, a: float = 11.0, b: float = 6.0, seam: float = 0.35):
    """Elongated nuclei, half of them in pairs pressed together along their
    long sides (no neck for a distance-transform watershed to cut: the blob
    proposals merge each pair), with a faint seam between the two that the
    fake model, at zoom, sees. Returns (image float32 in [0, 1], labels int32).

    Blob proposals alone score F1 about 0.5 here; a model that answers each
    half of a pair as an object lifts automatic mode to 1.0.
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    rr, cc = np.mgrid[:H, :W].astype(np.float32)
    labels = np.zeros(shape, np.int32)
    k = 0
    step = int(4 * a)
    for r in range(step // 2 + 2, H - step // 2, step):
        for c in range(step // 2 + 2, W - step // 2, step):
            th = rng.uniform(0, np.pi)
            ca, sa = np.cos(th), np.sin(th)
            pair = (r // step + c // step) % 2 == 0
            offs = [(-0.98 * b * sa, 0.98 * b * ca), (0.98 * b * sa, -0.98 * b * ca)] if pair else [(0.0, 0.0)]
            for dr, dc in offs:
                y, x = rr - (r + dr), cc - (c + dc)
                u, v = x * ca + y * sa, -x * sa + y * ca
                k += 1
                labels[((u / a) ** 2 + (v / b) ** 2 <= 1) & (labels == 0)] = k
    img = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    other = ndimage.grey_dilation(labels, 3) != ndimage.grey_erosion(np.where(labels == 0, labels.max() + 1, labels), 3)
    inside = ndimage.grey_erosion(np.where(labels == 0, labels.max() + 1, labels), 3) <= labels.max()
    img[other & inside & (labels > 0)] = seam  # where two nuclei meet
    img = ndimage.gaussian_filter(img, 0.7) + rng.normal(0, 0.02, shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32), labels


class SilentBackend(FakeBlobBackend):
    """The fake model with its decoder broken: every answer is an empty mask
    (its scores unchanged), to prove a test fails when the model's answers are removed."""

    def decode_low_res(self, *args, **kwargs):
        low, scores = super().decode_low_res(*args, **kwargs)
        return torch.full_like(low, -4.0), scores
