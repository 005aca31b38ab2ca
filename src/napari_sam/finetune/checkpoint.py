"""Tuned checkpoints: written atomically with their provenance, read back safely, listed.

A tuned checkpoint is a torch file holding ``{"model": state dict,
"napari_sam": provenance}``. The state dict is the whole model (the base
model's image encoder, unchanged, plus the tuned prompt encoder and mask
decoder), so ``load_model(base, checkpoint=PATH)`` and ``--checkpoint PATH``
load it as any checkpoint, with ``torch.load(weights_only=True)``. The
provenance is plain data (str, numbers, lists, dicts): the base model and
its SHA-256, the training data's content hashes, the settings, the
validation figures and when and how long it trained.

Every tuned checkpoint written is recorded in ``tuned.json`` in the model
folder (``$NAPARI_SAM_MODEL_DIR`` or the user cache), which ``napari-sam
models`` lists.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..models.checkpoints import load_state_dict, sha256_of
from ..outputs import current_umask

#: the provenance key of a tuned checkpoint, and the format version under it
PROVENANCE_KEY = "napari_sam"
#: where a tuned checkpoint keeps its taught class head (finetune/classes.py)
CLASSES_KEY = "napari_sam_classes"
FORMAT = 1
INDEX_NAME = "tuned.json"


def base_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The base model's full state dict and its checkpoint's SHA-256 (fine-tuning supports lite_medsam)."""
    from ..models.registry import fetch_checkpoint, get_spec

    spec = get_spec(name)
    if spec.name != "lite_medsam":
        raise InputError(f"fine-tuning supports the embedded lite_medsam model only (got {name!r})")
    path = fetch_checkpoint(spec.name, progress=False)
    return load_state_dict(path), spec.sha256 or sha256_of(path)


def plain(obj: Any) -> Any:
    """``obj`` as plain data (dict, list, str, int, float, bool, None) that a
    weights-only load accepts; anything else becomes its str()."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, str):
        return "".join(obj)  # an exact str (torch.__version__ is a str subclass a weights-only load refuses)
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    return str(obj)


def save_tuned(
    path: str | Path,
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    provenance: dict[str, Any],
    classes: dict[str, Any] | None = None,
) -> Path:
    """Write ``base`` with the ``tuned`` keys replaced, plus ``provenance``, atomically.

    classes: a taught class head (:meth:`ClassHead.to_state`), stored under
    ``CLASSES_KEY`` for text prompts and named automatic instances.

    The file is written beside ``path`` under a temporary name, flushed to disk,
    read back (weights-only) and compared, then renamed over ``path`` with the
    permissions the user's umask gives. Returns the path.
    """
    path = Path(path)
    missing = set(tuned) - set(base)
    if missing:
        raise ModelError(f"tuned weights {sorted(missing)[:3]} are not in the base model")
    state = {k: (tuned[k] if k in tuned else v).detach().cpu().contiguous() for k, v in base.items()}
    doc = {"model": state, PROVENANCE_KEY: plain({"format": FORMAT, **provenance})}
    if classes is not None:
        doc[CLASSES_KEY] = classes
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        back = torch.load(tmp, map_location="cpu", weights_only=True)
        if set(back["model"]) != set(state) or not all(torch.equal(back["model"][k], tuned[k].cpu()) for k in tuned):
            raise ModelError(f"{path}: the checkpoint read back differs from what was written")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _record(path, provenance)
    return path


def _load_weights_only(path: Path) -> Any:
    """A checkpoint file's content, read weights-only (ModelError when it cannot be)."""
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__})") from None


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance of a tuned checkpoint (ModelError when the file is not one)."""
    path = Path(path)
    obj = _load_weights_only(path)
    if not isinstance(obj, dict) or not isinstance(obj.get(PROVENANCE_KEY), dict):
        raise ModelError(f"{path}: not a napari-sam tuned checkpoint (no provenance)")
    return obj[PROVENANCE_KEY]


def tuned_index_path() -> Path:
    """Where tuned checkpoints are recorded."""
    from ..models.download import model_cache_dir

    return model_cache_dir() / INDEX_NAME


def _record(path: Path, provenance: dict[str, Any]) -> None:
    index = tuned_index_path()
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        entries = json.loads(index.read_text()) if index.is_file() else []
    except (OSError, ValueError):
        entries = []
    entries = [e for e in entries if e.get("path") != str(path.resolve())]
    entries.append(
        {
            "path": str(path.resolve()),
            "base_model": provenance.get("base_model"),
            "created": provenance.get("created"),
            "kind": provenance.get("kind"),
            "validation": provenance.get("validation", {}).get("best_val_dice"),
        }
    )
    fd, tmp = tempfile.mkstemp(prefix=".tuned.", suffix=".tmp", dir=index.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entries, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, index)
    except OSError:
        pass  # the index is a convenience: the checkpoint itself is written
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_tuned() -> list[dict[str, Any]]:
    """The recorded tuned checkpoints that still exist (path, base_model, created, validation)."""
    index = tuned_index_path()
    try:
        entries = json.loads(index.read_text()) if index.is_file() else []
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and Path(str(e.get("path"))).is_file()]


def now_utc() -> str:
    """ISO 8601 UTC time stamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_class_state(path: str | Path) -> dict[str, Any] | None:
    """The taught class head stored in a checkpoint (None when it holds none)."""
    obj = _load_weights_only(Path(path))
    state = obj.get(CLASSES_KEY) if isinstance(obj, dict) else None
    return state if isinstance(state, dict) else None
