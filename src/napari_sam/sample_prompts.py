"""Prompts files for the shared sample data, written once for the tests and benchmarks.

The MR volume of ``shared/data/mr_small`` (see its README): boxes (r0, c0, r1,
c1) on slices along axis 0. Each function returns a fresh prompts document (a
plain dict, safe to change).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["mr_liver_spleen", "mr_kidney", "shifted"]

_LIVER_SPLEEN = {
    "objects": [
        {
            "id": 5,
            "name": "liver",
            "propagate": True,
            "range": [9, 11],
            "prompts": [{"slice": 10, "box": [23, 10, 68, 40]}],
        },
        {"id": 1, "name": "spleen", "prompts": [{"slice": 14, "box": [57, 80, 73, 99]}]},
    ]
}
_KIDNEY = {
    "objects": [
        {
            "id": 2,
            "name": "kidney_right",
            "propagate": True,
            "range": [6, 8],
            "prompts": [{"slice": 7, "box": [53, 29, 66, 43]}],
        }
    ]
}


def mr_liver_spleen(window: Any = None) -> dict[str, Any]:
    """The liver (propagated over slices 9-11) and the spleen (slice 14) of the MR;
    ``window``: the file's window (e.g. ``[0, 600]``), none by default."""
    doc = copy.deepcopy(_LIVER_SPLEEN)
    return doc if window is None else {"window": list(window), **doc}


def mr_kidney() -> dict[str, Any]:
    """The right kidney of the MR, propagated over slices 6-8."""
    return copy.deepcopy(_KIDNEY)


def shifted(doc: dict[str, Any], k0: int) -> dict[str, Any]:
    """A copy of the prompts document ``doc`` with every slice and range moved by ``k0``
    (the same objects in a volume that has ``k0`` more slices before them)."""
    out = copy.deepcopy(doc)
    for o in out["objects"]:
        for p in o["prompts"]:
            p["slice"] += k0
        if "range" in o:
            o["range"] = [v + k0 for v in o["range"]]
    return out
