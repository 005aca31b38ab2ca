"""Every architecture of the model zoo, end to end, with random weights.

No model hub can be reached here, so each architecture is built with random
weights and saved as a checkpoint in the *official* key layout (checked key
for key against the reference implementations' manifests in tests/data).
Each checkpoint then loads through the registry (``load_model(name,
checkpoint=...)``) and through the CLI (``napari-sam segment ... --model NAME
--checkpoint PATH``) and segments a 2D image end to end.

Cost: a SAM image encoder at 1024 px is heavy on a 2-core CPU (ViT-H about
3 TFLOP). Each architecture therefore runs *one* forward pass in this file:
the CLI test (which itself goes through ``load_model``). The light models
(MobileSAM, SAM 2.1 tiny) also run the Python API path with clicks and boxes.
Checkpoints are written once per session; ViT-L and ViT-H are written in
float16 (halving 1.2 / 2.5 GB of disk and load memory: the key layout is
what is under test, and loading casts to the model's float32).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from napari_sam.cli import main
from napari_sam.errors import ModelError
from napari_sam.models import mobile_sam, sam2, sam_vit
from napari_sam.models.base import Backend
from napari_sam.models.registry import REGISTRY, load_model

DATA = Path(__file__).parent / "data"
IMAGE_SHAPE = (96, 128)  # non-square on purpose: exercises resizing and padding
BOX = (20, 30, 60, 90)


def official_keys(manifest: str, model: str) -> dict[str, list[int]]:
    with gzip.open(DATA / manifest, "rt") as fh:
        return json.load(fh)[model]


SAM2_CFG = {"t": "sam2.1_hiera_t", "s": "sam2.1_hiera_s", "b+": "sam2.1_hiera_b+", "l": "sam2.1_hiera_l"}


def random_checkpoint(arch: str, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-weight checkpoint of ``arch`` in the official key layout."""
    torch.manual_seed(0)
    if arch.startswith("sam_vit_"):
        variant = arch.removeprefix("sam_")
        state = nn.ModuleDict(sam_vit.build_sam_vit_modules(variant)).state_dict()
        assert {k: list(v.shape) for k, v in state.items()} == official_keys("sam_vit_official_keys.json.gz", variant)
        obj = state
    elif arch == "tiny_vit_1024":
        obj = nn.ModuleDict(mobile_sam.build_mobile_sam_modules()).state_dict()
        obj.update({k: torch.randn(shape) for k, shape in mobile_sam.CLASSIFIER_HEAD_KEYS.items()})
    elif arch.startswith("sam2_hiera_"):
        size = arch.removeprefix("sam2_hiera_")
        state = sam2.state_dict_of(sam2.build_sam2_modules(size))
        ref = official_keys("sam2.1_official_keys.json.gz", SAM2_CFG[size])
        for key, shape in ref.items():  # the video-memory modules: random, official names and shapes
            if key not in state:
                state[key] = torch.randn(shape) * 0.02
        assert {k: list(v.shape) for k, v in state.items()} == ref
        obj = {"model": state}  # Meta's container
    else:
        raise ValueError(arch)
    if dtype != torch.float32:
        inner = obj["model"] if "model" in obj else obj
        for k, v in inner.items():
            if v.is_floating_point():
                inner[k] = v.to(dtype)
    torch.save(obj, path)
    return path


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def checkpoint_for(checkpoint_dir: Path):
    """arch -> path of its random official-layout checkpoint, written on first use."""

    def get(arch: str) -> Path:
        if arch not in _CACHE:
            dtype = torch.float16 if arch in ("sam_vit_l", "sam_vit_h") else torch.float32
            _CACHE[arch] = random_checkpoint(arch, checkpoint_dir / f"{arch}.pt", dtype)
        return _CACHE[arch]

    return get


