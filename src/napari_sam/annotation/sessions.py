"""Sessions on disk: save and open an annotation, and a crash-recovery journal.

A **session** is a folder:

- ``session.json``: ``{"format": "napari-sam session", "version": 2,
  "image": {"path", "content_hash", "shape"}, "model": {...},
  "settings": {...}, "annotation": {...}, "adapted": {FILE: SHA256}}``, where
  ``annotation`` is :func:`~napari_sam.annotation.annotation_to_dict` with every
  array replaced by ``{"array": KEY}`` and every adaptation's weights by
  ``{"file": FILE, "sha256": SHA256}``;
- ``arrays.npz``: those arrays (the objects' masks as (rows, cols) bool, the
  label map as (z, y, x) uint16), compressed;
- ``adapted/<sha256>.npz``: the adaptations' weights
  (:class:`~napari_sam.finetune.adapted.AdaptedWeights`), checked against the
  manifest's SHA-256 when opened (version 1 had none, and still opens).

It holds everything of the annotation but its undo history: the objects
(ids, names, colours), each object's key slices with their prompts, its
painted slices, stop slices, corrections, results and stop decisions, and
the label map (in the image's geometry: the image is referenced by path and
content hash). Opening it rebuilds the same annotation, checked: a session
whose label map does not match its objects is refused.

:func:`save_session` writes the folder whole or not at all (a temporary
folder, fsynced, renamed over the old one). :func:`open_session` refuses
another image (its content hash differs) with one line, and takes the
image's new path when it moved. A newer format version is refused with a
clear message.

A :class:`Journal` keeps a recovery copy of an annotation in a folder of the
cache (:func:`recovery_folder`, one per image): after every finished action
(a commit, a paint stroke, a correction, a propagation's end, an undo) it
takes a snapshot on the caller's thread (the containers are copied, the masks
shared) and writes it as a session in a background thread, the latest
snapshot winning. After a crash, :func:`find_recovery` finds it for the same
image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import content_hash, default_cache_dir
from ..errors import InputError
from ..finetune.adapted import WEIGHTS_SUFFIX, AdaptedWeights, read_weights
from .model import Annotation
from .persist import annotation_from_dict, annotation_to_dict, join_arrays, split_arrays

__all__ = [
    "ImageRef",
    "Session",
    "save_session",
    "open_session",
    "Journal",
    "recovery_folder",
    "find_recovery",
    "SESSION_FORMAT",
    "SESSION_VERSION",
]

SESSION_FORMAT = "napari-sam session"
#: 2: adaptations' weights saved in ``adapted/`` (version 1, without them, still opens)
SESSION_VERSION = 2
_JSON, _ARRAYS, _ADAPTED = "session.json", "arrays.npz", "adapted"


@dataclass(frozen=True)
class ImageRef:
    """The image a session belongs to: its ``path`` (file or DICOM folder, if known),
    the :func:`napari_sam.cache.content_hash` of its (z, y, x) array, and its shape."""

    path: str | None
    content_hash: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray, path: str | Path | None = None) -> ImageRef:
        return cls(None if path is None else str(path), content_hash(np.asarray(array)), tuple(np.shape(array)))

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "content_hash": self.content_hash, "shape": list(self.shape)}


@dataclass
class Session:
    """An opened session: the annotation, the image reference, and the model and
    settings it was made with (plain JSON values)."""

    annotation: Annotation
    image: ImageRef
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _weights_out(meta: dict[str, Any]) -> dict[str, AdaptedWeights]:
    """Replace every adaptation's weights in the annotation's logs by ``{"file", "sha256"}``;
    returns file name (under the session folder) -> weights."""
    files: dict[str, AdaptedWeights] = {}
    for od in meta.get("objects", ()):
        for a in od.get("log") or ():
            w = a.get("weights")
            if isinstance(w, AdaptedWeights):
                name = f"{_ADAPTED}/{w.sha256}{WEIGHTS_SUFFIX}"
                files[name] = w
                a["weights"] = {"file": name, "sha256": w.sha256}
    return files


def _session_dict(
    snapshot: dict[str, Any], image: ImageRef, model: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, AdaptedWeights]]:
    meta, arrays = split_arrays(snapshot)
    weights = _weights_out(meta)
    return (
        {
            "format": SESSION_FORMAT,
            "version": SESSION_VERSION,
            "image": image.to_json(),
            "model": dict(model),
            "settings": dict(settings),
            "annotation": meta,
            "adapted": {name: w.sha256 for name, w in weights.items()},
        },
        arrays,
        weights,
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_weights(tmp: Path, folder: Path, name: str, weights: AdaptedWeights) -> None:
    """Write ``weights`` as ``tmp/name`` (a hard link to the same file of the session being
    replaced when it holds them), fsynced and read back."""
    target, old = tmp / name, folder / name
    target.parent.mkdir(exist_ok=True)
    data = weights.to_bytes()
    try:
        if old.is_file() and old.stat().st_size == len(data):
            os.link(old, target)
    except OSError:
        pass
    if not target.exists():
        with open(target, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    if hashlib.sha256(target.read_bytes()).hexdigest() != weights.sha256:
        raise OSError(f"{target}: the adapted weights read back differ from what was written")


def _write_folder(
    folder: Path,
    doc: dict[str, Any],
    arrays: dict[str, np.ndarray],
    weights: Mapping[str, AdaptedWeights] | None = None,
) -> Path:
    """Write the session files into a temporary folder beside ``folder``, then put it in place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / _ARRAYS, "wb") as fh:
            np.savez_compressed(fh, **{f"a{i}": a for i, a in enumerate(arrays.values())})
            fh.flush()
            os.fsync(fh.fileno())
        weights = weights or {}
        for name, w in weights.items():
            _put_weights(tmp, folder, name, w)
        if weights:
            _fsync(tmp / _ADAPTED)
        doc = dict(doc, arrays={k: f"a{i}" for i, k in enumerate(arrays)})
        with open(tmp / _JSON, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(tmp)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{threading.get_ident()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save_session(
    folder: str | Path,
    annotation: Annotation,
    image: ImageRef,
    model: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``annotation`` (of ``image``) as the session folder ``folder``, replacing it
    whole. model / settings: what to record with it (plain JSON values, e.g.
    ``{"name": "lite_medsam"}`` and ``{"window": [lo, hi]}``). Returns the folder."""
    doc, arrays, weights = _session_dict(annotation_to_dict(annotation), image, model or {}, settings or {})
    return _write_folder(Path(folder), doc, arrays, weights)


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        doc = json.loads((folder / _JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: not a napari-sam session (no {_JSON})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: unreadable session ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SESSION_FORMAT:
        raise InputError(f"{folder}: not a napari-sam session")
    if int(doc.get("version", 0)) > SESSION_VERSION:
        raise InputError(
            f"{folder}: session format version {doc['version']} is newer than this napari-sam "
            f"reads ({SESSION_VERSION}): update napari-sam"
        )
    try:
        with np.load(folder / _ARRAYS) as npz:
            arrays = {k: npz[name] for k, name in doc.get("arrays", {}).items()}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{folder}: unreadable session arrays ({exc})") from None
    return doc, arrays


def _weights_in(folder: Path, doc: dict[str, Any], annotation: dict[str, Any]) -> dict[str, Any]:
    """``annotation`` with each adaptation's ``{"file", "sha256"}`` replaced by its weights,
    read from the session folder and checked against the manifest (InputError, one line)."""
    manifest = doc.get("adapted", {})
    cache: dict[str, AdaptedWeights] = {}
    for od in annotation.get("objects", ()):
        for a in od.get("log") or ():
            ref = a.get("weights")
            if not isinstance(ref, dict):
                continue
            name, digest = str(ref.get("file")), ref.get("sha256")
            if manifest.get(name) != digest or Path(name).parent != Path(_ADAPTED):
                raise InputError(f"{folder}: the adapted weights {name} are not in the session's manifest")
            if name not in cache:
                cache[name] = read_weights(folder / name, digest, str(folder))
            a["weights"] = cache[name]
    return annotation


def open_session(folder: str | Path, image: np.ndarray | None = None, image_path: str | Path | None = None) -> Session:
    """Open the session folder ``folder``.

    image: the (z, y, x) array of the image to continue on; it must be the
    image the session was made on (same content hash), else InputError. Without
    it the session opens unchecked (for inspection). image_path: where that
    image is now, when it moved (recorded in the returned session's ``image``).
    """
    folder = Path(folder)
    doc, arrays = _read(folder)
    ref = doc["image"]
    recorded = ImageRef(ref.get("path"), ref["content_hash"], tuple(ref["shape"]))
    if image is not None:
        got = content_hash(np.asarray(image))
        if got != recorded.content_hash:
            where = f" ({recorded.path})" if recorded.path else ""
            raise InputError(
                f"{folder}: this session belongs to another image{where}; the image given differs "
                f"(content {got[:12]}..., the session's {recorded.content_hash[:12]}...)"
            )
    if image_path is not None:
        recorded = ImageRef(str(image_path), recorded.content_hash, recorded.shape)
    annotation = annotation_from_dict(_weights_in(folder, doc, join_arrays(doc["annotation"], arrays)))
    return Session(annotation, recorded, doc.get("model", {}), doc.get("settings", {}))


def recovery_folder(image: ImageRef, root: str | Path | None = None) -> Path:
    """Where the crash-recovery copy of a session on ``image`` lives:
    ``<root or the cache folder>/recovery/<content hash>``."""
    return Path(root if root is not None else default_cache_dir()) / "recovery" / image.content_hash


def find_recovery(image: ImageRef, root: str | Path | None = None) -> Path | None:
    """The recovery copy left for ``image`` (by a session that did not end cleanly), or None."""
    folder = recovery_folder(image, root)
    return folder if (folder / _JSON).is_file() else None


class Journal:
    """A crash-recovery copy of an annotation, rewritten after every finished action.

    ``attach(annotation)`` listens to it; each finished action snapshots it on
    the caller's thread and a background thread writes the newest snapshot as a
    session in ``folder`` (:func:`recovery_folder` by default). ``flush()``
    waits until what was recorded is on disk; ``close(keep=False)`` stops and
    removes the copy (a session that ended cleanly leaves nothing to recover).
    """

    def __init__(
        self,
        image: ImageRef,
        folder: str | Path | None = None,
        model: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.image = image
        self.folder = Path(folder) if folder is not None else recovery_folder(image)
        self.model, self.settings = dict(model or {}), dict(settings or {})
        self.written = 0
        self.errors: list[BaseException] = []
        self._pending: dict[str, Any] | None = None
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._writer, name="napari-sam-journal", daemon=True)
        self._thread.start()

    def attach(self, annotation: Annotation) -> Journal:
        annotation.listeners.append(self.record)
        return self

    def record(self, annotation: Annotation, what: str = "") -> None:
        """Snapshot ``annotation`` now; it is written in the background."""
        snapshot = annotation_to_dict(annotation)
        with self._cond:
            self._pending = snapshot
            self._queued += 1
            self._cond.notify_all()

    def _writer(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                snapshot, self._pending, upto = self._pending, None, self._queued
            try:
                doc, arrays, weights = _session_dict(snapshot, self.image, self.model, self.settings)
                _write_folder(self.folder, doc, arrays, weights)
            except BaseException as exc:  # noqa: BLE001  (kept for the owner to report)
                self.errors.append(exc)
            with self._cond:
                self.written = upto
                self._cond.notify_all()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every recorded snapshot is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.written >= self._queued, timeout)

    def close(self, keep: bool = False) -> None:
        """Stop writing; remove the recovery copy unless ``keep``."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
