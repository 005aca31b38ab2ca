"""One annotation model under the napari widget and the command line.

An :class:`Annotation` is one session of segmenting objects in one image,
without Qt: the objects (id, name, colour), per object its key slices with
their prompts, its painted slices, stop slices and 3D corrections, its
propagation state and stop decisions (a
:class:`~napari_sam.propagation.PropagationState`), and the current label
map. The napari widget only translates layer events into calls on it and
applies what they return; the CLI's prompts file is *replayed* through it
(:func:`replay`). So the same prompts give the same label map in both.

- **Change sets.** Every mutation (:meth:`~Annotation.commit`,
  :meth:`~Annotation.paint`, :meth:`~Annotation.add_object`, undo, a run's
  slices...) returns a :class:`ChangeSet`: the objects touched, and the
  label-map voxels that changed with their new values, for a front to
  write into its layers.
- **One overlap rule.** The label map is always the objects painted by
  :func:`napari_sam.overlaps.resolve_overlaps`: a voxel on an object's key
  slice (prompted, painted or corrected) goes to that object before any
  propagated claim; two propagated masks that coincide on a slice leave it to
  the object whose key slice is nearer; a mask inside another's keeps its
  voxels; otherwise to the object holding it relatively deepest on
  its slice (mm from its mask's edge over the mask's deepest); exact ties to the object listed first. The widget used
  to never overwrite another object's pixels while the CLI used this rule:
  both now use it.
- **Key slices.** :func:`decode_key` turns a key slice's prompt into
  candidate masks, the key mask first: the widget previews it, the replay
  commits it. A commit keeps the prompt, and the mask the user accepted
  (:meth:`~Annotation.commit`).
- **Undo and redo** are the model's own (:mod:`.history`): snapshots of the
  objects a step touched; the label map is painted again from them.
- **Runs.** Propagation and corrections run as a :class:`Run` on a private
  copy of the object's state, as a job of the one protocol
  (:mod:`napari_sam.jobs`): a generator of ``Progress`` events whose payload
  is each finished slice. The thread that owns the model applies each event
  (:meth:`~Annotation.apply`) and the end (:meth:`~Annotation.finish`). A
  worker thread therefore never touches the model, and a slice painted
  during a run is applied at once and replayed onto the run's state when it
  finishes: never lost, never overwritten.
- **Saved and restored** as plain data: :func:`annotation_to_dict` /
  :func:`annotation_from_dict`; as a session folder, with a crash-recovery
  journal: :mod:`.sessions` (:func:`save_session`, :func:`open_session`,
  :class:`Journal`).

Coordinates: the image is (z, y, x) (a 2D image is one slice, ``is_2d``);
an object's key slices lie along its axis (0, 1 or 2) and are (rows, cols)
of that plane; boxes (r0, c0, r1, c1) inclusive.
"""

from .changes import ChangeSet
from .keyslices import KEY_CHOICES, decode_key
from .model import Annotation
from .objects import AnnotatedObject
from .persist import annotation_from_dict, annotation_to_dict
from .runs import Run
from .sessions import ImageRef, Journal, Session, find_recovery, open_session, save_session

__all__ = [
    "Annotation",
    "AnnotatedObject",
    "ChangeSet",
    "Run",
    "decode_key",
    "KEY_CHOICES",
    "annotation_to_dict",
    "annotation_from_dict",
    "ImageRef",
    "Session",
    "save_session",
    "open_session",
    "Journal",
    "find_recovery",
]