@pytest.fixture(scope="session")
def image_and_prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: IMAGE_SHAPE[0], : IMAGE_SHAPE[1]]
    img = (100 + 80 * ((yy - 40) ** 2 + (xx - 60) ** 2 < 400) + rng.normal(0, 10, IMAGE_SHAPE)).clip(0, 255)
    tifffile.imwrite(d / "image.tif", img.astype(np.uint8))
    (d / "prompts.json").write_text(
        json.dumps(
            {
                "objects": [
                    {"id": 1, "name": "blob", "prompts": [{"box": list(BOX)}]},
                    {"id": 2, "name": "clicked", "prompts": [{"points": [[40, 60]], "labels": [1]}]},
                ]
            }
        )
    )
    return d / "image.tif", d / "prompts.json"


def run_cli(name: str, ckpt: Path, image_and_prompts: tuple[Path, Path], out: Path) -> np.ndarray:
    image, prompts = image_and_prompts
    rc = main(
        [
            "segment",
            str(image),
            "--prompts",
            str(prompts),
            "--output",
            str(out),
            "--model",
            name,
            "--checkpoint",
            str(ckpt),
            "--quiet",
        ]
    )
    assert rc == 0
    labels = tifffile.imread(out)
    assert labels.shape == IMAGE_SHAPE
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1, 2}
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == name
    return labels


# ----------------------------------------------------------------------------- light models: API + CLI

LIGHT = [("vit_t", "tiny_vit_1024"), ("sam2.1_hiera_tiny", "sam2_hiera_t"), ("sam2.1_hiera_small", "sam2_hiera_s")]


@pytest.mark.parametrize(("name", "arch"), LIGHT[:2])
def test_light_model_loads_through_registry_and_segments(name, arch, checkpoint_for):
    from napari_sam.predictor import SlicePredictor

    backend = load_model(name, checkpoint=checkpoint_for(arch))
    assert isinstance(backend, Backend) and backend.name == name and backend.image_size == 1024
    pred = SlicePredictor(backend)
    rng = np.random.default_rng(1)
    pred.set_image(rng.random(IMAGE_SHAPE, dtype=np.float32))
    p = pred.predict(box=BOX)
    assert p.masks.dtype == bool and p.masks.shape[1:] == IMAGE_SHAPE and 1 <= len(p.masks) <= 3
    assert p.scores.dtype == np.float32 and p.scores.shape == (len(p.masks),)
    assert p.low_res_logits.shape[-2:] == (256, 256)
    p = pred.predict(points=[(40, 60), (10, 10)], labels=[1, 0], multimask=False)
    assert p.masks.shape == (1, *IMAGE_SHAPE)


@pytest.mark.parametrize(("name", "arch"), LIGHT)
def test_light_model_segments_through_cli(name, arch, checkpoint_for, image_and_prompts, tmp_path):
    run_cli(name, checkpoint_for(arch), image_and_prompts, tmp_path / "labels.tif")


def test_embedded_lite_medsam_through_cli_checkpoint(image_and_prompts, tmp_path):
    from napari_sam.models.lite_medsam import embedded_checkpoint_path

    run_cli("lite_medsam", embedded_checkpoint_path(), image_and_prompts, tmp_path / "labels.tif")


# ----------------------------------------------------------------------------- heavy models: CLI (through load_model)

HEAVY = [
    ("vit_b", "sam_vit_b"),
    ("medsam_vit_b", "sam_vit_b"),
    ("vit_l", "sam_vit_l"),
    ("vit_h", "sam_vit_h"),
    ("sam2.1_hiera_base_plus", "sam2_hiera_b+"),
    ("sam2.1_hiera_large", "sam2_hiera_l"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "arch"), HEAVY)
def test_heavy_model_segments_through_cli(name, arch, checkpoint_for, image_and_prompts, tmp_path):
    run_cli(name, checkpoint_for(arch), image_and_prompts, tmp_path / "labels.tif")


# ----------------------------------------------------------------------------- every registry name loads

