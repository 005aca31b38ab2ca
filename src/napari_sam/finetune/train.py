"""The fine-tuning loop: SAM's prompt encoder + mask decoder trained on cached embeddings.

The image encoder is frozen (its output is what the embedding cache holds),
so an epoch costs only decoder passes: a few minutes on a laptop CPU. The
trained output is the one every box-prompted path of napari-sam decodes
(the single-mask token 0: key slices, propagation, click hypotheses).

Generalisation by design (the data are small, the base model is good):
only a small part is trained by default (``trainable="head"``: the output
hypernetwork of token 0, the output upscaling and the IoU head, about 0.35 M
of the decoder's 4 M parameters; the two-way transformer before them then runs
without gradients, which makes a step about as cheap as a decode), the weights are pulled
back towards the base model (L2-SP, ``anchor``), validation is on held-out
slices, and training stops when the validation Dice stops improving.

Loss: Dice + binary cross-entropy of the low-resolution logits against the
target on the decoder's output grid, plus the squared error of the predicted
IoU against the actual IoU (keeps the score that propagation's stop rules
read calibrated).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.base import rc_to_model_xy
from ..models.sam_transformer import to_tokens
from .data import TrainingSample, correction_box, jittered_box, propagation_box

#: trainable parts: name -> parameter-name prefixes of the mask decoder ("prompt_encoder." for the prompt encoder)
TRAINABLE = {
    "head": ("output_hypernetworks_mlps.0.", "output_upscaling.", "iou_prediction_head."),
    "head+tokens": (
        "mask_tokens.",
        "iou_token.",
        "output_hypernetworks_mlps.0.",
        "output_upscaling.",
        "iou_prediction_head.",
    ),
    "decoder": ("",),
    "decoder+prompt": ("", "prompt_encoder."),
}


@dataclass
class FinetuneSettings:
    """How to train (all recorded in the checkpoint).

    epochs: at most this many passes over the training samples.
    lr: Adam learning rate; anchor: L2-SP weight pulling the trained
    weights to the base model's; trainable: a key of :data:`TRAINABLE`.
    patience: epochs without a better validation Dice before stopping.
    val_fraction: share of slices (of objects, for a single 2D image) held out.
    batch: prompts decoded together on one slice embedding.
    mode_weights: chances of the user / propagation / correction prompt per sample.
    max_seconds: stop training after this long (the best so far is kept).
    """

    epochs: int = 8
    lr: float = 1e-4
    anchor: float = 1e-2
    trainable: str = "head"
    patience: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    batch: int = 16
    mode_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    max_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise InputError(f"trainable {self.trainable!r}: expected one of {', '.join(TRAINABLE)}")
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs}: expected at least 1")

    def to_json(self) -> dict:
        d = asdict(self)
        d["mode_weights"] = list(self.mode_weights)
        return d


@dataclass
class TrainResult:
    """What training did: per-epoch figures, the best epoch and its validation Dice.

    history: one dict per epoch (epoch, train_loss, val_dice, seconds); epoch 0
    is the base model (no learning). interrupted: stopped by Ctrl-C / cancel.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = float("nan")
    base_val_dice: float = float("nan")
    interrupted: bool = False
    seconds: float = 0.0
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    base_per_class: dict[str, dict[str, float]] = field(default_factory=dict)


