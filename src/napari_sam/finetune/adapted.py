"""An adaptation's weights as data: what it changed, saved and restored exactly.

An in-session adaptation (:mod:`.adapt`) trains a copy of a model's decoder.
:func:`adapted_weights` keeps only what the training changed (the prompt
encoder's and mask decoder's tensors that differ from the base model's, as
float32 numpy arrays: the output head, about 1.4 MB for lite_medsam) with a
fingerprint of the base model; :func:`adapted_backend` rebuilds the adapted
model from a base model with that fingerprint (the base is never changed; another
base model is refused). :meth:`AdaptedWeights.to_bytes` is a deterministic
``.npz`` (fixed zip dates, no pickle), so its SHA-256 names its content:
sessions and exported prompts files store it as a file and check that sum.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelError

__all__ = [
    "AdaptedWeights",
    "adapted_weights",
    "adapted_backend",
    "base_fingerprint",
    "read_weights",
    "root_model",
    "WEIGHTS_SUFFIX",
]

WEIGHTS_SUFFIX = ".npz"
_META = "__meta__"
_MODULES = ("prompt_encoder", "mask_decoder")


def _decoder_state(backend: Any) -> dict[str, Any]:
    out = {}
    for mod in _MODULES:
        out.update({f"{mod}.{k}": v for k, v in getattr(backend, mod).state_dict().items()})
    return out


def base_fingerprint(backend: Any) -> str:
    """SHA-256 of a model's name and its prompt encoder's and mask decoder's tensors
    (what an adaptation starts from; the image encoder is shared, never trained)."""
    h = hashlib.sha256(str(getattr(backend, "name", "")).encode())
    for k, v in sorted(_decoder_state(backend).items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class AdaptedWeights:
    """The tensors an adaptation changed (``"mask_decoder.x"`` -> float32 array), the
    :func:`base_fingerprint` of the model it adapted, and its optimiser ``steps``."""

    tensors: dict[str, np.ndarray]
    base: str
    steps: int = 0
    _bytes: list = field(default_factory=list, repr=False)  # the serialised form, made once

    def to_bytes(self) -> bytes:
        """A deterministic ``.npz``: one ``.npy`` per tensor and a JSON ``__meta__`` entry."""
        if not self._bytes:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                meta = json.dumps({"format": "napari-sam adapted weights", "base": self.base, "steps": self.steps})
                for name, arr in [(_META, np.frombuffer(meta.encode(), np.uint8)), *sorted(self.tensors.items())]:
                    one = io.BytesIO()
                    np.lib.format.write_array(one, np.ascontiguousarray(arr), allow_pickle=False)
                    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, one.getvalue())
            self._bytes.append(buf.getvalue())
        return self._bytes[0]

    @property
    def sha256(self) -> str:
        """The SHA-256 of :meth:`to_bytes` (names the file)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "adapted weights") -> AdaptedWeights:
        """Read what :meth:`to_bytes` wrote; InputError (one line) for anything else."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: np.array(npz[k]) for k in npz.files}
            meta = json.loads(bytes(arrays.pop(_META)).decode())
            if meta.get("format") != "napari-sam adapted weights":
                raise ValueError("not napari-sam adapted weights")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(f"{where}: unreadable adapted weights ({exc})") from None
        return cls(arrays, str(meta["base"]), int(meta.get("steps", 0)))


def read_weights(path: str | Path, sha256: str | None = None, where: str | None = None) -> AdaptedWeights:
    """The adapted weights in the file ``path``; InputError when it is missing, unreadable
    or its SHA-256 is not ``sha256`` (the file changed)."""
    where = where or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read the adapted weights {path} ({exc.strerror or exc})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"{where}: the adapted weights {Path(path).name} changed (their SHA-256 differs)")
    return AdaptedWeights.from_bytes(data, where)


def root_model(backend: Any) -> Any:
    """The model an adapted backend was adapted from (itself for a base model)."""
    return getattr(backend, "adapted_from", None) or backend


def adapted_weights(base: Any, adapted: Any, steps: int = 0) -> AdaptedWeights:
    """What ``adapted`` (a backend from :func:`napari_sam.finetune.adapt.adapt_to_slices`)
    changed relative to ``base`` (an adapted backend's :func:`root_model`: an adaptation
    of an adapted model is kept whole, relative to the base model)."""
    base = root_model(base)
    before, after = _decoder_state(base), _decoder_state(adapted)
    changed = {
        k: v.detach().float().cpu().numpy().copy()
        for k, v in after.items()
        if k not in before or not np.array_equal(v.detach().cpu().numpy(), before[k].detach().cpu().numpy())
    }
    return AdaptedWeights(changed, base_fingerprint(base), int(steps))


def adapted_backend(base: Any, weights: AdaptedWeights, fingerprint: str | None = None) -> Any:
    """The adapted model: ``base``'s image encoder with a copy of its decoder holding
    ``weights`` (``base`` untouched). ModelError when ``base`` is not the model the
    weights were adapted from (fingerprint: ``base``'s, when already known)."""
    import torch

    from .pipeline import with_decoder

    base = root_model(base)
    if (fingerprint or base_fingerprint(base)) != weights.base:
        raise ModelError(f"these adapted weights were made on another model than {getattr(base, 'name', 'this one')}")
    modules = {mod: copy.deepcopy(getattr(base, mod)) for mod in _MODULES}
    for mod, module in modules.items():
        state = module.state_dict()
        for k, arr in weights.tensors.items():
            if k.startswith(f"{mod}."):
                name = k[len(mod) + 1 :]
                if name not in state or tuple(state[name].shape) != arr.shape:
                    raise ModelError(f"adapted weight {k} does not fit the model {getattr(base, 'name', '')}")
                state[name] = torch.from_numpy(arr).to(state[name].dtype)
        module.load_state_dict(state)
    out = with_decoder(base, modules["prompt_encoder"], modules["mask_decoder"])
    out.adapted_from = base
    return out
