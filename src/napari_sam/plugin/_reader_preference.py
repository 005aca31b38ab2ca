"""Making napari-sam the reader napari uses for medical files.

npe2 lets several plugins claim a file pattern; napari then asks which reader
to use, and its builtin reader (listed first) fails on compressed DICOM and
loses NIfTI geometry. What npe2 allows a plugin to do about it: declare the
patterns in its manifest (``napari.yaml``), and set napari's own preference
``plugins.extension2reader`` (Preferences > Plugins > File extension readers)
when the user agrees. The widget offers this once (:class:`ReaderOffer`).

Folders cannot be matched by content in that preference (a pattern ``*/``
would claim every folder), so a DICOM folder still opens with napari-sam
through ``File > Open Folder...`` and choosing napari-sam in the dialog, or
``viewer.open(path, plugin="napari-sam")``.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ._settings import load_settings, save_setting

PLUGIN = "napari-sam"
#: the file patterns napari-sam asks to read (napari's preference keys)
PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*.dcm")


def _extension2reader() -> dict[str, str]:
    from napari.settings import get_settings

    return dict(get_settings().plugins.extension2reader)


def missing_patterns() -> list[str]:
    """The patterns for which napari's preference does not name napari-sam."""
    current = _extension2reader()
    return [p for p in PATTERNS if current.get(p) != PLUGIN]


def make_napari_sam_preferred() -> list[str]:
    """Set napari's reader preference to napari-sam for :data:`PATTERNS`; returns those changed."""
    from napari.settings import get_settings

    settings = get_settings().plugins
    current = dict(settings.extension2reader)
    changed = [p for p in PATTERNS if current.get(p) != PLUGIN]
    current.update({p: PLUGIN for p in changed})
    settings.extension2reader = current
    return changed


class ReaderOffer(QFrame):
    """A one-time banner: "Open NIfTI/NRRD/MHA/DICOM files with napari-sam by default?" Yes / No.

    Shown when napari's preference does not name napari-sam yet and the user
    has not answered before (remembered in napari-sam's settings).
    """

    KEY = "reader_preference_offered"

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        lay = QVBoxLayout(self)
        self.label = QLabel(
            "Open .nii/.nii.gz, NRRD, MHA and .dcm files with napari-sam by default "
            "(their geometry and CT window)? Changes napari's Preferences > Plugins."
        )
        self.label.setWordWrap(True)
        lay.addWidget(self.label)
        row = QHBoxLayout()
        self.yes_button = QPushButton("Yes, use napari-sam")
        self.no_button = QPushButton("No")
        self.yes_button.clicked.connect(lambda _c=False: self.answer(True))
        self.no_button.clicked.connect(lambda _c=False: self.answer(False))
        row.addWidget(self.yes_button)
        row.addWidget(self.no_button)
        lay.addLayout(row)
        self.setVisible(self.should_offer())

    @classmethod
    def should_offer(cls) -> bool:
        try:
            return not load_settings().get(cls.KEY) and bool(missing_patterns())
        except Exception:  # noqa: BLE001 - napari's settings unavailable: never block the widget
            return False

    def answer(self, yes: bool) -> None:
        if yes:
            make_napari_sam_preferred()
        save_setting(self.KEY, True)
        self.setVisible(False)
