"""A widget session on disk: save and open it, and its crash-recovery journal.

:class:`SessionFiles` gives a :class:`~._session.SegmentSession` the core's
sessions (:mod:`napari_sam.annotation.sessions`): ``save(folder)`` and
``open(folder)`` (the image must be the one the session was made on), and a
:class:`~napari_sam.annotation.sessions.Journal` that rewrites a recovery copy
after every finished action. A copy left by a session that did not end
cleanly (napari crashed or was killed) is moved aside when a new session on
the same image starts; the widget offers to restore it
(:class:`RecoveryOffer`). A session that ends cleanly removes its copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFileDialog, QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..annotation import Annotation, ImageRef, Journal, open_session, save_session
from ..annotation.export_prompts import export_prompts
from ..annotation.sessions import find_recovery, recovery_folder
from ..cache import default_cache_dir
from ..errors import NapariSamError
from ._notify import notify
from ._settings import default_export_path

if TYPE_CHECKING:
    from ._session import SegmentSession

__all__ = ["SessionFiles", "RecoveryOffer", "SessionFileActions"]


class SessionFiles:
    """The session folder operations and the recovery journal of one widget session."""

    def __init__(self, session: SegmentSession, volume_hash: str) -> None:
        self.s = session
        src = session.source
        self.image = ImageRef(session.source_path(), volume_hash, tuple(src.volume.shape))
        root = default_cache_dir()
        #: a copy left by an earlier session on this image that did not end cleanly
        self.previous: Path | None = None
        left = find_recovery(self.image, root)
        if left is not None:
            self.previous = left.with_name(left.name + ".previous")
            shutil.rmtree(self.previous, ignore_errors=True)
            left.rename(self.previous)
        self.journal = Journal(
            self.image, recovery_folder(self.image, root), self._model_info(), self._settings()
        ).attach(session.model)

    def _model_info(self) -> dict[str, Any]:
        b = self.s.backend
        return {
            "name": getattr(b, "name", None),
            "device": str(getattr(b, "device", "")),
            "checkpoint": getattr(b, "checkpoint", None) and str(b.checkpoint),
        }

    def _settings(self) -> dict[str, Any]:
        w = self.s.source.window()
        return {"window": [w.lo, w.hi], "zoom": bool(self.s.zoom) if hasattr(self.s, "previewer") else True}

    def save(self, folder: str | Path) -> Path:
        """Save the session (objects, key slices, prompts, results, label map) to ``folder``."""
        return save_session(folder, self.s.model, self.image, self._model_info(), self._settings())

    def export_prompts(self, path: str | Path) -> list[Path]:
        """Write the session as the prompts file ``path`` with its mask files
        (:func:`napari_sam.annotation.export_prompts.export_prompts`), replacing them."""
        window = self._settings()["window"]
        return export_prompts(path, self.s.model, window=window, overwrite=True, inputs=(self.image.path,))

    def open(self, folder: str | Path) -> Annotation:
        """The annotation saved in ``folder``; InputError when it belongs to another image."""
        return open_session(folder, image=self.s.source.volume, image_path=self.image.path).annotation

    def restore_previous(self) -> Annotation | None:
        """The annotation of the copy left by a session that did not end cleanly (None when none)."""
        if self.previous is None:
            return None
        annotation = open_session(self.previous, image=self.s.source.volume).annotation
        self.discard_previous()
        return annotation

    def discard_previous(self) -> None:
        if self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous = None

    def adopt(self, model: Annotation) -> None:
        """Journal ``model`` from now on (it replaced the session's annotation)."""
        self.journal.attach(model)
        self.journal.record(model)

    def close(self) -> None:
        """A clean end: stop journalling and remove the recovery copy."""
        self.journal.close(keep=False)


class RecoveryOffer(QFrame):
    """A banner: "Unsaved work on this image was found (a session that did not end
    cleanly)": Restore / Discard. ``on_answer(restore)`` is called with the choice."""

    def __init__(self, on_answer: Any, parent: Any = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        lay = QVBoxLayout(self)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        lay.addWidget(self.label)
        row = QHBoxLayout()
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        self.restore_button.clicked.connect(lambda _c=False: on_answer(True))
        self.discard_button.clicked.connect(lambda _c=False: on_answer(False))
        row.addWidget(self.restore_button)
        row.addWidget(self.discard_button)
        lay.addLayout(row)
        self.setVisible(False)

    def offer(self, folder: Path | None) -> None:
        """Show the offer for the recovery copy ``folder`` (hide it for None)."""
        if folder is not None:
            self.label.setText(
                "Unsaved work on this image was found: a session that did not end cleanly "
                "(napari closed by a crash or killed). Restore it, up to its last finished action?"
            )
        self.setVisible(folder is not None)


class SessionFileActions:
    """The segment widget's session actions (mixed into :class:`~.segment_widget.SegmentWidget`):
    save, open, and the answer to the recovery offer."""

    def save_session(self, path: str | Path) -> Path | None:
        """Save the session to the folder ``path`` (objects, key slices, prompts, results, labels)."""
        s = self._need_session()
        return s.save_session(path) if s is not None else None

    def open_session(self, path: str | Path) -> bool:
        """Continue the session saved in the folder ``path`` (made on this image)."""
        s = self._need_session()
        return s is not None and s.open_session(path)

    def export_prompts(self, path: str | Path) -> list[Path]:
        """Write the session as a prompts file ``path`` (.json) with its mask files beside it,
        for ``napari-sam segment IMAGE --prompts PATH``; returns the paths written."""
        s = self._need_session()
        if s is None:
            return []
        try:
            out = s.files.export_prompts(path)
        except (NapariSamError, OSError) as exc:
            notify("error", f"napari-sam: cannot export the prompts: {exc}")
            return []
        self._set_status(f"prompts written to {out[-1]} ({len(out) - 1} mask file(s))")
        return out

    def export_prompts_dialog(self) -> list[Path]:
        s = self._need_session()
        if s is None:
            return []
        proposed = default_export_path(s.source.layer.name).with_suffix("").with_suffix(".prompts.json")
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the session as a prompts file", str(proposed), "JSON (*.json)"
        )
        return self.export_prompts(path) if path else []

    def save_session_dialog(self) -> Path | None:
        s = self._need_session()
        if s is None:
            return None
        proposed = default_export_path(s.source.layer.name).with_suffix("").with_suffix(".session")
        path, _ = QFileDialog.getSaveFileName(self, "Save session (a folder)", str(proposed), "Sessions (*.session)")
        return self.save_session(path) if path else None

    def open_session_dialog(self) -> bool:
        if self._need_session() is None:
            return False
        path = QFileDialog.getExistingDirectory(self, "Open session (a folder)", str(Path.home()))
        return self.open_session(path) if path else False

    def _on_recovery_answer(self, restore: bool) -> None:
        """Restore (or discard) the work a session that did not end cleanly left on this image."""
        s = self.session
        self.recovery_offer.offer(None)
        if s is None:
            return
        if not restore:
            s.files.discard_previous()
            return
        try:
            model = s.files.restore_previous()
        except NapariSamError as exc:
            notify("warning", f"napari-sam: cannot restore: {exc}")
            return
        if model is not None:
            s.replace_annotation(model)
            self._set_status(f"restored {len(model)} object(s) from the unsaved work")
