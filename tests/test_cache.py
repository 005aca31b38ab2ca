"""The embedding cache: disk store round trip, keys, stale and corrupt entries,
LRU bound, cache directory resolution, and the `embed` CLI with a warm cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam.cache import (
    CACHE_ENV,
    EmbeddingStore,
    content_hash,
    default_cache_dir,
    embedding_key,
    resolve_cache_dir,
)
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError, NapariSamWarning
from napari_sam.geometry import Crop
from napari_sam.intensity import Window
from napari_sam.models.base import Backend, Embedding


class CountingBackend(Backend):
    """A fake encoder: the embedding is a deterministic function of the slice."""

    name = "counting"
    image_size = 16
    supports_points = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[float] = []

    def embed(self, image: np.ndarray) -> Embedding:
        self.calls.append(float(image.mean()))
        feats = torch.from_numpy(np.stack([image[:8, :8] * k for k in (1.0, 2.0, 3.0)]).astype(np.float32))[None]
        return Embedding(features=feats, original_size=image.shape[:2], input_size=(8, 8), model=self.name)

    def decode_low_res(self, *a, **k):  # not used here
        raise NotImplementedError

    def upsample(self, low_res, embedding):
        raise NotImplementedError


@pytest.fixture()
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, size=(6, 12, 10)).astype(np.int16)


def test_disk_round_trip_and_warm_reopen_encodes_nothing(tmp_path, volume):
    be = CountingBackend()
    win = Window(0, 1000)
    cold = SliceEmbeddings(be, volume, win, cache_dir=tmp_path, dtype="float32")
    first = [cold.get(i).features.clone() for i in (1, 3)]
    assert cold.encoder_calls == 2 and len(be.calls) == 2
    assert cold.missing() == [0, 2, 4, 5]
    warm = SliceEmbeddings(be, volume, win, cache_dir=tmp_path, dtype="float32")
    again = [warm.get(i) for i in (1, 3)]
    assert warm.encoder_calls == 0 and warm.disk_hits == 2 and len(be.calls) == 2
    for a, b in zip(first, again):
        assert torch.equal(a, b.features)
    assert again[0].original_size == (12, 10) and again[0].input_size == (8, 8) and again[0].model == "counting"
    assert warm.fill() == 4 and warm.missing() == []
    assert SliceEmbeddings(be, volume, win, cache_dir=tmp_path, dtype="float32").fill() == 0


def test_float16_storage_is_close(tmp_path, volume):
    be = CountingBackend()
    SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path).get(2)
    e = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    got = e.get(2).features
    ref = be.embed(Window(0, 1000).apply(volume[2])).features
    assert e.encoder_calls == 0 and got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_cold_run_sees_what_the_warm_run_reads(tmp_path, volume):
    """A cold run decodes the float16-rounded embedding it stores, so a
    re-run on the warm cache gives identical masks (not merely close ones)."""
    be = CountingBackend()
    cold = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path).get(4).features
    warm = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path).get(4).features
    assert torch.equal(cold, warm)
    exact = be.embed(Window(0, 1000).apply(volume[4])).features
    assert not torch.equal(cold, exact)  # float16 storage does round


def test_no_cache_and_a_failed_cache_hand_out_what_the_cache_stores(tmp_path, volume, monkeypatch):
    """A label map must not depend on the cache: memory only (``--no-cache``)
    and a disk that fails mid-run give the same rounded embedding a cold and
    a warm cache give."""
    be = CountingBackend()
    cached = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path / "c").get(4).features
    memory = SliceEmbeddings(be, volume, Window(0, 1000)).get(4).features
    assert torch.equal(memory, cached)

    def full_disk(self, index, emb):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EmbeddingStore, "save", full_disk)
    failed = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path / "d")
    with pytest.warns(NapariSamWarning, match="cannot write the embedding cache"):
        got = failed.get(4).features
    assert torch.equal(got, cached)
    exact = SliceEmbeddings(be, volume, Window(0, 1000), dtype="float32").get(4).features
    assert torch.equal(exact, be.embed(Window(0, 1000).apply(volume[4])).features)


_WRITER = """
import sys, time, warnings
from pathlib import Path
import numpy as np, torch
from napari_sam.cache import EmbeddingStore
from napari_sam.models.base import Embedding
root, me, other, entries = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
warnings.simplefilter("error")
(root.parent / me).touch()
while not (root.parent / other).exists():  # start together
    time.sleep(0.001)
