"""Fuzz-safety suite, part 2: outputs, caches and faults.

The promise checked: no input is ever overwritten (names, symlinks, hard
links, DICOM files, checkpoint); a result's files land together or not at
all, verified, with the umask's permissions; a full disk or read-only folder
gives one line naming the output, exit 1, and nothing left behind; damaged
caches are rebuilt with a warning; SIGKILL, SIGINT and concurrent runs never
change or leave behind anything. The model is a fast fake where it is not
the point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fuzz_helpers import (
    cli_command,
    cli_env,
    digest,
    run_cli,
    tree,
    wait_for,
    write_dicom_series,
    write_prompts,
    write_volume,
)
from napari_sam.errors import InputError, NapariSamWarning, OutputError
from napari_sam.io import Geometry, sidecar_path, write_labels
from napari_sam.outputs import OutputFile, bytes_output, write_outputs


@pytest.fixture()
def case(tmp_path):
    img = write_volume(tmp_path / "img.nii.gz")
    prompts = write_prompts(tmp_path / "prompts.json")
    return tmp_path, img, prompts


def _segment(tmp_path, img, prompts, out, *extra, **env):
    return run_cli(
        ["segment", img, "--prompts", prompts, "--output", out, "--quiet", "--cache-dir", tmp_path / "cache", *extra],
        **env,
    )


def _one_line_error(proc, code: int, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("napari-sam: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


# ----------------------------------------------------------------------------- inputs never overwritten


def _target(tmp_path: Path, img: Path, prompts: Path, kind: str) -> tuple[list, Path]:
    """(extra CLI args, the input that must survive) for an output aimed at an input."""
    if kind == "sidecar-is-prompts":  # x.json next to x.nii.gz is the prompts file
        p = tmp_path / "x.json"
        shutil.copy(prompts, p)
        return ["--prompts", p, "--output", tmp_path / "x.nii.gz"], p
    if kind == "overview-is-image":
        png = tmp_path / "in.png"
        from PIL import Image

        Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
        return ["--output", tmp_path / "o.nii.gz", "--overview", png, "--image", png], png
    if kind == "output-is-image":
        return ["--output", img], img
    if kind == "output-hardlink-to-image":
        link = tmp_path / "hard.nii.gz"
        os.link(img, link)
        return ["--output", link, "--overwrite"], img
    if kind == "output-symlink-to-image":
        link = tmp_path / "soft.nii.gz"
        link.symlink_to(img)
        return ["--output", link, "--overwrite"], img
    if kind == "sidecar-hardlink-to-prompts":
        os.link(prompts, tmp_path / "y.json")
        return ["--output", tmp_path / "y.nii.gz", "--overwrite"], prompts
    if kind == "output-is-checkpoint":
        ck = tmp_path / "ck.nii"
        ck.write_bytes(b"weights")
        return ["--output", ck, "--checkpoint", ck, "--overwrite"], ck
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "sidecar-is-prompts",
        "overview-is-image",
        "output-is-image",
        "output-hardlink-to-image",
        "output-symlink-to-image",
        "sidecar-hardlink-to-prompts",
        "output-is-checkpoint",
    ],
)
def test_no_output_may_be_an_input(case, kind):
    tmp_path, img, prompts = case
    extra, keep = _target(tmp_path, img, prompts, kind)
    args = dict(zip(extra[::2], extra[1::2]))
    flags = [e for e in extra if e == "--overwrite"]
    image = args.pop("--image", img)
    argv = [
        "segment",
        image,
        "--prompts",
        args.pop("--prompts", prompts),
        "--quiet",
        "--cache-dir",
        tmp_path / "cache",
        *[x for kv in args.items() for x in kv],
        *flags,
    ]
    before = {p: digest(p) for p in (img, prompts, keep)}
    proc = run_cli(argv)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "input" in proc.stderr or "exists" in proc.stderr
    assert {p: digest(p) for p in before} == before


def test_output_inside_dicom_folder_hardlinked_to_a_slice(tmp_path):
    d = tmp_path / "dicom"
    files = write_dicom_series(d)
    out = tmp_path / "seg.nii"
    os.link(files[2], out)
    prompts = write_prompts(tmp_path / "p.json")
    before = tree(d)
    proc = run_cli(["segment", d, "--prompts", prompts, "--output", out, "--overwrite", "--quiet", "--no-cache"])
    _one_line_error(proc, 2, "input")
    assert tree(d) == before


@pytest.mark.parametrize("existing", ["sidecar", "overview"])
def test_existing_sidecar_or_overview_needs_overwrite(case, existing):
    tmp_path, img, prompts = case
    out, ov = tmp_path / "o.nii.gz", tmp_path / "o.png"
    victim = sidecar_path(out) if existing == "sidecar" else ov
    victim.write_bytes(b"keep me")
    proc = _segment(tmp_path, img, prompts, out, "--overview", ov)
    _one_line_error(proc, 2, "exists", "--overwrite")
    assert victim.read_bytes() == b"keep me" and not out.exists()


# ----------------------------------------------------------------------------- values and permissions


@pytest.mark.parametrize(
    "values,expect",
    [
        (np.full((1, 4, 4), np.nan, np.float32), "NaN"),
        (np.full((1, 4, 4), 1.7), "fractional"),
        (np.full((1, 4, 4), 2**33, np.int64), "above the largest"),
        (np.full((1, 4, 4), -1, np.int32), "negative"),
        (np.array([["a"]]), "expected integers"),
    ],
)
def test_label_values_validated_before_writing(tmp_path, values, expect):
    with pytest.raises(InputError, match=expect):
        write_labels(tmp_path / "l.nii.gz", values, Geometry())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value,dtype", [(255, "uint8"), (65535, "uint16"), (2**32 - 1, "uint32")])
def test_large_ids_kept_exactly(tmp_path, value, dtype):
    import SimpleITK as sitk

    lab = np.zeros((2, 3, 4), np.int64)
    lab[1, 2, 3] = value
    out = write_labels(tmp_path / "l.nrrd", lab, Geometry())
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert back.dtype == np.dtype(dtype) and int(back[1, 2, 3]) == value


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = write_labels(tmp_path / "l.nii.gz", np.ones((1, 4, 4), np.uint8), Geometry())
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == mode and (sidecar_path(out).stat().st_mode & 0o777) == mode


def test_a_failing_file_leaves_nothing_of_the_set(tmp_path):
    def bad_write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    files = [
        bytes_output(tmp_path / "a.json", b"{}", "sidecar"),
        OutputFile(tmp_path / "b.png", bad_write, None, "overview"),
    ]
    with pytest.raises(OutputError, match="b.png: cannot write the overview .no space left"):
        write_outputs(files)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_verification_leaves_nothing_and_keeps_the_old_files(tmp_path):
    (tmp_path / "a.json").write_bytes(b"old a")

    def verify(tmp: Path) -> None:
        raise ValueError("reads back as zeros")

    files = [
        bytes_output(tmp_path / "a.json", b"new", "sidecar"),
        OutputFile(tmp_path / "b.bin", lambda t: t.write_bytes(b"x"), verify, "label map"),
    ]
    with pytest.raises(OutputError, match="does not read back"):
        write_outputs(files, overwrite=True)
    assert tree(tmp_path) == {"a.json": digest(tmp_path / "a.json")} and (tmp_path / "a.json").read_bytes() == b"old a"


def test_a_failing_rename_rolls_back_the_renamed(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_bytes(b"old a")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst).endswith("b.json") and len(calls) < 3:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="input/output error"):
        write_outputs(
            [
                bytes_output(tmp_path / "a.json", b"new a", "sidecar"),
                bytes_output(tmp_path / "b.json", b"new b", "sidecar"),
            ],
            overwrite=True,
        )
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"old a"


# ----------------------------------------------------------------------------- full disk / read-only (tmpfs)


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_full_disk_leaves_nothing_and_names_the_output(tmp_path, tiny_tmpfs, suffix):
    img = write_volume(tmp_path / "big.nii.gz", shape=(6, 96, 96))
    prompts = write_prompts(tmp_path / "p.json")
    if suffix == ".tif":  # a 2D micrograph
        from PIL import Image

        img = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160)).astype(np.uint8)).save(img)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(os.urandom(12 * 1024))
    before = tree(tiny_tmpfs)
    out = tiny_tmpfs / f"seg{suffix}"
    if suffix == ".tif":
        prompts = write_prompts(tmp_path / "p2.json", [{"id": 1, "prompts": [{"box": [6, 6, 150, 150]}]}])
    proc = _segment(tmp_path, img, prompts, out, "--overview", tiny_tmpfs / "ov.png")
    _one_line_error(proc, 1, str(out.parent), "no space left on device", "nothing written")
    assert tree(tiny_tmpfs) == before


def test_read_only_overview_folder_refused_before_any_work(tmp_path, tiny_tmpfs):
    img = write_volume(tmp_path / "img.nii.gz")
    prompts = write_prompts(tmp_path / "p.json")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    proc = _segment(tmp_path, img, prompts, tmp_path / "o.nii.gz", "--overview", tiny_tmpfs / "ov.png")
    _one_line_error(proc, 2, "read-only")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.json").exists()


def test_read_only_cache_dir_falls_back_to_memory(tmp_path, tiny_tmpfs):
    img = write_volume(tmp_path / "img.nii.gz")
    prompts = write_prompts(tmp_path / "p.json")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    out = tmp_path / "o.nii.gz"
    proc = run_cli(["segment", img, "--prompts", prompts, "--output", out, "--quiet", "--cache-dir", tiny_tmpfs])
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "memory" in proc.stderr and out.exists()


# ----------------------------------------------------------------------------- damaged caches


def _cache_entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if p.suffix == ".zarr"]
    assert len(entries) == 1
    return entries[0]


@pytest.fixture()
def cached_run(case):
    tmp_path, img, prompts = case
    first = tmp_path / "first.nii.gz"
    proc = _segment(tmp_path, img, prompts, first)
    assert proc.returncode == 0, proc.stderr
    return tmp_path, img, prompts, first


@pytest.mark.parametrize("damage", ["garbage-zarr-json", "missing-crc", "garbage-signature"])
def test_damaged_cache_entry_is_rebuilt_with_a_warning(cached_run, damage):
    tmp_path, img, prompts, first = cached_run
    entry = _cache_entry(tmp_path / "cache")
    if damage == "garbage-zarr-json":
        (entry / "features" / "zarr.json").write_text("{not json")
    elif damage == "missing-crc":
        shutil.rmtree(entry / "crc")
    else:
        (entry / "signature.json").write_text("[]")
    for k in range(2):  # the rebuilt entry serves later runs
        out = tmp_path / f"again{k}.nii.gz"
        proc = _segment(tmp_path, img, prompts, out)
        assert proc.returncode == 0, proc.stderr
        assert digest(out) == digest(first)
        if k == 0 and damage != "garbage-signature":  # a stale signature is rebuilt silently, as before
            assert "napari-sam: warning: " in proc.stderr and "damaged" in proc.stderr, proc.stderr


def test_damaged_entry_warning_is_given(cached_run):
    from napari_sam.cache import EmbeddingStore

    tmp_path, *_ = cached_run
    entry = _cache_entry(tmp_path / "cache")
    sig = json.loads((entry / "signature.json").read_text())
    (entry / "features" / "zarr.json").write_text("{not json")
    keep = {
        k: v
        for k, v in sig.items()
        if k
        not in ("format", "n_slices", "dtype", "feature_shape", "original_size", "input_size", "model_name", "extra")
    }
    key = entry.name.rsplit("-", 1)[0]
    with pytest.warns(NapariSamWarning, match="damaged"):
        store = EmbeddingStore(entry.parent, key, keep, sig["n_slices"])
    assert not entry.exists() and store.load(0) is None


def test_chunk_copied_from_another_slice_is_detected(tmp_path):
    import torch

    from napari_sam.cache import EmbeddingStore
    from napari_sam.models.base import Embedding

    store = EmbeddingStore(tmp_path, "k", {"x": 1}, 12)
    for i in (9, 10):
        store.save(
            i,
            Embedding(features=torch.full((1, 2, 4, 4), float(i)), original_size=(8, 8), input_size=(8, 8), model="m"),
        )
    store._features[10] = store._features[9]
    store._crc[10] = store._crc[9]
    other = EmbeddingStore(tmp_path, "k", {"x": 1}, 12)
    assert other.load(9) is not None and other.load(10) is None


# ----------------------------------------------------------------------------- signals and concurrency


def test_sigkill_during_embedding_then_rerun_is_byte_identical(case):
    """Killed after the cache entry holds its first slice, while the other slices of the
    propagation are still being encoded (0.5 s each): the rerun finishes from the cache
    and its output equals a clean run's."""
    tmp_path, img, _ = case
    obj = {"id": 1, "name": "x", "propagate": True, "prompts": [{"slice": 1, "box": [6, 6, 22, 22]}]}
    prompts = write_prompts(tmp_path / "propagated.json", [obj])
    clean = tmp_path / "clean.nii.gz"
    assert run_cli(["segment", img, "--prompts", prompts, "--output", clean, "--quiet", "--no-cache"]).returncode == 0
    out = tmp_path / "o.nii.gz"
    argv = ["segment", img, "--prompts", prompts, "--output", out, "--quiet", "--cache-dir", tmp_path / "cache"]
    proc = subprocess.Popen(cli_command(argv), env=cli_env(FAKE_EMBED_DELAY="0.5"), stderr=subprocess.PIPE)
    assert wait_for(lambda: (tmp_path / "cache").exists() and any((tmp_path / "cache").glob("*.zarr")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    rerun = run_cli(argv)
    assert rerun.returncode == 0, rerun.stderr
    assert digest(out) == digest(clean)


def test_sigint_leaves_nothing_behind(case):
    tmp_path, img, prompts = case
    out = tmp_path / "o.nii.gz"
    before = tree(tmp_path)
    argv = [
        "segment",
        img,
        "--prompts",
        prompts,
        "--output",
        out,
        "--overview",
        tmp_path / "o.png",
        "--quiet",
        "--no-cache",
    ]
    mark = tmp_path.parent / f"{tmp_path.name}.embedding"
    proc = subprocess.Popen(
        cli_command(argv),
        env=cli_env(FAKE_EMBED_DELAY="3", FAKE_EMBED_MARK=str(mark)),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(mark.exists, timeout=120)  # it is embedding
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert tree(tmp_path) == before


def test_two_concurrent_runs_sharing_a_cache_agree(case):
    tmp_path, img, prompts = case
    procs, outs = [], []
    for k in range(2):
        outs.append(tmp_path / f"c{k}.nii.gz")
        argv = [
            "segment",
            img,
            "--prompts",
            prompts,
            "--output",
            outs[-1],
            "--quiet",
            "--cache-dir",
            tmp_path / "cache",
        ]
        procs.append(
            subprocess.Popen(cli_command(argv), env=cli_env(FAKE_EMBED_DELAY="0.05"), stderr=subprocess.PIPE, text=True)
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "cannot write the embedding cache" not in err  # both kept the shared disk entry
    clean = tmp_path / "clean.nii.gz"
    assert run_cli(["segment", img, "--prompts", prompts, "--output", clean, "--quiet", "--no-cache"]).returncode == 0
    assert digest(outs[0]) == digest(outs[1]) == digest(clean)


def test_cli_bad_prompt_is_one_line_exit_2(case):
    tmp_path, img, _ = case
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"objects": [{"id": 1, "propagte": True, "prompts": [{"slice": 1, "box": [1, 1, 5, 5]}]}]})
    )
    proc = run_cli(["segment", img, "--prompts", bad, "--output", tmp_path / "o.nii.gz", "--quiet", "--no-cache"])
    _one_line_error(proc, 2, "'propagte'", "did you mean 'propagate'")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
