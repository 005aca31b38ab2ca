"""Batch segmentation of a cohort on a Dask cluster: ``napari-sam batch MANIFEST.csv``.

The manifest (:mod:`napari_sam.batch_manifest`) lists one case per row.
:func:`batch_job` (a job of :mod:`napari_sam.jobs`; :func:`run` drives it)
sends each unfinished case to a Dask worker as one task and returns the
summary records, also written as ``MANIFEST_summary.csv`` next to
the manifest (status, seconds, encoder calls, cache hits, worker, reason).

- **Cluster:** the given ``client``, else a ``dask.distributed.LocalCluster``
  of worker processes sized to the machine (``workers`` x
  ``threads_per_worker``), or any running scheduler by address.
- **Workers** load the model once, in a :class:`ModelPlugin` (a Dask
  ``WorkerPlugin``), and set torch's threads to their share of cores. The
  embedding cache (``cache_dir``) is shared; its entries are safe for
  concurrent writers (:mod:`napari_sam.cache`).
- **Reliability:** a failing case is reported with a one-line reason and the
  others go on; a killed worker's case is rerun by Dask on another worker,
  and its half-written files are removed (:mod:`napari_sam.batch_outputs`);
  finished cases (output + sidecar recording the same input hashes and
  settings) are skipped, so a rerun resumes the cohort.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch_cases import one_line, run_case
from .batch_manifest import BatchSettings, Case, is_finished, read_manifest
from .batch_outputs import remove_partials
from .cache import resolve_cache_dir
from .errors import InputError
from .io import atomic_write_text
from .jobs import Cancel, Job, Progress, ProgressBar, ProgressCallback, drive
from .models.precision import parse_precision
from .models.registry import load_model

log = logging.getLogger(__name__)

PLUGIN_NAME = "napari-sam-model"
SUMMARY_COLUMNS = (
    "row",
    "image",
    "output",
    "mode",
    "status",
    "seconds",
    "encoder_calls",
    "cache_hits",
    "worker",
    "reason",
)

try:  # a plain base class when distributed is absent: the module still imports
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object  # type: ignore[misc, assignment]


def cpu_cores() -> int:
    """Cores this process may use (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker process and sets torch's threads.

    torch_threads: threads for torch on each worker; None: the worker's
    share of its host's cores (cores // the worker's Dask threads, for the
    usual one-worker-per-job layout of dask-jobqueue). precision: the image
    encoder's precision (``--precision``: auto, fp32, bf16, fp16; None: the
    default), as :func:`napari_sam.models.registry.load_model` takes it;
    device: "cpu" (default), "cuda", "mps" or "auto" (each worker's best).
    """

    name = PLUGIN_NAME

    model: str = "lite_medsam"
    checkpoint: str | None = None
    torch_threads: int | None = None
    precision: str | None = None
    device: str = "cpu"
    backend: Any = field(default=None, init=False, repr=False)

    def setup(self, worker) -> None:  # noqa: D401 - Dask's hook
        import torch

        threads = self.torch_threads or max(1, cpu_cores() // max(1, worker.state.nthreads))
        torch.set_num_threads(threads)
        self.backend = load_model(self.model, self.checkpoint, self.device, progress=False, precision=self.precision)

    def register(self, client) -> None:
        """Have every worker of ``client`` (and every worker that joins later) load the model once.

        A model, checkpoint or precision the workers cannot load fails here: Dask
        raises the workers' error (e.g. ModelError "...: checkpoint not found").
        """
        if self.precision is not None:
            parse_precision(self.precision)  # a bad value is refused before any worker loads anything
        client.register_plugin(self, name=PLUGIN_NAME)


def register_model(client, *args: Any, **kwargs: Any) -> None:
    """``ModelPlugin(*args, **kwargs).register(client)``: every worker of ``client`` loads the
    model once (the arguments are :class:`ModelPlugin`'s: model, checkpoint, torch_threads,
    precision, device)."""
    ModelPlugin(*args, **kwargs).register(client)


def connect(address: str, timeout: str = "20s"):
    """A ``Client`` of the running Dask scheduler at ``address``; InputError (one line) when none answers."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--scheduler {address}: cannot connect ({exc})") from None