for e in range(entries):
    store = EmbeddingStore(root, f"entry{e}", {"what": "race"}, 3)
    for i in range(3):
        f = torch.full((1, 4, 8, 8), float(10 * e + i) + 0.1)
        store.save(i, Embedding(features=f, original_size=(8, 8), input_size=(8, 8), model="m"))
"""


def test_two_processes_creating_the_same_entries_at_once_both_keep_the_disk(tmp_path):
    """Two runs (CLI or batch workers) sharing a cache folder create the same
    entries at the same moment: neither fails over to memory, and every
    entry ends complete and valid. Before the lock, one run removed the
    other's half-made entry (ENOENT, then memory only)."""
    import subprocess
    import sys

    root, entries = tmp_path / "cache", 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), me, other, str(entries)], stderr=subprocess.PIPE, text=True
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.strip().splitlines()[-1:]
    for e in range(entries):
        store = EmbeddingStore(root, f"entry{e}", {"what": "race"}, 3)
        for i in range(3):
            got = store.load(i)
            assert got is not None and float(got.features[0, 0, 0, 0]) == pytest.approx(10 * e + i + 0.1, abs=0.05)
    assert not list(root.glob(".*partial*"))


def test_the_entry_lock_file_follows_the_umask(tmp_path, volume):
    import os

    old = os.umask(0o027)
    try:
        SliceEmbeddings(CountingBackend(), volume, Window(0, 1000), cache_dir=tmp_path).get(0)
    finally:
        os.umask(old)
    (lock,) = tmp_path.glob("*.lock")
    assert lock.stat().st_mode & 0o777 == 0o640


def test_key_covers_content_model_window_and_axis(tmp_path, volume):
    be = CountingBackend()
    h = content_hash(volume)
    w = Window(0, 1000)
    keys = {
        embedding_key(h, "counting", w, 0),
        embedding_key(h, "other", w, 0),
        embedding_key(h, "counting", Window(0, 500), 0),
        embedding_key(h, "counting", w, 1),
        embedding_key(content_hash(volume[::-1]), "counting", w, 0),
    }
    assert len(keys) == 5
    SliceEmbeddings(be, volume, w, cache_dir=tmp_path).get(0)
    for other in (
        SliceEmbeddings(be, volume, Window(0, 500), cache_dir=tmp_path),
        SliceEmbeddings(be, volume, w, axis=1, cache_dir=tmp_path),
        SliceEmbeddings(be, volume + 1, w, cache_dir=tmp_path),
    ):
        other.get(0)
        assert other.encoder_calls == 1
    assert len(list(tmp_path.glob("*.zarr"))) == 4


def test_stale_entry_is_rebuilt(tmp_path, volume):
    be = CountingBackend()
    e = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    e.get(0)
    e.get(1)
    sig = e.store.path / "signature.json"
    meta = json.loads(sig.read_text())
    meta["format"] = -1  # an entry written by another version
    sig.write_text(json.dumps(meta))
    again = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    assert again.missing() == list(range(6))
    again.get(0)
    assert again.encoder_calls == 1
    sig.write_text("{not json")
    assert SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path).missing() == list(range(6))


