"""Safe, verified checkpoint loading shared by every model family."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import ModelError


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Raise ModelError unless the file's SHA-256 is ``expected`` (None skips)."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ModelError(
            f"{path}: SHA-256 {actual[:16]}... does not match the expected {expected[:16]}...; "
            "the file is corrupt or not the checkpoint it claims to be"
        )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without running any pickled code.

    Accepts ``.safetensors`` and torch pickles (read with ``weights_only=True``,
    so a pickle that would import or call anything is refused). Unwraps the
    usual containers ({"model": ...}, {"state_dict": ...}, and micro-sam's
    training checkpoints {"model_state": ..., "decoder_state": ...}).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ModelError(f"{path}: reading .safetensors needs the 'safetensors' package") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...: not a safetensors file
            raise ModelError(
                f"{path}: not a readable .safetensors checkpoint "
                f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
            ) from None
    try:
        with warnings.catch_warnings():  # torch's own warnings would repeat our one line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: refused to load: the pickle holds more than tensors ({first[:160]}); "
            "only weights-only checkpoints are accepted"
        ) from None
    except Exception as exc:  # truncated zip, not a checkpoint at all, ...
        raise ModelError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: does not hold a state dict of tensors")
    return obj
