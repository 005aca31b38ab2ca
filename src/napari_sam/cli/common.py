"""What every sub-command of the command line shares: the program name, the
parser that reports errors in one line, the model/window/cache options, and
the cache folder they name."""

from __future__ import annotations

import argparse
from pathlib import Path

PROG = "napari-sam"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like our own errors
        self.exit(2, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite_medsam", help="model name (see `napari-sam models`); default lite_medsam")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model (offline use)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"], help="default cpu")
    p.add_argument(
        "--precision",
        default=None,
        help="image encoder precision: auto (bf16 where the CPU/GPU runs it natively, else fp32), "
        "fp32, bf16 or fp16; default: see docs/performance.md",
    )
    p.add_argument(
        "--window",
        default=None,
        help="intensity window LO,HI or a preset (soft-tissue, lung, bone, brain, ...), "
        "'dicom' for the header's, 'auto' (default)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache folder (default: $NAPARI_SAM_CACHE_DIR, else the user cache folder)",
    )
    p.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only")
    p.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="the DICOM series to read when the folder holds several (SeriesInstanceUID)",
    )


def add_verbose(p: argparse.ArgumentParser, dest: str = "verbose") -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=dest,
        help="log what happens on stderr: -v for steps (INFO), -vv for details (DEBUG)",
    )


def cache_dir_of(args: argparse.Namespace) -> Path | None:
    """--cache-dir, else $NAPARI_SAM_CACHE_DIR, else the platform default; None with --no-cache."""
    from ..cache import usable_cache_dir

    return usable_cache_dir(args.cache_dir, args.no_cache)
