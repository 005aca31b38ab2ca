"""Batch throughput: a small cohort run with ``napari_sam.batch`` on 1 and 2 local
workers, against the same cases run one after the other as plain ``napari-sam
segment`` / ``auto`` processes and in one process. Prints cases/hour, the
overhead, and each worker's memory (RSS at the end, peak RSS).

    PYTHONPATH=src python benchmarks/batch_throughput.py [--cases 4] [--out /tmp/batch_bench]

Each configuration starts from a cold embedding cache. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch  # noqa: F401  (before anything that might import napari)

from napari_sam.sample_prompts import mr_kidney, mr_liver_spleen

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_SAM_DATA", ROOT.parent / "shared" / "data"))


def make_cohort(root: Path, n: int) -> Path:
    """n cases alternating MR segment (liver+spleen, kidney) and nuclei auto crops."""
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    nuclei = tifffile.imread(DATA / "nuclei_2d" / "image.tif")
    (root / "liver.json").write_text(json.dumps(mr_liver_spleen()))
    (root / "kidney.json").write_text(json.dumps(mr_kidney()))
    rows = ["image,prompts,output,mode"]
    for i in range(n):
        if i % 2 == 0:
            rows.append(
                f"{DATA / 'mr_small' / 'image.nii.gz'},{'liver' if i % 4 == 0 else 'kidney'}.json,"
                f"OUT/case{i}.nii.gz,segment"
            )
        else:
            r, c = divmod((i * 97) % 352, 176)
            tifffile.imwrite(root / f"nuc{i}.tif", nuclei[r * 2 : r * 2 + 160, c * 2 : c * 2 + 160])
            rows.append(f"nuc{i}.tif,,OUT/case{i}.tif,auto")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root / "cohort.csv"


def manifest_for(manifest: Path, tag: str) -> Path:
    m = manifest.with_name(f"{tag}.csv")
    m.write_text(manifest.read_text().replace("OUT/", f"{tag}/"))
    shutil.rmtree(manifest.parent / tag, ignore_errors=True)
    return m


def run_cli_sequential(manifest: Path) -> float:
    """Each case as its own ``napari-sam`` process, one after the other."""
    root = manifest.parent
    c0 = _cpu_children()
    t0 = time.perf_counter()
    for line in manifest.read_text().splitlines()[1:]:
        image, prompts, output, mode = line.split(",")
        cmd = [
            sys.executable,
            "-m",
            "napari_sam.cli",
            mode,
            str(root / image),
            "--output",
            str(root / output),
            "--quiet",
            "--cache-dir",
            str(root / f"cache_{manifest.stem}"),
        ]
        if prompts:
            cmd += ["--prompts", str(root / prompts)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - t0, _cpu_children() - c0


def run_in_process(manifest: Path) -> float:
    """Each case computed and written in this process, one after the other (model loaded once)."""
    from napari_sam.batch_cases import run_case
    from napari_sam.batch_manifest import BatchSettings, read_manifest
    from napari_sam.models.registry import load_model

    c0 = _cpu_self()
    t0 = time.perf_counter()
    backend = load_model()
    settings = BatchSettings(cache_dir=str(manifest.parent / f"cache_{manifest.stem}"))
    for case in read_manifest(manifest):
        rec = run_case(case, settings, backend)
        assert rec["status"] == "done", rec
    return time.perf_counter() - t0, _cpu_self() - c0


def _memory(dask_worker) -> dict[str, float]:
    """A worker's RSS at the end, its peak RSS, and the CPU seconds its process used (user + system)."""
    import resource

    import psutil

    p = psutil.Process()
    t = p.cpu_times()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"rss_mib": p.memory_info().rss / 2**20, "peak_mib": peak, "cpu_s": t.user + t.system}


def _cpu_self() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_batch(manifest: Path, workers: int) -> tuple[float, list[dict], dict]:
    """The batch on a fresh LocalCluster (cluster start-up and model loading included)."""
    from napari_sam.batch import local_client, run
    from napari_sam.batch_manifest import BatchSettings

    c0 = _cpu_self()
    t0 = time.perf_counter()
    client = local_client(workers, 1)
    try:
        recs = run(
            manifest,
            client,
            BatchSettings(cache_dir=str(manifest.parent / f"cache_{manifest.stem}")),
            torch_threads=max(1, 2 // workers),
        )
        wall = time.perf_counter() - t0
        mem = client.run(_memory)
        mem["client+scheduler"] = {"rss_mib": 0.0, "peak_mib": 0.0, "cpu_s": _cpu_self() - c0}
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert all(r["status"] == "done" for r in recs), recs
    return wall, recs, mem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--out", default="/tmp/batch_bench")
    ap.add_argument("--configs", default="cli,inproc,b1,b2", help="comma-separated, run in this order")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    manifest = make_cohort(root, args.cases)
    n = args.cases
    print(f"{n} cases; load average at start: {os.getloadavg()}", flush=True)
    figures: dict[str, dict] = {}
    for i, cfg in enumerate(args.configs.split(",")):
        m = manifest_for(manifest, f"{cfg}_{i}")
        extra = ""
        if cfg == "cli":
            wall, cpu = run_cli_sequential(m)
        elif cfg == "inproc":
            wall, cpu = run_in_process(m)
        else:
            wall, recs, mem = run_batch(m, int(cfg[1:]))
            cpu = sum(d["cpu_s"] for d in mem.values())
            extra = (
                f"; case seconds sum {sum(r['seconds'] for r in recs):.1f}; worker RSS MiB "
                f"{[round(d['rss_mib']) for d in mem.values() if d['rss_mib']]}; client+scheduler CPU "
                f"{mem['client+scheduler']['cpu_s']:.1f} s"
            )
            workers = [d for d in mem.values() if d["rss_mib"]]
            extra += f"; worker peak RSS MiB {[round(d['peak_mib']) for d in workers]}"
            figures.setdefault(cfg, {})["worker_peak_mib"] = max(d["peak_mib"] for d in workers)
            figures[cfg]["worker_rss_mib"] = max(d["rss_mib"] for d in workers)
        load = os.getloadavg()[0]
        print(
            f"{cfg}: wall {wall:.1f} s = {3600 * n / wall:.0f} cases/h; CPU {cpu:.1f} s = {cpu / n:.1f} s/case"
            f"{extra}; load {tuple(round(v, 1) for v in os.getloadavg())}",
            flush=True,
        )
        figures.setdefault(cfg, {}).update(
            wall_s=wall, cases_per_hour=3600 * n / wall, cpu_s_per_case=cpu / n, load_1min=load
        )
    _summary(figures, n)
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": n, "figures": figures}, indent=1))


def _summary(figures: dict[str, dict], n: int) -> None:
    """Each batch configuration against the sequential references measured in the same run."""
    for ref in ("cli", "inproc"):
        if ref not in figures:
            continue
        r = figures[ref]
        for cfg in (c for c in figures if c.startswith("b")):
            f = figures[cfg]
            print(
                f"{cfg} vs {ref}: wall x{f['wall_s'] / r['wall_s']:.2f}, CPU per case x"
                f"{f['cpu_s_per_case'] / r['cpu_s_per_case']:.2f} "
                f"({f['cpu_s_per_case'] - r['cpu_s_per_case']:+.1f} s/case)",
                flush=True,
            )


if __name__ == "__main__":
    main()
