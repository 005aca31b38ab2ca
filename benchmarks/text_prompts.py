"""Text prompts on the shared CT: teach the classes from slices 0-9, segment by name on 10-19.

For each class head method (logistic regression, prototypes) the head is taught
from the reference labels of slices 0-9 (every structure covering at least one
feature cell there), then each taught class that is present on slices 10-19
is found by name on those 10 slices (no box, no label), boxed on its most
confident slice, propagated, and scored against the reference (3D Dice over
the 10 slices). Also prints which reference structure each found object
overlaps most (the confusions) and the teaching time.

Usage: python benchmarks/text_prompts.py [--cache-dir DIR] [--methods logistic,prototype]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np  # noqa: E402
import torch  # before anything that may import napari

from common import dice, load_ct  # noqa: F401  (puts src/ on sys.path)
from napari_sam.cache import content_hash  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.finetune.classes import grid_labels, teach  # noqa: E402
from napari_sam.intensity import resolve_window  # noqa: E402
from napari_sam.io import Volume  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import parse_prompts  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402
from napari_sam.text_prompts import text_prompts_file  # noqa: E402

TEACH, TEST = range(0, 10), range(10, 20)


def taught(backend, emb, labels, names, method):
    ids = [i for i in sorted(names) if (labels[list(TEACH)] == i).sum() > 0]
    grids = [grid_labels(labels[z], ids, emb.get(z), backend.image_size) for z in TEACH]
    covered = [i for k, i in enumerate(ids, 1) if any((g == k).any() for g in grids)]
    grids = [grid_labels(labels[z], covered, emb.get(z), backend.image_size) for z in TEACH]
    t0 = time.perf_counter()
    head = teach([emb.get(z) for z in TEACH], grids, [names[i] for i in covered], method=method)
    return head, covered, time.perf_counter() - t0


def run(method, backend, vol, labels, names, emb, sub_emb):
    head, covered, secs = taught(backend, emb, labels, names, method)
    test_ids = [i for i in covered if (labels[list(TEST)] == i).sum() >= 1000]
    sub = Volume(vol.array[TEST.start : TEST.stop], vol.geometry, dict(vol.metadata))
    doc, found = text_prompts_file(
        head,
        [names[i] for i in test_ids],
        [sub_emb.get(z) for z in range(10)],
        backend.image_size,
        propagate=True,
        warn=print,
    )
    result = segment_volume(sub, parse_prompts(doc), backend, embeddings_for=lambda w, a: sub_emb)
    gt = labels[TEST.start : TEST.stop]
    by_name = {n: i for i, n in names.items()}
    scores, confusions = {}, []
    for oid, name in result.names.items():
        pred = result.labels == oid
        scores[name] = dice(pred, gt == by_name[name])
        hit = np.bincount(gt[pred].ravel(), minlength=int(gt.max()) + 1)
        hit[0] = 0
        top = int(hit.argmax()) if hit.any() else 0
        if top and names[top] != name:
            confusions.append(f"{name} -> {names[top]}")
    missing = [names[i] for i in test_ids if names[i] not in scores]
    for name in missing:
        scores[name] = 0.0
    print(
        f"\n== {method}: taught {len(covered)} classes from slices 0-9 in {secs:.1f} s; "
        f"{len(test_ids)} classes on slices 10-19 (>= 1000 voxels)"
    )
    for name in sorted(scores, key=lambda n: -scores[n]):
        f = next((f for f in found if f.name == name), None)
        where = f"slice {f.slice + 10}, conf {f.confidence:.2f}" if f else "not found"
        print(f"  {name:32s} Dice {scores[name]:.3f}  ({where})")
    vals = list(scores.values())
    print(f"  mean Dice {np.mean(vals):.3f}, median {statistics.median(vals):.3f}; not found: {missing or 'none'}")
    print(f"  confused (found object overlaps another structure most): {confusions or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--methods", default="logistic,prototype")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    vol, labels, names = load_ct()
    backend = load_model()
    win = resolve_window(vol.array, None, vol.metadata.get("modality"), vol.metadata.get("dicom_window"))
    emb = SliceEmbeddings(backend, vol.array, win, 0, cache_dir=args.cache_dir, image_hash=content_hash(vol.array))
    sub_arr = np.ascontiguousarray(vol.array[TEST.start : TEST.stop])
    sub_emb = SliceEmbeddings(backend, sub_arr, win, 0, cache_dir=args.cache_dir, image_hash=content_hash(sub_arr))
    for method in args.methods.split(","):
        run(method.strip(), backend, vol, labels, names, emb, sub_emb)


if __name__ == "__main__":
    main()
