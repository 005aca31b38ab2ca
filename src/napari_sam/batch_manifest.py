"""A cohort manifest: one CSV row per case, and what makes a case finished.

The manifest is a CSV file with a header row. Columns:

- ``image`` (required): an image path (NIfTI, NRRD, MHA, DICOM folder, PNG/TIFF);
- ``output`` (required): the label map to write (``.nii.gz``, ``.nrrd``, ``.mha``, ``.tif``), a
  3D Slicer ``.seg.nrrd`` or a DICOM SEG ``.dcm`` (for a DICOM series);
- ``prompts``: a prompts JSON file (required for ``segment`` cases);
- ``mode``: ``segment`` (default when ``prompts`` is given) or ``auto``;
- ``window``: an intensity window (``LO,HI``, a preset, ``dicom``, ``auto``).

Relative paths are resolved from the manifest's folder. Unknown columns are
refused with the closest valid name.

A case is *finished* when its output and sidecar exist, the sidecar's
``batch`` record holds the same input hashes and settings as this run would
use, and the output file's SHA-256 matches the one recorded: a cohort can be
resumed after any crash, and a changed input or setting reruns its case.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import LABEL_SUFFIXES, sidecar_path

COLUMNS = ("image", "prompts", "output", "mode", "window")
REQUIRED = ("image", "output")
MODES = ("segment", "auto")
#: a label map (with a JSON sidecar), a 3D Slicer segmentation, a DICOM SEG (DICOM series input only)
OUTPUT_SUFFIXES = (*LABEL_SUFFIXES, ".seg.nrrd", ".dcm")


@dataclass(frozen=True)
class Case:
    """One manifest row: ``row`` is its line number in the file minus one (the header is row 0);
    paths are absolute; ``window`` the raw spec or None."""

    row: int
    image: Path
    output: Path
    mode: str
    prompts: Path | None = None
    window: str | None = None

    @property
    def name(self) -> str:
        """A short name for logs and the summary: ``row 3 (image.nii.gz)``."""
        return f"row {self.row} ({self.image.name})"


@dataclass(frozen=True)
class BatchSettings:
    """Settings shared by every case of a batch (what the CLI options set).

    model/checkpoint: the model every worker loads; cache_dir: the embedding
    cache folder (shared by the workers; None: memory only); overwrite:
    replace outputs that exist but are not a finished run of this case;
    precision: the image encoder's precision on the workers (auto, fp32,
    bf16, fp16; None: the default), recorded with each case.
    """

    model: str = "lite_medsam"
    checkpoint: str | None = None
    cache_dir: str | None = None
    overwrite: bool = False
    precision: str | None = None


def _closest(name: str, valid: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _resolve(folder: Path, text: str) -> Path:
    p = Path(text.strip()).expanduser()
    return p if p.is_absolute() else (folder / p)


def _case_from_row(folder: Path, i: int, row: dict[str, str], where: str) -> Case:
    for col in REQUIRED:
        if not (row.get(col) or "").strip():
            raise InputError(f"{where}: row {i}: column {col!r} is empty")
    prompts = (row.get("prompts") or "").strip() or None
    mode = (row.get("mode") or "").strip().lower() or ("segment" if prompts else "auto")
    if mode not in MODES:
        raise InputError(f"{where}: row {i}: mode {mode!r}; expected one of {', '.join(MODES)}{_closest(mode, MODES)}")
    if mode == "segment" and prompts is None:
        raise InputError(f"{where}: row {i}: mode 'segment' needs a prompts file")
    output = _resolve(folder, row["output"])
    if not output.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"{where}: row {i}: output {output.name}: must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    return Case(
        row=i,
        image=_resolve(folder, row["image"]),
        output=output,
        mode=mode,
        prompts=_resolve(folder, prompts) if prompts else None,
        window=(row.get("window") or "").strip() or None,
    )


def read_manifest(path: str | Path) -> list[Case]:
    """Read a manifest CSV into cases (see the module's documentation).

    Raises InputError for a missing or empty file, unknown or missing columns,
    a bad mode, or two rows writing the same output. Images and prompts are
    not opened here: a case whose input is bad fails alone when it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [(reader.line_num - 1, r) for r in reader]  # row = line number - 1 (header: row 0)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    if not header:
        raise InputError(f"{path}: empty manifest; expected a header row {','.join(COLUMNS[:3])}")
    for h in header:
        if h not in COLUMNS:
            raise InputError(f"{path}: unknown column {h!r}{_closest(h, COLUMNS)} (valid: {', '.join(COLUMNS)})")
    for col in REQUIRED:
        if col not in header:
            raise InputError(f"{path}: missing column {col!r}")
    folder = path.resolve().parent
    cases = []
    for i, raw in rows:
        row = {(k or "").strip(): (v or "") for k, v in raw.items() if k is not None}
        if not any(v.strip() for v in row.values()):
            continue  # a blank line
        cases.append(_case_from_row(folder, i, row, str(path)))
    if not cases:
        raise InputError(f"{path}: no cases in the manifest")
    seen: dict[Path, int] = {}
    for c in cases:
        key = c.output.resolve()
        if key in seen:
            raise InputError(f"{path}: rows {seen[key]} and {c.row} write the same output {c.output}")
        seen[key] = c.row
    return cases


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def input_hashes(case: Case) -> dict[str, str]:
    """{"image": sha256, "prompts": sha256} of a case's inputs (prompts only when given)."""
    out = {"image": path_sha256(case.image)}
    if case.prompts is not None:
        out["prompts"] = path_sha256(case.prompts)
    return out


def case_settings(case: Case, settings: BatchSettings) -> dict[str, Any]:
    """The settings a case's result depends on (recorded in its sidecar)."""
    from . import __version__

    return {
        "mode": case.mode,
        "window": case.window,
        "model": settings.model,
        "checkpoint": str(settings.checkpoint) if settings.checkpoint else None,
        "precision": settings.precision,
        "napari_sam": __version__,
    }


def finished_record(case: Case) -> dict[str, Any] | None:
    """The ``batch`` record of a case's sidecar, or None when absent or unreadable."""
    side = sidecar_path(case.output)
    if not case.output.is_file() or not side.is_file():
        return None
    try:
        rec = json.loads(side.read_text(encoding="utf-8")).get("batch")
    except (OSError, ValueError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


def is_finished(case: Case, settings: BatchSettings) -> bool:
    """Whether ``case`` was already run to the end with these inputs and settings."""
    rec = finished_record(case)
    if rec is None or rec.get("settings") != case_settings(case, settings):
        return False
    try:
        if rec.get("inputs") != input_hashes(case):
            return False
    except (InputError, OSError):
        return False
    return rec.get("output_sha256") == file_sha256(case.output)
