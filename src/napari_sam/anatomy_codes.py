"""A small SNOMED CT table: object names -> coded segment category and type.

DICOM SEG (and Slicer's terminology tag) describe each segment by a coded
*category* (what kind of thing) and *type* (which thing). Names napari-sam
users commonly give (TotalSegmentator-style ``adrenal_gland_right`` included)
map to their SNOMED CT concept; any other name gets the generic category
"Tissue" and type "Anatomical Structure". Codes are those of DICOM's CID 7150
(categories) and the SNOMED CT concepts pydicom's code dictionary holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: (code value, code meaning) of the categories used, scheme SCT
CATEGORY_ANATOMY = ("123037004", "Anatomical Structure")
CATEGORY_TISSUE = ("85756007", "Tissue")
CATEGORY_ABNORMAL = ("49755003", "Morphologically Abnormal Structure")
GENERIC_TYPE = ("91723000", "Anatomical Structure")

#: base name (lower case, words separated by one space) -> (category, (code value, meaning))
_TABLE: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "liver": (CATEGORY_ANATOMY, ("10200004", "Liver")),
    "spleen": (CATEGORY_ANATOMY, ("78961009", "Spleen")),
    "kidney": (CATEGORY_ANATOMY, ("64033007", "Kidney")),
    "stomach": (CATEGORY_ANATOMY, ("69695003", "Stomach")),
    "aorta": (CATEGORY_ANATOMY, ("15825003", "Aorta")),
    "pancreas": (CATEGORY_ANATOMY, ("15776009", "Pancreas")),
    "gallbladder": (CATEGORY_ANATOMY, ("28231008", "Gallbladder")),
    "heart": (CATEGORY_ANATOMY, ("80891009", "Heart")),
    "lung": (CATEGORY_ANATOMY, ("39607008", "Lung")),
    "urinary bladder": (CATEGORY_ANATOMY, ("89837001", "Bladder")),
    "bladder": (CATEGORY_ANATOMY, ("89837001", "Bladder")),
    "colon": (CATEGORY_ANATOMY, ("71854001", "Colon")),
    "small bowel": (CATEGORY_ANATOMY, ("30315005", "Small intestine")),
    "small intestine": (CATEGORY_ANATOMY, ("30315005", "Small intestine")),
    "duodenum": (CATEGORY_ANATOMY, ("38848004", "Duodenum")),
    "esophagus": (CATEGORY_ANATOMY, ("32849002", "Esophagus")),
    "adrenal gland": (CATEGORY_ANATOMY, ("23451007", "Adrenal gland")),
    "vertebra": (CATEGORY_ANATOMY, ("51282000", "Vertebra")),
    "vertebrae": (CATEGORY_ANATOMY, ("51282000", "Vertebra")),
    "rib": (CATEGORY_ANATOMY, ("113197003", "Rib")),
    "brain": (CATEGORY_ANATOMY, ("12738006", "Brain")),
    "prostate": (CATEGORY_ANATOMY, ("41216001", "Prostate")),
    "inferior vena cava": (CATEGORY_ANATOMY, ("64131007", "Inferior vena cava")),
    "portal vein": (CATEGORY_ANATOMY, ("32764006", "Portal vein")),
    "trachea": (CATEGORY_ANATOMY, ("44567001", "Trachea")),
    "thyroid": (CATEGORY_ANATOMY, ("69748006", "Thyroid")),
    "thyroid gland": (CATEGORY_ANATOMY, ("69748006", "Thyroid")),
    "sternum": (CATEGORY_ANATOMY, ("56873002", "Sternum")),
    "femur": (CATEGORY_ANATOMY, ("71341001", "Femur")),
    "rectum": (CATEGORY_ANATOMY, ("34402009", "Rectum")),
    "sacrum": (CATEGORY_ANATOMY, ("54735007", "Sacrum")),
    "bone": (CATEGORY_TISSUE, ("272673000", "Bone")),
    "muscle": (CATEGORY_TISSUE, ("71616004", "Muscle")),
    "nucleus": (CATEGORY_ANATOMY, ("84640000", "Nucleus")),
    "cell": (CATEGORY_ANATOMY, ("4421005", "Cell")),
    "tumor": (CATEGORY_ABNORMAL, ("108369006", "Neoplasm")),
    "tumour": (CATEGORY_ABNORMAL, ("108369006", "Neoplasm")),
    "lesion": (CATEGORY_ABNORMAL, ("52988006", "Lesion")),
    "mass": (CATEGORY_ABNORMAL, ("4147007", "Mass")),
}

_NOISE = {"left", "right", "l", "r", "upper", "lower", "and"}


@dataclass(frozen=True)
class SegmentCode:
    """A segment's coded category and type: (code value, code meaning), scheme ``SCT``."""

    category: tuple[str, str]
    type: tuple[str, str]
    scheme: str = "SCT"

    @property
    def known(self) -> bool:
        """Whether the name was found in the table (False: the generic code)."""
        return self.type != GENERIC_TYPE


def _candidates(name: str) -> list[str]:
    """``"Adrenal_Gland_Right"`` -> ["adrenal gland right", "adrenal gland", ...]."""
    words = [w for w in re.split(r"[\s_\-./]+", name.lower()) if w]
    plain = [w for w in words if w not in _NOISE and not re.fullmatch(r"[a-z]?\d+[a-z]?", w)]
    out = [" ".join(words), " ".join(plain)]
    out += [" ".join(plain[:n]) for n in range(len(plain) - 1, 0, -1)]  # "portal vein and splenic vein"
    return out


def code_for_name(name: str) -> SegmentCode:
    """The SNOMED CT category and type for an object name (generic when unknown).

    Case, ``_``/``-`` separators, laterality words and numbers are ignored:
    ``"kidney_right"``, ``"Liver"``, ``"vertebrae_T12"`` are all found.
    """
    for cand in _candidates(name):
        if cand in _TABLE:
            cat, typ = _TABLE[cand]
            return SegmentCode(cat, typ)
    return SegmentCode(CATEGORY_TISSUE, GENERIC_TYPE)
