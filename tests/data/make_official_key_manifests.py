"""Regenerate the official checkpoint key manifests used by the model tests.

Each manifest maps a model to {state-dict key: shape} as the reference
implementation builds it, i.e. the key layout of the official checkpoints:

- sam_vit_official_keys.json.gz: ``segment_anything.sam_model_registry``
  (pip install segment-anything) for vit_b / vit_l / vit_h;
- sam2.1_official_keys.json.gz: ``sam2.build_sam.build_sam2`` with
  ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` (Meta's facebookresearch/sam2
  code; needs hydra-core and iopath);
- mobile_sam_official_keys.json.gz: ``mobile_sam.sam_model_registry["vit_t"]``
  (MobileSAM's reference code, github.com/ChaoningZhang/MobileSAM; on PyPI as
  the packaging mirror ``mobilesam-mirror``, which installs ``mobile_sam``;
  needs timm), the layout of the official ``mobile_sam.pt``.

Run from the repository root: ``python tests/data/make_official_key_manifests.py``.
Nothing here runs in the test suite; the tests only read the manifests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

HERE = Path(__file__).parent


def _dump(name: str, data: dict) -> None:
    with gzip.open(HERE / name, "wt") as fh:
        json.dump(data, fh, separators=(",", ":"))


def main() -> None:
    from segment_anything import sam_model_registry

    sam = {}
    for variant in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            model = sam_model_registry[variant]()
        sam[variant] = {k: list(v.shape) for k, v in model.state_dict().items()}
    _dump("sam_vit_official_keys.json.gz", sam)

    from sam2.build_sam import build_sam2

    sam2 = {}
    for cfg in ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"):
        model = build_sam2(f"configs/sam2.1/{cfg}.yaml", ckpt_path=None, device="cpu", mode="eval")
        sam2[cfg] = {k: list(v.shape) for k, v in model.state_dict().items()}
    _dump("sam2.1_official_keys.json.gz", sam2)

    from mobile_sam import sam_model_registry as mobile_sam_registry

    model = mobile_sam_registry["vit_t"]()
    _dump("mobile_sam_official_keys.json.gz", {"vit_t": {k: list(v.shape) for k, v in model.state_dict().items()}})


if __name__ == "__main__":
    main()
