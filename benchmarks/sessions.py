"""Session size on disk and save / open times: the shared 20-slice CT with 5 objects.

The quick start's four objects (liver and stomach boxes, spleen and aorta
clicks on slice 10) plus a box on vertebra T12, each propagated, replayed
through the annotation model (``segment_volume``); then the session is saved,
opened (with the image check: its content hash) and a crash-recovery journal
records it. Prints the figures; medians of ``--repeat`` runs. ``--adapt``:
the liver is also adapted (``"adapt": true``, at most 30 s), so the session
holds an adaptation's weights (``adapted/``).

    python benchmarks/sessions.py [--cache-dir DIR] [--repeat 5] [--adapt]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  isort: skip  (before anything that may bring napari)

from napari_sam.annotation import ImageRef, Journal, open_session, save_session
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.io import read_image
from napari_sam.models.registry import load_model
from napari_sam.prompts import parse_prompts
from napari_sam.segmentation import segment_volume

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "ct_abdomen_dicom" / "dicom"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=None, help="embedding cache (a second run encodes nothing)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--adapt", action="store_true", help="adapt the model to the liver (its weights are saved)")
    args = ap.parse_args()
    volume = read_image(CT)
    prompts = json.loads((ROOT / "examples" / "ct_abdomen_prompts.json").read_text())
    prompts["objects"].append(
        {"id": 5, "name": "vertebra T12", "propagate": True, "prompts": [{"slice": 10, "box": [310, 224, 380, 269]}]}
    )
    if args.adapt:
        prompts["objects"][0]["adapt"] = True
    backend = load_model()
    t0 = time.perf_counter()
    result = segment_volume(
        volume,
        parse_prompts(prompts),
        backend,
        embeddings_for=lambda w, a: SliceEmbeddings(backend, volume.array, w, a, cache_dir=args.cache_dir),
    )
    print(f"replayed 5 objects in {time.perf_counter() - t0:.1f} s; labelled voxels {int((result.labels > 0).sum())}")
    model = result.annotation
    image = ImageRef.of(volume.array, CT)
    saves, opens, records = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            t = time.perf_counter()
            folder = save_session(Path(tmp) / "ct.session", model, image, {"name": backend.name})
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = open_session(folder, image=volume.array)
            opens.append(time.perf_counter() - t)
            assert (back.annotation.labels == model.labels).all()
            journal = Journal(image, folder=Path(tmp) / "recovery")
            t = time.perf_counter()
            journal.record(model)
            records.append(time.perf_counter() - t)
            journal.close()
        files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        size = sum(files.values())
    print(
        f"session size on disk: {size / 2**20:.2f} MiB ({', '.join(f'{k} {v / 1024:.0f} KiB' for k, v in files.items())})"
    )
    print(
        f"save: median {statistics.median(saves):.2f} s; open (with the image check): median "
        f"{statistics.median(opens):.2f} s; journal snapshot on the caller's thread: median "
        f"{statistics.median(records) * 1000:.0f} ms ({args.repeat} runs)"
    )


if __name__ == "__main__":
    main()
