"""The widget's decode can run with its own torch thread count (benchmarks/napari_responsiveness.py
compares the settings): set inside the block, put back after it, also after an error."""

from __future__ import annotations

import pytest
import torch

from napari_sam.torch_threads import threads as intra_op_threads


def test_intra_op_threads_sets_and_restores():
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2  # differs from the count before, on any machine
    with intra_op_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), intra_op_threads(other):
        raise RuntimeError("decode failed")
    assert torch.get_num_threads() == before
    with intra_op_threads(None):  # None: torch's default, untouched
        assert torch.get_num_threads() == before
