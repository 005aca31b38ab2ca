"""The plugin's own remembered settings (a small JSON file) and the export
location they give.

Kept in ``$XDG_CONFIG_HOME/napari-sam/settings.json`` (``~/.config`` without
it): the last export folder, and whether the plugin already offered to become
napari's preferred reader. Written atomically; a missing or unreadable file
means defaults.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def settings_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "napari-sam" / "settings.json"


def load_settings() -> dict[str, Any]:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_setting(key: str, value: Any) -> None:
    """Remember ``key`` = ``value`` (JSON-serialisable); failures to write are ignored."""
    from ..io import atomic_write_text

    data = load_settings()
    data[key] = value
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1))
    except OSError:
        pass


def safe_stem(name: str) -> str:
    """A layer name -> a file-name stem without spaces or path characters ("dicom labels" -> "dicom_labels")."""
    stem = re.sub(r"[^\w.-]+", "_", name.strip()).strip("._")
    return stem or "image"


def default_export_path(image_name: str) -> Path:
    """Where the export dialog proposes to save: ``<image name>_labels.nii.gz`` in the last
    export folder, else ``~/Documents`` (else the home folder); never next to the input data."""
    last = load_settings().get("last_export_dir")
    folder = Path(last) if isinstance(last, str) and Path(last).is_dir() else None
    if folder is None:
        docs = Path.home() / "Documents"
        folder = docs if docs.is_dir() else Path.home()
    return folder / f"{safe_stem(image_name)}_labels.nii.gz"


def remember_export(path: str | Path) -> None:
    save_setting("last_export_dir", str(Path(path).resolve().parent))
