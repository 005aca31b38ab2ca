"""Checkpoint key layouts: which architecture a state dict holds, and loading
it into our modules strictly, with errors a user can act on.

Every SAM-family checkpoint is a flat state dict whose keys start with the
name of a sub-module (``image_encoder.``, ``prompt_encoder.``,
``mask_decoder.`` for SAM; ``sam_prompt_encoder.``/``sam_mask_decoder.`` and
the memory modules for SAM 2). :func:`detect_architecture` reads a few tell-tale
keys and shapes, so that a checkpoint given to the wrong model is named for
what it is ("a SAM ViT-L checkpoint; use --model vit_l") instead of failing
with a page of missing keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

#: architecture id -> human name
ARCHITECTURE_NAMES: dict[str, str] = {
    "sam_vit_b": "SAM ViT-B",
    "sam_vit_l": "SAM ViT-L",
    "sam_vit_h": "SAM ViT-H",
    "tiny_vit_1024": "MobileSAM (TinyViT, 1024 px)",
    "tiny_vit_256": "LiteMedSAM (TinyViT, 256 px)",
    "sam2_hiera_t": "SAM 2 Hiera-T",
    "sam2_hiera_s": "SAM 2 Hiera-S",
    "sam2_hiera_b+": "SAM 2 Hiera-B+",
    "sam2_hiera_l": "SAM 2 Hiera-L",
}


def normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the wrappers training code leaves on key names.

    ``module.`` (DataParallel / DistributedDataParallel) and ``sam.``
    (micro-sam / torch_em training checkpoints) are removed when every key
    carries them; other keys are left as they are.
    """
    out = dict(state)
    for prefix in ("module.", "sam.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def detect_architecture(state: Mapping[str, torch.Tensor]) -> str | None:
    """The architecture id (see :data:`ARCHITECTURE_NAMES`) of a state dict, or None."""
    if "image_encoder.trunk.patch_embed.proj.weight" in state:
        dim = state["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(
            (int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")), default=-1
        )
        return {
            (96, 12): "sam2_hiera_t",
            (96, 16): "sam2_hiera_s",
            (112, 24): "sam2_hiera_b+",
            (144, 48): "sam2_hiera_l",
        }.get((dim, depth))
    if "image_encoder.patch_embed.proj.weight" in state:
        dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
        return {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}.get(dim)
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        kernel = state["image_encoder.patch_embed.seq.0.c.weight"].shape[-1]
        return {3: "tiny_vit_1024", 1: "tiny_vit_256"}.get(kernel)
    return None


def describe_architecture(arch: str | None) -> str:
    return ARCHITECTURE_NAMES.get(arch, "an unknown architecture") if arch else "not a SAM-family checkpoint"


def check_architecture(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    expected: str,
    model: str,
    models_for: Mapping[str, str] | None = None,
) -> None:
    """Raise ModelError unless ``state`` holds the ``expected`` architecture.

    models_for: architecture id -> a model name that takes it (for the hint).
    """
    found = detect_architecture(state)
    if found == expected:
        return
    want = ARCHITECTURE_NAMES.get(expected, expected)
    if found is None:
        what = (
            describe_architecture(None)
            if not any(k.startswith("image_encoder.") for k in state)
            else "an unrecognised SAM-family layout"
        )
        raise ModelError(f"{path}: {what}; model {model!r} needs a {want} checkpoint")
    hint = f"; use --model {models_for[found]}" if models_for and found in models_for else ""
    raise ModelError(
        f"{path}: a {ARCHITECTURE_NAMES[found]} checkpoint, but model {model!r} needs a {want} checkpoint{hint}"
    )


def load_parts(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    parts: Mapping[str, nn.Module],
    model: str,
    ignore_prefixes: tuple[str, ...] = (),
    ignore_keys: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Load ``state`` into ``parts`` (key prefix -> module), every key strictly.

    ignore_prefixes: key prefixes that belong to the official checkpoint but
        not to what we run (e.g. SAM 2's video memory modules); accepted and dropped.
    ignore_keys: exact keys accepted and dropped, with their expected shape
        (e.g. MobileSAM's unused ImageNet classifier head).
    Anything else left over, or missing, is a ModelError naming the key.
    """
    remaining = dict(state)
    for key, shape in (ignore_keys or {}).items():
        if key in remaining:
            if tuple(remaining[key].shape) != tuple(shape):
                raise ModelError(
                    f"{path}: {key} has shape {tuple(remaining[key].shape)}, expected "
                    f"{tuple(shape)}; not a {model} checkpoint"
                )
            del remaining[key]
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1 :]: remaining.pop(k) for k in list(remaining) if k.startswith(prefix + ".")}
        if not sub and prefix in remaining:  # a bare parameter such as "no_mem_embed"
            sub = {"": remaining.pop(prefix)}
        _load_strict(path, module, sub, prefix, model)
    leftover = [k for k in remaining if not k.startswith(ignore_prefixes)] if ignore_prefixes else list(remaining)
    if leftover:
        raise ModelError(
            f"{path}: unexpected key {leftover[0]!r} (and {len(leftover) - 1} more); not a {model} checkpoint"
        )


def _load_strict(path: str | Path, module: nn.Module, sub: dict[str, torch.Tensor], prefix: str, model: str) -> None:
    if list(sub) == [""]:  # a bare nn.Parameter holder
        param = next(iter(module.parameters()))
        if tuple(param.shape) != tuple(sub[""].shape):
            raise ModelError(
                f"{path}: {prefix} has shape {tuple(sub[''].shape)}, expected {tuple(param.shape)}; "
                f"not a {model} checkpoint"
            )
        with torch.no_grad():
            param.copy_(sub[""])
        return
    own = module.state_dict()
    missing = [k for k in own if k not in sub]
    unexpected = [k for k in sub if k not in own]
    if missing:
        raise ModelError(
            f"{path}: key {prefix}.{missing[0]} missing (and {len(missing) - 1} more); not a {model} checkpoint"
        )
    if unexpected:
        raise ModelError(
            f"{path}: unexpected key {prefix}.{unexpected[0]} (and {len(unexpected) - 1} more); "
            f"not a {model} checkpoint"
        )
    for k, v in sub.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(
                f"{path}: {prefix}.{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}; "
                f"not a {model} checkpoint"
            )
    module.load_state_dict(sub, strict=True)
