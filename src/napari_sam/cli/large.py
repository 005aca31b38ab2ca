"""The command line's paths for large data: ``segment`` on a volume read lazily, ``embed`` on a cluster.

- ``napari-sam segment IMAGE.zarr|IMAGE.tif --prompts P --output OUT.zarr``: a
  zarr / OME-Zarr input, or any input with a ``.zarr`` output, takes the lazy
  path of :mod:`napari_sam.large_segment` (slices read on demand, the label
  map painted into zarr one object's box at a time); a TIFF is read lazily
  when the output is ``.zarr``.
- ``napari-sam embed IMAGE --scheduler ADDR | --workers N``: the cache is
  filled by a Dask cluster (:mod:`napari_sam.embed_cluster`).

Both print what they did as one line on stderr, as the other commands do.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, NapariSamError
from ..lazy_volume import is_lazy_path, is_zarr_path

__all__ = [
    "add_cluster_args",
    "check_zarr_output",
    "embed_cluster",
    "segment_extra",
    "segment_large",
    "wants_lazy_segment",
]


def wants_lazy_segment(image: str | Path, output: str | Path) -> bool:
    """Whether ``segment IMAGE --output OUTPUT`` takes the lazy path (zarr in or out)."""
    return is_zarr_path(image) or str(output).lower().rstrip("/").endswith(".zarr")


def segment_extra(
    source: str, model: str, windows: dict, states: dict, encoder_calls: int, cache_hits: int
) -> dict[str, Any]:
    """The sidecar fields of a ``segment`` run: source, model, windows, embedding
    counts and each propagated object's axis, key slices, extent and stop decisions."""
    extra: dict[str, Any] = {
        "source": str(source),
        "model": model,
        "windows": {str(k): [w.lo, w.hi] for k, w in windows.items()},
        "encoder_calls": encoder_calls,
        "cache_hits": cache_hits,
    }
    if states:
        extra["propagation"] = {str(k): st.summary() for k, st in states.items()}
    return extra


