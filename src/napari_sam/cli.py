"""The command line: ``napari-sam segment | models``.

Errors print as one line on stderr, ``napari-sam: error: ...``, with exit
code 2 for bad input or usage and 1 for runtime failures; nothing is written
then, and inputs are never touched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import InputError, NapariSamError

PROG = "napari-sam"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like our own errors
        self.exit(2, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


class ProgressBar:
    """A tqdm bar on stderr (silent when ``quiet``)."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, desc=desc, unit="slice", disable=quiet, file=sys.stderr, leave=True)

    def __call__(self, done: int, total: int, message: str = "") -> None:
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
    p.add_argument("--window", default=None,
                   help="intensity window LO,HI or a preset (soft-tissue, lung, bone, brain, ...), "
                        "'dicom' for the header's, 'auto' (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Segment Anything for medical and microscopy images.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = sub.add_parser("segment", help="segment an image from a prompts file")
    seg.add_argument("image", help="NIfTI, NRRD, MHA/MHD, DICOM folder, PNG/TIFF/JPEG")
    seg.add_argument("--prompts", required=True, help="prompts JSON (see docs/prompts.md)")
    seg.add_argument("--output", required=True, help="label map: .nii.gz/.nii/.nrrd/.mha (or .tif for 2D)")
    seg.add_argument("--overview", default=None, help="also write a PNG overview of the segmented slices")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_model_args(seg)

    sub.add_parser("models", help="list the available models")
    return parser


def _cmd_segment(args: argparse.Namespace) -> int:
    from .intensity import parse_window
    from .io import check_output_path, read_image, write_labels
    from .models.registry import load_model
    from .prompts import load_prompts
    from .segmentation import segment_volume

    out = check_output_path(args.output, args.overwrite, inputs=(args.image, args.prompts))
    if args.overview:
        ov = Path(args.overview)
        if ov.suffix.lower() != ".png":
            raise InputError(f"{ov}: --overview must end in .png")
        if ov.exists() and not args.overwrite:
            raise InputError(f"{ov}: overview exists; pass --overwrite to replace it")
    window = None
    if args.window is not None and args.window.strip().lower() not in ("auto", "dicom"):
        window = parse_window(args.window)
    elif args.window is not None:
        window = args.window
    prompts = load_prompts(args.prompts)
    volume = read_image(args.image)
    prompts.check_against(volume.array.shape, volume.is_2d)
    backend = load_model(args.model, args.checkpoint, args.device)
    bar = ProgressBar("segment", args.quiet)
    t0 = time.perf_counter()
    try:
        result = segment_volume(volume, prompts, backend, window=window, progress=bar)
    finally:
        bar.close()
    write_labels(out, result.labels, volume.geometry, result.names, result.colors, overwrite=args.overwrite,
                 extra={"source": str(args.image), "model": backend.name,
                        "windows": {str(k): [w.lo, w.hi] for k, w in result.windows.items()}})
    msg = f"wrote {out} ({len(result.names)} object(s), {sum(map(len, result.slices.values()))} slice(s)"
    if args.overview:
        from .overview import write_overview

        write_overview(args.overview, volume, result.labels, result.colors,
                       window=next(iter(result.windows.values()), None))
        msg += f"; overview {args.overview}"
    if not args.quiet:
        print(msg + f"; {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:24s} {spec.architecture:28s} {spec.image_size:5d}px  {spec.licence:14s} {spec.description}")
    return 0


COMMANDS = {"segment": _cmd_segment, "models": _cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, already printed) and --help
        return int(exc.code or 0)
    try:
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
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
