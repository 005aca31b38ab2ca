"""Fine-tuning and in-session adaptation (napari_sam.finetune): a tiny run on a
generated image with the real embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.cache import content_hash
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError, ModelError
from napari_sam.finetune.adapt import adapt_to_slices
from napari_sam.finetune.checkpoint import read_provenance
from napari_sam.finetune.data import jittered_box, samples_from_volume
from napari_sam.finetune.pipeline import finetune_samples, tuned_backend
from napari_sam.finetune.train import DecoderTrainer, FinetuneSettings
from napari_sam.intensity import Window
from napari_sam.models.registry import load_model


def _disks(seed: int = 0, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(n, 96, 96) float images of bright disks with a dim halo (which the base model
    tends to include) and their instance labels (the bright cores)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.1, 0.02, (n, 96, 96)).astype(np.float32)
    lab = np.zeros((n, 96, 96), np.int32)
    yy, xx = np.mgrid[:96, :96]
    for z in range(n):
        k = 1
        for r in (24, 72):
            for c in (24, 72):
                rad = rng.uniform(7, 11)
                d2 = (yy - r) ** 2 + (xx - c) ** 2
                img[z][d2 < (rad * 1.8) ** 2] = 0.45
                img[z][d2 < rad**2] = 0.9
                lab[z][d2 < rad**2] = k
                k += 1
    return img, lab


@pytest.fixture(scope="module")
def disk_samples(lite_medsam):
    img, lab = _disks()
    win = Window(0.0, 1.0)
    emb = SliceEmbeddings(lite_medsam, img, win, 0)
    samples = samples_from_volume(lambda w: emb, lab, {}, {i: win for i in range(1, 5)}, "disks", 256)
    return img, lab, emb, samples


def _fixed_loss(trainer: DecoderTrainer, samples) -> float:
    with torch.no_grad():
        total = []
        for s in samples:
            logits, iou = trainer.forward(s, jittered_box(s.mask, np.random.default_rng(0), jitter=0.0)[None])
            total.append(float(trainer.loss(logits, iou, s.target[None])))
    return float(np.mean(total))


def _decoder_state(backend) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in list(backend.mask_decoder.state_dict().items())
        + [("pe." + k, v) for k, v in backend.prompt_encoder.state_dict().items()]
    }


def test_tiny_finetune_lowers_its_training_loss_and_reloads_safely(lite_medsam, disk_samples, tmp_path):
    _, _, _, samples = disk_samples
    settings = FinetuneSettings(epochs=3, lr=1e-3, val_fraction=0.0, patience=3, anchor=0.0)
    before = _fixed_loss(DecoderTrainer(lite_medsam, settings), samples)
    out = tmp_path / "tuned.pt"
    res = finetune_samples(lite_medsam, samples, settings, output=out)
    after = _fixed_loss(res.trainer, samples)
    assert after < 0.8 * before, (before, after)
    # the file is a weights-only checkpoint that the registry loads into the architecture
    torch.load(out, map_location="cpu", weights_only=True)
    loaded = load_model("lite_medsam", checkpoint=out)
    for k, v in res.trainer.mask_decoder.state_dict().items():
        assert torch.equal(loaded.mask_decoder.state_dict()[k], v), k
    s = samples[0]
    box = jittered_box(s.mask, np.random.default_rng(0), jitter=0.0)
    emb = disk_samples[2].get(0)
    a = loaded.decode(emb, boxes_rc=box[None]).masks
    b = tuned_backend(lite_medsam, res.trainer).decode(emb, boxes_rc=box[None]).masks
    assert np.array_equal(a, b)


def test_checkpoint_records_its_provenance(lite_medsam, disk_samples, tmp_path):
    img, lab, _, samples = disk_samples
    data = [{"image": "disks", "image_sha256": content_hash(img), "labels_sha256": content_hash(lab)}]
    settings = FinetuneSettings(epochs=1, lr=1e-4, val_fraction=0.25, seed=3)
    out = tmp_path / "tuned.pt"
    res = finetune_samples(lite_medsam, samples, settings, output=out, data=data)
    prov = read_provenance(out)
    assert prov["base_model"] == "lite_medsam"
    assert prov["base_sha256"].startswith("79d8c9dc")
    assert prov["data"][0]["image_sha256"] == content_hash(img)
    assert prov["data"][0]["labels_sha256"] == content_hash(lab)
    assert prov["settings"]["seed"] == 3 and prov["settings"]["epochs"] == 1
    v = prov["validation"]
    assert v["base_val_dice"] == pytest.approx(res.result.base_val_dice)
    assert v["best_val_dice"] == pytest.approx(res.result.best_val_dice)
    assert prov["samples"] == {"train": res.n_train, "validation": res.n_val} and res.n_val > 0
    with pytest.raises(ModelError, match="no provenance"):
        bad = tmp_path / "plain.pt"
        torch.save({"w": torch.zeros(2)}, bad)
        read_provenance(bad)


def test_interruption_keeps_the_best_checkpoint_so_far(lite_medsam, disk_samples, tmp_path):
    _, _, _, samples = disk_samples
    settings = FinetuneSettings(epochs=5, lr=1e-3, val_fraction=0.0, patience=5, anchor=0.0)
    steps = []

    def progress(done: int, total: int, message: str) -> None:
        steps.append(done)
        if message.startswith("epoch 3"):
            raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 3

    out = tmp_path / "tuned.pt"
    res = finetune_samples(lite_medsam, samples, settings, output=out, progress=progress)
    assert res.result.interrupted
    assert [h["epoch"] for h in res.result.history] == [0, 1, 2]
    prov = read_provenance(out)
    assert prov["validation"]["interrupted"] is True
    assert prov["validation"]["best_epoch"] == res.result.best_epoch
    loaded = load_model("lite_medsam", checkpoint=out)
    for k, v in res.trainer.mask_decoder.state_dict().items():  # the trainer holds the best epoch's weights
        assert torch.equal(loaded.mask_decoder.state_dict()[k], v), k
    assert not list(tmp_path.glob(".tuned.pt.*"))  # no temporary file left behind


def test_adaptation_does_not_touch_the_base_model(lite_medsam, disk_samples):
    _, lab, emb, _ = disk_samples
    before = _decoder_state(lite_medsam)
    res = adapt_to_slices(lite_medsam, emb, {0: lab[0] == 1, 2: lab[2] == 1}, time_budget=600, max_steps=2)
    after = _decoder_state(lite_medsam)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert res.steps == 2
    adapted = _decoder_state(res.backend)
    assert any(not torch.equal(before[k], adapted[k]) for k in before)
    assert res.backend.image_encoder is lite_medsam.image_encoder  # shared, frozen: embeddings stay valid
    short = adapt_to_slices(lite_medsam, emb, {0: lab[0] == 1}, time_budget=0.0)  # the budget is obeyed
    assert short.steps == 0
    with pytest.raises(InputError, match="at least one committed slice"):
        adapt_to_slices(lite_medsam, emb, {0: np.zeros((96, 96), bool)})


def test_prompts_file_adapt_key():
    from napari_sam.prompts import parse_prompts

    obj = {"id": 1, "name": "colon", "propagate": True, "adapt": True, "prompts": [{"slice": 3, "box": [1, 1, 9, 9]}]}
    pf = parse_prompts({"objects": [obj]})
    assert pf.objects[0].adapt and pf.to_json()["objects"][0]["adapt"] is True
    with pytest.raises(InputError, match="'adapt' must be true or false"):
        parse_prompts({"objects": [{**obj, "adapt": "yes"}]})
    with pytest.raises(InputError, match="'adapt' needs 'propagate'"):
        parse_prompts({"objects": [{**obj, "propagate": False}]})


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "tuned.nii.gz"], "must end in .pt or .pth"),
        (["--output", "tuned.pt", "--labels", "a.tif", "b.tif"], "1 image(s) and 2 label map(s)"),
        (["--output", "missing_folder/tuned.pt"], "no such folder"),
    ],
)
def test_finetune_cli_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    from napari_sam.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["finetune", "--images", "a.tif"] + (["--labels", "a_lab.tif"] if "--labels" not in extra else []) + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("*.pt"))