class DecoderTrainer:
    """Trains copies of a backend's prompt encoder and mask decoder (the backend is untouched).

    backend: a SAM-family backend (``prompt_encoder``, ``mask_decoder``, ``image_size``).
    """

    def __init__(self, backend, settings: FinetuneSettings) -> None:
        self.settings = settings
        self.image_size = int(backend.image_size)
        self.prompt_encoder = copy.deepcopy(backend.prompt_encoder).cpu().float()
        self.mask_decoder = copy.deepcopy(backend.mask_decoder).cpu().float()
        self.params = self._select(settings.trainable)
        self.anchor = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr)
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)

    def _select(self, trainable: str) -> list[nn.Parameter]:
        prefixes = TRAINABLE[trainable]
        named = [(f"prompt_encoder.{n}", p) for n, p in self.prompt_encoder.named_parameters()]
        named += list(self.mask_decoder.named_parameters())
        chosen = []
        for n, p in named:
            on = any(n.startswith(pre) for pre in prefixes if pre) or (
                "" in prefixes and not n.startswith("prompt_encoder.")
            )
            p.requires_grad_(on)
            if on:
                chosen.append(p)
        return chosen

    @property
    def n_trainable(self) -> int:
        """Number of trained parameters."""
        return int(sum(p.numel() for p in self.params))

    def state_dicts(self) -> dict[str, torch.Tensor]:
        """The trained modules' weights, keyed as in a SAM checkpoint (prompt_encoder.*, mask_decoder.*)."""
        out = {f"prompt_encoder.{k}": v.detach().clone() for k, v in self.prompt_encoder.state_dict().items()}
        out.update({f"mask_decoder.{k}": v.detach().clone() for k, v in self.mask_decoder.state_dict().items()})
        return out

    def load_state_dicts(self, state: dict[str, torch.Tensor]) -> None:
        """Put weights from :meth:`state_dicts` back."""
        self.prompt_encoder.load_state_dict({k[15:]: v for k, v in state.items() if k.startswith("prompt_encoder.")})
        self.mask_decoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("mask_decoder.")})

    # ------------------------------------------------------------ forward
    def forward(self, sample: TrainingSample, boxes_rc: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (B, 4) (r0, c0, r1, c1) on one sample's slice -> logits (B, s, s) and predicted IoU (B,)."""
        b = np.asarray(boxes_rc, np.float32).reshape(-1, 2, 2)
        xy = torch.from_numpy(rc_to_model_xy(b, sample.original_size, sample.input_size).reshape(-1, 4))
        if self.settings.trainable == "head":
            return self._forward_head(sample, xy)
        sparse, dense = self.prompt_encoder(points=None, boxes=xy, masks=None)
        low, iou = self.mask_decoder(
            image_embeddings=sample.features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low[:, 0], iou[:, 0]

    def _forward_head(self, sample: TrainingSample, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` when only the output head trains: the prompt encoder and the
        two-way transformer run without gradients, as :meth:`MaskDecoder.predict_masks` does."""
        md = self.mask_decoder
        with torch.no_grad():
            sparse, dense = self.prompt_encoder(points=None, boxes=xy, masks=None)
            out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
            tokens = torch.cat([out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
            h, w = sample.features.shape[-2:]
            src = to_tokens(sample.features, dense[:1])
            hs, keys = md.transformer(src, self.prompt_encoder.get_dense_pe(), tokens, final_tokens=slice(0, 2))
        hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :])[:, None]
        masks = md._upscale_masks(keys, hyper, h, w)
        return masks[:, 0], md.iou_prediction_head(hs[:, 0, :])[:, 0]

    def loss(self, logits: torch.Tensor, iou: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Dice + BCE + IoU-head MSE, averaged over the batch; logits/targets (B, s, s)."""
        prob = torch.sigmoid(logits)
        inter = (prob * targets).sum((1, 2))
        dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + targets.sum((1, 2)) + 1)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2))
        with torch.no_grad():
            hard = (logits > 0).float()
            i = (hard * targets).sum((1, 2))
            actual = i / ((hard + targets).clamp(max=1).sum((1, 2)) + 1e-6)
        return (dice + bce + F.mse_loss(iou, actual, reduction="none")).mean()

    def _anchor_penalty(self) -> torch.Tensor:
        return sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchor)) * self.settings.anchor

    # ------------------------------------------------------------ prompts
    def prompts_for(self, group: list[TrainingSample]) -> np.ndarray:
        """One simulated prompt box per sample (see :mod:`napari_sam.finetune.data`)."""
        w = np.asarray(self.settings.mode_weights, float)
        modes = self.rng.choice(3, size=len(group), p=w / w.sum())
        boxes = [
            jittered_box(s.mask, self.rng) if m != 1 else propagation_box(s, self.rng) for s, m in zip(group, modes)
        ]
        fix = [i for i, m in enumerate(modes) if m == 2]
        if fix:
            with torch.no_grad():
                logits, _ = self.forward(group[0], np.stack([boxes[i] for i in fix]))
            for j, i in enumerate(fix):
                pred = self.full_res_mask(group[i], logits[j])
                boxes[i] = correction_box(group[i].mask, pred, boxes[i])
        return np.stack(boxes)

    def full_res_mask(self, sample: TrainingSample, logits: torch.Tensor) -> np.ndarray:
        """(s, s) low-resolution logits -> (H, W) bool on the slice grid."""
        from ..models.base import logits_to_slice

        up = logits_to_slice(logits[None, None].detach(), sample.input_size, self.image_size, sample.original_size)
        return (up[0, 0] > 0).numpy()

    # ------------------------------------------------------------ epochs
    def train_step(self, group: list[TrainingSample]) -> float:
        """One optimiser step on samples of one slice (sharing ``features``); returns the loss."""
        boxes = self.prompts_for(group)
        logits, iou = self.forward(group[0], boxes)
        loss = self.loss(logits, iou, torch.stack([s.target for s in group]))
        total = loss + self._anchor_penalty()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return float(loss.detach())

    def batches(self, samples: list[TrainingSample]) -> list[list[TrainingSample]]:
        """Samples grouped by slice (one embedding), in chunks of ``batch``, shuffled."""
        by_slice: dict[int, list[TrainingSample]] = {}
        for s in samples:
            by_slice.setdefault(id(s.features), []).append(s)
        out = []
        for group in by_slice.values():
            order = self.rng.permutation(len(group))
            g = [group[i] for i in order]
            out += [g[i : i + self.settings.batch] for i in range(0, len(g), self.settings.batch)]
        return [out[i] for i in self.rng.permutation(len(out))]

    def n_batches(self, samples: list[TrainingSample]) -> int:
        """How many steps :meth:`batches` makes of ``samples``."""
        sizes: dict[int, int] = {}
        for s in samples:
            sizes[id(s.features)] = sizes.get(id(s.features), 0) + 1
        return sum(-(-n // self.settings.batch) for n in sizes.values())

    @torch.no_grad()
    def validate(self, samples: list[TrainingSample]) -> tuple[float, dict[str, dict[str, float]]]:
        """Mean Dice on the decoder's grid over deterministic prompts: the object's own
        box, and each neighbour's box plus propagation's margin. Returns (mean, per class)."""
        per: dict[str, list[float]] = {}
        for group in self.batches_fixed(samples):
            boxes, owners = [], []
            for s in group:
                boxes.append(jittered_box(s.mask, np.random.default_rng(0), jitter=0.0))
                owners.append(s)
                for nb in s.neighbour_boxes:
                    m = max(3.0, 0.05 * max(nb[2] - nb[0] + 1, nb[3] - nb[1] + 1))
                    boxes.append(
                        np.clip(
                            nb + np.array([-m, -m, m, m], np.float32), 0, [s.mask.shape[0] - 1, s.mask.shape[1] - 1] * 2
                        )
                    )
                    owners.append(s)
            logits, _ = self.forward(group[0], np.stack(boxes))
            hard = (logits > 0).float()
            for h, s in zip(hard, owners):
                t = s.target
                d = float(2 * (h * t).sum() / (h.sum() + t.sum() + 1e-6))
                per.setdefault(s.name, []).append(d)
        allv = [v for vals in per.values() for v in vals]
        table = {k: {"dice": float(np.mean(v)), "n": len(v)} for k, v in per.items()}
        return (float(np.mean(allv)) if allv else float("nan")), table

    def batches_fixed(self, samples: list[TrainingSample]) -> list[list[TrainingSample]]:
        """Samples grouped by slice in chunks of ``batch``, in a fixed order."""
        by_slice: dict[int, list[TrainingSample]] = {}
        for s in samples:
            by_slice.setdefault(id(s.features), []).append(s)
        step = max(1, self.settings.batch // 3)
        return [g[i : i + step] for g in by_slice.values() for i in range(0, len(g), step)]


def train(
    trainer: DecoderTrainer,
    train_set: list[TrainingSample],
    val_set: list[TrainingSample],
    progress: Callable[[int, int, str], None] | None = None,
    on_best: Callable[[TrainResult], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train with early stopping on the validation Dice; the trainer ends holding the best weights.

    progress: (done, total, message) per step. on_best: called whenever the
    validation Dice improves (epoch 0 is the base model), e.g. to write a
    checkpoint, so an interruption never loses the best weights. cancel: a
    callable polled per step; Ctrl-C (KeyboardInterrupt) stops the same way.
    """
    if not train_set:
        raise InputError("no training samples: the labels hold no object of at least 16 pixels")
    s = trainer.settings
    val = val_set or train_set
    res = TrainResult()
    t0 = time.perf_counter()
    res.base_val_dice, res.per_class = trainer.validate(val)
    res.base_per_class = res.per_class
    res.best_val_dice = res.base_val_dice
    res.history.append({"epoch": 0, "train_loss": None, "val_dice": res.base_val_dice, "seconds": 0.0})
    best_state = trainer.state_dicts()
    stale = 0
    steps_per_epoch = trainer.n_batches(train_set)
    try:
        for epoch in range(1, s.epochs + 1):
            losses = []
            for i, group in enumerate(trainer.batches(train_set)):
                if cancel is not None and cancel():
                    raise KeyboardInterrupt
                losses.append(trainer.train_step(group))
                if progress:
                    progress(
                        (epoch - 1) * steps_per_epoch + i + 1,
                        s.epochs * steps_per_epoch,
                        f"epoch {epoch} loss {np.mean(losses):.3f} best val Dice {res.best_val_dice:.3f}",
                    )
                if time.perf_counter() - t0 > s.max_seconds:
                    break
            vd, table = trainer.validate(val)
            res.history.append(
                {
                    "epoch": epoch,
                    "train_loss": float(np.mean(losses)),
                    "val_dice": vd,
                    "seconds": time.perf_counter() - t0,
                }
            )
            if vd > res.best_val_dice:
                res.best_val_dice, res.best_epoch, res.per_class = vd, epoch, table
                best_state = trainer.state_dicts()
                stale = 0
                if on_best is not None:
                    on_best(res)
            else:
                stale += 1
            if stale >= s.patience or time.perf_counter() - t0 > s.max_seconds:
                break
    except KeyboardInterrupt:
        res.interrupted = True
    trainer.load_state_dicts(best_state)
    res.seconds = time.perf_counter() - t0
    return res