NAME_TO_ARCH = {name: spec.architecture for name, spec in REGISTRY.items() if name != "lite_medsam"}


@pytest.mark.parametrize("name", sorted(NAME_TO_ARCH))
def test_every_registry_name_loads_its_architecture(name, checkpoint_for):
    """micro-sam, MedSAM, SAM and SAM 2 names each load their architecture's checkpoint (no forward)."""
    backend = load_model(name, checkpoint=checkpoint_for(NAME_TO_ARCH[name]))
    assert backend.name == name
    assert backend.supports_points == REGISTRY[name].supports_points
    enc = backend.image_encoder
    if NAME_TO_ARCH[name].startswith("sam_vit"):
        # the weights really came from the file (not left at their initial values)
        ck = torch.load(checkpoint_for(NAME_TO_ARCH[name]), weights_only=True, mmap=True)
        assert torch.equal(enc.pos_embed.detach(), ck["image_encoder.pos_embed"].float())


def test_micro_sam_training_checkpoint_loads(checkpoint_for, tmp_path):
    """torch_em / micro-sam training checkpoints: {"model_state": {"sam.…": …}, "decoder_state": …}."""
    state = torch.load(checkpoint_for("tiny_vit_1024"), weights_only=True)
    path = tmp_path / "best.pt"
    torch.save(
        {
            "model_state": {f"sam.{k}": v for k, v in state.items()},
            "decoder_state": {"w": torch.zeros(2)},
            "iteration": 100,
        },
        path,
    )
    backend = load_model("vit_t_lm", checkpoint=path)
    assert backend.name == "vit_t_lm"


def test_safetensors_checkpoint_loads(checkpoint_for, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(checkpoint_for("tiny_vit_1024"), weights_only=True)
    path = tmp_path / "mobile_sam.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert load_model("vit_t", checkpoint=path).name == "vit_t"


# ----------------------------------------------------------------------------- wrong architecture, clear errors


@pytest.mark.parametrize(
    ("name", "arch", "says"),
    [
        (
            "vit_b",
            "sam2_hiera_t",
            "a SAM 2 Hiera-T checkpoint, but model 'vit_b' needs a SAM ViT-B checkpoint; use --model sam2.1_hiera_tiny",
        ),
        (
            "sam2.1_hiera_small",
            "sam2_hiera_t",
            "a SAM 2 Hiera-T checkpoint, but model 'sam2.1_hiera_small' needs a SAM 2 Hiera-S checkpoint",
        ),
        ("vit_t", "sam_vit_b", "a SAM ViT-B checkpoint, but model 'vit_t' needs a MobileSAM"),
        ("lite_medsam", "tiny_vit_1024", "a MobileSAM (TinyViT, 1024 px) checkpoint, but model 'lite_medsam'"),
        ("vit_h", "sam_vit_b", "use --model vit_b"),
    ],
)
def test_wrong_architecture_gives_clear_error(name, arch, says, checkpoint_for, image_and_prompts, tmp_path, capsys):
    ckpt = checkpoint_for(arch)
    with pytest.raises(ModelError) as err:
        load_model(name, checkpoint=ckpt)
    assert says in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "labels.tif"
    image, prompts = image_and_prompts
    rc = main(
        [
            "segment",
            str(image),
            "--prompts",
            str(prompts),
            "--output",
            str(out),
            "--model",
            name,
            "--checkpoint",
            str(ckpt),
            "--quiet",
        ]
    )
    err_text = capsys.readouterr().err
    assert rc == 1 and says in err_text and "Traceback" not in err_text
    assert not out.exists()


def test_truncated_layout_names_the_missing_key(checkpoint_for, tmp_path):
    state = torch.load(checkpoint_for("tiny_vit_1024"), weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"key mask_decoder\.iou_token\.weight missing"):
        load_model("vit_t", checkpoint=path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_model("vit_b", checkpoint=path)
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_model("vit_b", checkpoint=tmp_path / "missing.pt")
