"""Linking per-slice instance maps into 3D objects (the slice-wise design)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import InputError
from ..geometry import iou_matrix
from ..label_ops import relabel_sequential


def link_slices(labels: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Give objects of neighbouring slices one id where they overlap.

    labels: (z, y, x) int, ids independent per slice. Objects of slices z and
    z + 1 are matched one-to-one (Hungarian on IoU) where their IoU is at
    least ``min_iou``; matched chains share an id. Returns (z, y, x) int32
    with ids 1..N.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels of shape {labels.shape}: expected (z, y, x)")
    out = np.zeros(labels.shape, np.int32)
    next_id = 1
    prev_map: dict[int, int] = {}
    for z in range(labels.shape[0]):
        ids = np.unique(labels[z])
        ids = ids[ids != 0]
        cur_map: dict[int, int] = {}
        if z > 0 and prev_map and ids.size:
            p_ids, r_ids, iou = iou_matrix(labels[z], labels[z - 1])
            if iou.size:
                rows, cols = linear_sum_assignment(-iou)
                for r, c in zip(rows, cols):
                    if iou[r, c] >= min_iou and int(r_ids[c]) in prev_map:
                        cur_map[int(p_ids[r])] = prev_map[int(r_ids[c])]
        for i in ids:
            if int(i) not in cur_map:
                cur_map[int(i)] = next_id
                next_id += 1
        lut = np.zeros(int(labels[z].max(initial=0)) + 1, np.int32)
        for k, v in cur_map.items():
            lut[k] = v
        out[z] = lut[labels[z]]
        prev_map = cur_map
    return relabel_sequential(out)
