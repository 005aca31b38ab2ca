"""Names offered when naming an object: anatomical structures (CT / MR) and
cells / compartments (microscopy), plus every name the user typed before
(remembered in the plugin's settings, see :mod:`._settings`)."""

from __future__ import annotations

from ._settings import load_settings, save_setting

ANATOMY = (
    "liver",
    "spleen",
    "stomach",
    "pancreas",
    "gallbladder",
    "kidney left",
    "kidney right",
    "adrenal gland left",
    "adrenal gland right",
    "aorta",
    "inferior vena cava",
    "portal vein",
    "splenic vein",
    "esophagus",
    "duodenum",
    "small bowel",
    "colon",
    "rectum",
    "urinary bladder",
    "prostate",
    "uterus",
    "heart",
    "lung left",
    "lung right",
    "trachea",
    "brain",
    "spinal cord",
    "vertebra",
    "rib",
    "sternum",
    "femur left",
    "femur right",
    "hip left",
    "hip right",
    "sacrum",
    "muscle",
    "autochthon left",
    "autochthon right",
    "iliopsoas left",
    "iliopsoas right",
    "subcutaneous fat",
    "thyroid",
    "tumour",
    "lesion",
    "cyst",
    "metastasis",
    "lymph node",
)
CELLS = (
    "nucleus",
    "cell",
    "cytoplasm",
    "membrane",
    "mitochondrion",
    "vesicle",
    "organoid",
    "colony",
    "spheroid",
    "axon",
    "dendrite",
    "soma",
    "tissue",
    "background",
)
#: at most this many user-typed names are remembered
MAX_TYPED = 200


def typed_names() -> list[str]:
    names = load_settings().get("names", [])
    return [str(n) for n in names] if isinstance(names, list) else []


def remember_name(name: str) -> None:
    """Add a name the user typed to the remembered ones (most recent first)."""
    name = name.strip()
    if not name or name in ANATOMY or name in CELLS:
        return
    names = [n for n in typed_names() if n != name]
    save_setting("names", [name] + names[: MAX_TYPED - 1])


def vocabulary() -> list[str]:
    """Typed names first, then anatomy, then cells (no duplicates)."""
    out: list[str] = []
    for n in [*typed_names(), *ANATOMY, *CELLS]:
        if n not in out:
            out.append(n)
    return out
