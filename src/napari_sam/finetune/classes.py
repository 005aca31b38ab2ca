"""Taught classes: a class head over the image encoder's features, learnt from annotations.

No vision-language weights can be had here, so a *text prompt* names a class
the model has been **taught from annotations**: every named label of the
fine-tuning data (or every named object a user commits) is a class. The head
reads the encoder's feature grid (LiteMedSAM: 256 channels on 64 x 64 cells,
4 model-input pixels per cell) that the embedding cache already holds, so
teaching and using it cost no encoder run beyond the ones segmentation does.

Two heads are implemented, and ``benchmarks/text_prompts.py`` measures both:

- ``prototype``: the mean L2-normalised feature of each class's cells (and
  ``n_background`` k-means prototypes of the background), scored by cosine
  similarity at a fixed temperature;
- ``logistic``: multinomial logistic regression on the normalised features
  (background + classes, class-balanced, L2-regularised), trained with L-BFGS.

Both are stored as one linear layer over the normalised features (rows mapped
to classes), so using either is the same code: :meth:`ClassHead.probabilities`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ModelError
from ..models.base import Embedding

__all__ = [
    "ClassHead",
    "grid_fractions",
    "grid_labels",
    "load_class_head",
    "teach",
    "teach_from_files",
    "teach_from_volumes",
    "unknown_class_error",
]

METHODS = ("logistic", "prototype")
#: a cell belongs to a class (or to the background) when that covers this fraction of it
CELL_FRACTION = 0.5


def grid_fractions(masks: np.ndarray, emb: Embedding, image_size: int) -> torch.Tensor:
    """(K, H, W) masks of one slice -> (K, h, w) fraction of each feature cell each covers."""
    _c, h, w = emb.features.shape[1:]
    ih, iw = emb.input_size
    m = torch.from_numpy(masks.astype(np.float32))[:, None]
    m = F.interpolate(m, size=(ih, iw), mode="area")
    m = F.pad(m, (0, image_size - iw, 0, image_size - ih))
    return F.interpolate(m, size=(h, w), mode="area")[:, 0]


def grid_labels(labels2d: np.ndarray, ids: Sequence[int], emb: Embedding, image_size: int) -> np.ndarray:
    """The class of each feature cell of one slice: (h, w) int, ``i + 1`` for ``ids[i]``,
    0 for background, -1 for cells no class covers by :data:`CELL_FRACTION` (edges, padding)."""
    stack = np.stack([labels2d == 0] + [labels2d == i for i in ids])
    frac = grid_fractions(stack, emb, image_size).numpy()
    out = np.where(frac.max(0) >= CELL_FRACTION, frac.argmax(0), -1)
    ih, iw = emb.input_size
    h, w = out.shape
    out[int(np.ceil(ih * h / image_size)) :, :] = -1  # padding rows / cols are not image
    out[:, int(np.ceil(iw * w / image_size)) :] = -1
    return out


def _normalised(features: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (h * w, C) float32 with unit-length rows."""
    f = features[0].float().flatten(1).T
    return F.normalize(f, dim=1)


