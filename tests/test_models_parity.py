"""Our architectures against the reference implementations, same random weights.

- SAM ViT encoder vs Meta's ``segment_anything`` (a testing dependency): a
  reduced configuration with the real code paths (windowed attention with
  padding, global attention, relative positions, neck), so it runs in a second.
- SAM 2.1 image predictor vs Meta's ``sam2`` (not on PyPI as an official
  package: this test runs where facebookresearch/sam2 is installed, e.g. for a
  release check, and is skipped otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.models import sam_vit


def test_sam_vit_encoder_matches_segment_anything():
    sa_encoder = pytest.importorskip(
        "segment_anything.modeling.image_encoder", reason="segment-anything (testing extra) not installed"
    )
    from functools import partial

    torch.manual_seed(0)
    kw = dict(
        img_size=256,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=4,
        global_attn_indexes=(1, 3),
        window_size=7,
        out_chans=32,
    )  # 16 x 16 tokens in 7 x 7 windows: padding is exercised
    ref = sa_encoder.ImageEncoderViT(
        **kw, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    cfg = sam_vit.SamViTConfig(
        embed_dim=96, depth=4, num_heads=4, global_attn_indexes=(1, 3), img_size=256, window_size=7, out_chans=32
    )
    ours = sam_vit.ImageEncoderViT(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        a, b = ref(x), ours(x)
    assert a.shape == b.shape == (2, 32, 16, 16)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_sam_vit_global_attention_chunks_match_one_shot():
    """Global attention computed a few heads at a time equals computing it at once."""
    torch.manual_seed(0)
    attn = sam_vit.Attention(64, 8, (40, 40)).eval()  # 1600 tokens: the chunked path
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(1, 40, 40, 64)
    with torch.inference_mode():
        chunked = attn(x)
        attn.chunk = 8
        whole = attn(x)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_sam2_image_predictor_matches_reference(tmp_path):
    pytest.importorskip("sam2.build_sam", reason="Meta's sam2 package (facebookresearch/sam2) not installed")
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from napari_sam.models.sam2 import load_sam2

    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", mode="eval")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            one = name.endswith(("norm1.weight", "norm2.weight", "norm.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.2) + (1.0 if one else 0.0))
    torch.save({"model": model.state_dict()}, tmp_path / "ck.pt")
    ours = load_sam2(tmp_path / "ck.pt", "t", "sam2.1_hiera_tiny", torch.device("cpu"))
    ref = SAM2ImagePredictor(model)
    yy, xx = np.mgrid[0:1024, 0:1024]
    img = np.stack([(127 + 100 * np.sin(xx / 50.0 + c) * np.cos(yy / 70.0)).astype(np.uint8) for c in range(3)], -1)
    ref.set_image(img)
    emb = ours.embed(img.astype(np.float32) / 255.0)
    assert torch.allclose(ref._features["image_embed"], emb.features, atol=1e-4)
    for multimask in (True, False):
        _, ious, low = ref.predict(
            point_coords=np.array([[300.0, 400.0], [600.0, 500.0]]),
            point_labels=np.array([1, 0]),
            box=np.array([200.0, 250.0, 700.0, 800.0]),
            multimask_output=multimask,
            return_logits=True,
        )
        lo, sc = ours.decode_low_res(
            emb,
            points_rc=np.array([[[400.0, 300.0], [500.0, 600.0]]]),
            point_labels=np.array([[1, 0]]),
            boxes_rc=np.array([[250.0, 200.0, 800.0, 700.0]]),
            multimask=multimask,
        )
        np.testing.assert_allclose(lo[0].numpy(), low, atol=1e-4)
        np.testing.assert_allclose(sc[0].numpy(), ious, atol=1e-5)
