"""The napari widget's responsiveness on the shared CT (run under Xvfb on a headless machine).

    xvfb-run -a python benchmarks/napari_responsiveness.py [--slices 4] [--boxes 20] [--load 0,2]
    xvfb-run -a python benchmarks/napari_responsiveness.py --quick   # part 3 only, quiet and loaded, ~2 min

Prints:

1. UI event latency: a 10 ms QTimer's tick delays (how late each tick fires)
   while the viewer is idle and while the encoder runs in each of the ways of
   2 (on the GUI thread: what a plugin without workers does).
2. The thread-worker slowdown micro-sam reported on napari >= 0.5
   (micro-sam issue #740): seconds (wall and process CPU) per slice encoded
   on the GUI thread, in a plain Python thread, in napari's thread_worker as
   the widget runs it (no progress bar) and in a thread_worker with a napari
   progress bar (whose animated "in progress" indicator repaints the window),
   interleaved in the same run.
3. Prompt -> preview latency: the median time from a box change in the
   Shapes layer (napari's own mouse handling) to the preview being in the
   preview layer and the event loop having run, for boxes and for clicks,
   with each ``--load`` count of busy processes added (a loaded machine; the
   1-minute load average is printed with the figures) and each
   ``--decode-threads`` setting of the widget's decode thread, interleaved
   change by change so that other programs' load hits all settings alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_API", "pyqt6")  # napari's current recommendation (as the GUI tests)

import torch  # noqa: F401  (before napari: see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from common import deepest_point, load_ct, shared_data_dir  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=6, help="slices encoded in each of the three ways")
    ap.add_argument("--boxes", type=int, default=20, help="box changes for the latency median")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument(
        "--load",
        default="0",
        help="busy processes (a pure-Python spin each) added during part 3, e.g. 0,2: each count in turn "
        "(parts 1 and 2 run with none added)",
    )
    ap.add_argument("--clicks", type=int, default=3, help="click changes per decode-thread setting")
    ap.add_argument(
        "--decode-threads",
        default="0,1",
        help="torch threads of the widget's decode (0: torch's default), interleaved change by change",
    )
    ap.add_argument("--preview-only", action="store_true", help="only part 3 (prompt -> preview latency)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="part 3 only, 12 boxes and 3 clicks per setting, with 0 and then 2 busy processes added (~2 min)",
    )
    args = ap.parse_args()
    if args.quick:
        args.preview_only, args.boxes, args.clicks, args.load = True, 12, 3, "0,2"
    args.loads = [int(v) for v in str(args.load).split(",")]
    args.decode_threads = [int(v) for v in str(args.decode_threads).split(",")]
    _measure(args)


def _spin() -> None:
    while True:
        pass


def _start_load(n: int) -> list:
    """``n`` processes each keeping one core busy, until :func:`_stop_load`."""
    import multiprocessing as mp

    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(max(0, n))]
    for proc in procs:
        proc.start()
    return procs


def _stop_load(procs: list) -> None:
    for proc in procs:
        proc.terminate()
        proc.join()


def _loadavg() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def _measure(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)

    import napari
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_sam.models.registry import load_model
    from napari_sam.plugin._background import STORES
    from napari_sam.plugin.segment_widget import SegmentWidget

    vol, labels, names = load_ct()
    liver = labels == {v: k for k, v in names.items()}["liver"]
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    model = load_model("lite_medsam", device="cpu")
    print(
        f"torch threads: {torch.get_num_threads()}, napari {napari.__version__}, "
        f"{os.cpu_count()} CPUs, {_loadavg()} at the start"
    )

    viewer = napari.Viewer(show=True)

    [image] = viewer.open(str(shared_data_dir() / "ct_abdomen_dicom" / "dicom"), plugin="napari-sam")
    widget = SegmentWidget(viewer)
    widget.disk_cache_check.setChecked(False)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])

    def pump(cond, timeout=900.0):
        """Run Qt's event loop (idle-waiting, as in use) until ``cond()`` holds."""
        loop = QEventLoop()
        t0 = time.perf_counter()
        poll = QTimer()
        poll.setInterval(5)
        poll.timeout.connect(lambda: loop.quit() if cond() or time.perf_counter() - t0 > timeout else None)
        poll.start()
        if not cond():
            loop.exec_()
        poll.stop()
        if not cond():
            raise TimeoutError

    # -------------------------------------------------- 1 + 2: UI ticks, worker vs direct encoding
    def ticks_during(run, period_ms=10):
        delays: list[float] = []
        last = [time.perf_counter()]

        def tick():
            now = time.perf_counter()
            delays.append(max(0.0, (now - last[0]) * 1000 - period_ms))
            last[0] = now

        timer = QTimer()
        timer.setInterval(period_ms)
        timer.timeout.connect(tick)
        last[0] = time.perf_counter()
        timer.start()
        run()
        _run_for(0.05)  # let a tick held back by a blocked event loop fire (and count its delay)
        timer.stop()
        return delays

    idle = ticks_during(lambda: _run_for(2.0))

    from napari_sam.intensity import Window

    win = Window(*image.contrast_limits)
    slices = [i for i in range(vol.shape[0]) if i != k][: 0 if args.preview_only else args.slices]

    # the same encoder three ways, interleaved slice by slice so that load changes on a
    # shared machine hit all alike: on the GUI thread, in a plain Python thread, and in
    # napari's thread_worker (what the widget does), the viewer running throughout.
    import threading

    modes = ("GUI thread", "threading.Thread", "thread_worker (widget)", "thread_worker+progress bar")
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    ticks: dict[str, list[float]] = {m: [] for m in modes}
    worker_threads: list[int] = []

    def encode(i, mode):
        t, c = time.perf_counter(), time.process_time()
        model.forget_recent()  # every run starts cold (the decoder's work kept per embedding dropped)
        model.embed(win.apply(vol.array[i]))
        wall[mode].append(time.perf_counter() - t)
        cpu[mode].append(time.process_time() - c)

    def in_thread(i):
        th = threading.Thread(target=encode, args=(i, modes[1]))
        th.start()
        pump(lambda: not th.is_alive())

    def in_worker(i, with_progress=False):
        mode = modes[3] if with_progress else modes[2]

        def work():
            worker_threads.append(torch.get_num_threads())
            encode(i, mode)
            yield i

        kw = {"_progress": {"total": 1, "desc": "benchmark: embedding"}} if with_progress else {}
        w = create_worker(work, **kw)
        done = []
        w.finished.connect(lambda: done.append(1))
        w.start()
        pump(lambda: done)

    if slices:  # (--preview-only skips parts 1 and 2)
        model.embed(win.apply(vol.array[k]))  # warm-up
        for n, i in enumerate(slices):
            runs = [
                (modes[0], lambda: encode(i, modes[0])),
                (modes[1], lambda: in_thread(i)),
                (modes[2], lambda: in_worker(i)),
                (modes[3], lambda: in_worker(i, True)),
            ]
            for mode, run in runs[n % 4 :] + runs[: n % 4]:  # rotate the order too
                ticks[mode] += ticks_during(run)
        idle_ticks = idle
        print("\nUI event latency (10 ms QTimer, delay of each tick, ms): median / p95 / max")
        for name, d in (("idle", idle_ticks), *((f"encoding: {m}", ticks[m]) for m in modes)):
            print(f"  {name:34s} {statistics.median(d):8.1f} / {_pct(d, 95):8.1f} / {max(d):8.1f}   ({len(d)} ticks)")
        print(
            f"\nencoder per slice, {len(slices)} slices interleaved (micro-sam #740 check): "
            "median wall s, median process CPU s"
        )
        base = statistics.median(wall[modes[0]])
        for m in modes:
            print(
                f"  {m:28s} {statistics.median(wall[m]):7.3f}  ({statistics.median(wall[m]) / base:4.2f}x)  "
                f"cpu {statistics.median(cpu[m]):7.3f}   [{', '.join(f'{t:.2f}' for t in wall[m])}]"
            )
        print(f"  torch intra-op threads: main {torch.get_num_threads()}, in the worker {worker_threads[0]}")

    # -------------------------------------------------- 3: prompt -> preview latency
    STORES.clear()
    widget.start(backend=model)
    s = widget.session
    pump(lambda: s.store().peek(k) is not None)
    ctx = _Ctx(viewer, widget, image, model, k, liver[k], pump)
    for n_busy in args.loads:
        busy = _start_load(n_busy)
        try:
            _run_for(3.0 if n_busy else 0.5)  # the busy processes get going
            _preview_latency(ctx, args, n_busy)
        finally:
            _stop_load(busy)
    widget.close_session()
    viewer.close()


