"""Taught classes and text prompts: teach a class head from labels, find a class by name.

Unit tests use synthetic feature grids (each class a distinct feature direction);
the real-model tests teach from the shared CT's slices 0-9.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_sam.errors import InputError
from napari_sam.finetune.checkpoint import base_state, read_class_state, save_tuned
from napari_sam.finetune.classes import ClassHead, grid_labels, load_class_head, teach
from napari_sam.models.base import Embedding
from napari_sam.text_prompts import find_class, name_instances, parse_class_names, text_prompts_file

SIZE = 64  # model input side of the synthetic embeddings (16 x 16 cells of 4 px)


def _synthetic_slice(labels: np.ndarray, seed: int) -> Embedding:
    """Features whose direction says the class: class k at cell -> e_k + noise."""
    rng = np.random.default_rng(seed)
    cells = labels.reshape(16, 4, 16, 4).max(axis=(1, 3))
    f = rng.normal(0, 0.3, (8, 16, 16)).astype(np.float32)
    for k in range(3):
        f[k] += (cells == k) * 2.0
    return Embedding(torch.from_numpy(f)[None], labels.shape, labels.shape, "synthetic")


def _phantom(shift: int) -> np.ndarray:
    lab = np.zeros((SIZE, SIZE), np.int32)
    lab[8 + shift : 28 + shift, 8:40] = 1  # "liver"
    lab[40:56, 36 + shift : 60] = 2  # "spleen"
    return lab


def test_grid_labels_marks_each_cell_by_the_class_covering_most_of_it():
    lab = _phantom(0)
    grid = grid_labels(lab, [1, 2], _synthetic_slice(lab, 0), SIZE)
    assert grid.shape == (16, 16)
    assert (grid == 1).sum() == 5 * 8 and (grid == 2).sum() == 4 * 6
    assert grid[0, 0] == 0


@pytest.mark.parametrize("method", ["logistic", "prototype"])
def test_taught_head_finds_each_class_on_unseen_slices(method):
    train = [_phantom(s) for s in (0, 4)]
    embs = [_synthetic_slice(t, i) for i, t in enumerate(train)]
    head = teach(
        embs, [grid_labels(t, [1, 2], e, SIZE) for t, e in zip(train, embs)], ["liver", "spleen"], method=method
    )
    test = [_phantom(2), np.zeros((SIZE, SIZE), np.int32)]
    test_embs = [_synthetic_slice(t, 10 + i) for i, t in enumerate(test)]
    probs = np.stack([head.probabilities(e).numpy() for e in test_embs])
    found = find_class(head, "Spleen", probs, test_embs, SIZE)
    assert found is not None and found.slice == 0 and found.name == "spleen"
    assert found.box == (40, 36, 55, 59)  # the spleen's cells, in pixels (4 px per cell)
    liver = find_class(head, "liver", probs, test_embs, SIZE)
    assert liver.box[0] in (8, 12) and liver.box[2] in (27, 31) and liver.confidence > 0.5


def test_automatic_instances_get_their_taught_class_and_confidence():
    train = [_phantom(s) for s in (0, 4)]
    embs = [_synthetic_slice(t, i) for i, t in enumerate(train)]
    head = teach(embs, [grid_labels(t, [1, 2], e, SIZE) for t, e in zip(train, embs)], ["liver", "spleen"])
    test = _phantom(2)
    instances = np.zeros((1, SIZE, SIZE), np.int32)
    instances[0][test == 2] = 7  # the spleen, as automatic mode would find it
    instances[0][12:24, 10:36] = 3  # most of the liver
    instances[0][0:6, 0:6] = 9  # background debris
    named = name_instances(head, instances, lambda z: _synthetic_slice(test, 5), SIZE)
    assert named[7][0] == "spleen" and named[3][0] == "liver" and named[9][0] == "unknown"
    assert min(named[7][1], named[3][1]) > 0.5


def test_unknown_class_is_refused_with_the_taught_classes_and_the_closest():
    head = ClassHead(["liver", "spleen"], torch.zeros(3, 8), torch.zeros(3), torch.arange(3), "logistic")
    with pytest.raises(InputError, match=r"'livr'.*did you mean 'liver'.*knows: liver, spleen"):
        head.index_of("livr")
    with pytest.raises(InputError, match="it knows: liver, spleen"):
        text_prompts_file(head, ["liver", "kidney"], [], SIZE, propagate=False)
    with pytest.raises(InputError, match="named twice"):
        parse_class_names("liver, Liver")
    with pytest.raises(InputError, match="separated by commas"):
        parse_class_names("liver,,spleen")


def test_class_head_travels_in_a_weights_only_checkpoint(tmp_path):
    head = ClassHead(["liver"], torch.randn(2, 8), torch.randn(2), torch.arange(2), "logistic", "-110,190")
    base, _ = base_state("lite_medsam")
    path = save_tuned(tmp_path / "tuned.pt", base, {}, {"kind": "test"}, classes=head.to_state())
    back = load_class_head(path)
    assert back.names == ["liver"] and torch.equal(back.weight, head.weight) and back.window == "-110,190"
    plain = save_tuned(tmp_path / "plain.pt", base, {}, {"kind": "test"})
    assert read_class_state(plain) is None
    with pytest.raises(InputError, match="has not been taught any class"):
        load_class_head(plain)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_sam.cli", *args], capture_output=True, text=True)


def test_cli_text_needs_a_taught_checkpoint(tmp_path, ct_dicom_dir):
    out = str(tmp_path / "o.nii.gz")
    r = _cli("segment", str(ct_dicom_dir), "--text", "liver", "--output", out)
    assert r.returncode == 2 and "text prompts need a checkpoint" in r.stderr and "Traceback" not in r.stderr
    r = _cli("segment", str(ct_dicom_dir), "--text", "liver", "--prompts", "x.json", "--output", out)
    assert r.returncode == 2 and "without --prompts" in r.stderr


@pytest.fixture(scope="module")
def ct_head(lite_medsam, ct_volume, ct_labels, ct_label_names):
    """A head taught from slices 0-9 of the shared CT in the window the CLI uses by default."""
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import resolve_window

    md = ct_volume.metadata
    win = resolve_window(ct_volume.array, None, md.get("modality"), md.get("dicom_window"))
    store = SliceEmbeddings(lite_medsam, ct_volume.array, win, 0)
    names = ["liver", "spleen", "stomach", "aorta"]
    ids = [ct_label_names[n] for n in names]
    grids = [grid_labels(ct_labels[z], ids, store.get(z), lite_medsam.image_size) for z in range(10)]
    return teach([store.get(z) for z in range(10)], grids, names), store


@pytest.mark.slow
def test_text_prompt_finds_liver_and_spleen_on_slices_it_was_not_taught_on(
    ct_head, ct_labels, ct_label_names, lite_medsam
):
    from napari_sam.geometry import box_iou, box_of_mask

    head, store = ct_head
    embs = [store.get(z) for z in range(10, 20)]
    doc, found = text_prompts_file(head, ["liver", "spleen"], embs, lite_medsam.image_size, propagate=True)
    assert [o["name"] for o in doc["objects"]] == ["liver", "spleen"]
    for f in found:
        truth = box_of_mask(ct_labels[10 + f.slice] == ct_label_names[f.name])
        assert box_iou(f.box, truth) > 0.6, (f, truth)


@pytest.mark.slow
def test_cli_segments_a_class_by_name(tmp_path, ct_head, ct_dicom_dir, ct_labels, ct_label_names):
    from napari_sam.io import read_image

    head, _ = ct_head
    base, _ = base_state("lite_medsam")
    ckpt = save_tuned(tmp_path / "taught.pt", base, {}, {"kind": "test"}, classes=head.to_state())
    out = tmp_path / "liver.nii.gz"
    r = _cli(
        "segment", str(ct_dicom_dir), "--text", "liver", "--checkpoint", str(ckpt), "--output", str(out), "--quiet"
    )
    assert r.returncode == 0, r.stderr
    labels = read_image(out).array
    truth = ct_labels == ct_label_names["liver"]
    dice = 2 * ((labels == 1) & truth).sum() / ((labels == 1).sum() + truth.sum())
    assert dice > 0.9, dice
    r = _cli(
        "segment",
        str(ct_dicom_dir),
        "--text",
        "pancreas",
        "--checkpoint",
        str(ckpt),
        "--output",
        str(tmp_path / "p.nii.gz"),
    )
    assert r.returncode == 2 and "knows: aorta, liver, spleen, stomach" in r.stderr


@pytest.mark.slow
def test_auto_names_its_instances_with_a_taught_checkpoint(tmp_path, data_dir, lite_medsam):
    """A head taught 'nucleus' on the left half of nuclei_2d names the instances automatic mode finds."""
    import json

    import tifffile

    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import resolve_window

    image = data_dir / "nuclei_2d" / "image.tif"
    truth = tifffile.imread(data_dir / "nuclei_2d" / "labels.tif")
    arr = tifffile.imread(image).astype(np.float32)[None]
    win = resolve_window(arr, None)
    emb = SliceEmbeddings(lite_medsam, arr, win, 0).get(0)
    left = np.where(np.arange(truth.shape[1])[None] < truth.shape[1] // 2, truth > 0, 0).astype(np.int32)
    grid = grid_labels(left, [1], emb, lite_medsam.image_size)
    grid[:, grid.shape[1] // 2 :] = -1  # the right half is not taught
    head = teach([emb], [grid], ["nucleus"])
    base, _ = base_state("lite_medsam")
    ckpt = save_tuned(tmp_path / "nuclei.pt", base, {}, {"kind": "test"}, classes=head.to_state())
    out = tmp_path / "auto.tif"
    r = _cli("auto", str(image), "--output", str(out), "--checkpoint", str(ckpt), "--quiet")
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    classes = [c["class"] for c in side["classes"].values()]
    assert len(classes) > 50 and classes.count("nucleus") / len(classes) > 0.9
