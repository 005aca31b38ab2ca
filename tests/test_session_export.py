"""A session exported as a prompts file (napari_sam.annotation.export_prompts) and
replayed: the same label map, voxel for voxel, whatever the order of the actions;
mask files resolved beside the prompts file and refused with one line when
missing, outside its folder or of the wrong shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam.annotation import Annotation
from napari_sam.annotation.export_prompts import export_prompts, session_prompts
from napari_sam.corrections import Correction
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError
from napari_sam.intensity import Window
from napari_sam.io import Volume
from napari_sam.prompts import SlicePrompt, load_prompts
from napari_sam.propagation import Propagator
from napari_sam.segmentation import key_choice_for, segment_volume
from test_annotation import key_mask
from test_propagation import BrightInBoxBackend, ball, key_prompt


def scene():
    big = ball()
    small = ball(center=(12, 32, 52), radius=(5, 8, 9))
    vol = np.where(big | small, 200.0, 0.0).astype(np.float32)
    return vol, big, small


def out_of_order_session(vol, big, small):
    """Box, propagate, a second key by clicks, a paint, a cancelled re-propagation,
    a correction, a range: actions no declarative prompts file can order."""
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    m = Annotation(vol.shape, spacing_zyx=(1.0, 1.0, 1.0), key_choice=key_choice_for(volume_of(vol)))
    prop = Propagator(backend, emb)
    m.add_object("big", color=(10, 200, 30))
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    m.propagate(1, prop)
    clicks = SlicePrompt(points=[[32, 30]], labels=[1], slice=8)
    chosen = key_mask(backend, emb, key_prompt(big, 8), 8)  # the user took another mask than the clicks give
    m.commit(1, 8, clicks, chosen, exact=False)
    user = np.array(m.labels)
    user[15, 28:36, 24:30] = 0
    m.paint(user)
    run = m.propagation(1, prop)
    stop_after = 3
    m.run_to_end(run, cancel=_After(run, stop_after))
    m.correct(1, Correction((12, 32, 30), 0), prop)
    m.add_object("small")
    m.commit(2, 12, key_prompt(small, 12), key_mask(backend, emb, key_prompt(small, 12), 12))
    m.set_range(2, (9, 16))
    m.propagate(2, prop)
    return m, backend


class _After:
    def __init__(self, run, n):
        self.run, self.n = run, n

    def is_set(self):
        return self.run.events >= self.n


def volume_of(vol):
    return Volume(vol)


def test_export_replays_the_same_label_map(tmp_path):
    vol, big, small = scene()
    m, backend = out_of_order_session(vol, big, small)
    paths = export_prompts(tmp_path / "session.json", m, window=[0, 255])
    doc = json.loads((tmp_path / "session.json").read_text())
    kinds = [next(iter(s)) for s in doc["objects"][0]["steps"]]
    assert kinds == ["commit", "propagate", "commit", "paint", "propagate", "correction"]
    assert doc["objects"][0]["steps"][4] == {"propagate": {"events": 3}}
    assert doc["objects"][0]["steps"][2]["commit"]["mask"].startswith("session.masks/")
    assert len(paths) == 3  # two mask files (the chosen mask, the painted slice) and the JSON
    prompts = load_prompts(tmp_path / "session.json")
    res = segment_volume(volume_of(vol), prompts, backend)
    assert np.array_equal(res.labels, m.labels)
    assert res.names == {1: "big", 2: "small"}
    # the replayed annotation logs the same actions: exporting it again gives the same file
    again = json.dumps(session_prompts_doc(res.annotation))
    assert again == json.dumps(session_prompts_doc(m))


def session_prompts_doc(m):
    from napari_sam.annotation.export_prompts import prompts_document

    return prompts_document(session_prompts(m, [0, 255]))[0]


def test_mask_files_are_checked(tmp_path):
    vol, big, small = scene()
    m, _ = out_of_order_session(vol, big, small)
    export_prompts(tmp_path / "s.json", m, window=[0, 255])
    doc = json.loads((tmp_path / "s.json").read_text())
    step = doc["objects"][0]["steps"][2]["commit"]
    mask_file = tmp_path / step["mask"]

    def write(d, name="t.json"):
        (tmp_path / name).write_text(json.dumps(d))
        return tmp_path / name

    step["mask"] = "../elsewhere.png"
    with pytest.raises(InputError, match="outside the prompts file's folder"):
        load_prompts(write(doc))
    step["mask"] = "s.masks/none.png"
    with pytest.raises(InputError, match="none.png not found"):
        load_prompts(write(doc))
    from PIL import Image

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    step["mask"] = "small.png"
    p = load_prompts(write(doc))
    with pytest.raises(InputError, match=r"mask of shape \[10, 12\]"):
        p.check_against(vol.shape, False)
    step["mask"] = str(mask_file)  # absolute: allowed anywhere
    load_prompts(write(doc, "sub.json")).check_against(vol.shape, False)


def test_a_slice_painted_during_a_run_replays_after_it(tmp_path):
    """The widget paints while a propagation runs: the stroke is applied to the run's
    state when it finishes, so it is logged after the run and replays the same."""
    vol, big, _small = scene()
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    m = Annotation(vol.shape, key_choice=key_choice_for(volume_of(vol)))
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    run = m.propagation(1, Propagator(backend, emb))
    job = run.steps()
    for _ in range(3):
        m.apply(run, next(job))
    user = np.array(m.labels)
    user[12, 28:36, 24:30] = 0  # on the key slice, while the run goes on
    m.paint(user)
    for event in job:
        m.apply(run, event)
    m.finish(run)
    assert [a["op"] for a in m.object(1).log] == ["commit", "propagate", "paint"]
    export_prompts(tmp_path / "p.json", m, window=[0, 255])
    res = segment_volume(volume_of(vol), load_prompts(tmp_path / "p.json"), backend)
    assert np.array_equal(res.labels, m.labels)


def test_a_session_saved_without_a_log_is_not_exported(tmp_path):
    vol, big, small = scene()
    m, _ = out_of_order_session(vol, big, small)
    m.object(2).log = None  # as an older session opens
    with pytest.raises(InputError, match="before napari-sam recorded the order"):
        export_prompts(tmp_path / "p.json", m)
    assert not (tmp_path / "p.json").exists()


def test_export_prompts_command_and_session_usage_errors(tmp_path, capsys):
    from napari_sam.annotation import ImageRef, save_session
    from napari_sam.cli import main

    vol, big, small = scene()
    m, _ = out_of_order_session(vol, big, small)
    folder = save_session(tmp_path / "s.session", m, ImageRef.of(vol), {"name": "bright-in-box"}, {"window": [0, 255]})
    out = tmp_path / "out" / "p.json"
    assert main(["export-prompts", str(folder), str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["window"] == [0.0, 255.0] and [o["name"] for o in doc["objects"]] == ["big", "small"]
    assert sorted(p.name for p in (tmp_path / "out" / "p.masks").iterdir()) == ["obj1_s15_3.png", "obj1_s8_2.png"]
    capsys.readouterr()
    assert main(["export-prompts", str(folder), str(out)]) == 2  # exists: --overwrite needed
    assert "exists" in capsys.readouterr().err
    assert main(["export-prompts", str(folder), str(out), "--overwrite"]) == 0
    for args, message in [
        (["segment", "--session", str(folder), "--output", str(tmp_path / "o.nii.gz")], "does not record its image"),
        (
            ["segment", "x.nii", "--session", str(folder), "--prompts", str(out), "--output", str(tmp_path / "o.nii")],
            "without --prompts",
        ),
        (["segment", "--output", str(tmp_path / "o.nii.gz"), "--prompts", str(out)], "segment needs IMAGE"),
    ]:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("o.nii*"))


def test_a_commit_without_a_mask_replays_as_deferred(tmp_path):
    """commit(id, z, prompt) with no mask: the propagation decodes it (its key rule), so the
    step is deferred, not decoded at once."""
    vol, big, _small = scene()
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    m = Annotation(vol.shape, key_choice=key_choice_for(volume_of(vol)))
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12))
    m.propagate(1, Propagator(backend, emb))
    export_prompts(tmp_path / "p.json", m, window=[0, 255])
    step = json.loads((tmp_path / "p.json").read_text())["objects"][0]["steps"][0]["commit"]
    assert step["defer"] is True and "mask" not in step
    res = segment_volume(volume_of(vol), load_prompts(tmp_path / "p.json"), backend)
    assert np.array_equal(res.labels, m.labels)
    assert res.annotation.object(1).state.info[12].source == m.object(1).state.info[12].source
