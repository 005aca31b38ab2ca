"""Corrections through the CLI: `napari-sam segment` with "corrections" in the prompts file (fake model)."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from napari_sam.cli import main
from test_corrections import leaky_scene
from test_propagation import BrightInBoxBackend, key_prompt


def _segment(tmp_path, monkeypatch, vol, objects, name):
    import napari_sam.models.registry as registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: BrightInBoxBackend())
    image = tmp_path / "leaky.nii.gz"
    if not image.exists():
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(image))
    prompts = tmp_path / f"{name}_prompts.json"  # not {name}.json: that is the output's sidecar
    prompts.write_text(json.dumps({"window": [0, 255], "objects": objects}))
    out = tmp_path / f"{name}.nii.gz"
    rc = main(["segment", str(image), "--prompts", str(prompts), "--output", str(out), "--no-cache", "--quiet"])
    return rc, (sitk.GetArrayFromImage(sitk.ReadImage(str(out))) if rc == 0 else None)


def test_cli_correction_removes_the_leak_and_keeps_the_slices_it_does_not_reach(tmp_path, monkeypatch):
    vol, target, other = leaky_scene()
    obj = {"id": 1, "name": "target", "propagate": True, "prompts": [key_prompt(target, 10).to_json()]}
    rc, plain = _segment(tmp_path, monkeypatch, vol, [obj], "plain")
    assert rc == 0
    corrected_obj = dict(obj, corrections=[{"point": [16, 32, 54], "label": 0}])
    rc, corrected = _segment(tmp_path, monkeypatch, vol, [corrected_obj], "corrected")
    assert rc == 0
    assert ((plain == 1) & other).sum() > 500
    assert ((corrected == 1) & other).sum() < 0.25 * ((plain == 1) & other).sum()
    assert np.array_equal(corrected[:12], plain[:12])  # slices the leak never reached


def test_cli_refuses_a_correction_outside_the_volume_with_one_line(tmp_path, monkeypatch, capsys):
    vol, target, _ = leaky_scene()
    obj = {
        "id": 1,
        "name": "target",
        "propagate": True,
        "prompts": [key_prompt(target, 10).to_json()],
        "corrections": [{"point": [30, 32, 54], "label": 0}],
    }
    rc, _ = _segment(tmp_path, monkeypatch, vol, [obj], "bad")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "outside the volume" in err and "\n" not in err and "Traceback" not in err
