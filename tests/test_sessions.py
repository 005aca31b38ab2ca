"""Sessions (napari_sam.annotation.sessions): save and open a session folder,
refuse another image or a newer format, and recover after a SIGKILL from the
crash-recovery journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sam.annotation import Annotation, ImageRef, Journal, find_recovery, open_session, save_session
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError
from napari_sam.intensity import Window
from napari_sam.propagation import Propagator
from test_annotation import key_mask
from test_propagation import BrightInBoxBackend, ball, key_prompt

HERE = Path(__file__).resolve().parent


def scene_volume():
    big = ball()
    small = ball(center=(12, 32, 52), radius=(5, 8, 9))
    return np.where(big | small, 200.0, 0.0).astype(np.float32), big, small


def finished_actions(vol, big, small):
    """Add, commit, propagate and paint: a session's first finished actions."""
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    m = Annotation(vol.shape, spacing_zyx=(2.0, 0.7, 0.7))
    m.add_object("big", color=(10, 200, 30))
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    m.propagate(1, Propagator(backend, emb))
    user = np.array(m.labels)
    user[8, 30:34, 26:30] = 0
    m.paint(user)
    m.add_object("small")
    return m, backend, emb


def same(a: Annotation, b: Annotation) -> None:
    assert np.array_equal(a.labels, b.labels)
    assert a.current_id == b.current_id
    for x, y in zip(a.objects, b.objects, strict=True):
        assert (x.id, x.name, x.color, x.key_slices, x.painted, x.corrections) == (
            y.id,
            y.name,
            y.color,
            y.key_slices,
            y.painted,
            y.corrections,
        )
        if x.state is not None:
            assert sorted(x.state.results) == sorted(y.state.results)
            assert all(np.array_equal(x.state.results[i], y.state.results[i]) for i in x.state.results)
            assert x.state.stops == y.state.stops and x.state.dirty == y.state.dirty


def test_save_open_continue(tmp_path):
    vol, big, small = scene_volume()
    m, backend, emb = finished_actions(vol, big, small)
    image = ImageRef.of(vol, tmp_path / "vol.nii.gz")
    folder = save_session(tmp_path / "s", m, image, {"name": backend.name}, {"window": [0, 255]})
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "session.json"]
    doc = json.loads((folder / "session.json").read_text())
    assert doc["format"] == "napari-sam session" and doc["version"] == 2 and doc["settings"] == {"window": [0, 255]}
    back = open_session(folder, image=vol)
    same(back.annotation, m)
    assert back.image == image and back.model == {"name": backend.name}
    # continue as if never closed: correct and re-propagate on both, the same result
    for a in (m, back.annotation):
        a.commit(2, 10, key_prompt(small, 10), key_mask(backend, emb, key_prompt(small, 10), 10))
        a.propagate(2, Propagator(backend, emb))
    same(back.annotation, m)
    # saving again replaces the folder whole
    save_session(folder, back.annotation, image)
    same(open_session(folder, image=vol).annotation, m)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_another_image_or_a_newer_format_is_refused(tmp_path):
    vol, big, small = scene_volume()
    m, *_ = finished_actions(vol, big, small)
    folder = save_session(tmp_path / "s", m, ImageRef.of(vol, "/data/old/place.nii.gz"))
    changed = vol.copy()
    changed[3, 3, 3] += 1.0
    with pytest.raises(InputError, match="another image"):
        open_session(folder, image=changed)
    moved = open_session(folder, image=vol, image_path=tmp_path / "new.nii.gz")  # relocated
    assert moved.image.path == str(tmp_path / "new.nii.gz")
    doc = json.loads((folder / "session.json").read_text())
    doc["version"] = 3
    (folder / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="newer than this napari-sam reads"):
        open_session(folder, image=vol)
    with pytest.raises(InputError, match="not a napari-sam session"):
        open_session(tmp_path)


def test_a_killed_session_is_recovered_up_to_its_last_finished_action(tmp_path):
    """A child process runs a session with a journal and is killed (SIGKILL) in the
    middle of a propagation; its recovery copy holds every action finished before."""
    vol, big, small = scene_volume()
    root = tmp_path / "recovery"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))
    )
    child = subprocess.Popen(
        [sys.executable, str(HERE / "session_child.py"), str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    try:
        lines = []
        while "propagating" not in lines:
            line = child.stdout.readline()
            assert line, f"the child ended early: {lines}"
            lines.append(line.strip())
        time.sleep(1.0)  # well inside the slow propagation
        assert child.poll() is None, "the child must still be running"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL and lines == ["journalled", "propagating"]
    folder = find_recovery(ImageRef.of(vol), root)
    assert folder is not None
    recovered = open_session(folder, image=vol).annotation
    expected, *_ = finished_actions(vol, big, small)
    expected.commit(2, 10, mask=small[10])
    same(recovered, expected)
    assert recovered.object(2).key_slices == [10] and not recovered.object(2).propagated


def test_journal_writes_in_the_background_and_a_clean_close_leaves_nothing(tmp_path):
    vol, big, small = scene_volume()
    m = Annotation(vol.shape)
    journal = Journal(ImageRef.of(vol), folder=tmp_path / "rec").attach(m)
    t0 = time.perf_counter()
    for i in range(5):
        m.add_object(f"o{i}")
        m.commit(i + 1, 10 + i, mask=big[10 + i])
    recording = time.perf_counter() - t0
    assert journal.flush() and not journal.errors and journal.written == 10
    same(open_session(tmp_path / "rec", image=vol).annotation, m)
    m.undo()  # an undo is a finished action too
    assert journal.flush()
    same(open_session(tmp_path / "rec", image=vol).annotation, m)
    journal.close()
    assert not (tmp_path / "rec").exists()
    print(f"\n10 actions recorded in {recording * 1000:.0f} ms on the caller's thread (loaded)")
