"""An adapted model survives its session (issue #20): an adaptation's weights (what it
changed in the decoder) are logged, saved in the session folder (``adapted/<sha256>.npz``,
with the checksum in the manifest) and restored when it opens, so that the reopened
session continues with the adapted model; ``segment --session`` and the exported
prompts file reuse the saved weights (no training) and give the same labels; a changed
weights file is refused; the base model is never changed; a version-1 session opens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.annotation import Annotation, ImageRef, open_session, save_session
from napari_sam.annotation.actions import latest_weights
from napari_sam.cli import main
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError, ModelError
from napari_sam.finetune.adapted import AdaptedWeights, adapted_backend, read_weights
from napari_sam.intensity import Window
from napari_sam.propagation import Propagator

WINDOW = Window(0.0, 1.0)


def tube(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A bright core (the object) inside a dim halo (which the base model tends to take too)."""
    yy, xx = np.mgrid[:96, :96]
    d2 = (yy - 48) ** 2 + (xx - 48) ** 2
    img = np.full((n, 96, 96), 0.1, np.float32)
    img[:, d2 < (9 * 1.8) ** 2] = 0.45
    img[:, d2 < 81] = 0.9
    return img, np.broadcast_to(d2 < 81, img.shape).copy()


def _decoder(backend) -> dict:
    return {k: v.detach().clone() for k, v in backend.mask_decoder.state_dict().items()}


def continue_with(m: Annotation, backend, emb, core) -> np.ndarray:
    """Further work after the adaptation: a painted slice, propagated with ``backend``."""
    m.paint_slice(1, 1, core[1] & (np.arange(96)[None, :] < 52))
    m.propagate(1, Propagator(backend, emb))
    return np.array(m.labels)


@pytest.fixture(scope="module")
def adapted(lite_medsam, tmp_path_factory):
    """Paint, propagate, adapt (3 steps): saved as ``a.session``; then further work with the
    adapted model, saved as ``b.session`` (embeddings cached on disk for the CLI runs)."""
    root = tmp_path_factory.mktemp("adapted")
    img, core = tube()
    base = _decoder(lite_medsam)
    emb = SliceEmbeddings(lite_medsam, img, WINDOW, axis=0, cache_dir=root / "cache")
    m = Annotation(img.shape)
    m.add_object("core")
    m.paint_slice(1, 4, core[4])
    m.propagate(1, Propagator(lite_medsam, emb))
    run = m.adaptation(1, Propagator(lite_medsam, emb), steps=3)
    m.run_to_end(run)
    image = root / "tube.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(img), str(image))
    ref = ImageRef.of(img, image)
    a = save_session(root / "a.session", m, ref, {"name": "lite_medsam"}, {"window": [0, 1]})
    weights = latest_weights(m.object(1))
    want = continue_with(m, run.adapted, emb, core)
    b = save_session(root / "b.session", m, ref, {"name": "lite_medsam"}, {"window": [0, 1]})
    return {"img": img, "core": core, "emb": emb, "adapted": run.adapted, "weights": weights, "base": base}, a, b, want


def test_the_weights_are_saved_and_the_reopened_session_continues_with_them(lite_medsam, adapted):
    import torch

    d, folder, _, want = adapted
    img, w = d["img"], d["weights"]
    assert isinstance(w, AdaptedWeights) and w.steps == 3 and 0 < sum(a.size for a in w.tensors.values()) < 2e6
    doc = json.loads((folder / "session.json").read_text())
    name = f"adapted/{w.sha256}.npz"
    assert doc["version"] == 2 and doc["adapted"] == {name: w.sha256}
    assert doc["annotation"]["objects"][0]["log"][-1]["weights"] == {"file": name, "sha256": w.sha256}
    assert sorted(p.name for p in (folder / "adapted").iterdir()) == [f"{w.sha256}.npz"]
    reopened = open_session(folder, image=img).annotation
    w2 = latest_weights(reopened.object(1))
    assert w2.sha256 == w.sha256 and w2.tensors.keys() == w.tensors.keys()
    restored = adapted_backend(lite_medsam, w2)
    assert all(torch.equal(v, _decoder(d["adapted"])[k]) for k, v in _decoder(restored).items())
    assert all(torch.equal(d["base"][k], v) for k, v in _decoder(lite_medsam).items())  # the base model untouched
    # the same further work on the reopened session as on the session itself: the same labels
    np.testing.assert_array_equal(continue_with(reopened, restored, d["emb"], d["core"]), want)
    with_base = continue_with(open_session(folder, image=img).annotation, lite_medsam, d["emb"], d["core"])
    assert np.count_nonzero(with_base != want) > 0, "the base model would give another result"