def local_threads(client, threads_per_worker: int = 1) -> int:
    """Torch threads per worker of a local cluster: the cores shared out among its worker threads."""
    return max(1, cpu_cores() // (max(1, len(client.scheduler_info()["workers"])) * threads_per_worker))


def _case_task(case: Case, settings: BatchSettings) -> dict[str, Any]:
    """The Dask task of one case: run it with the worker's model."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[PLUGIN_NAME]
    return run_case(case, settings, plugin.backend, worker=worker.address)


def local_client(workers: int | None = None, threads_per_worker: int = 1, memory_limit: str | float = "auto"):
    """A ``Client`` on a new LocalCluster of worker processes sized to this machine.

    workers: worker processes (default: cores // threads_per_worker).
    """
    from distributed import Client, LocalCluster

    if threads_per_worker < 1 or (workers is not None and workers < 1):
        raise InputError("--workers and --threads-per-worker must be at least 1")
    n = workers or max(1, cpu_cores() // threads_per_worker)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=":0",
    )
    return Client(cluster)


def _record(case: Case, status: str, reason: str = "") -> dict[str, Any]:
    return {
        "row": case.row,
        "image": str(case.image),
        "output": str(case.output),
        "mode": case.mode,
        "status": status,
        "seconds": 0.0,
        "encoder_calls": 0,
        "cache_hits": 0,
        "worker": "",
        "reason": reason,
    }


def summary_path(manifest: str | Path) -> Path:
    """``cohort.csv`` -> ``cohort_summary.csv`` in the same folder."""
    m = Path(manifest)
    return m.with_name(f"{m.stem}_summary.csv")


def write_summary(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write the summary records as CSV, atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(sorted(records, key=lambda r: r["row"]))
    atomic_write_text(path, buf.getvalue())
    return path


def plan(cases: list[Case], settings: BatchSettings) -> tuple[list[Case], list[dict[str, Any]]]:
    """Split cases into those to run and the records of those that need no run
    (finished: ``skipped``; output exists without ``overwrite``: ``failed``)."""
    todo, done = [], []
    for c in cases:
        if is_finished(c, settings):
            done.append(_record(c, "skipped", "finished earlier with the same inputs and settings"))
        elif c.output.exists() and not settings.overwrite:
            done.append(_record(c, "failed", f"{c.output}: output exists; pass --overwrite to replace it"))
        else:
            todo.append(c)
    return todo, done


def _finished(futures: dict) -> Iterator[dict[str, Any]]:
    """The cases' records as their tasks finish (a failed task: this case only)."""
    from distributed import as_completed

    for fut in as_completed(list(futures)):
        case = futures[fut]
        try:
            rec = fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after too many deaths: this case only
            rec = _record(case, "failed", one_line(exc))
            remove_partials(case.output)
        yield rec


def batch_job(
    manifest: str | Path,
    client=None,
    settings: BatchSettings | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    torch_threads: int | None = None,
) -> Job[list[dict[str, Any]]]:
    """Run every unfinished case of ``manifest`` on a Dask cluster: a job
    (:mod:`napari_sam.jobs`) yielding a Progress per case (payload: its summary
    record; the cases that need no run first) and returning the records.

    client: a ``distributed.Client`` (any scheduler); None: a LocalCluster of
    ``workers`` processes x ``threads_per_worker`` threads, closed at the end.
    torch_threads: torch threads per worker (default: the worker's share of
    its host's cores). Each record: row, image, output, mode, status (done |
    skipped | failed), seconds, encoder_calls, cache_hits, worker, reason. The
    records are also written to :func:`summary_path` (``MANIFEST_summary.csv``)
    when the job ends; closed before, the unfinished tasks are cancelled.
    """
    settings = settings or BatchSettings()
    cases = read_manifest(manifest)
    todo, records = plan(cases, settings)
    total = len(cases)
    for i, rec in enumerate(list(records)):
        yield Progress(i + 1, total, f"row {rec['row']}: {rec['status']}", rec)
    own = client is None and bool(todo)
    if own:
        client = local_client(workers, threads_per_worker)
        if torch_threads is None:
            torch_threads = local_threads(client, threads_per_worker)
    futures: dict = {}
    try:
        if todo:
            for c in todo:
                remove_partials(c.output)
            register_model(client, settings.model, settings.checkpoint, torch_threads, settings.precision)
            run_id = secrets.token_hex(4)  # a fresh key per run: never an earlier run's result
            futures = {
                client.submit(_case_task, c, settings, key=f"napari-sam-case-{c.row}-{run_id}", pure=False): c
                for c in todo
            }
            log.info("batch: %d case(s) sent to %s, %d need no run", len(todo), client, len(records))
            for rec in _finished(futures):
                records.append(rec)
                yield Progress(len(records), total, f"row {rec['row']}: {rec['status']}", rec)
            futures = {}
    finally:
        if futures:  # closed early: stop what is still queued
            client.cancel(list(futures))
        if own:
            cluster = client.cluster
            client.close()
            cluster.close()
    write_summary(summary_path(manifest), records)
    return sorted(records, key=lambda r: r["row"])


def run(
    manifest: str | Path,
    client=None,
    settings: BatchSettings | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    torch_threads: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
) -> list[dict[str, Any]]:
    """:func:`batch_job` driven to its end (:func:`napari_sam.jobs.drive`); returns the summary records.

    progress: called with each case's Progress event (payload: its record);
    cancel: a :class:`napari_sam.jobs.Cancel` token (queued cases are then
    cancelled and :class:`napari_sam.jobs.Cancelled` raised).
    """
    return drive(
        batch_job(
            manifest,
            client,
            settings,
            workers=workers,
            threads_per_worker=threads_per_worker,
            torch_threads=torch_threads,
        ),
        progress,
        cancel,
        what="batch",
    )


def _show_dashboard(client) -> None:
    """Print the scheduler's dashboard address, when it has one."""
    link = getattr(client, "dashboard_link", None)
    if link and client.scheduler_info().get("services", {}).get("dashboard"):
        print(f"dashboard: {link}", file=sys.stderr)


def add_parser(sub) -> None:
    """Add the ``batch`` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("batch", help="segment a cohort listed in a manifest CSV on a Dask cluster")
    p.add_argument("manifest", help="CSV with columns image,prompts,output[,mode][,window] (docs/scaling.md)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler, "
        "e.g. tcp://host:8786 (default: a local cluster sized to this machine)",
    )
    where.add_argument("--workers", type=int, default=None, help="local worker processes (default: cores)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="Dask threads per local worker (default 1)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache shared by the workers (default: $NAPARI_SAM_CACHE_DIR, else the user cache folder)",
    )
    p.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only")
    p.add_argument("--model", default="lite_medsam", help="model name (default lite_medsam)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model")
    p.add_argument(
        "--precision",
        default=None,
        help="image encoder precision on the workers: auto, fp32, "
        "bf16 or fp16 (default: see docs/performance.md); recorded with each case",
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs that are not a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_batch(args) -> int:
    """``napari-sam batch``: exit 0 when every case is done or skipped, 1 when some failed."""
    if args.threads_per_worker < 1:
        raise InputError("--threads-per-worker must be at least 1")
    cache = None if args.no_cache else str(resolve_cache_dir(args.cache_dir))
    settings = BatchSettings(args.model, args.checkpoint, cache, args.overwrite, args.precision)
    if args.precision is not None:
        parse_precision(args.precision)  # refused before a cluster starts
    client = connect(args.scheduler) if args.scheduler else None

    told: set[int] = set()

    def tell(rec: dict[str, Any]) -> None:
        if rec["status"] == "failed" and rec["row"] not in told:
            told.add(rec["row"])
            print(f"row {rec['row']}: failed: {rec['reason']}", file=sys.stderr)

    bar = ProgressBar("batch", quiet=args.quiet, unit="case")

    def on_event(event: Progress) -> None:
        bar(event)
        if event.payload is not None:
            tell(event.payload)

    try:
        if client is not None and not args.quiet:
            _show_dashboard(client)
        records = run(
            args.manifest,
            client,
            settings,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            progress=on_event,
        )
    finally:
        bar.close()
        if client is not None:
            client.close()
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    for r in records:
        tell(r)
    if not args.quiet:
        print(
            f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
            f"summary {summary_path(args.manifest)}",
            file=sys.stderr,
        )
    return 1 if counts["failed"] else 0
