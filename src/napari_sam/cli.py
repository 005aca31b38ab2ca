"""The command line: ``napari-sam segment | auto | embed | batch | models | download | finetune``.

Errors print as one line on stderr, ``napari-sam: error: ...``, with exit
code 2 for bad input or usage and 1 for runtime failures; nothing is written
then, and inputs are never touched.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from .errors import InputError, NapariSamError, NapariSamWarning

PROG = "napari-sam"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like our own errors
        self.exit(2, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


class ProgressBar:
    """A tqdm bar on stderr (silent when ``quiet``)."""

    def __init__(self, desc: str, quiet: bool = False, unit: str = "slice") -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=True)

    def __call__(self, done, total: int | None = None, message: str = "") -> None:
        """Show a :class:`napari_sam.jobs.Progress` event (or done, total, message)."""
        if total is None:  # a jobs.Progress event
            done, total, message = done.done, done.total, done.stage
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite_medsam", help="model name (see `napari-sam models`); default lite_medsam")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model (offline use)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"], help="default cpu")
    p.add_argument("--precision", default=None,
                   help="image encoder precision: auto (bf16 where the CPU/GPU runs it natively, else fp32), "
                        "fp32, bf16 or fp16; default: see docs/performance.md")
    p.add_argument("--window", default=None,
                   help="intensity window LO,HI or a preset (soft-tissue, lung, bone, brain, ...), "
                        "'dicom' for the header's, 'auto' (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: $NAPARI_SAM_CACHE_DIR, else the user cache folder)")
    p.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only")
    p.add_argument("--series", default=None, metavar="UID",
                   help="the DICOM series to read when the folder holds several (SeriesInstanceUID)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Segment Anything for medical and microscopy images.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = sub.add_parser("segment", help="segment an image from a prompts file")
    seg.add_argument("image", help="NIfTI, NRRD, MHA/MHD, DICOM folder, PNG/TIFF/JPEG; zarr/OME-Zarr (read lazily)")
    seg.add_argument("--prompts", default=None, help="prompts JSON (format: the README's section 'The prompts file'); optional with --init")
    seg.add_argument("--init", default=None, metavar="LABELS",
                     help="existing segmentation to refine: label map, DICOM SEG or .seg.nrrd; each label becomes "
                          "an object whose slices are key slices (see docs/export.md)")
    seg.add_argument("--text", default=None, metavar="NAMES",
                     help="find these classes by name, with no prompt, e.g. 'liver,spleen' (a --checkpoint "
                          "taught them: napari-sam finetune; docs/finetuning.md); in 3D each propagates")
    seg.add_argument("--output", required=True, help="label map: .nii.gz/.nii/.nrrd/.mha (or .tif for 2D); "
                     ".seg.nrrd (3D Slicer); .dcm (DICOM SEG, DICOM input only); .zarr (written chunk by chunk, "
                     "the image read lazily: docs/scaling.md)")
    seg.add_argument("--seg-encoding", default="binary", choices=["binary", "labelmap"],
                     help="DICOM SEG encoding for a .dcm output (default binary: read everywhere)")
    seg.add_argument("--overview", default=None, help="also write a PNG overview of the segmented slices")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    seg.add_argument("--zoom", action="store_true",
                     help="decode small objects' prompts on a magnified crop around them (sharper outlines of "
                          "nuclei and small structures; one encoder run per crop); not used for propagation")
    _add_model_args(seg)

    auto = sub.add_parser("auto", help="segment every object automatically (no prompts)")
    auto.add_argument("image", help="2D micrograph (TIFF/PNG/JPEG) or 3D volume (NIfTI, NRRD, MHA, DICOM folder)")
    auto.add_argument("--output", required=True,
                      help="label map: .tif for a 2D image (or .nii.gz to keep geometry); .nii.gz/.nrrd/.mha for 3D")
    auto.add_argument("--preset", default="auto", choices=["auto", "microscopy", "ct"],
                      help="parameter defaults: microscopy (blobs; a point grid for point-capable models), "
                           "ct (intensity regions); auto picks ct for CT data")
    auto.add_argument("--proposals", default=None,
                      choices=["blobs", "regions", "box-grid", "point-grid", "blobs+box-grid", "regions+box-grid"],
                      help="where the prompts come from (default: the preset's)")
    auto.add_argument("--tile-shape", default=None, metavar="R,C",
                      help="tile rows,cols for large images (default 512,512)")
    auto.add_argument("--halo", type=int, default=None, help="tile overlap on each side in pixels (default 64); "
                      "the largest object never cut at a tile border")
    auto.add_argument("--min-size", type=int, default=None, help="smallest object kept, pixels (default: preset's)")
    auto.add_argument("--diameter", type=float, default=None, help="typical object diameter in pixels "
                      "(default: estimated)")
    auto.add_argument("--quality", type=float, default=None, help="minimum predicted IoU, 0..1")
    auto.add_argument("--stability", type=float, default=None, help="minimum stability score, 0..1")
    auto.add_argument("--points-per-side", type=int, default=None, help="point-grid density per tile side")
    auto.add_argument("--zoom", action="store_true",
                      help="decode each proposal on a magnified crop (sharper small objects; one encoder run per crop)")
    auto.add_argument("--spacing", default=None, metavar="Z,Y,X",
                      help="3D stacks: voxel size (z, row, col), e.g. 1.0,0.25,0.25 (default: the file's "
                           "metadata: NIfTI/NRRD/MHA header, ImageJ or OME TIFF; else isotropic)")
    auto.add_argument("--model-check", action="store_true",
                      help="3D stacks: drop faint objects the model does not confirm on their central slice")
    auto.add_argument("--slicewise", action="store_true",
                      help="3D microscopy: segment slice by slice and link (default: 3D proposals)")
    auto.add_argument("--overwrite", action="store_true", help="replace an existing output")
    auto.add_argument("--scheduler", default=None, help="zarr/OME-Zarr input or .zarr output: tiles as tasks "
                      "on this Dask scheduler (default: a local cluster); docs/scaling.md")
    _add_model_args(auto)
    from .cli_large import add_cluster_args

    emb = sub.add_parser("embed", help="fill the embedding cache for an image ahead of time")
    emb.add_argument("image", help="NIfTI, NRRD, MHA/MHD, DICOM folder, PNG/TIFF/JPEG")
    emb.add_argument("--axis", type=int, default=0, choices=[0, 1, 2], help="slice axis (default 0)")
    emb.add_argument("--slices", default=None, help="FIRST:LAST (inclusive) to embed only these slices")
    add_cluster_args(emb)
    _add_model_args(emb)

    sub.add_parser("models", help="list the available models and local tuned checkpoints")
    from .batch import add_parser as _add_batch_parser
    from .finetune.command import add_parser as add_finetune_parser

    _add_batch_parser(sub)
    add_finetune_parser(sub, _Parser)

    dl = sub.add_parser("download", help="download model checkpoints into the cache (for later offline use)")
    dl.add_argument("names", nargs="+", help="model names (see `napari-sam models`)")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _cmd_segment(args: argparse.Namespace) -> int:
    from .cli_large import segment_extra, segment_large, wants_lazy_segment
    from .intensity import parse_window
    from .export import check_result_for, check_result_path, write_result
    from .io import read_image
    from .models.registry import load_model
    from .prompts import load_prompts
    from .segmentation import segment_volume

    if args.prompts is None and args.init is None and args.text is None:
        raise InputError("segment needs --prompts, --text or --init")
    if wants_lazy_segment(args.image, args.output):  # zarr in or out: slices read lazily (docs/scaling.md)
        bar = ProgressBar("segment", args.quiet)
        try:
            return segment_large(args, bar, lambda: _cache_dir(args))
        finally:
            bar.close()
    if args.text is not None and (args.prompts is not None or args.init is not None):
        raise InputError("--text finds its own prompts: give it without --prompts and --init")
    inputs = tuple(p for p in (args.image, args.prompts, args.init, args.checkpoint) if p)
    if args.overview and Path(args.overview).suffix.lower() != ".png":
        raise InputError(f"{args.overview}: --overview must end in .png")
    out = check_result_path(args.output, args.overwrite, inputs=inputs,
                            also=(args.overview,) if args.overview else ())
    window = None
    if args.window is not None and args.window.strip().lower() not in ("auto", "dicom"):
        window = parse_window(args.window)
    elif args.window is not None:
        window = args.window
    prompts = load_prompts(args.prompts, allow_empty=args.init is not None) if args.prompts else None
    volume = read_image(args.image, series=args.series)
    check_result_for(out, volume)
    init_masks, notes = None, []
    if args.init is not None:
        prompts, init_masks, init_info = _init_objects(args.init, volume, prompts, notes)
    backend = load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    embeddings_for, provider = _embeddings_factory(args, volume, backend)
    if args.text is not None:
        prompts = _text_prompts(args, volume, backend, window, embeddings_for, notes)
    prompts.check_against(volume.array.shape, volume.is_2d)
    bar = ProgressBar("segment", args.quiet)
    t0 = time.perf_counter()
    try:
        zoom = crops = None
        if args.zoom:
            from .embeddings import CropEmbeddings
            from .predictor import PROMPT_ZOOM

            zoom, crops = PROMPT_ZOOM, CropEmbeddings(backend, provider=provider)
        result = segment_volume(volume, prompts, backend, window=window, progress=bar,
                                embeddings_for=embeddings_for, zoom=zoom, crop_embeddings=crops,
                                init_masks=init_masks)
    finally:
        bar.close()
    enc, hits = provider.encoder_calls, provider.disk_hits
    extra = segment_extra(args.image, backend.name, result.windows, result.states, enc, hits)
    if args.init is not None:
        extra["init"] = init_info
    if result.cancelled:
        raise NapariSamError("cancelled before the end; nothing written")
    more = ()
    if args.overview:
        from .overview import overview_output

        more = (overview_output(args.overview, volume, result.labels, result.colors,
                                window=next(iter(result.windows.values()), None)),)
    write_result(out, result.labels, volume, result.names, result.colors, model=backend.name,
                 overwrite=args.overwrite, extra=extra, notes=notes, seg_encoding=args.seg_encoding.upper(),
                 inputs=inputs, more=more)
    for note in notes if not args.quiet else ():
        print(f"{PROG}: note: {note}", file=sys.stderr)
    msg = f"wrote {out} ({len(result.names)} object(s), {sum(map(len, result.slices.values()))} slice(s)"
    if args.overview:
        msg += f"; overview {args.overview}"
    if not args.quiet:
        print(msg + f"; {enc} slice(s) encoded, {hits} from the cache; {time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
    return 0


def _text_prompts(args: argparse.Namespace, volume, backend, window, embeddings_for, notes: list[str]):
    """--text: the prompts file that boxes each named class where the taught head finds it."""
    from .finetune.classes import load_class_head
    from .intensity import resolve_window
    from .prompts import parse_prompts
    from .text_prompts import parse_class_names, text_prompts_file

    names = parse_class_names(args.text)
    head = load_class_head(args.checkpoint)
    for name in names:
        head.index_of(name)  # refuse an untaught class before any encoder run
    md = volume.metadata
    win = resolve_window(volume.array, window, md.get("modality"), md.get("dicom_window"))
    store = embeddings_for(win, 0)
    embs = [store.get(z) for z in range(volume.shape[0])]
    doc, found = text_prompts_file(head, names, embs, backend.image_size, propagate=volume.shape[0] > 1,
                                   warn=notes.append)
    doc["window"] = [win.lo, win.hi]
    for f in found:
        notes.append(f"{f.name}: found on slice {f.slice}, box {list(f.box)}, confidence {f.confidence:.2f}")
    return parse_prompts(doc, where="--text")


def _init_objects(path: str, volume, prompts, notes: list[str]):
    """--init: the labels on the image grid as objects, combined with the prompts (docs/export.md)."""
    from .init_labels import init_objects, init_summary, labels_on_image, read_segmentation

    labels = labels_on_image(read_segmentation(path, volume), volume, notes)
    prompts, masks = init_objects(labels, prompts)
    return prompts, masks, init_summary(labels)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """--cache-dir, else $NAPARI_SAM_CACHE_DIR, else the platform default; None with --no-cache."""
    from .cache import resolve_cache_dir

    if args.no_cache:
        return None
    d = resolve_cache_dir(args.cache_dir)
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: cache directory is a file")
    try:
        d.mkdir(parents=True, exist_ok=True)
        writable = os.access(d, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        warnings.warn(f"{d}: the cache directory cannot be written; keeping embeddings in memory only",
                      NapariSamWarning)
        return None
    return d


def _embeddings_factory(args: argparse.Namespace, volume, backend):
    """(window, axis) -> SliceEmbeddings, all on one provider (memory tier, the
    cache directory, the encoder lock), and that provider (it counts encoder
    calls and cache hits; zoom crops go through it too)."""
    from .cache import content_hash
    from .embeddings import EmbeddingProvider, SliceEmbeddings

    cache_dir = _cache_dir(args)
    provider = EmbeddingProvider(backend, cache_dir, max_in_memory=64)
    image_hash: list[str] = []

    def factory(win, axis: int) -> SliceEmbeddings:
        if cache_dir is not None and not image_hash:
            image_hash.append(content_hash(volume.array))
        return SliceEmbeddings(backend, volume.array, win, axis, image_hash=image_hash[0] if image_hash else None,
                               provider=provider)

    return factory, provider


def _parse_slices(spec: str | None, n: int) -> range:
    if spec is None:
        return range(n)
    try:
        a, b = (int(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"--slices {spec!r}: expected FIRST:LAST, e.g. 10:40") from None
    a, b = min(a, b), max(a, b)
    if a < 0 or b >= n:
        raise InputError(f"--slices {spec}: outside 0..{n - 1}")
    return range(a, b + 1)


def _cmd_embed(args: argparse.Namespace) -> int:
    from .intensity import resolve_window
    from .io import read_image
    from .models.registry import load_model

    if args.no_cache:
        raise InputError("embed fills the cache: --no-cache makes no sense here")
    if args.scheduler or args.workers is not None:  # on a Dask cluster (docs/scaling.md)
        from .cli_large import embed_cluster

        bar = ProgressBar("embed", args.quiet)
        try:
            return embed_cluster(args, bar, lambda: _cache_dir(args))
        finally:
            bar.close()
    volume = read_image(args.image, series=args.series)
    if volume.is_2d and args.axis != 0:
        raise InputError(f"{args.image}: a 2D image has only axis 0")
    win = resolve_window(volume.array, args.window, volume.metadata.get("modality"),
                         volume.metadata.get("dicom_window"))
    slices = _parse_slices(args.slices, volume.shape[args.axis])
    backend = load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    factory, _ = _embeddings_factory(args, volume, backend)
    emb = factory(win, args.axis)
    bar = ProgressBar("embed", args.quiet)
    t0 = time.perf_counter()
    try:
        n = emb.fill(slices, progress=bar)
    finally:
        bar.close()
    if not args.quiet:
        print(f"{n} slice(s) encoded, {len(slices) - n} already cached (window [{win.lo:g}, {win.hi:g}], "
              f"axis {args.axis}) in {emb.store.path}; {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


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
    from .automatic import AutoSettings
    from .zoom import ZoomSettings

    preset = args.preset if args.preset != "auto" else ("ct" if is_ct else "microscopy")
    changes = {}
    if args.proposals is not None:
        changes["proposals"] = args.proposals
    if args.tile_shape is not None:
        changes["tile_shape"] = _parse_tile_shape(args.tile_shape)
    for arg, name in (("halo", "halo"), ("min_size", "min_size"), ("diameter", "object_diameter"),
                      ("quality", "quality_threshold"), ("stability", "stability_threshold"),
                      ("points_per_side", "points_per_side")):
        if getattr(args, arg) is not None:
            changes[name] = getattr(args, arg)
    if args.zoom:
        changes["zoom"] = ZoomSettings()
    settings = AutoSettings.for_ct(**changes) if preset == "ct" else AutoSettings.for_microscopy(**changes)
    return preset, settings


def _auto_tiled(args: argparse.Namespace) -> int:
    """``auto`` with a zarr input or output: tiles as Dask tasks (docs/scaling.md)."""
    from .large import auto_large, check_tiled_paths

    check_tiled_paths(args.image, args.output, args.overwrite)
    bar = ProgressBar("auto", args.quiet, unit="tile")
    try:
        info = auto_large(args.image, args.output, _auto_settings(args, args.preset == "ct")[1], args.window,
                          args.scheduler, None, args.model, args.checkpoint, args.overwrite, bar,
                          precision=args.precision)
    finally:
        bar.close()
    if not args.quiet:
        print(f"wrote {args.output} ({info['objects']} object(s), {info['tiles']} tile(s))", file=sys.stderr)
    return 0


def _auto_run(args: argparse.Namespace, volume, window, settings, stack3d: bool):
    """Automatic mode on a read volume, with a progress bar. Returns (AutoResult,
    labels (z, y, x), the backend or None, sidecar extras)."""
    from .automatic import AutomaticSegmenter, stack_settings_from_args
    from .cache import content_hash, embedding_key, model_identity
    from .models.registry import load_model
    from .embeddings import CropEmbeddings

    # 3D proposals use no model unless --model-check: do not pay for loading one
    backend = (load_model(args.model, args.checkpoint, args.device, precision=args.precision)
               if not stack3d or args.model_check else None)
    bar = ProgressBar("auto", args.quiet, unit="step")

    try:
        if stack3d:
            stack = stack_settings_from_args(args, volume, backend, None)
            result = stack.segment(window.apply(volume.array), progress=bar)
            return result, result.labels, backend, {"proposals": "3d-blobs", "design": "3d-proposals",
                                                    "spacing_zyx": list(stack.settings.spacing)}
        segmenter = AutomaticSegmenter(backend, settings, CropEmbeddings(
            backend, max_in_memory=64, cache_dir=_cache_dir(args)))
        extra = {"proposals": segmenter.proposal_kind()}
        if volume.is_2d:
            result = segmenter.segment(window.apply(volume.array[0]), progress=bar)
            return result, result.labels[None], backend, extra
        key = embedding_key(content_hash(volume.array), model_identity(backend), window, 0)
        result = segmenter.segment_volume(lambda z: window.apply(volume.array[z]), len(volume.array),
                                          progress=bar, volume_key=key)
        return result, result.labels, backend, extra
    finally:
        bar.close()


def _auto_classes(args: argparse.Namespace, volume, window, labels, backend):
    """With a checkpoint taught classes: each instance's class name and confidence
    (text_prompts.name_instances), as (names for the sidecar, {id: {class, confidence}})."""
    from .finetune.checkpoint import read_class_state
    from .finetune.classes import ClassHead
    from .models.registry import load_model
    from .text_prompts import name_instances

    state = read_class_state(args.checkpoint) if args.checkpoint else None
    if state is None:
        return None, None
    head = ClassHead.from_state(state)
    backend = backend or load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    store = _embeddings_factory(args, volume, backend)[0](window, 0)
    named = name_instances(head, labels, store.get, backend.image_size)
    names = {i: f"{name} {i}" for i, (name, _p) in named.items()}
    return names, {str(i): {"class": name, "confidence": round(p, 4)} for i, (name, p) in named.items()}


def _cmd_auto(args: argparse.Namespace) -> int:
    from .automatic import parse_spacing
    from .export import check_result_for, check_result_path, write_result
    from .intensity import parse_window, resolve_window
    from .io import Geometry, read_image
    from .large import wants_tiled
    from .segmentation import is_ct

    if wants_tiled(args.image, args.output):
        return _auto_tiled(args)
    out = check_result_path(args.output, args.overwrite, inputs=(args.image, args.checkpoint))
    if args.spacing:
        parse_spacing(args.spacing)  # a malformed --spacing fails before any work
    window_spec = args.window
    if window_spec is not None and window_spec.strip().lower() not in ("auto", "dicom"):
        window_spec = parse_window(window_spec)
    volume = read_image(args.image, series=args.series)
    check_result_for(out, volume)
    preset, settings = _auto_settings(args, is_ct(volume))
    if not volume.is_2d and out.name.lower().endswith((".tif", ".tiff")) and volume.geometry != Geometry():
        raise InputError(f"{out}: a 3D label map keeps its geometry only as .nii.gz, .nii, .nrrd or .mha")
    window = resolve_window(volume.array, window_spec, volume.metadata.get("modality"),
                            volume.metadata.get("dicom_window"))
    stack3d = not volume.is_2d and preset == "microscopy" and not args.slicewise
    t0 = time.perf_counter()
    result, labels, backend, extra = _auto_run(args, volume, window, settings, stack3d)
    notes: list[str] = []
    names, classes = _auto_classes(args, volume, window, labels, backend)
    if classes:
        extra["classes"] = classes
    model_name = backend.name if backend is not None else None
    write_result(out, labels, volume, names, model=model_name, overwrite=args.overwrite, notes=notes,
                 algorithm_type="AUTOMATIC", inputs=(args.image, args.checkpoint),
                 extra={"source": str(args.image), "model": model_name, "mode": "automatic", "preset": preset,
                        "proposals": extra.pop("proposals"), "window": [window.lo, window.hi],
                        "object_diameter": round(result.diameter, 2),
                        "timings_s": {k: round(v, 3) for k, v in result.timings.items()}, **extra})
    if not args.quiet:
        for note in notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        print(f"wrote {out} ({int(labels.max(initial=0))} object(s), {result.proposals} prompt(s), "
              f"{result.encoder_calls} embedding(s); {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.download import model_cache_dir
    from .models.registry import REGISTRY

    cache = model_cache_dir()
    for spec in REGISTRY.values():
        where = "embedded" if spec.name == "lite_medsam" else (
            "cached" if spec.filename and (cache / spec.filename).is_file() else
            "download" if spec.url else "manual download")
        print(f"{spec.name:24s} {spec.architecture:14s} {spec.image_size:5d}px  {spec.licence:10.10s} "
              f"{where:15s} {spec.description}")
    print(f"cache: {cache} (set NAPARI_SAM_MODEL_DIR to change it)")
    from .finetune.checkpoint import list_tuned

    for t in list_tuned():
        val = t.get("validation")
        print(f"tuned: {t['path']}  base {t.get('base_model')}  {t.get('created')}"
              + (f"  validation Dice {val:.3f}" if isinstance(val, float) else ""))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .models.registry import fetch_checkpoint, get_spec

    specs = [get_spec(name) for name in args.names]  # all names checked before any download
    for spec in specs:
        path = fetch_checkpoint(spec.name, progress=not args.quiet)
        print(f"{spec.name}: {path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune.command import run

    return run(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import cmd_batch

    return cmd_batch(args)


COMMANDS = {"segment": _cmd_segment, "auto": _cmd_auto, "embed": _cmd_embed, "models": _cmd_models,
            "download": _cmd_download, "batch": _cmd_batch, "finetune": _cmd_finetune}


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--window -160,240`` -> ``--window=-160,240``: argparse takes a value that
    starts with '-' and is not a plain number for an option and refuses it."""
    out: list[str] = []
    for tok in argv:
        if out and out[-1] == "--window" and re.match(r"^-\d", tok):
            out[-1] = f"--window={tok}"
        else:
            out.append(tok)
    return out


_SHOWN: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning (ours, or a library's) as one line, each text once per run."""
    text = " ".join(str(message).split())[:300]
    if text not in _SHOWN:
        _SHOWN.add(text)
        print(f"{PROG}: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # usage errors (one line, already printed) and --help
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("default")
            return COMMANDS[args.command](args)
    except NapariSamError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
