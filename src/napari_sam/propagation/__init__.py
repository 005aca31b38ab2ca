"""3D propagation: from prompted key slices to a volume mask, steerable by corrections.

The package, in the order a reader needs it:

- :mod:`.state`: :class:`PropagationState`, the one plain, typed object that
  holds an object's propagation (the user's key slices and corrections, the
  per-slice results and why (:class:`SliceInfo`), the stop decisions
  (:class:`StopDecision`, :class:`StopReason`) and what is left to compute);
- :mod:`.rules`: :class:`StopRules` and :func:`check_step`, when a pass ends;
- :mod:`.strategy`: how each next slice is answered from its neighbour
  (:class:`TrackStrategy`, the default, or :class:`HypothesesStrategy`), and
  the second look at a refused slice (:class:`RescueStrategy`);
- :mod:`.roi`: the region-of-interest zoom for small objects (:class:`RoiZoom`,
  off by default);
- :mod:`.segments`: the segments between key slices, and how the two passes
  across a gap are reconciled;
- :mod:`.tracker`: the :class:`Propagator` loop. :meth:`Propagator.run` is a
  job (:mod:`napari_sam.jobs`): it yields one :class:`~napari_sam.jobs.Progress`
  per finished slice, whose payload is a :class:`SliceUpdate`, so that a GUI
  worker can show results and abort between slices; :meth:`Propagator.propagate`
  drives it for scripts and the CLI::

    state = PropagationState(shape=volume.shape, axis=0)
    state.add_prompt(12, SlicePrompt(box=(r0, c0, r1, c1), slice=12))
    prop = Propagator(backend, SliceEmbeddings(backend, volume, window))
    for event in prop.run(state):            # one slice at a time
        print(event.done, event.total, event.stage, event.payload)
    mask = state.volume_mask()               # (z, y, x) bool

    state.add_prompt(17, SlicePrompt(box=..., slice=17))   # a correction
    prop.propagate(state)                    # redoes only the affected slices

Slices, axes and coordinates. ``shape`` is the volume's (z, y, x) shape and
``axis`` the axis propagated along; "slice i" is the 2D plane at index i
along that axis, whose (row, col) are the two remaining axes in order. Key
slice masks and results are (rows, cols) bool arrays of that plane.

How a run works.

1. Every key slice whose prompt changed is segmented from its prompt (a
   user-painted mask is taken as it is; a slice with only negative clicks is
   a *stop slice*: empty, and propagation never crosses it).
2. The key slices split the axis into segments. Beyond the outermost key
   slices, the mask is propagated outwards slice by slice until a stop rule
   fires (or the range / volume edge is reached). Between two key slices it
   is propagated from both ends across the whole gap, and the two passes are
   reconciled: each slice's probability is the distance-weighted mean of the
   two passes' probabilities (the nearer key slice weighs more); where only
   one pass reached a slice, that pass is taken.
3. Propagation never writes a key slice: the user's slices are kept as given.

Each next slice is prompted from its neighbour's result by the step strategy
(by default the box of the neighbour's mask plus a margin, re-fitted while
the answer fills the box). The stop rules (:class:`StopRules`) look at the
answer: vanished, predicted IoU too low, too little overlap with the
neighbour, sudden growth (a leak into a neighbouring structure), and
intensities or image features unlike the key slices' object.

Corrections. :meth:`PropagationState.add_prompt` on any slice makes it a key
slice and marks for recomputation only the *affected range*: the slices
between the nearest key slices on either side (exclusive), clipped to the
range. Everything outside that range is kept bit for bit.
:meth:`PropagationState.remove_prompt` does the reverse.

Cancel. A run stopped between slices (generator closed, or the
:class:`~napari_sam.jobs.Cancel` token given to :meth:`Propagator.propagate`
set) keeps every finished slice; the unfinished ones stay marked and the next
run does only those.
"""

from __future__ import annotations

from .roi import RoiZoom
from .rules import ObjectAppearance, StepAnswer, StopRules, check_step
from .state import PropagationState, SliceInfo, SliceUpdate, StopDecision, StopReason
from .strategy import BoxDecoder, HypothesesStrategy, RescueStrategy, StepStrategy, TrackStrategy
from .tracker import Propagator, SliceEmbeddingProvider

__all__ = [
    "BoxDecoder",
    "HypothesesStrategy",
    "ObjectAppearance",
    "PropagationState",
    "Propagator",
    "RescueStrategy",
    "RoiZoom",
    "SliceEmbeddingProvider",
    "SliceInfo",
    "SliceUpdate",
    "StepAnswer",
    "StepStrategy",
    "StopDecision",
    "StopReason",
    "StopRules",
    "TrackStrategy",
    "check_step",
]
