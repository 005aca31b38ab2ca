"""``napari_sam.batch`` on a LocalCluster of 2 single-threaded worker processes, on the shared data.

One cohort of 4 cases (2 MR ``segment`` cases with propagation over a few
slices, 2 ``auto`` cases on crops of the nuclei image) plus a case whose
image is missing. Checked: outputs byte-identical to running each case alone
with ``napari-sam segment`` / ``auto``; the failing case reported while the
others finish; a second run does nothing; a worker killed mid-case, after
which the case is rerun elsewhere and its output is still identical.

Byte-identical needs the same torch threads per encoder run on both sides:
PyTorch's CPU kernels sum in an order that depends on the thread count, so
embeddings made on 1 and on 2 threads differ by about 1e-6 (measured on the
shared MR), which may move a mask's edge by a pixel. A worker takes its
share of its host's cores and the CLI torch's default, equal on this
2-core machine but not on a larger one, so both sides here run on THREADS.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from napari_sam.sample_prompts import mr_kidney, mr_liver_spleen

pytestmark = pytest.mark.slow

THREADS = 1  # torch threads on the workers and for the cases run alone

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cohort(data_dir: Path, tmp_path_factory) -> Path:
    """A folder with the manifest (relative paths), prompts and nuclei crops."""
    import tifffile

    root = tmp_path_factory.mktemp("cohort")
    mr = data_dir / "mr_small" / "image.nii.gz"
    nuclei = tifffile.imread(data_dir / "nuclei_2d" / "image.tif")
    tifffile.imwrite(root / "nuc_a.tif", nuclei[:160, :160])
    tifffile.imwrite(root / "nuc_b.tif", nuclei[300:460, 300:460])
    (root / "liver.json").write_text(json.dumps(mr_liver_spleen()))
    (root / "kidney.json").write_text(json.dumps(mr_kidney()))
    rows = [
        "image,prompts,output,mode",
        f"{mr},liver.json,out/liver.nii.gz,segment",
        f"{mr},kidney.json,out/kidney.nii.gz,segment",
        "nuc_a.tif,,out/nuc_a.tif,auto",
        "nuc_b.tif,,out/nuc_b.tif,auto",
        "missing.nii.gz,liver.json,out/missing.nii.gz,segment",
    ]
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="3GB", dashboard_address=None
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def alone(cohort: Path) -> dict[str, bytes]:
    """Each good case run alone with the CLI (own cache folder): output name -> label file bytes."""
    from napari_sam.cli import main
    from napari_sam.torch_threads import threads

    out = cohort / "alone"
    for line in (cohort / "cohort.csv").read_text().splitlines()[1:5]:
        image, prompts, output, mode = line.split(",")
        dest = out / Path(output).name
        args = [mode, str(cohort / image), "--output", str(dest), "--quiet", "--cache-dir", str(out / "cache")]
        if prompts:
            args += ["--prompts", str(cohort / prompts)]
        with threads(THREADS):
            assert main(args) == 0
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.endswith(".json")}


@pytest.fixture(scope="module")
def first_run(cohort: Path, client) -> list[dict]:
    from napari_sam.batch import run
    from napari_sam.batch_manifest import BatchSettings

    return run(cohort / "cohort.csv", client, BatchSettings(cache_dir=str(cohort / "cache")), torch_threads=THREADS)


def test_cohort_outputs_byte_identical_to_each_case_alone(cohort: Path, first_run, alone) -> None:
    by_row = {r["row"]: r for r in first_run}
    assert [by_row[i]["status"] for i in (1, 2, 3, 4)] == ["done"] * 4
    assert {r["worker"] for r in first_run if r["status"] == "done"} and len(alone) == 4
    for name, data in alone.items():
        assert (cohort / "out" / name).read_bytes() == data, name
    assert by_row[1]["encoder_calls"] > 0
    side = json.loads((cohort / "out" / "liver.json").read_text())
    assert side["batch"]["settings"]["mode"] == "segment" and set(side["batch"]["inputs"]) == {"image", "prompts"}
    assert not list((cohort / "out").glob(".*partial*"))


def test_failing_case_reported_while_others_finish(cohort: Path, first_run) -> None:
    bad = next(r for r in first_run if r["row"] == 5)
    assert bad["status"] == "failed" and "missing.nii.gz" in bad["reason"] and "\n" not in bad["reason"]
    assert not (cohort / "out" / "missing.nii.gz").exists()
    summary = (cohort / "cohort_summary.csv").read_text().splitlines()
    assert summary[0].startswith("row,image,output,mode,status,seconds,encoder_calls,cache_hits,worker")
    assert len(summary) == 6 and sum(",done," in s for s in summary) == 4


def test_second_run_does_nothing(cohort: Path, client, first_run) -> None:
    from napari_sam.batch import run
    from napari_sam.batch_manifest import BatchSettings

    outs = sorted((cohort / "out").iterdir())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outs}
    again = run(cohort / "cohort.csv", client, BatchSettings(cache_dir=str(cohort / "cache")), torch_threads=THREADS)
    assert [r["status"] for r in again[:4]] == ["skipped"] * 4
    assert sum(r["encoder_calls"] for r in again) == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((cohort / "out").iterdir())} == before


def _executing(client) -> dict[str, list[str]]:
    def keys(dask_worker) -> list[str]:
        return [str(ts.key) for ts in dask_worker.state.executing]

    return client.run(keys)


def test_worker_killed_mid_case_is_retried_and_output_identical(cohort: Path, client, alone, data_dir) -> None:
    from napari_sam.batch import run
    from napari_sam.batch_manifest import BatchSettings

    mr = data_dir / "mr_small" / "image.nii.gz"
    (cohort / "kill.csv").write_text(f"image,prompts,output\n{mr},liver.json,killed/liver.nii.gz\n")
    result: dict = {}
    settings = BatchSettings(cache_dir=str(cohort / "cache_kill"))  # a cold cache, like the reference run
    t = threading.Thread(
        target=lambda: result.update(r=run(cohort / "kill.csv", client, settings, torch_threads=THREADS))
    )
    t.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        victim = next((a for a, ks in _executing(client).items() if any("napari-sam-case" in k for k in ks)), None)
        time.sleep(0.2)
    assert victim is not None, "the case never started"
    time.sleep(1.0)  # mid-case: the liver case takes several seconds
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=600)
    rec = result["r"][0]
    assert rec["status"] == "done", rec
    assert rec["worker"] != victim  # rerun on another (or the restarted) worker
    assert (cohort / "killed" / "liver.nii.gz").read_bytes() == alone["liver.nii.gz"]
    assert not list((cohort / "killed").glob(".*partial*"))
    client.wait_for_workers(2, timeout=120)


def test_precision_and_checkpoint_reach_the_workers(cohort: Path, client) -> None:
    from napari_sam.batch import PLUGIN_NAME, run
    from napari_sam.batch_manifest import BatchSettings
    from napari_sam.errors import ModelError

    (cohort / "prec.csv").write_text("image,prompts,output\nmissing.nii.gz,liver.json,prec/x.nii.gz\n")
    recs = run(cohort / "prec.csv", client, BatchSettings(cache_dir=str(cohort / "cache"), precision="bf16"))
    assert recs[0]["status"] == "failed"  # the case's own failure; the workers loaded the model meanwhile

    def tag(dask_worker) -> str:
        from napari_sam.models.precision import precision_tag

        return precision_tag(dask_worker.plugins[PLUGIN_NAME].backend)

    tags = client.run(tag)
    assert len(tags) == 2 and all(t.startswith("bf16") for t in tags.values()), tags
    with pytest.raises(ModelError, match="checkpoint not found"):
        run(cohort / "prec.csv", client, BatchSettings(checkpoint=str(cohort / "no_such.pt")))