def test_weights_of_another_model_or_a_changed_file_are_refused(lite_medsam, adapted, tmp_path):
    import shutil

    d, folder, _, _ = adapted
    img, w = d["img"], d["weights"]
    other = AdaptedWeights(w.tensors, "0" * 64, w.steps)
    with pytest.raises(ModelError, match="another model"):
        adapted_backend(lite_medsam, other)
    copy = shutil.copytree(folder, tmp_path / "c.session")
    f = copy / "adapted" / f"{w.sha256}.npz"
    data = bytearray(f.read_bytes())
    data[-30] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="changed"):
        open_session(copy, image=img)
    with pytest.raises(InputError, match="changed"):
        read_weights(f, w.sha256)


def test_a_version_1_session_opens_without_weights(adapted, tmp_path):
    import shutil

    d, folder, _, _ = adapted
    img = d["img"]
    old = shutil.copytree(folder, tmp_path / "v1.session")
    shutil.rmtree(old / "adapted")
    doc = json.loads((old / "session.json").read_text())
    doc["version"] = 1
    doc.pop("adapted")
    for od in doc["annotation"]["objects"]:
        for a in od["log"]:
            a.pop("weights", None)
    (old / "session.json").write_text(json.dumps(doc))
    reopened = open_session(old, image=img).annotation
    np.testing.assert_array_equal(reopened.labels, open_session(folder, image=img).annotation.labels)
    assert latest_weights(reopened.object(1)) is None  # its runs use the base model (docs/sessions.md)


def test_cli_replays_the_saved_weights_without_training(lite_medsam, adapted, tmp_path, monkeypatch):
    import napari_sam.annotation.running as running
    import napari_sam.models.registry as registry

    d, _, folder, want = adapted

    def no_training(*a, **k):
        raise AssertionError("the replay trained again instead of using the saved weights")

    monkeypatch.setattr(running, "adapt_to_slices", no_training)
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: lite_medsam)
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(folder.parent / "cache"))
    exported = tmp_path / "t.prompts.json"
    assert main(["export-prompts", str(folder), str(exported), "--quiet"]) == 0
    step = json.loads(exported.read_text())["objects"][0]["steps"][2]["adapt"]
    assert step["steps"] == 3 and step["weights"] == "t.prompts.masks/obj1_adapted_2.npz"
    assert (tmp_path / step["weights"]).is_file()
    for k, args in enumerate((["--session", str(folder)], ["--prompts", str(exported)])):
        out = tmp_path / f"out{k}.nii.gz"
        assert (
            main(
                ["segment", *args, "--output", str(out), "--quiet"]
                + ([str(folder.parent / "tube.nii.gz")] if k else [])
            )
            == 0
        )
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), want)
    (tmp_path / step["weights"]).write_bytes(b"changed")
    image = str(folder.parent / "tube.nii.gz")
    assert main(["segment", image, "--prompts", str(exported), "--output", str(tmp_path / "x.nii.gz")]) == 2
    assert not (tmp_path / "x.nii.gz").exists()