def test_corrupt_slice_is_detected_and_recomputed(tmp_path, volume):
    be = CountingBackend()
    e = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    for i in (0, 1, 2):
        e.get(i)
    chunks = sorted(p for p in (e.store.path / "features").rglob("*") if p.is_file() and "zarr" not in p.name)
    assert len(chunks) == 3
    chunks[1].write_bytes(b"\x00garbage" * 7)  # a damaged chunk
    chunks[2].write_bytes(chunks[0].read_bytes())  # a valid chunk holding the wrong slice
    again = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    for i in (0, 1, 2):
        again.get(i)
    assert again.encoder_calls == 2 and again.disk_hits == 1
    assert again.store.recomputed_corrupt == 2
    ref = be.embed(Window(0, 1000).apply(volume[2])).features
    assert torch.allclose(again.get(2).features, ref, atol=1e-2)
    third = SliceEmbeddings(be, volume, Window(0, 1000), cache_dir=tmp_path)
    for i in (0, 1, 2):
        third.get(i)
    assert third.encoder_calls == 0  # the recomputed slices were written back


def test_lru_bounds_memory(volume):
    be = CountingBackend()
    e = SliceEmbeddings(be, volume, Window(0, 1000), max_in_memory=2)
    for i in range(6):
        e.get(i)
    assert e.provider.in_memory(e.entry) == [4, 5]  # least recently used first
    e.get(4)
    e.get(0)
    assert e.provider.in_memory(e.entry) == [4, 0] and e.encoder_calls == 7


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert resolve_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(CACHE_ENV)
    assert "napari-sam" in str(default_cache_dir())
    with pytest.raises(InputError, match="dtype"):
        EmbeddingStore(tmp_path, "k", {}, 3, dtype="int8")


@pytest.mark.slow
def test_cli_embed_then_segment_warm_encodes_nothing(tmp_path, data_dir, capsys, monkeypatch):
    """End to end on the real MR volume: `embed` a few slices, then a
    propagating `segment` in that range reads them all from the cache."""
    from napari_sam.cli import main

    mr = data_dir / "mr_small"
    image = next(p for p in mr.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert main(["embed", str(image), "--slices", "9:11", "--window", "auto"]) == 0
    err = capsys.readouterr().err
    assert "3 slice(s) encoded, 0 already cached" in err
    assert main(["embed", str(image), "--slices", "9:11", "--quiet"]) == 0
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps(
            {
                "objects": [
                    {
                        "id": 1,
                        "name": "head",
                        "propagate": True,
                        "range": [9, 11],
                        "prompts": [{"slice": 10, "box": [20, 20, 90, 70]}],
                    }
                ]
            }
        )
    )
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(image), "--prompts", str(prompts), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "0 slice(s) encoded, 3 from the cache" in err, err
    assert out.exists()
    from napari_sam.io import sidecar_path

    side = json.loads(sidecar_path(out).read_text())
    assert "1" in side["labels"]
    # one-line errors
    assert main(["embed", str(image), "--slices", "5:99", "--cache-dir", str(cache)]) == 2
    assert "napari-sam: error: --slices 5:99: outside" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["embed", str(image), "--cache-dir", str(f)]) == 2
    assert "cache directory is a file" in capsys.readouterr().err


def test_a_crop_of_the_slices_is_its_own_cached_entry(tmp_path, volume):
    be = CountingBackend()
    win = Window(0, 1000)
    e = SliceEmbeddings(be, volume, win, cache_dir=tmp_path)
    crop = Crop.from_box((2, 1, 9, 8))
    got = e.get(3, crop)
    assert be.calls == [float(win.apply(volume[3, 2:10, 1:9]).mean())]  # the encoder saw the crop only
    assert got.original_size == (8, 8) and e.encoder_calls == 1
    assert e.get(3, crop) is got and len(be.calls) == 1  # from memory
    assert e.get(3, Crop.whole((12, 10))) is e.get(3) and len(be.calls) == 2  # the whole slice is no crop
    again = SliceEmbeddings(be, volume, win, cache_dir=tmp_path)
    assert again.get(3, crop).original_size == (8, 8)
    assert again.encoder_calls == 0 and again.disk_hits == 1
    side = SliceEmbeddings(be, volume, win, axis=2)
    side.get(4, Crop(1, 2, 3, 4))
    assert be.calls[-1] == float(win.apply(volume[1:4, 2:6, 4]).mean())
    with pytest.raises(InputError, match="outside"):
        e.get(0, Crop.from_box((0, 0, 12, 3)))
