"""A window changed in the middle of a session replays as it was (issue #20): every
decoded commit and every run logs the window the model saw; the export gives each
object its first window and a ``{"window": ...}`` step where it changed, so that
``napari-sam segment --prompts EXPORTED.json`` gives the session's label map voxel for
voxel (fake model), and the window step is validated like any step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.annotation import Annotation, ImageRef, save_session
from napari_sam.annotation.export_prompts import export_prompts
from napari_sam.cli import main
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError
from napari_sam.intensity import Window
from napari_sam.io import Volume
from napari_sam.prompts import load_prompts, parse_prompts
from napari_sam.propagation import Propagator
from napari_sam.segmentation import key_choice_for, segment_volume
from test_annotation import key_mask
from test_propagation import BrightInBoxBackend, ball, key_prompt

SOFT, BONE = Window(0.0, 150.0), Window(0.0, 255.0)  # the dim shell shows under SOFT only


def scene():
    """A ball with a bright core (200) and a dim shell (100), and a dim ball (100)."""
    shell = ball(radius=(9, 17, 15))
    core = ball()
    dim = ball(center=(12, 50, 54), radius=(5, 7, 7))
    vol = np.where(core, 200.0, np.where(shell | dim, 100.0, 0.0)).astype(np.float32)
    return vol, core, shell, dim


def session_under_two_windows(vol, core, shell, dim):
    """Object 1 (ribs-like: the core) under BONE; the user then switches to SOFT for
    object 2 (the dim ball) and goes on with object 1 under SOFT (a new key slice, a
    re-propagation), as a widget session logs it."""
    backend = BrightInBoxBackend()
    emb = {w.key(): SliceEmbeddings(backend, vol, w, axis=0) for w in (SOFT, BONE)}
    prop = {k: Propagator(backend, e) for k, e in emb.items()}
    m = Annotation(vol.shape, key_choice=key_choice_for(Volume(vol)))
    m.add_object("core")
    p = key_prompt(core, 12)
    m.commit(1, 12, p, key_mask(backend, emb[BONE.key()], p, 12), window=[BONE.lo, BONE.hi])
    m.propagate(1, prop[BONE.key()])
    m.add_object("dim")
    p = key_prompt(dim, 12)
    m.commit(2, 12, p, key_mask(backend, emb[SOFT.key()], p, 12), window=[SOFT.lo, SOFT.hi])
    m.propagate(2, prop[SOFT.key()])
    p = key_prompt(shell, 5)
    m.commit(1, 5, p, key_mask(backend, emb[SOFT.key()], p, 5), window=[SOFT.lo, SOFT.hi])
    m.propagate(1, prop[SOFT.key()])
    return m, backend


def test_the_window_of_each_action_is_logged_and_exported(tmp_path):
    vol, core, shell, dim = scene()
    m, backend = session_under_two_windows(vol, core, shell, dim)
    assert [a.get("window") for a in m.object(1).log] == [[0.0, 255.0], [0.0, 255.0], [0.0, 150.0], [0.0, 150.0]]
    # the session's window at export time is SOFT: the file's, for objects that logged none
    export_prompts(tmp_path / "p.json", m, window=[SOFT.lo, SOFT.hi])
    doc = json.loads((tmp_path / "p.json").read_text())
    o1, o2 = doc["objects"]
    assert o1["window"] == [0.0, 255.0] and o2["window"] == [0.0, 150.0]
    assert [next(iter(s)) for s in o1["steps"]] == ["commit", "propagate", "window", "commit", "propagate"]
    assert o1["steps"][2] == {"window": [0.0, 150.0]}
    res = segment_volume(Volume(vol), load_prompts(tmp_path / "p.json"), backend)
    np.testing.assert_array_equal(res.labels, m.labels)
    # what the first window gave stays: the core's slices far from slice 5 hold no shell
    assert not np.any((res.labels[12] == 1) & shell[12] & ~core[12])
    # under the export-time window alone the replay differs (what the issue found)
    for o in doc["objects"]:
        o.pop("window")
        o["steps"] = [s for s in o["steps"] if "window" not in s]
    (tmp_path / "flat.json").write_text(json.dumps(doc))
    flat = segment_volume(Volume(vol), load_prompts(tmp_path / "flat.json"), backend)
    assert np.count_nonzero(flat.labels != m.labels) > 100


def test_cli_replays_an_exported_and_a_saved_session_voxel_for_voxel(tmp_path, monkeypatch):
    import napari_sam.models.registry as registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: BrightInBoxBackend())
    vol, core, shell, dim = scene()
    m, _ = session_under_two_windows(vol, core, shell, dim)
    image = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(image))
    session = save_session(tmp_path / "s.session", m, ImageRef.of(vol, image), {"name": "x"}, {"window": [0, 150]})
    exported = tmp_path / "exported.json"
    assert main(["export-prompts", str(session), str(exported), "--quiet"]) == 0
    for args in (["--prompts", str(exported)], ["--session", str(session)]):
        out = tmp_path / f"out{len(args[1])}.nii.gz"
        assert main(["segment", str(image), *args, "--output", str(out), "--no-cache", "--quiet"]) == 0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), m.labels)


def test_a_window_step_is_checked():
    obj = {"id": 1, "name": "a", "steps": [{"commit": {"slice": 1, "box": [1, 1, 5, 5]}}]}
    for bad in ([5, 1], [1], "", [1, "x"], {"lo": 1}):
        with pytest.raises(InputError, match="'window' must be a preset name or"):
            parse_prompts({"objects": [dict(obj, steps=[{"window": bad}, *obj["steps"]])]})
    pf = parse_prompts({"objects": [dict(obj, steps=[{"window": [-160, 240]}, *obj["steps"]])]})
    assert pf.objects[0].steps[0].window == [-160.0, 240.0]
    with pytest.raises(InputError, match="unknown key 'windw'"):
        parse_prompts({"objects": [dict(obj, steps=[{"windw": [0, 1]}])]})
