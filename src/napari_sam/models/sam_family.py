"""The backend shared by models built as SAM is: an image encoder, SAM's
prompt encoder and SAM's mask decoder (SAM, MedSAM, MobileSAM, micro-sam,
LiteMedSAM). Subclasses only build the encoder and load the weights."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Backend, Embedding, image_key, logits_to_slice, rc_to_model_xy, to_model_input

#: floating-point types the image encoder may compute in
ENCODER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SamFamilyBackend(Backend):
    """Embed with ``image_encoder``; decode with SAM's prompt encoder and mask decoder.

    image_size: side of the square model input; mean/std: per-channel
    normalisation on the [0, 1] scale, or None when the model takes [0, 1].
    dtype: what the image encoder computes in (see :meth:`set_dtype`);
    float32 by default. The prompt encoder and mask decoder stay float32 and
    embeddings are float32 whatever the encoder's type.
    """

    decodes_windows = True
    #: embeddings whose prompt-independent decoder work (~10 MB each for 64 x 64
    #: embeddings) is kept for the next prompts decoded on them
    prepared_embeddings = 4

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        image_size: int,
        device: torch.device,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        supports_points: bool = True,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.name = name
        self.image_encoder = image_encoder.eval().to(device)
        self.prompt_encoder = prompt_encoder.eval().to(device)
        self.mask_decoder = mask_decoder.eval().to(device)
        self.image_size = image_size
        self.device = device
        self.mean, self.std = mean, std
        self.supports_points = supports_points
        # id(features) -> (weak reference to the features, MaskDecoder.prepare_image of them,
        # or None for an embedding decoded once so far)
        self._prepared: OrderedDict[int, tuple[weakref.ref, dict[str, torch.Tensor] | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.dtype = torch.float32
        self.set_dtype(dtype)

    def set_dtype(self, dtype: torch.dtype | str) -> None:
        """Run the image encoder in float32 (default), float16 or bfloat16.

        Half types halve memory traffic and use the GPU's tensor cores (or a
        CPU's bf16 instructions), but change masks: on the shared CT, bf16
        loses up to 0.09 mean Dice against ground truth on thin structures
        (colon, ribs), nothing on large organs. See docs/performance.md
        ("Encoder precision"); :func:`napari_sam.models.precision.apply_precision`
        chooses by name ("auto", "bf16", ...).
        """
        if isinstance(dtype, str):
            if dtype not in ENCODER_DTYPES:
                raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(ENCODER_DTYPES)}")
            dtype = ENCODER_DTYPES[dtype]
        if dtype not in ENCODER_DTYPES.values():
            raise ValueError(f"dtype {dtype}: expected float32, float16 or bfloat16")
        self.image_encoder.to(dtype)
        self.dtype = dtype
        self.forget_recent()

    def forget_recent(self) -> None:
        """Drop the decoder's work kept per embedding (the next decodes redo it).

        (Embeddings themselves are kept by :mod:`napari_sam.embeddings`, the one
        embedding cache; the backend keeps none: every embed() encodes.)"""
        with self._lock:
            self._prepared.clear()

    @torch.inference_mode()
    def prepare_decoding(self, embedding: Embedding) -> None:
        """Make the decoder's prompt-independent work on ``embedding`` now and keep it for
        the prompts decoded on it next (e.g. by other threads: it then lives in this
        thread's memory, not amid a worker's temporaries)."""
        dense = self.prompt_encoder(points=None, boxes=None, masks=None)[1]
        self._prepared_image(embedding.features, dense, now=True)

    def _prepared_image(
        self, features: torch.Tensor, dense: torch.Tensor, now: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """The decoder's prompt-independent work on ``features`` with the no-mask dense
        prompt ``dense`` (B, C, h, w), or None to decode without it.

        It costs about a third of a decode, and saves about a quarter of every later
        one: it is made when an embedding is decoded for the second time (interactive
        prompts on one slice), or at once for a batch of prompts (a click's box
        hypotheses); a single prompt on a new embedding (propagation) goes without.
        ``now``: make it at once.
        """
        prepare = getattr(self.mask_decoder, "prepare_image", None)
        if prepare is None or features.shape[0] != 1 or self.prepared_embeddings <= 0:
            return None
        key = id(features)
        with self._lock:
            hit = self._prepared.get(key)
            if hit is not None and hit[0]() is features:
                self._prepared.move_to_end(key)
                if hit[1] is not None:
                    return hit[1]
            elif dense.shape[0] == 1 and not now:  # first sight, one prompt: remember only
                self._remember_prepared(key, features, None)
                return None
        prepared = prepare(features, self.prompt_encoder.get_dense_pe(), dense)
        with self._lock:
            self._remember_prepared(key, features, prepared)
        return prepared

    def _remember_prepared(self, key: int, features: torch.Tensor, prepared: dict[str, torch.Tensor] | None) -> None:
        self._prepared[key] = (weakref.ref(features), prepared)
        self._prepared.move_to_end(key)
        while len(self._prepared) > self.prepared_embeddings:
            self._prepared.popitem(last=False)

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        return to_model_input(image, self.image_size, self.mean, self.std)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        return self.embed_batch([image])[0]

    @torch.inference_mode()
    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        """Embed slices of equal shape in one forward pass; a slice equal (same
        shape, dtype and values) to another of the batch is encoded once."""
        keys = [image_key(im) for im in images]
        todo = list(dict.fromkeys(keys))
        first = {k: im for k, im in zip(reversed(keys), reversed(images))}
        todo_images = [first[k] for k in todo]
        prepared = [self._prepare(im) for im in todo_images]
        batch = torch.cat([p[0] for p in prepared]).to(self.device, self.dtype)
        feats = self.image_encoder(batch).float()
        out = {
            k: Embedding(
                features=feats[i : i + 1].clone(), original_size=tuple(im.shape[:2]), input_size=p[1], model=self.name
            )
            for i, (k, im, p) in enumerate(zip(todo, todo_images, prepared))
        }
        return [out[k] for k in keys]

    def upsample(self, low_res: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-resolution logits (B, K, s, s) -> logits on the slice grid (B, K, H, W)."""
        return logits_to_slice(low_res, embedding.input_size, self.image_size, embedding.original_size)

    @torch.inference_mode()
    def decode_low_res(
        self,
        embedding: Embedding,
        points_rc: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_rc: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        windows: tuple[torch.Tensor, tuple[int, int]] | None = None,
        all_outputs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode without the final resize: low-resolution logits (B, K, s, s)
        in the padded model frame, and predicted IoU scores (B, K).

        windows: (origins (B, 2) int64 (row, col), (wh, ww)) in tokens of the
        embedding's grid: each prompt's logits only inside its window, (B, K, f*wh, f*ww)
        (:mod:`napari_sam.models.windows`). all_outputs: the single output and the three
        candidates, K = 4, in one decoder pass (:meth:`decode_all_outputs`)."""
        if embedding.model != self.name:
            raise ValueError(f"embedding was made by {embedding.model!r}, not {self.name!r}")
        dev = self.device
        points = None
        if points_rc is not None and np.asarray(points_rc).size:
            xy = rc_to_model_xy(np.asarray(points_rc), embedding.original_size, embedding.input_size)
            points = (
                torch.from_numpy(xy).to(dev),
                torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev),
            )
        boxes = None
        if boxes_rc is not None:
            b = np.asarray(boxes_rc, dtype=np.float32).reshape(-1, 2, 2)
            boxes = torch.from_numpy(
                rc_to_model_xy(b, embedding.original_size, embedding.input_size).reshape(-1, 4)
            ).to(dev)
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        # without a mask input the dense prompt is the same for every prompt: the image's
        # side of the decoder is computed once per embedding
        prepared = self._prepared_image(embedding.features, dense) if masks is None else None
        if prepared is not None:
            return self.mask_decoder(
                None,
                self.prompt_encoder.get_dense_pe(),
                sparse,
                None,
                multimask,
                prepared=prepared,
                windows=windows,
                all_outputs=all_outputs,
            )
        low, scores = self.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            windows=windows,
            all_outputs=all_outputs,
        )
        return low, scores

    def decode_all_outputs(
        self, embedding: Embedding, boxes_rc: np.ndarray, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single output and the three candidates in one decoder pass (see the base class)."""
        return self.decode_low_res(embedding, boxes_rc=boxes_rc, all_outputs=True, **kw)
