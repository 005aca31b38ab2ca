"""The order candidates are offered in (napari_sam.clicks.candidate_order)."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.clicks import _Hyp, candidate_order, distinct


def _hyp(mask: np.ndarray, score: float, stability: float, edges=(0, 0, 0, 0), violations=0.0) -> _Hyp:
    return _Hyp(
        box=np.zeros(4, np.float32),
        low=torch.zeros(2, 2),
        score=score,
        mask=mask,
        violations=violations,
        consistency=1.0,
        edges=np.asarray(edges, float),
        stability=stability,
    )


def test_a_crisp_organ_beats_a_larger_blurred_leak_with_a_higher_score():
    organ = np.zeros((64, 64), bool)
    organ[20:36, 20:36] = True
    leak = organ.copy()
    leak[20:60, 10:50] = True  # runs on into the neighbour
    h_leak = _hyp(leak, score=0.91, stability=0.80)
    h_organ = _hyp(organ, score=0.88, stability=0.95)
    assert candidate_order([h_leak, h_organ])[0] is h_organ
    # click agreement still comes first
    h_organ.violations = 1.0
    assert candidate_order([h_leak, h_organ])[0] is h_leak


def test_a_mask_cut_by_its_box_comes_after_a_whole_one():
    a = np.zeros((64, 64), bool)
    a[10:30, 10:30] = True
    b = np.zeros((64, 64), bool)
    b[10:40, 10:40] = True
    cut = _hyp(a, score=0.95, stability=0.95, edges=(0, 0, 0, 0.9))
    whole = _hyp(b, score=0.90, stability=0.93)
    assert [h is whole for h in candidate_order([cut, whole])] == [True, False]


def test_distinct_keeps_order_and_drops_near_duplicates():
    a = np.zeros((32, 32), bool)
    a[5:20, 5:20] = True
    a2 = a.copy()
    a2[20, 5:20] = True
    b = np.zeros((32, 32), bool)
    b[2:30, 2:30] = True
    hs = [_hyp(a, 0.9, 0.9), _hyp(a2, 0.9, 0.9), _hyp(b, 0.9, 0.9)]
    assert distinct(hs, 3) == [hs[0], hs[2]]
