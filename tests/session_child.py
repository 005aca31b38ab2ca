"""A session run in a child process for tests/test_sessions.py: a few finished
actions, each journalled, then a slow propagation during which the parent kills it.

    python tests/session_child.py RECOVERY_ROOT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_sam.annotation import ImageRef, Journal  # noqa: E402
from napari_sam.annotation.sessions import recovery_folder  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.intensity import Window  # noqa: E402
from napari_sam.propagation import Propagator  # noqa: E402
from test_annotation import SlowBackend  # noqa: E402
from test_sessions import finished_actions, scene_volume  # noqa: E402


class VerySlowBackend(SlowBackend):
    def decode_low_res(self, *a, **k):
        time.sleep(0.5)
        return super().decode_low_res(*a, **k)


def main(root: str) -> None:
    vol, big, small = scene_volume()
    model, backend, emb = finished_actions(vol, big, small)
    image = ImageRef.of(vol)
    journal = Journal(image, folder=recovery_folder(image, root))
    journal.record(model)  # the state so far ...
    journal.attach(model)  # ... and every action from now on
    model.commit(2, 10, mask=small[10])  # one more finished action
    journal.flush()
    print("journalled", flush=True)
    slow = VerySlowBackend()
    print("propagating", flush=True)
    model.propagate(2, Propagator(slow, SliceEmbeddings(slow, vol, Window(0, 255), axis=0)))
    print("finished", flush=True)  # never reached: the parent kills this process first


if __name__ == "__main__":
    main(sys.argv[1])
