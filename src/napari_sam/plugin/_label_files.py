"""The segment widget's label-map files: export the labels, load labels as objects.

:class:`LabelFileActions` is mixed into :class:`~.segment_widget.SegmentWidget`
(which provides ``_need_session`` and ``_set_status``).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..errors import NapariSamError
from ._notify import notify
from ._settings import default_export_path, remember_export

__all__ = ["LabelFileActions"]


class LabelFileActions:
    """Export the labels (NIfTI, NRRD, MHA, .seg.nrrd, DICOM SEG) and load a segmentation as objects."""

    def export(self, path: str | Path) -> list[str]:
        """Save the labels to ``path`` (.nii/.nii.gz/.nrrd/.mha) in the image's geometry."""
        s = self._need_session()
        if s is None:
            return []
        try:
            return s.export(path)
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return []

    def load_labels(self, path: str | Path) -> list[int]:
        """Add each label of ``path`` (label map, DICOM SEG, .seg.nrrd) as an object; returns their ids."""
        from ._load_objects import load_labels_as_objects

        s = self._need_session()
        if s is None:
            return []
        try:
            ids, notes = load_labels_as_objects(s, path)
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return []
        for note in notes:
            notify("info", f"napari-sam: {note}")
        self._set_status(f"loaded {len(ids)} object(s) from {Path(path).name}")
        return ids

    def load_labels_dialog(self) -> list[int]:
        if self._need_session() is None:
            return []
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Load labels as objects",
            str(Path.home()),
            "Segmentations (*.nii.gz *.nii *.nrrd *.mha *.dcm);;All files (*)",
        )
        return self.load_labels(path) if path else []

    def export_dialog(self) -> list[str]:
        s = self._need_session()
        if s is None:
            return []
        proposed = default_export_path(s.source.layer.name)
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save labels",
            str(proposed),
            "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha);;"
            "3D Slicer segmentation (*.seg.nrrd);;DICOM SEG (*.dcm)",
        )
        out = self.export(path) if path else []
        if out:
            remember_export(out[0])
        return out