@dataclass
class ClassHead:
    """A linear head over normalised encoder features: ``rows`` logits, mapped to classes.

    names: taught class names; class ``i + 1`` is ``names[i]``, class 0 the background.
    weight: (R, C) float32; bias: (R,); row_class: (R,) int64, each row's class.
    method: "logistic" or "prototype"; window: the window key it was taught in.
    """

    names: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    row_class: torch.Tensor
    method: str
    window: str = ""

    def probabilities(self, emb: Embedding) -> torch.Tensor:
        """(K + 1, h, w) class probabilities of each feature cell of one slice."""
        f = _normalised(emb.features)
        logits = f @ self.weight.T + self.bias
        p_rows = torch.softmax(logits, dim=1)
        p = torch.zeros(f.shape[0], len(self.names) + 1).index_add_(1, self.row_class, p_rows)
        h, w = emb.features.shape[-2:]
        return p.T.reshape(len(self.names) + 1, h, w)

    def index_of(self, name: str) -> int:
        """The class index of ``name`` (case-insensitive); InputError listing the taught classes."""
        lowered = [n.lower() for n in self.names]
        if name.strip().lower() not in lowered:
            raise unknown_class_error(name, self.names)
        return lowered.index(name.strip().lower()) + 1

    def to_state(self) -> dict:
        """Plain tensors and strings (what a weights-only checkpoint may hold)."""
        return {
            "names": list(self.names),
            "weight": self.weight.contiguous(),
            "bias": self.bias.contiguous(),
            "row_class": self.row_class.contiguous(),
            "method": self.method,
            "window": self.window,
        }

    @classmethod
    def from_state(cls, state: dict) -> ClassHead:
        try:
            head = cls(
                [str(n) for n in state["names"]],
                state["weight"].float(),
                state["bias"].float(),
                state["row_class"].long(),
                str(state["method"]),
                str(state.get("window", "")),
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise ModelError(f"the checkpoint's class head is malformed ({exc})") from None
        if head.weight.shape[0] != head.bias.shape[0] or head.weight.shape[0] != head.row_class.shape[0]:
            raise ModelError("the checkpoint's class head is malformed (row counts differ)")
        return head


def unknown_class_error(name: str, known: Iterable[str]) -> InputError:
    """One line naming the taught classes (and the closest, when one is close)."""
    known = list(known)
    if not known:
        return InputError(
            f"class {name!r}: this model has not been taught any class "
            "(fine-tune it with named labels: napari-sam finetune)"
        )
    close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"class {name!r} has not been taught to this model{hint}; it knows: {', '.join(sorted(known))}")


def _cells(embeddings: Sequence[Embedding], grids: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labs = [], []
    for emb, grid in zip(embeddings, grids):
        keep = torch.from_numpy(grid.reshape(-1) >= 0)
        feats.append(_normalised(emb.features)[keep])
        labs.append(torch.from_numpy(grid.reshape(-1)[grid.reshape(-1) >= 0]).long())
    return torch.cat(feats), torch.cat(labs)


def _kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 20) -> torch.Tensor:
    """k unit-length centroids of unit-length rows (spherical k-means)."""
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        for j in range(len(c)):
            members = x[assign == j]
            if len(members):
                c[j] = F.normalize(members.mean(0), dim=0)
    return c


def _prototype_rows(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, n_background: int, seed: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, classes = [], []
    bg = x[y == 0]
    if len(bg):
        rows.append(_kmeans(bg, min(n_background, len(bg)), seed))
        classes += [0] * len(rows[-1])
    for k in range(1, n_classes + 1):
        rows.append(F.normalize(x[y == k].mean(0), dim=0)[None])
        classes.append(k)
    return torch.cat(rows) * temperature, torch.tensor(classes)


def _logistic_rows(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(y, minlength=n_classes + 1).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)
    layer = torch.nn.Linear(x.shape[1], n_classes + 1)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(x), y, weight=weights) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer.weight.detach().clone(), layer.bias.detach().clone()


