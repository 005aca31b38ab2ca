"""Learning from the user's own annotations (see docs/finetuning.md).

- :mod:`.data`: (image, labels) -> cached embeddings + targets; simulated prompts.
- :mod:`.train`: the decoder training loop (early stopping, best weights kept).
- :mod:`.checkpoint`: tuned checkpoints with provenance, written atomically, listed.
- :mod:`.pipeline`: files -> checkpoint (``napari-sam finetune``).
- :mod:`.adapt`: in-session adaptation to one object's committed slices.
"""

from .train import FinetuneSettings, TrainResult

__all__ = ["FinetuneSettings", "TrainResult"]
