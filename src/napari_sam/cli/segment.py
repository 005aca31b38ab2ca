"""``napari-sam segment`` (a prompts file, ``--text`` or ``--init`` -> a label map)
and ``napari-sam embed`` (fill the embedding cache ahead of time)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError, NapariSamError
from ..jobs import ProgressBar
from .common import PROG, add_model_args, cache_dir_of
from .large import add_cluster_args, embed_cluster, segment_extra, segment_large, wants_lazy_segment
from .session import add_export_parser, add_session_arg, open_for_segment, session_inputs, session_prompts_for


def add_parser(sub) -> None:
    """The ``segment`` and ``embed`` sub-commands."""
    seg = sub.add_parser("segment", help="segment an image from a prompts file")
    seg.add_argument(
        "image",
        nargs="?",
        default=None,
        help="NIfTI, NRRD, MHA/MHD, DICOM folder, PNG/TIFF/JPEG; zarr/OME-Zarr (read lazily); optional with --session",
    )
    seg.add_argument(
        "--prompts",
        default=None,
        help="prompts JSON (format: the README's section 'The prompts file'); optional with --init",
    )
    seg.add_argument(
        "--init",
        default=None,
        metavar="LABELS",
        help="existing segmentation to refine: label map, DICOM SEG or .seg.nrrd; each label becomes "
        "an object whose slices are key slices (see docs/export.md)",
    )
    seg.add_argument(
        "--text",
        default=None,
        metavar="NAMES",
        help="find these classes by name, with no prompt, e.g. 'liver,spleen' (a --checkpoint "
        "taught them: napari-sam finetune; docs/finetuning.md); in 3D each propagates",
    )
    seg.add_argument(
        "--output",
        required=True,
        help="label map: .nii.gz/.nii/.nrrd/.mha (or .tif for 2D); "
        ".seg.nrrd (3D Slicer); .dcm (DICOM SEG, DICOM input only); .zarr (written chunk by "
        "chunk, the image read lazily: docs/scaling.md)",
    )
    seg.add_argument(
        "--seg-encoding",
        default="binary",
        choices=["binary", "labelmap"],
        help="DICOM SEG encoding for a .dcm output (default binary: read everywhere)",
    )
    seg.add_argument("--overview", default=None, help="also write a PNG overview of the segmented slices")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    seg.add_argument(
        "--zoom",
        action="store_true",
        help="decode small objects' prompts on a magnified crop around them (sharper outlines of "
        "nuclei and small structures; one encoder run per crop), as the napari widget does; "
        "propagation itself is not zoomed",
    )
    add_session_arg(seg)
    add_model_args(seg)
    seg.set_defaults(model=None)  # --session takes the session's model unless one is named
    add_export_parser(sub)
    emb = sub.add_parser("embed", help="fill the embedding cache for an image ahead of time")
    emb.add_argument("image", help="NIfTI, NRRD, MHA/MHD, DICOM folder, PNG/TIFF/JPEG")
    emb.add_argument("--axis", type=int, default=0, choices=[0, 1, 2], help="slice axis (default 0)")
    emb.add_argument("--slices", default=None, help="FIRST:LAST (inclusive) to embed only these slices")
    add_cluster_args(emb)
    add_model_args(emb)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..embeddings import EmbeddingProvider
    from ..export import check_result_for, check_result_path
    from ..intensity import check_window_spec
    from ..io import read_image
    from ..models.registry import load_model
    from ..prompts import load_prompts

    if args.prompts is None and args.init is None and args.text is None and args.session is None:
        raise InputError("segment needs --prompts, --text, --init or --session")
    session = open_for_segment(args)
    if session is None and wants_lazy_segment(args.image, args.output):  # zarr: read lazily (docs/scaling.md)
        bar = ProgressBar("segment", args.quiet)
        try:
            return segment_large(args, bar, lambda: cache_dir_of(args))
        finally:
            bar.close()
    if args.text is not None and (args.prompts is not None or args.init is not None):
        raise InputError("--text finds its own prompts: give it without --prompts and --init")
    inputs = tuple(p for p in (args.image, args.prompts, args.init, args.checkpoint) if p) + session_inputs(args)
    if args.overview and Path(args.overview).suffix.lower() != ".png":
        raise InputError(f"{args.overview}: --overview must end in .png")
    out = check_result_path(args.output, args.overwrite, inputs=inputs, also=(args.overview,) if args.overview else ())
    window = check_window_spec(args.window)
    prompts = load_prompts(args.prompts, allow_empty=args.init is not None) if args.prompts else None
    volume = read_image(args.image, series=args.series)
    check_result_for(out, volume)
    if session is not None:
        prompts = session_prompts_for(args, volume)
    init_masks, init_info, notes = None, None, []
    if args.init is not None:
        prompts, init_masks, init_info = _init_objects(args.init, volume, prompts, notes)
    backend = load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    # one provider for the run: its memory tier, the cache folder and the encoder lock, for slices and crops
    provider = EmbeddingProvider(backend, cache_dir_of(args), max_in_memory=64)
    embeddings_for = provider.views_of(volume.array)
    if args.text is not None:
        prompts = _text_prompts(args, volume, backend, window, embeddings_for, notes)
    prompts.check_against(volume.array.shape, volume.is_2d)
    t0 = time.perf_counter()
    result = _segment(args, volume, prompts, backend, window, init_masks, provider, embeddings_for)
    if result.cancelled:
        raise NapariSamError("cancelled before the end; nothing written")
    extra = segment_extra(
        args.image, backend.name, result.windows, result.states, provider.encoder_calls, provider.disk_hits
    )
    if init_info is not None:
        extra["init"] = init_info
    _write(args, out, volume, result, backend.name, extra, notes, inputs)
    if not args.quiet:
        _report(args, out, result, notes, provider, time.perf_counter() - t0)
    return 0


def _write(args: argparse.Namespace, out, volume, result, model: str, extra, notes, inputs) -> None:
    """The label map, its sidecar and the overview, all or nothing."""
    from ..export import write_result

    more = ()
    if args.overview:
        from ..overview import overview_output

        win = next(iter(result.windows.values()), None)
        more = (overview_output(args.overview, volume, result.labels, result.colors, window=win),)
    write_result(
        out,
        result.labels,
        volume,
        result.names,
        result.colors,
        model=model,
        overwrite=args.overwrite,
        extra=extra,
        notes=notes,
        seg_encoding=args.seg_encoding.upper(),
        inputs=inputs,
        more=more,
    )


def _report(args: argparse.Namespace, out, result, notes, provider, seconds: float) -> None:
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(
        f"wrote {out} ({len(result.names)} object(s), {sum(map(len, result.slices.values()))} slice(s)"
        + (f"; overview {args.overview}" if args.overview else "")
        + f"; {provider.encoder_calls} slice(s) encoded, {provider.disk_hits} from the cache; {seconds:.1f} s)",
        file=sys.stderr,
    )


def _segment(args: argparse.Namespace, volume, prompts, backend, window, init_masks, provider, embeddings_for):
    """Run segment_volume with the command's progress bar, on the run's embedding provider."""
    from ..embeddings import CropEmbeddings
    from ..predictor import PROMPT_ZOOM
    from ..segmentation import segment_volume

    zoom, crops = (PROMPT_ZOOM, CropEmbeddings(backend, provider=provider)) if args.zoom else (None, None)
    bar = ProgressBar("segment", args.quiet)
    try:
        return segment_volume(
            volume,
            prompts,
            backend,
            window=window,
            progress=bar,
            embeddings_for=embeddings_for,
            zoom=zoom,
            crop_embeddings=crops,
            init_masks=init_masks,
            undo=False,
        )
    finally:
        bar.close()


def _text_prompts(args: argparse.Namespace, volume, backend, window, embeddings_for, notes: list[str]):
    """--text: the prompts file that boxes each named class where the taught head finds it."""
    from ..finetune.classes import load_class_head
    from ..intensity import resolve_window
    from ..prompts import parse_prompts
    from ..text_prompts import parse_class_names, text_prompts_file

    names = parse_class_names(args.text)
    head = load_class_head(args.checkpoint)
    for name in names:
        head.index_of(name)  # refuse an untaught class before any encoder run
    md = volume.metadata
    win = resolve_window(volume.array, window, md.get("modality"), md.get("dicom_window"))
    store = embeddings_for(win, 0)
    embs = [store.get(z) for z in range(volume.shape[0])]
    doc, found = text_prompts_file(
        head, names, embs, backend.image_size, propagate=volume.shape[0] > 1, warn=notes.append
    )
    doc["window"] = [win.lo, win.hi]
    for f in found:
        notes.append(f"{f.name}: found on slice {f.slice}, box {list(f.box)}, confidence {f.confidence:.2f}")
    return parse_prompts(doc, where="--text")


def _init_objects(path: str, volume, prompts, notes: list[str]):
    """--init: the labels on the image grid as objects, combined with the prompts (docs/export.md)."""
    from ..init_labels import init_objects, init_summary, labels_on_image, read_segmentation

    labels = labels_on_image(read_segmentation(path, volume), volume, notes)
    prompts, masks = init_objects(labels, prompts)
    return prompts, masks, init_summary(labels)


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


def cmd_embed(args: argparse.Namespace) -> int:
    from ..intensity import resolve_window
    from ..io import read_image
    from ..models.registry import load_model

    if args.no_cache:
        raise InputError("embed fills the cache: --no-cache makes no sense here")
    if args.scheduler or args.workers is not None:  # on a Dask cluster (docs/scaling.md)
        bar = ProgressBar("embed", args.quiet)
        try:
            return embed_cluster(args, bar, lambda: cache_dir_of(args))
        finally:
            bar.close()
    volume = read_image(args.image, series=args.series)
    if volume.is_2d and args.axis != 0:
        raise InputError(f"{args.image}: a 2D image has only axis 0")
    win = resolve_window(
        volume.array, args.window, volume.metadata.get("modality"), volume.metadata.get("dicom_window")
    )
    slices = _parse_slices(args.slices, volume.shape[args.axis])
    backend = load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    from ..embeddings import EmbeddingProvider

    emb = EmbeddingProvider(backend, cache_dir_of(args)).views_of(volume.array)(win, args.axis)
    bar = ProgressBar("embed", args.quiet)
    t0 = time.perf_counter()
    try:
        n = emb.fill(slices, progress=bar)
    finally:
        bar.close()
    if not args.quiet:
        where = emb.store.path if emb.store is not None else "memory only (the cache folder cannot be written)"
        print(
            f"{n} slice(s) encoded, {len(slices) - n} already cached (window [{win.lo:g}, {win.hi:g}], "
            f"axis {args.axis}) in {where}; {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    return 0
