"""The napari widget's responsiveness on the shared CT (run under Xvfb on a headless machine).

    xvfb-run -a python benchmarks/napari_responsiveness.py [--slices 4] [--boxes 20]

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
   preview layer and the event loop having run, for boxes and for clicks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

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
        type=int,
        default=0,
        help="busy processes (a pure-Python spin each) running during the measurements: a loaded machine",
    )
    ap.add_argument("--preview-only", action="store_true", help="only part 3 (prompt -> preview latency)")
    args = ap.parse_args()
    busy = _start_load(args.load)
    try:
        _measure(args)
    finally:
        for proc in busy:
            proc.terminate()
            proc.join()


def _spin() -> None:
    while True:
        pass


def _start_load(n: int) -> list:
    """``n`` processes each keeping one core busy, until terminated."""
    import multiprocessing as mp

    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(max(0, n))]
    for proc in procs:
        proc.start()
    return procs


def _loadavg() -> str:
    import os

    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def _measure(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)

    import napari
    from napari.qt.threading import create_worker
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
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
        f"{args.load} busy processes added, {_loadavg()}"
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
    r0, c0, r1, c1 = _bbox(liver[k])
    rng = np.random.default_rng(0)

    def drag(a, b):
        ev = dict(button=1, dims_displayed=[1, 2], view_direction=[1.0, 0.0, 0.0])
        a, b = np.asarray(image.data_to_world(a)), np.asarray(image.data_to_world(b))
        viewer.layers.selection.active = s.boxes
        s.boxes.mode = "add_rectangle"
        mouse_press_callbacks(s.boxes, read_only_mouse_event(type="mouse_press", position=tuple(a), **ev))
        mouse_move_callbacks(
            s.boxes, read_only_mouse_event(type="mouse_move", position=tuple(b), is_dragging=True, **ev)
        )
        # (the release repeats the last prompt: the widget does not decode it again)
        mouse_release_callbacks(s.boxes, read_only_mouse_event(type="mouse_release", position=tuple(b), **ev))

    from napari_sam.predictor import SlicePredictor

    core = SlicePredictor(model)
    core.set_embedding(s.store().peek(k))

    def core_ms(prompt) -> float:
        t = time.perf_counter()
        core.predict(prompt=prompt)
        return (time.perf_counter() - t) * 1000

    box_lat, box_core = [], []
    for _ in range(args.boxes):
        j = rng.integers(-6, 7, size=4)
        n = s.previews_shown
        drag((k, r0 + j[0], c0 + j[1]), (k, r1 + j[2], c1 + j[3]))
        pump(lambda: s.previews_shown > n)
        box_lat.append(s.latencies[-1] * 1000)
        box_core.append(core_ms(s.prediction_prompt))  # the same prompt, straight through the core
    widget.clear_prompts()
    r, c = deepest_point(liver[k])
    click_lat, click_core = [], []
    for i in range(max(3, args.boxes // 4)):
        n = s.previews_shown
        w = image.data_to_world((k, r + i, c))
        viewer.layers.selection.active = s.points
        s.points.mode = "add"
        mouse_press_callbacks(
            s.points,
            read_only_mouse_event(
                type="mouse_press", position=tuple(w), button=1, dims_displayed=[1, 2], view_direction=[1.0, 0, 0]
            ),
        )
        mouse_release_callbacks(
            s.points,
            read_only_mouse_event(
                type="mouse_release", position=tuple(w), button=1, dims_displayed=[1, 2], view_direction=[1.0, 0, 0]
            ),
        )
        pump(lambda: s.previews_shown > n)
        click_lat.append(s.latencies[-1] * 1000)
        click_core.append(core_ms(s.prediction_prompt))
        widget.clear_prompts()
    print(
        f"\nprompt change -> preview shown on the CT (slice {k}, 512x512), ms: median / p95;"
        f" the core's SlicePredictor.predict on the same prompt, measured in the same run; {_loadavg()}"
    )
    parts = s.latency_parts
    n_box = len(box_lat)
    for name, lat, ref, pp in (
        ("box", box_lat, box_core, parts[-n_box - len(click_lat) : -len(click_lat)]),
        ("click", click_lat, click_core, parts[-len(click_lat) :]),
    ):
        print(
            f"  {name:5s} ({len(lat):2d} changes)  widget {statistics.median(lat):7.1f} / {_pct(lat, 95):7.1f}"
            f"   core predict {statistics.median(ref):7.1f}   widget/core {statistics.median(lat) / statistics.median(ref):4.2f}"
        )
        print(
            "        widget parts, median ms: "
            + ", ".join(
                f"{k} {statistics.median(p[k] for p in pp) * 1000:.1f}" for k in ("prompt", "wait", "decode", "show")
            )
        )
    widget.close_session()
    viewer.close()


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