def check_zarr_output(out: Path, inputs: tuple[Any, ...], overwrite: bool) -> Path:
    """Refuse, before any work, a ``.zarr`` output that exists (without
    ``overwrite``), is an input, holds one or lies inside one (a zarr or DICOM
    folder), or whose folder cannot be written."""
    import os

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a zarr folder")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists; pass --overwrite to replace it")
    target = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        src = Path(inp).resolve()
        if src == target or target in src.parents or (src.is_dir() and src in target.parents):
            raise InputError(f"{out}: refusing to overwrite an input or write inside one ({inp})")
    parent = next((a for a in (out.parent, *out.parent.parents) if a.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot write into {parent} (not a folder, permission denied or read-only)")
    return out


def _window_arg(spec: str | None) -> Any:
    from ..intensity import parse_window

    if spec is not None and spec.strip().lower() not in ("auto", "dicom"):
        return parse_window(spec)
    return spec


def _check_lazy_flags(args) -> None:
    for flag, value in (("--init", args.init), ("--text", args.text), ("--overview", args.overview)):
        if value:
            raise InputError(
                f"{flag} is not available when segmenting lazily (a zarr input or a .zarr output); "
                "convert the image to NIfTI/NRRD and write .nii.gz for it"
            )
    if args.prompts is None:
        raise InputError("segmenting lazily (a zarr input or a .zarr output) needs --prompts")


def _lazy_inputs(args):
    """The checked inputs of the lazy path: (output path, whether it is a zarr
    store, the input files, the window, the prompts, the volume: lazy for a zarr
    input or a zarr output of a lazily readable one). Fails before any model work."""
    from ..export import check_result_for, check_result_path
    from ..io import read_image
    from ..lazy_volume import open_volume
    from ..prompts import load_prompts

    _check_lazy_flags(args)
    out = Path(args.output)
    inputs = tuple(p for p in (args.image, args.prompts, args.checkpoint) if p)
    zarr_out = out.name.lower().endswith(".zarr")
    out = (
        check_zarr_output(out, inputs, args.overwrite)
        if zarr_out
        else check_result_path(out, args.overwrite, inputs=inputs)
    )
    window = _window_arg(args.window)
    prompts = load_prompts(args.prompts)
    lazy = is_zarr_path(args.image) or (zarr_out and is_lazy_path(args.image))
    volume = open_volume(args.image) if lazy else read_image(args.image, series=args.series)
    if not zarr_out:
        check_result_for(out, volume)
    prompts.check_against(volume.shape, volume.is_2d)
    return out, zarr_out, inputs, window, prompts, volume


def segment_large(args, progress: Callable, cache_dir: Callable[[], Path | None]) -> int:
    """``napari-sam segment`` on the lazy path (see the module); progress: a
    :class:`napari_sam.jobs.Progress` callback; cache_dir: gives the embedding
    cache folder or None (called once the inputs are checked)."""
    from ..export import write_result
    from ..large_segment import lazy_embeddings, segment_lazy, write_zarr_labels
    from ..models.registry import load_model

    out, zarr_out, inputs, window, prompts, volume = _lazy_inputs(args)
    backend = load_model(args.model, args.checkpoint, args.device, precision=args.precision)
    factory, provider = lazy_embeddings(volume, backend, cache_dir())
    zoom = crops = None
    if args.zoom:
        from ..embeddings import CropEmbeddings
        from ..predictor import PROMPT_ZOOM

        zoom, crops = PROMPT_ZOOM, CropEmbeddings(backend, provider=provider)
    t0 = time.perf_counter()
    seg = segment_lazy(
        volume, prompts, backend, window, progress=progress, embeddings_for=factory, zoom=zoom, crop_embeddings=crops
    )
    if seg.cancelled:
        raise NapariSamError("cancelled before the end; nothing written")
    enc, hits = provider.encoder_calls, provider.disk_hits
    extra = segment_extra(args.image, backend.name, seg.windows, seg.states, enc, hits)
    notes: list[str] = []
    if zarr_out:
        write_zarr_labels(out, seg, volume.geometry, extra, overwrite=args.overwrite)
    else:
        write_result(
            out,
            seg.label_map(),
            volume,
            seg.names,
            seg.colors,
            model=backend.name,
            overwrite=args.overwrite,
            extra=extra,
            notes=notes,
            seg_encoding=args.seg_encoding.upper(),
            inputs=inputs,
        )
    if not args.quiet:
        for note in notes:
            print(f"napari-sam: note: {note}", file=sys.stderr)
        print(
            f"wrote {out} ({len(seg.names)} object(s), {sum(map(len, seg.slices.values()))} slice(s); "
            f"{enc} slice(s) encoded, {hits} from the cache; {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    return 0


def add_cluster_args(parser) -> None:
    """``embed``'s options for filling the cache on a Dask cluster."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        default=None,
        help="fill the cache on this running Dask scheduler, "
        "e.g. tcp://host:8786 (the image and --cache-dir on a filesystem all workers see)",
    )
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        help="fill the cache on a local Dask cluster of this many single-threaded worker processes",
    )
    parser.add_argument(
        "--slices-per-task",
        type=int,
        default=None,
        help="with --scheduler/--workers: slices per task (default: about 4 tasks per worker)",
    )


def _slices_arg(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        a, b = (int(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"--slices {spec!r}: expected FIRST:LAST, e.g. 10:40") from None
    return (min(a, b), max(a, b))


def embed_cluster(args, progress: Callable[[int, int, str], None], cache_dir: Callable[[], Path | None]) -> int:
    """``napari-sam embed IMAGE --scheduler ADDR | --workers N``: fill ``cache_dir`` on a Dask cluster."""
    from ..batch import connect, local_client, local_threads, register_model
    from ..embed_cluster import EmbedJob, embed_on_cluster

    if args.slices_per_task is not None and args.slices_per_task < 1:
        raise InputError("--slices-per-task must be at least 1")
    if not Path(args.image).exists():
        raise InputError(f"{args.image}: no such file or folder")
    if args.no_cache:
        raise InputError("embed fills the cache: --no-cache makes no sense here")
    folder = cache_dir()
    if folder is None:
        raise InputError("embed fills the cache: the cache folder cannot be written")
    job = EmbedJob(
        str(Path(args.image).resolve()),
        str(Path(folder).resolve()),
        _window_arg(args.window),
        args.axis,
        _slices_arg(args.slices),
        args.series,
    )
    t0 = time.perf_counter()
    client = connect(args.scheduler) if args.scheduler else local_client(args.workers, 1)
    try:
        threads = None if args.scheduler else local_threads(client)
        register_model(client, args.model, args.checkpoint, threads, args.precision, args.device)
        report = embed_on_cluster(client, job, args.slices_per_task, progress=progress)
    finally:
        cluster = None if args.scheduler else getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        w = report.window
        print(
            f"{report.encoded} slice(s) encoded in {report.tasks} task(s) on {len(report.workers)} worker(s), "
            f"{report.cached} already cached (window [{w.lo:g}, {w.hi:g}], axis {args.axis}) in {report.entry}; "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    return 0
