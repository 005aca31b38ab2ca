"""Issue #20 on the shared CT: a session with a box, clicks, a correction, a painted
slice and an object segmented under another window (bone, for a vertebra), exported as a prompts file and run through ``napari-sam segment``,
gives the session's label map voxel for voxel; ``segment --session`` replays the
saved session to the same map and refuses a modified image (one line, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam.annotation import Annotation, ImageRef, decode_key, save_session
from napari_sam.annotation.export_prompts import export_prompts
from napari_sam.cli import main
from napari_sam.corrections import Correction
from napari_sam.embeddings import CropEmbeddings, EmbeddingProvider
from napari_sam.intensity import resolve_window
from napari_sam.io import read_image
from napari_sam.models.registry import load_model
from napari_sam.predictor import PROMPT_ZOOM, SlicePredictor
from napari_sam.prompts import SlicePrompt
from napari_sam.propagation import Propagator
from napari_sam.segmentation import key_choice_for

WINDOW = [-160.0, 240.0]
BONE = [-400.0, 1000.0]


def widget_like_session(volume, backend, cache):
    """What a user does in the widget: a box (liver), a click (spleen) previewed with
    zoom as the widget does, propagation, a 3D correction, then erasing part of a slice."""
    provider = EmbeddingProvider(backend, cache)
    win = resolve_window(volume.array, WINDOW, volume.metadata.get("modality"), volume.metadata.get("dicom_window"))
    emb = provider.views_of(volume.array)(win, 0)
    pred = SlicePredictor(backend, zoom=PROMPT_ZOOM, crop_embeddings=CropEmbeddings(backend, provider=provider))
    m = Annotation(volume.shape, volume.geometry.scale_zyx, key_choice=key_choice_for(volume))
    prop = Propagator(backend, emb, key_choice=m.key_choice)

    def commit(oid, prompt, e=emb):
        pred.set_embedding(e.get(prompt.slice), image=e.model_input(prompt.slice))
        previous = m.previous_for(oid, 0, prompt.slice, prompt)
        p = decode_key(pred, prompt, previous, m.key_choice)
        exact = p.crop is None and previous is None
        m.commit(oid, prompt.slice, prompt, p.mask, exact=exact, window=[e.window.lo, e.window.hi])

    m.add_object("liver", (220, 90, 60))
    commit(1, SlicePrompt(box=(196, 107, 374, 269), slice=10))
    m.propagate(1, prop)
    m.add_object("spleen", (90, 160, 230))
    commit(2, SlicePrompt(points=[[349, 332]], labels=[1], slice=10))
    m.propagate(2, prop)
    commit(2, SlicePrompt(points=[[349, 332], [300, 380]], labels=[1, 0], slice=13))  # clicks refining slice 13
    m.propagate(2, prop)
    # the user switches to a bone window for a vertebra (slices 9-11), then back for the liver
    bone = provider.views_of(volume.array)(resolve_window(volume.array, BONE), 0)
    m.add_object("vertebra", (240, 240, 120))
    m.set_range(3, (9, 11))
    commit(3, SlicePrompt(box=(310, 224, 380, 269), slice=10), bone)
    m.propagate(3, Propagator(backend, bone, key_choice=m.key_choice))
    z, r, c = 15, *np.argwhere(m.labels[15] == 1)[-1]  # a removal at the liver's lower edge on slice 15
    m.correct(1, Correction((z, int(r), int(c)), 0), prop)
    user = np.array(m.labels)
    user[12, 250:300, 150:200][user[12, 250:300, 150:200] == 1] = 0  # erase a block of the liver on slice 12
    m.paint(user)
    return m


@pytest.fixture(scope="module")
def session(ct_dicom_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct_session")
    volume = read_image(ct_dicom_dir)
    m = widget_like_session(volume, load_model(), tmp / "cache")
    return volume, m, tmp


def test_exported_prompts_give_the_session_labels(session, ct_dicom_dir, capsys):
    volume, m, tmp = session
    kinds = {o.name: [a["op"] for a in o.log] for o in m.objects}
    assert kinds == {
        "liver": ["commit", "propagate", "correction", "paint"],
        "spleen": ["commit", "propagate", "commit", "propagate"],
        "vertebra": ["range", "commit", "propagate"],
    }
    export_prompts(tmp / "ct.json", m, window=WINDOW)  # the window at export time: soft tissue
    doc = json.loads((tmp / "ct.json").read_text())
    assert any("mask" in s.get("paint", {}) for s in doc["objects"][0]["steps"])
    assert [o["window"] for o in doc["objects"]] == [WINDOW, WINDOW, BONE]  # each object's own window
    out = tmp / "replayed.nii.gz"
    rc = main(
        ["segment", str(ct_dicom_dir), "--prompts", str(tmp / "ct.json"), "--output", str(out)]
        + ["--cache-dir", str(tmp / "cache"), "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    got = read_image(out).array
    assert np.count_nonzero(got != m.labels) == 0
    assert set(np.unique(got)) == {0, 1, 2, 3}


def test_segment_session_replays_it_and_refuses_another_image(session, ct_dicom_dir, capsys):
    import SimpleITK as sitk

    volume, m, tmp = session
    folder = save_session(
        tmp / "ct.session", m, ImageRef.of(volume.array, ct_dicom_dir), {"name": "lite_medsam"}, {"window": WINDOW}
    )
    out = tmp / "from_session.nii.gz"
    rc = main(["segment", "--session", str(folder), "--output", str(out), "--cache-dir", str(tmp / "cache"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert np.array_equal(read_image(out).array, m.labels)
    changed = np.array(volume.array)
    changed[3, 100, 100] += 1
    img = sitk.GetImageFromArray(changed)
    sitk.WriteImage(img, str(tmp / "changed.nii.gz"))
    capsys.readouterr()
    bad = tmp / "bad.nii.gz"
    rc = main(["segment", str(tmp / "changed.nii.gz"), "--session", str(folder), "--output", str(bad), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "belongs to another image" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()