def test_an_adapt_steps_weights_file_is_checked_before_any_model_runs(tmp_path):
    import hashlib

    from napari_sam.prompts import load_prompts

    w = AdaptedWeights({"mask_decoder.x": np.ones((2, 3), np.float32)}, "f" * 64, 2)
    (tmp_path / "w.npz").write_bytes(w.to_bytes())
    assert AdaptedWeights.from_bytes(w.to_bytes()).tensors["mask_decoder.x"].shape == (2, 3)
    assert w.sha256 == hashlib.sha256((tmp_path / "w.npz").read_bytes()).hexdigest()
    commit = {"commit": {"slice": 1, "box": [1, 1, 5, 5]}}

    def load(adapt):
        obj = {"id": 1, "name": "a", "steps": [commit, {"propagate": True}, {"adapt": adapt}]}
        (tmp_path / "p.json").write_text(json.dumps({"objects": [obj]}))
        return load_prompts(tmp_path / "p.json")

    step = load({"steps": 2, "weights": "w.npz", "sha256": w.sha256}).objects[0].steps[2]
    assert step.weights == tmp_path / "w.npz" and step.steps == 2
    for adapt, message in [
        ({"weights": "w.npz"}, "needs its 'sha256'"),
        ({"weights": "w.npz", "sha256": "0" * 64}, "changed"),
        ({"weights": "../w.npz", "sha256": w.sha256}, "outside the prompts file's folder"),
        ({"weights": "none.npz", "sha256": w.sha256}, "not found"),
        ({"weights": "w.npz", "sha": w.sha256}, "unknown key 'sha'"),
    ]:
        with pytest.raises(InputError, match=message):
            load(adapt)


def test_the_recovery_journal_keeps_the_weights_and_links_them_when_unchanged(adapted, tmp_path):
    from napari_sam.annotation import Journal

    d, folder, _, _ = adapted
    m = open_session(folder, image=d["img"]).annotation
    journal = Journal(ImageRef.of(d["img"]), folder=tmp_path / "recovery")
    journal.record(m)
    assert journal.flush()
    f = tmp_path / "recovery" / "adapted" / f"{d['weights'].sha256}.npz"
    inode = f.stat().st_ino
    m.rename(1, "core again")
    journal.record(m)  # rewritten whole; the unchanged weights file is linked, not written again
    assert journal.flush() and not journal.errors
    assert f.stat().st_ino == inode
    back = open_session(tmp_path / "recovery", image=d["img"]).annotation
    assert back.object(1).name == "core again" and latest_weights(back.object(1)).sha256 == d["weights"].sha256
    journal.close()
    assert not (tmp_path / "recovery").exists()


def test_a_prompts_files_corrections_after_adapt_use_the_adapted_model(lite_medsam, adapted, monkeypatch):
    """``"adapt": true`` then ``"corrections"``: the corrections run with the adapted model,
    as the widget's later runs do (training replaced by a copy of the decoder, for speed)."""
    import copy

    import napari_sam.annotation.running as running
    from napari_sam.finetune.adapt import AdaptResult
    from napari_sam.finetune.pipeline import with_decoder
    from napari_sam.io import Volume
    from napari_sam.prompts import parse_prompts
    from napari_sam.segmentation import segment_volume

    d, folder, _, _ = adapted
    made, used = [], []

    def quick(backend, *a, **k):
        made.append(with_decoder(backend, copy.deepcopy(backend.prompt_encoder), copy.deepcopy(backend.mask_decoder)))
        return AdaptResult(made[-1], 0.0, 1, 0.0, 0.0)

    real = running.apply_correction

    def spy(state, propagator, *a, **k):
        used.append(propagator.backend)
        return real(state, propagator, *a, **k)

    monkeypatch.setattr(running, "adapt_to_slices", quick)
    monkeypatch.setattr(running, "apply_correction", spy)
    obj = {"id": 1, "name": "core", "propagate": True, "adapt": True}
    obj |= {"prompts": [{"slice": 4, "box": [39, 39, 57, 57]}], "corrections": [{"point": [2, 48, 48], "label": 0}]}
    cache = folder.parent / "cache"
    segment_volume(
        Volume(d["img"]),
        parse_prompts({"window": [0, 1], "objects": [obj]}),
        lite_medsam,
        embeddings_for=lambda w, a: SliceEmbeddings(lite_medsam, d["img"], w, a, cache_dir=cache),
    )
    assert len(made) == 1 and len(used) == 1 and used[0] is made[0]