@dataclass
class _Ctx:
    viewer: Any
    widget: Any
    image: Any
    model: Any
    k: int
    truth: np.ndarray
    pump: Callable


def _drag(ctx: _Ctx, a, b) -> None:
    """A rectangle drawn in the boxes layer with napari's own mouse handling, data point ``a`` to ``b``."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    s = ctx.widget.session
    ev = dict(button=1, dims_displayed=[1, 2], view_direction=[1.0, 0.0, 0.0])
    a, b = np.asarray(ctx.image.data_to_world(a)), np.asarray(ctx.image.data_to_world(b))
    ctx.viewer.layers.selection.active = s.boxes
    s.boxes.mode = "add_rectangle"
    mouse_press_callbacks(s.boxes, read_only_mouse_event(type="mouse_press", position=tuple(a), **ev))
    mouse_move_callbacks(s.boxes, read_only_mouse_event(type="mouse_move", position=tuple(b), is_dragging=True, **ev))
    # (the release repeats the last prompt: the widget does not decode it again)
    mouse_release_callbacks(s.boxes, read_only_mouse_event(type="mouse_release", position=tuple(b), **ev))


def _click(ctx: _Ctx, rc) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    s = ctx.widget.session
    w = tuple(ctx.image.data_to_world((ctx.k, *rc)))
    ev = dict(position=w, button=1, dims_displayed=[1, 2], view_direction=[1.0, 0, 0])
    ctx.viewer.layers.selection.active = s.points
    s.points.mode = "add"
    mouse_press_callbacks(s.points, read_only_mouse_event(type="mouse_press", **ev))
    mouse_release_callbacks(s.points, read_only_mouse_event(type="mouse_release", **ev))


def _preview_latency(ctx: _Ctx, args: argparse.Namespace, n_busy: int) -> None:
    """Box and click changes -> preview shown, each decode-thread setting in turn (interleaved)."""
    from napari_sam.predictor import SlicePredictor

    s, k = ctx.widget.session, ctx.k
    r0, c0, r1, c1 = _bbox(ctx.truth)
    rng = np.random.default_rng(0)
    core = SlicePredictor(ctx.model)
    core.set_embedding(s.store().peek(k))
    settings = [None if t == 0 else t for t in args.decode_threads]
    rows: dict[tuple[str, Any], list[tuple[float, float, dict]]] = {}
    load_seen: list[float] = []

    def one(kind: str, threads: Any, act: Callable[[], None]) -> None:
        s.previewer.decode_threads = threads
        n = s.previews_shown
        act()
        ctx.pump(lambda: s.previews_shown > n)
        t = time.perf_counter()
        core.predict(prompt=s.prediction_prompt)  # the same prompt, straight through the core
        core_ms = (time.perf_counter() - t) * 1000
        rows.setdefault((kind, threads), []).append((s.latencies[-1] * 1000, core_ms, s.latency_parts[-1]))
        load_seen.append(os.getloadavg()[0])

    for i in range(args.boxes * len(settings)):
        j = rng.integers(-6, 7, size=4)
        one(
            "box", settings[i % len(settings)], lambda: _drag(ctx, (k, r0 + j[0], c0 + j[1]), (k, r1 + j[2], c1 + j[3]))
        )
    ctx.widget.clear_prompts()
    r, c = deepest_point(ctx.truth)
    for i in range(args.clicks * len(settings)):
        one("click", settings[i % len(settings)], lambda: _click(ctx, (r + i // len(settings), c)))
        ctx.widget.clear_prompts()
    print(
        f"\nprompt change -> preview shown on the CT (slice {k}, 512x512), {n_busy} busy processes added, "
        f"load average (1 min) during the run: median {statistics.median(load_seen):.1f}, "
        f"range {min(load_seen):.1f}-{max(load_seen):.1f}; ms: median / p95; the core's "
        "SlicePredictor.predict on the same prompt (GUI thread, torch default threads) in the same run"
    )
    for (kind, threads), vals in rows.items():
        lat, ref, parts = [v[0] for v in vals], [v[1] for v in vals], [v[2] for v in vals]
        name = f"{kind}, decode threads {threads or f'default ({torch.get_num_threads()})'}"
        print(
            f"  {name:34s} ({len(lat):2d})  widget {statistics.median(lat):7.1f} / {_pct(lat, 95):7.1f}"
            f"   core predict {statistics.median(ref):7.1f}   parts: "
            + ", ".join(
                f"{p} {statistics.median(q[p] for q in parts) * 1000:.1f}" for p in ("prompt", "wait", "decode", "show")
            )
        )


def _run_for(seconds: float) -> None:
    """Qt's event loop for ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rr, cc = np.nonzero(mask)
    return int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())


if __name__ == "__main__":
    main()
