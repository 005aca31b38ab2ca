"""The command line: ``napari-sam segment | auto | embed | export-prompts | batch | models | download | finetune``.

One module per command family (:mod:`.segment`: segment and embed,
:mod:`.auto`; batch and finetune add their own parsers), this one the entry
point (:func:`main`) and the dispatch.

Errors print as one line on stderr, ``napari-sam: error: ...``, with exit
code 2 for bad input or usage and 1 for runtime failures; nothing is written
then, and inputs are never touched. ``-v`` shows the package's log on stderr
(INFO: what is loaded, read, propagated; ``-vv`` adds DEBUG: every encoder
run and cache hit, every stop decision); the library itself configures no
log handler.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from collections.abc import Sequence

from ..errors import NapariSamError
from . import auto, segment, session
from .common import PROG, Parser, add_verbose


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Segment Anything for medical and microscopy images.")
    add_verbose(parser, dest="verbose_before")  # `napari-sam -v segment ...` and `napari-sam segment ... -v`
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    segment.add_parser(sub)
    auto.add_parser(sub)
    sub.add_parser("models", help="list the available models and local tuned checkpoints")
    from ..batch import add_parser as _add_batch_parser
    from ..finetune.command import add_parser as add_finetune_parser

    _add_batch_parser(sub)
    add_finetune_parser(sub, Parser)

    dl = sub.add_parser("download", help="download model checkpoints into the cache (for later offline use)")
    dl.add_argument("names", nargs="+", help="model names (see `napari-sam models`)")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    for command in sub.choices.values():
        add_verbose(command)
    return parser


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models.download import model_cache_dir
    from ..models.registry import REGISTRY

    cache = model_cache_dir()
    for spec in REGISTRY.values():
        where = (
            "embedded"
            if spec.name == "lite_medsam"
            else (
                "cached"
                if spec.filename and (cache / spec.filename).is_file()
                else "download"
                if spec.url
                else "manual download"
            )
        )
        print(
            f"{spec.name:24s} {spec.architecture:14s} {spec.image_size:5d}px  {spec.licence:10.10s} "
            f"{where:15s} {spec.description}"
        )
    print(f"cache: {cache} (set NAPARI_SAM_MODEL_DIR to change it)")
    from ..finetune.checkpoint import list_tuned

    for t in list_tuned():
        val = t.get("validation")
        print(
            f"tuned: {t['path']}  base {t.get('base_model')}  {t.get('created')}"
            + (f"  validation Dice {val:.3f}" if isinstance(val, float) else "")
        )
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from ..models.registry import fetch_checkpoint, get_spec

    specs = [get_spec(name) for name in args.names]  # all names checked before any download
    for spec in specs:
        path = fetch_checkpoint(spec.name, progress=not args.quiet)
        print(f"{spec.name}: {path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ..finetune.command import run

    return run(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from ..batch import cmd_batch

    return cmd_batch(args)


COMMANDS = {
    "segment": segment.cmd_segment,
    "auto": auto.cmd_auto,
    "embed": segment.cmd_embed,
    "export-prompts": session.cmd_export_prompts,
    "models": _cmd_models,
    "download": _cmd_download,
    "batch": _cmd_batch,
    "finetune": _cmd_finetune,
}


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


def _log_to_stderr(verbosity: int) -> logging.Handler | None:
    """Show the package's log (logger ``napari_sam``) on stderr: INFO with -v,
    DEBUG with -vv; nothing is configured without -v. Returns the handler added."""
    if verbosity <= 0:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("napari_sam")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # usage errors (one line, already printed) and --help
        return int(exc.code or 0)
    handler = _log_to_stderr(args.verbose_before + args.verbose)
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
    finally:
        if handler is not None:  # main() may run again in one process (tests, scripts)
            logger = logging.getLogger("napari_sam")
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
