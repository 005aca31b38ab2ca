"""Sessions on the command line: ``napari-sam segment --session DIR`` replays a saved
session (optionally with another model), ``napari-sam export-prompts DIR OUT.json``
writes it as a prompts file with its mask files (docs/sessions.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError

__all__ = [
    "add_session_arg",
    "add_export_parser",
    "open_for_segment",
    "session_prompts_for",
    "session_inputs",
    "cmd_export_prompts",
]


def add_session_arg(seg: argparse.ArgumentParser) -> None:
    seg.add_argument(
        "--session",
        default=None,
        metavar="DIR",
        help="continue a saved session (a folder; docs/sessions.md): its actions are replayed in order, "
        "with its model unless --model / --checkpoint name another; IMAGE defaults to the session's image",
    )


def add_export_parser(sub) -> None:
    ex = sub.add_parser("export-prompts", help="write a saved session as a prompts file with its mask files")
    ex.add_argument("session", metavar="DIR", help="the session folder (saved by the napari widget or the API)")
    ex.add_argument("output", metavar="OUT.json", help="the prompts file; mask files go to OUT.masks/ beside it")
    ex.add_argument("--overwrite", action="store_true", help="replace existing files")
    ex.add_argument("--quiet", action="store_true", help="print nothing")


def _session_files(folder: str) -> tuple[str, ...]:
    return tuple(str(Path(folder) / name) for name in ("session.json", "arrays.npz"))


def open_for_segment(args: argparse.Namespace):
    """``segment --session DIR``: the session (not yet checked against the image); fills
    in IMAGE and the session's model where the command line names none. None without
    --session."""
    from ..annotation import open_session

    if args.session is None:
        if args.image is None:
            raise InputError("segment needs IMAGE (or --session DIR)")
        args.model = args.model or "lite_medsam"
        return None
    if args.prompts is not None or args.text is not None or args.init is not None:
        raise InputError("--session replays the session's own actions: give it without --prompts, --text and --init")
    session = open_session(args.session)
    if args.image is None:
        if not session.image.path:
            raise InputError(f"{args.session}: the session does not record its image's path: give IMAGE")
        args.image = session.image.path
    if args.model is None and args.checkpoint is None:
        args.model = session.model.get("name") or "lite_medsam"
        args.checkpoint = session.model.get("checkpoint") or None
    args.model = args.model or "lite_medsam"
    return session


def session_prompts_for(args: argparse.Namespace, volume):
    """The session's actions as a prompts file, after checking that ``volume`` is its image
    (InputError, one line, when its content differs)."""
    from ..annotation import open_session
    from ..annotation.export_prompts import session_prompts

    checked = open_session(args.session, image=volume.array)
    return session_prompts(checked.annotation, checked.settings.get("window"))


def session_inputs(args: argparse.Namespace) -> tuple[str, ...]:
    """The session's files (never overwritten by an output)."""
    return _session_files(args.session) if args.session else ()


def cmd_export_prompts(args: argparse.Namespace) -> int:
    from ..annotation import open_session
    from ..annotation.export_prompts import export_prompts

    session = open_session(args.session)
    written = export_prompts(
        args.output,
        session.annotation,
        window=session.settings.get("window"),
        overwrite=args.overwrite,
        inputs=_session_files(args.session),
    )
    if not args.quiet:
        print(f"wrote {written[-1]} ({len(written) - 1} mask file(s))", file=sys.stderr)
    return 0
