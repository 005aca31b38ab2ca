"""``napari-sam finetune``: the command-line front of :mod:`napari_sam.finetune.pipeline`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError


def add_parser(sub, parser_class) -> argparse.ArgumentParser:
    """Add the ``finetune`` sub-command to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser("finetune", help="fine-tune the model on your own image/label pairs")
    p.add_argument("--images", nargs="+", required=True, help="images (NIfTI, NRRD, MHA, DICOM folder, TIFF, PNG)")
    p.add_argument("--labels", nargs="+", required=True, help="label maps, one per image, any number of ids")
    p.add_argument("--output", required=True, help="the tuned checkpoint to write (.pt)")
    p.add_argument("--model", default="lite_medsam", help="base model (default lite_medsam)")
    p.add_argument(
        "--window",
        default=None,
        help="one window for every structure (default: per structure: "
        "the image's default, bone for bones and lung for lungs on CT)",
    )
    p.add_argument("--epochs", type=int, default=8, help="at most this many epochs (default 8)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of slices held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--trainable",
        default="head",
        choices=["head", "decoder", "decoder+prompt"],
        help="what is trained (default head: the mask decoder's output head, ~0.35 M parameters)",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--max-minutes", type=float, default=15.0, help="stop training after this long (default 15)")
    p.add_argument(
        "--classes",
        default="logistic",
        choices=["logistic", "prototype", "none"],
        help="teach the label names as classes for text prompts and named automatic instances "
        "(default logistic: a class head over the encoder's features; docs/finetuning.md)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: the usual one)")
    p.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only")
    return p


def check_checkpoint_output(output: str, overwrite: bool, inputs: list[str]) -> Path:
    """Validate the checkpoint path before any work: suffix, folder, no clobbering."""
    out = Path(output)
    if out.suffix not in (".pt", ".pth"):
        raise InputError(f"{out}: the tuned checkpoint must end in .pt or .pth")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder")
    if out.exists() and any(Path(i).exists() and out.resolve() == Path(i).resolve() for i in inputs):
        raise InputError(f"{out}: refusing to overwrite an input file")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists; pass --overwrite to replace it")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``napari-sam finetune``; returns the exit code (130 when interrupted, checkpoint kept)."""
    from ..cache import usable_cache_dir
    from ..jobs import ProgressBar
    from ..models.registry import load_model
    from .pipeline import finetune_samples, samples_from_files
    from .train import FinetuneSettings

    out = check_checkpoint_output(args.output, args.overwrite, list(args.images) + list(args.labels))
    if len(args.images) != len(args.labels):
        raise InputError(
            f"{len(args.images)} image(s) and {len(args.labels)} label map(s): give one label map per image"
        )
    settings = FinetuneSettings(
        epochs=args.epochs,
        lr=args.lr,
        trainable=args.trainable,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_seconds=60 * args.max_minutes,
    )
    backend = load_model(args.model)
    t0 = time.perf_counter()
    bar = ProgressBar("embeddings", args.quiet)
    try:
        samples, data = samples_from_files(
            backend, args.images, args.labels, args.window, usable_cache_dir(args.cache_dir, args.no_cache), bar
        )
    finally:
        bar.close()
    classes = _teach_classes(args, backend)
    t_embed = time.perf_counter() - t0
    bar = ProgressBar("training", args.quiet, unit="step")
    try:
        outcome = finetune_samples(backend, samples, settings, out, data, args.model, bar, classes=classes)
    finally:
        bar.close()
    r = outcome.result
    print(
        f"{out}: {outcome.n_train} training / {outcome.n_val} validation objects; validation Dice "
        f"{r.base_val_dice:.3f} (base) -> {r.best_val_dice:.3f} (epoch {r.best_epoch}); embeddings "
        f"{t_embed:.0f} s, training {r.seconds:.0f} s",
        file=sys.stderr if args.quiet else sys.stdout,
    )
    if r.interrupted:
        print("napari-sam: interrupted: the best checkpoint so far is written", file=sys.stderr)
        return 130
    return 0


def _teach_classes(args: argparse.Namespace, backend) -> dict | None:
    """``--classes``: the class head taught from the labelled objects, as saved in the
    checkpoint (:meth:`~napari_sam.finetune.classes.ClassHead.to_state`); None for "none"."""
    from ..cache import usable_cache_dir
    from .classes import teach_from_files

    if args.classes == "none":
        return None
    cache = usable_cache_dir(args.cache_dir, args.no_cache)
    head = teach_from_files(backend, args.images, args.labels, args.window, cache, args.classes)
    if not args.quiet:
        print(f"taught {len(head.names)} classes ({args.classes}): {', '.join(head.names)}", file=sys.stderr)
    return head.to_state()
