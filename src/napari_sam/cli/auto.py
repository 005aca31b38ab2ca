"""``napari-sam auto``: segment every object of an image, no prompts
(automatic mode, :mod:`napari_sam.automatic`; zarr in or out: tiles on Dask)."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import InputError
from ..jobs import ProgressBar
from .common import PROG, add_model_args, cache_dir_of


def add_parser(sub) -> None:
    """The ``auto`` sub-command."""
    auto = sub.add_parser("auto", help="segment every object automatically (no prompts)")
    auto.add_argument("image", help="2D micrograph (TIFF/PNG/JPEG) or 3D volume (NIfTI, NRRD, MHA, DICOM folder)")
    auto.add_argument(
        "--output",
        required=True,
        help="label map: .tif for a 2D image (or .nii.gz to keep geometry); .nii.gz/.nrrd/.mha for 3D",
    )
    auto.add_argument(
        "--preset",
        default="auto",
        choices=["auto", "microscopy", "ct"],
        help="parameter defaults: microscopy (blobs; a point grid for point-capable models), "
        "ct (intensity regions); auto picks ct for CT data",
    )
    auto.add_argument(
        "--proposals",
        default=None,
        choices=["blobs", "regions", "box-grid", "point-grid", "blobs+box-grid", "regions+box-grid"],
        help="where the prompts come from (default: the preset's)",
    )
    auto.add_argument(
        "--model-role",
        default=None,
        choices=["masks", "split-check"],
        help="blobs: the model's masks replace them (masks), or blob outlines are kept and the "
        "model checks which touching blobs to split (split-check; the microscopy default)",
    )
    auto.add_argument(
        "--tile-shape", default=None, metavar="R,C", help="tile rows,cols for large images (default 512,512)"
    )
    auto.add_argument(
        "--halo",
        type=int,
        default=None,
        help="tile overlap on each side in pixels (default 64); the largest object never cut at a tile border",
    )
    auto.add_argument("--min-size", type=int, default=None, help="smallest object kept, pixels (default: preset's)")
    auto.add_argument(
        "--diameter", type=float, default=None, help="typical object diameter in pixels (default: estimated)"
    )
    auto.add_argument("--quality", type=float, default=None, help="minimum predicted IoU, 0..1")
    auto.add_argument("--stability", type=float, default=None, help="minimum stability score, 0..1")
    auto.add_argument("--points-per-side", type=int, default=None, help="point-grid density per tile side")
    auto.add_argument(
        "--zoom",
        action="store_true",
        help="decode each proposal on a magnified crop (sharper small objects; one encoder run per crop); "
        "implies --model-role masks unless given",
    )
    auto.add_argument(
        "--spacing",
        default=None,
        metavar="Z,Y,X",
        help="3D stacks: voxel size (z, row, col), e.g. 1.0,0.25,0.25 (default: the file's "
        "metadata: NIfTI/NRRD/MHA header, ImageJ or OME TIFF; else isotropic)",
    )
    auto.add_argument(
        "--model-check",
        action="store_true",
        help="3D stacks: drop faint objects the model does not confirm on their central slice",
    )
    auto.add_argument(
        "--slicewise",
        action="store_true",
        help="3D microscopy: segment slice by slice and link (default: 3D proposals)",
    )
    auto.add_argument("--overwrite", action="store_true", help="replace an existing output")
    auto.add_argument(
        "--scheduler",
        default=None,
        help="zarr/OME-Zarr input or .zarr output: tiles as tasks "
        "on this Dask scheduler (default: a local cluster); docs/scaling.md",
    )
    add_model_args(auto)


def _parse_tile_shape(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--tile-shape {text!r}: expected R,C in pixels (e.g. 512,512)") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 16:
        raise InputError(f"--tile-shape {text!r}: expected R,C, both at least 16 pixels")
    return vals  # type: ignore[return-value]


def _auto_settings(args: argparse.Namespace, is_ct: bool):
    from ..automatic import AutoSettings
    from ..zoom import ZoomSettings

    preset = args.preset if args.preset != "auto" else ("ct" if is_ct else "microscopy")
    changes = {}
    if args.proposals is not None:
        changes["proposals"] = args.proposals
    if getattr(args, "model_role", None) is not None:
        changes["model_role"] = args.model_role
    if args.tile_shape is not None:
        changes["tile_shape"] = _parse_tile_shape(args.tile_shape)
    for arg, name in (
        ("halo", "halo"),
        ("min_size", "min_size"),
        ("diameter", "object_diameter"),
        ("quality", "quality_threshold"),
        ("stability", "stability_threshold"),
        ("points_per_side", "points_per_side"),
    ):
        if getattr(args, arg) is not None:
            changes[name] = getattr(args, arg)
    if args.zoom:
        changes["zoom"] = ZoomSettings()
        changes.setdefault("model_role", "masks")  # zoom sharpens the model's masks; split-check keeps the blobs'
    settings = AutoSettings.for_ct(**changes) if preset == "ct" else AutoSettings.for_microscopy(**changes)
    return preset, settings


def _auto_tiled(args: argparse.Namespace) -> int:
    """``auto`` with a zarr input or output: tiles as Dask tasks (docs/scaling.md)."""
    from ..large import auto_large, check_tiled_paths

    check_tiled_paths(args.image, args.output, args.overwrite)
    bar = ProgressBar("auto", args.quiet, unit="tile")
    try:
        info = auto_large(
            args.image,
            args.output,
            _auto_settings(args, args.preset == "ct")[1],
            args.window,
            args.scheduler,
            None,
            args.model,
            args.checkpoint,
            args.overwrite,
            bar,
            precision=args.precision,
        )
    finally:
        bar.close()
    if not args.quiet:
        print(f"wrote {args.output} ({info['objects']} object(s), {info['tiles']} tile(s))", file=sys.stderr)
    return 0


def _auto_run(args: argparse.Namespace, volume, window, settings, stack3d: bool):
    """Automatic mode on a read volume, with a progress bar. Returns (AutoResult,
    labels (z, y, x), the backend or None, sidecar extras)."""
    from ..automatic import AutomaticSegmenter, stack_settings_from_args
    from ..cache import content_hash, embedding_key, model_identity
    from ..embeddings import CropEmbeddings
    from ..models.registry import load_model

    # 3D proposals use no model unless --model-check: do not pay for loading one
    backend = (
        load_model(args.model, args.checkpoint, args.device, precision=args.precision)
        if not stack3d or args.model_check
        else None
    )
    bar = ProgressBar("auto", args.quiet, unit="step")

    try:
        if stack3d:
            stack = stack_settings_from_args(args, volume, backend, None)
            result = stack.segment(window.apply(volume.array), progress=bar)
            return (
                result,
                result.labels,
                backend,
                {"proposals": "3d-blobs", "design": "3d-proposals", "spacing_zyx": list(stack.settings.spacing)},
            )
        segmenter = AutomaticSegmenter(
            backend, settings, CropEmbeddings(backend, max_in_memory=64, cache_dir=cache_dir_of(args))
        )
        extra = {"proposals": segmenter.proposal_kind(), "model_role": settings.model_role}
        if volume.is_2d:
            result = segmenter.segment(window.apply(volume.array[0]), progress=bar)
            return result, result.labels[None], backend, extra
        key = embedding_key(content_hash(volume.array), model_identity(backend), window, 0)
        result = segmenter.segment_volume(
            lambda z: window.apply(volume.array[z]), len(volume.array), progress=bar, volume_key=key
        )
        return result, result.labels, backend, extra
    finally:
        bar.close()


def _auto_classes(args: argparse.Namespace, volume, window, labels, backend):
    """With a checkpoint taught classes: each instance's class name and confidence
    (text_prompts.name_instances), as (names for the sidecar, {id: {class, confidence}})."""
    from ..embeddings import EmbeddingProvider
    from ..finetune.checkpoint import read_class_state
    from ..finetune.classes import ClassHead
    from ..models.registry import load_model
    from ..text_prompts import name_instances

    state = read_class_state(args.checkpoint) if args.checkpoint else None
    if state is None:
        return None, None
    head = ClassHead.from_state(state)
    backend = backend or load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    store = EmbeddingProvider(backend, cache_dir_of(args)).views_of(volume.array)(window, 0)
    named = name_instances(head, labels, store.get, backend.image_size)
    names = {i: f"{name} {i}" for i, (name, _p) in named.items()}
    return names, {str(i): {"class": name, "confidence": round(p, 4)} for i, (name, p) in named.items()}


def cmd_auto(args: argparse.Namespace) -> int:
    from ..automatic import parse_spacing
    from ..export import check_result_for, check_result_path, write_result
    from ..intensity import check_window_spec, resolve_window
    from ..io import Geometry, read_image
    from ..large import wants_tiled
    from ..segmentation import is_ct

    if wants_tiled(args.image, args.output):
        return _auto_tiled(args)
    out = check_result_path(args.output, args.overwrite, inputs=(args.image, args.checkpoint))
    if args.spacing:
        parse_spacing(args.spacing)  # a malformed --spacing fails before any work
    window_spec = check_window_spec(args.window)
    volume = read_image(args.image, series=args.series)
    check_result_for(out, volume)
    preset, settings = _auto_settings(args, is_ct(volume))
    if not volume.is_2d and out.name.lower().endswith((".tif", ".tiff")) and volume.geometry != Geometry():
        raise InputError(f"{out}: a 3D label map keeps its geometry only as .nii.gz, .nii, .nrrd or .mha")
    window = resolve_window(
        volume.array, window_spec, volume.metadata.get("modality"), volume.metadata.get("dicom_window")
    )
    stack3d = not volume.is_2d and preset == "microscopy" and not args.slicewise
    t0 = time.perf_counter()
    result, labels, backend, extra = _auto_run(args, volume, window, settings, stack3d)
    notes: list[str] = []
    names, classes = _auto_classes(args, volume, window, labels, backend)
    if classes:
        extra["classes"] = classes
    model_name = backend.name if backend is not None else None
    write_result(
        out,
        labels,
        volume,
        names,
        model=model_name,
        overwrite=args.overwrite,
        notes=notes,
        algorithm_type="AUTOMATIC",
        inputs=(args.image, args.checkpoint),
        extra={
            "source": str(args.image),
            "model": model_name,
            "mode": "automatic",
            "preset": preset,
            "proposals": extra.pop("proposals"),
            "window": [window.lo, window.hi],
            "object_diameter": round(result.diameter, 2),
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
            **extra,
        },
    )
    if not args.quiet:
        for note in notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        print(
            f"wrote {out} ({int(labels.max(initial=0))} object(s), {result.proposals} prompt(s), "
            f"{result.encoder_calls} embedding(s); {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    return 0