def teach(
    embeddings: Sequence[Embedding],
    grids: Sequence[np.ndarray],
    names: Sequence[str],
    method: str = "logistic",
    window: str = "",
    n_background: int = 8,
    temperature: float = 20.0,
    l2: float = 1e-4,
    iters: int = 200,
    seed: int = 0,
) -> ClassHead:
    """Teach a head from slices: ``grids[i]`` is :func:`grid_labels` of ``embeddings[i]``
    (class ``j + 1`` = ``names[j]``). Classes no cell covers are refused."""
    if method not in METHODS:
        raise InputError(f"class head method {method!r}; expected one of {', '.join(METHODS)}")
    x, y = _cells(embeddings, grids)
    present = set(torch.unique(y).tolist())
    missing = [n for k, n in enumerate(names, 1) if k not in present]
    if missing:
        raise InputError(
            f"cannot teach {', '.join(missing)}: no feature cell is mostly covered by it "
            "(too small for the encoder's grid on these slices)"
        )
    with torch.no_grad():
        if method == "prototype":
            weight, row_class = _prototype_rows(x, y, len(names), n_background, seed, temperature)
            bias = torch.zeros(len(weight))
        else:
            row_class = torch.arange(len(names) + 1)
    if method == "logistic":
        torch.manual_seed(seed)
        weight, bias = _logistic_rows(x, y, len(names), l2, iters)
    return ClassHead(list(names), weight.float(), bias.float(), row_class.long(), method, window)


def teach_from_volumes(
    backend, pairs: Sequence[tuple], window=None, cache_dir: str | Path | None = None, method: str = "logistic"
) -> ClassHead:
    """Teach a head from ``(Volume, labels (z, y, x), {id: name})`` triples: every named label
    is a class (one name, one class across volumes). Each volume is seen in ``window``
    (else its default window, the one ``napari-sam segment`` uses); embeddings come from
    (and go to) the cache."""
    from ..cache import content_hash
    from ..embeddings import SliceEmbeddings
    from ..intensity import resolve_window

    embs, grids, order = [], [], []
    for _vol, _lmap, names in pairs:
        order += [n for n in dict.fromkeys(names.values()) if n not in order]
    windows = []
    for vol, lmap, names in pairs:
        md = vol.metadata
        win = resolve_window(vol.array, window, md.get("modality"), md.get("dicom_window"))
        windows.append(win.key())
        store = SliceEmbeddings(backend, vol.array, win, 0, cache_dir=cache_dir, image_hash=content_hash(vol.array))
        ids = sorted(names)
        remap = np.array([0] + [order.index(names[i]) + 1 for i in ids])
        for z in range(lmap.shape[0]):
            if not lmap[z].any():
                continue
            emb = store.get(z)
            local = grid_labels(lmap[z], ids, emb, backend.image_size)
            grids.append(np.where(local >= 0, remap[np.clip(local, 0, None)], -1))
            embs.append(emb)
    covered = sorted({int(v) for g in grids for v in np.unique(g) if v > 0})
    lookup = np.zeros(len(order) + 1, np.int64)
    lookup[covered] = np.arange(1, len(covered) + 1)
    grids = [np.where(g > 0, lookup[np.clip(g, 0, None)], g) for g in grids]
    return teach(embs, grids, [order[k - 1] for k in covered], method=method, window=",".join(sorted(set(windows))))


def teach_from_files(
    backend,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    window=None,
    cache_dir: str | Path | None = None,
    method: str = "logistic",
) -> ClassHead:
    """:func:`teach_from_volumes` on image / label-map files (names from the labels' JSON)."""
    from .pipeline import label_names, read_pair

    pairs = []
    for img, lab in zip(images, labels):
        vol, lmap = read_pair(img, lab)
        pairs.append((vol, lmap, label_names(Path(lab), [int(v) for v in np.unique(lmap) if v != 0])))
    return teach_from_volumes(backend, pairs, window, cache_dir, method)


def load_class_head(checkpoint: str | Path | None) -> ClassHead:
    """The class head taught into a tuned checkpoint; InputError when there is none."""
    from .checkpoint import read_class_state

    if checkpoint is None:
        raise InputError(
            "text prompts need a checkpoint taught with named labels "
            "(napari-sam finetune ... --output TUNED.pt, then --checkpoint TUNED.pt)"
        )
    state = read_class_state(checkpoint)
    if state is None:
        raise InputError(
            f"{checkpoint}: this checkpoint has not been taught any class "
            "(fine-tune it with named labels: napari-sam finetune)"
        )
    return ClassHead.from_state(state)
