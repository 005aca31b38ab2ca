"""``napari-sam embed`` on a LocalCluster of 2 single-threaded worker processes, on the shared MR.

Both workers write slices of the same cache entry at once; the entry must
then hold every slice, checksummed, byte for byte what one process stores
for the same slices (torch on one thread, as on the workers); a second run
encodes nothing and sends no task; ``segment`` on the filled cache encodes
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam.sample_prompts import mr_kidney

pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    from napari_sam.batch import register_model

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="3GB", dashboard_address=None
    )
    c = Client(cluster)
    register_model(c, torch_threads=1)
    yield c
    c.close()
    cluster.close()


def _entry(cache: Path):
    [path] = list(cache.glob("*.zarr"))
    return zarr.open_array(str(path / "features"), mode="r"), zarr.open_array(str(path / "crc"), mode="r")


def test_two_workers_fill_one_entry_and_a_rerun_finds_everything(client, data_dir, tmp_path) -> None:
    import torch

    from napari_sam.embed_cluster import EmbedJob, embed_on_cluster
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import resolve_window
    from napari_sam.io import read_image
    from napari_sam.models.registry import load_model

    mr = data_dir / "mr_small" / "image.nii.gz"
    job = EmbedJob(str(mr), str(tmp_path / "cluster"), slices=(4, 11))
    report = embed_on_cluster(client, job, per_task=2)
    assert (report.encoded, report.cached, report.tasks) == (8, 0, 4)
    assert len(report.workers) == 2, report.workers  # both workers wrote into the one entry

    vol = read_image(mr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the workers
    try:
        local = SliceEmbeddings(load_model(), vol.array, resolve_window(vol.array), 0, cache_dir=tmp_path / "local")
        assert local.fill(range(4, 12)) == 8
    finally:
        torch.set_num_threads(threads)
    (feats, crc), (want_feats, want_crc) = _entry(tmp_path / "cluster"), _entry(tmp_path / "local")
    assert report.entry.endswith(Path(local.store.path).name)
    assert list(np.flatnonzero(np.asarray(crc[:]))) == list(range(4, 12))
    assert np.array_equal(crc[:], want_crc[:]) and np.array_equal(feats[4:12], want_feats[4:12])

    again = embed_on_cluster(client, job, per_task=2)
    assert (again.encoded, again.cached, again.tasks) == (0, 8, 0)


def test_cli_embed_on_a_local_cluster_then_segment_encodes_nothing(data_dir, tmp_path, capsys) -> None:
    from napari_sam.cli import main

    mr = data_dir / "mr_small" / "image.nii.gz"
    cache = tmp_path / "cache"
    assert (
        main(
            ["embed", str(mr), "--workers", "2", "--slices", "6:8", "--slices-per-task", "1", "--cache-dir", str(cache)]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "3 slice(s) encoded in 2 task(s)" in err, err
    (tmp_path / "p.json").write_text(json.dumps(mr_kidney()))
    assert (
        main(
            [
                "segment",
                str(mr),
                "--prompts",
                str(tmp_path / "p.json"),
                "--output",
                str(tmp_path / "k.nii.gz"),
                "--quiet",
                "--cache-dir",
                str(cache),
            ]
        )
        == 0
    )
    side = json.loads((tmp_path / "k.json").read_text())
    assert side["encoder_calls"] == 0 and side["cache_hits"] >= 1
    assert main(["embed", str(mr), "--workers", "2", "--slices", "6:8", "--cache-dir", str(cache)]) == 0
    assert "0 slice(s) encoded in 0 task(s)" in capsys.readouterr().err


def test_cli_embed_cluster_bad_slices_is_one_line(data_dir, tmp_path, capsys) -> None:
    from napari_sam.cli import main

    assert (
        main(
            [
                "embed",
                str(data_dir / "mr_small" / "image.nii.gz"),
                "--workers",
                "1",
                "--slices",
                "5:40",
                "--cache-dir",
                str(tmp_path / "c"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slices 5:40: outside 0..19" in err[0], err
