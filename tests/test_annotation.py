"""The annotation model without Qt (napari_sam.annotation): objects, commits,
paint, the overlap rule, undo/redo, change sets, runs and their threads,
saving and restoring, and the prompts-file replay through it."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from napari_sam.annotation import Annotation, ChangeSet, annotation_from_dict, annotation_to_dict, decode_key
from napari_sam.annotation.persist import join_arrays, split_arrays
from napari_sam.corrections import Correction
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.errors import InputError, UsageError
from napari_sam.intensity import Window
from napari_sam.io import Volume
from napari_sam.jobs import Progress
from napari_sam.overlaps import resolve_overlaps
from napari_sam.predictor import Prediction, SlicePredictor
from napari_sam.prompts import ObjectPrompts, PromptsFile, SlicePrompt
from napari_sam.propagation import PropagationState, Propagator
from napari_sam.segmentation import segment_volume
from test_propagation import BrightInBoxBackend, ball, dice, key_prompt


@pytest.fixture()
def scene():
    """Two bright ellipsoids that touch (a big one, slices 5..19, and a small one)."""
    big = ball()
    small = ball(center=(12, 32, 52), radius=(5, 8, 9))
    vol = np.where(big | small, 200.0, 0.0).astype(np.float32)
    backend = BrightInBoxBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    return vol, big, small, backend, emb


def key_mask(backend, emb, prompt: SlicePrompt, z: int) -> np.ndarray:
    pred = SlicePredictor(backend)
    pred.set_embedding(emb.get(z))
    return decode_key(pred, prompt).mask


def painted_objects(model: Annotation) -> np.ndarray:
    """The label map the overlap rule gives for the model's objects (the invariant)."""
    return resolve_overlaps(model.shape, [o.masks() for o in model.objects if o.masks() is not None], model.spacing_zyx)


def apply(labels: np.ndarray, cs: ChangeSet) -> None:
    """What a front does with a change set."""
    labels[cs.index] = cs.values


# ---------------------------------------------------------------- objects and commits
def test_objects_and_commits_return_change_sets(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    layer = np.zeros(vol.shape, np.uint16)  # a front's copy, kept in step by the change sets
    cs = m.add_object("liver", color=(200, 10, 10))
    assert cs.table and cs.objects == {1} and cs.n_voxels == 0 and m.current_id == 1
    p = key_prompt(big, 12)
    mask = key_mask(backend, emb, p, 12)
    cs = m.commit(1, 12, p, mask)
    apply(layer, cs)
    assert cs.objects == {1} and cs.slices(0) == [12] and cs.n_voxels == mask.sum()
    assert np.array_equal(layer, m.labels) and np.array_equal(m.labels[12] == 1, mask)
    obj = m.object(1)
    assert obj.key_slices == [12] and obj.state.prompts[12].box == p.box and 12 not in obj.state.user_masks
    assert obj.state.needs_run and 12 not in obj.state.dirty_keys  # the key is decoded; the rest is to do
    # another candidate (not what the key rule gives): kept as the user's mask, the prompt kept too
    other = np.zeros_like(mask)
    other[30:34, 25:30] = True
    apply(layer, m.commit(1, 12, p, other, exact=False))
    assert np.array_equal(obj.state.user_masks[12], other) and obj.state.prompts[12].box == p.box
    assert np.array_equal(layer, m.labels) and (m.labels == 1).sum() == other.sum()
    # only negative clicks: a stop slice, the object's pixels there erased
    neg = SlicePrompt(points=np.array([[31.0, 27.0]], np.float32), labels=np.array([0]), slice=12)
    apply(layer, m.commit(1, 12, neg))
    assert obj.state.is_stop_slice(12) and not (m.labels == 1).any() and np.array_equal(layer, m.labels)
    cs = m.rename(1, "spleen")
    assert cs.table and m.object(1).name == "spleen" and cs.n_voxels == 0
    assert m.recolor(1, (1, 2, 3)).table and m.object(1).color == (1, 2, 3)
    with pytest.raises(InputError):
        m.add_object(object_id=1)
    with pytest.raises(KeyError):
        m.commit(7, 3, p)
    with pytest.raises(InputError):  # a mask of the wrong shape
        m.commit(1, 3, p, np.zeros((5, 5), bool))
    assert m.object(1).key_slices == [12], "a refused commit changes nothing"


def test_paint_makes_painted_key_slices_stop_slices_and_new_objects(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("a")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    m.propagate(1, Propagator(backend, emb))
    user = np.array(m.labels)
    user[9, 30:34, 28:32] = 0  # erase a hole on slice 9
    user[3, 5:9, 5:9] = 4  # a new label on slice 3
    user[19] = 0  # erase the whole object on slice 19
    cs = m.paint(user)
    assert np.array_equal(m.labels, user), "what the user painted is what the model holds"
    assert cs.slices(0) == [3, 9, 19] and cs.objects == {1, 4}
    a, new = m.object(1), m.object(4)
    assert a.key_slices == [9, 12, 19] and a.painted == {9} and a.state.is_stop_slice(19)
    assert np.array_equal(a.state.user_masks[9], user[9] == 1)
    assert new.name == "object 4" and new.key_slices == [3] and new.painted == {3}
    # an object keyed along axis 2, painted on an axis-0 plane: its touched axis-2 planes become key slices
    m.add_object("side", axis=2)
    user = np.array(m.labels)
    user[2, 40:42, 50:53] = 5
    m.paint(user)
    assert m.object(5).key_slices == [50, 51, 52] and m.object(5).axis == 2


def test_overlap_rule_is_the_one_rule_key_slices_first(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape, spacing_zyx=(2.0, 1.0, 1.0))
    prop = Propagator(backend, emb)
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    m.propagate(1, prop)
    m.add_object("small")
    p = key_prompt(small, 10)
    m.commit(2, 10, p, key_mask(backend, emb, p, 10))
    m.propagate(2, prop)
    assert np.array_equal(m.labels, painted_objects(m))
    # small's propagation runs into big's key slice 12: big keeps every voxel of its key slice
    key_big = m.object(1).state.results[12]
    claims_small = m.object(2).state.results[12]
    assert (key_big & claims_small).any(), "the scene must have an overlap on the key slice"
    assert np.all(m.labels[12][key_big] == 1) and np.all(m.labels[12][claims_small & ~key_big] == 2)
    # the model's map is the CLI's: segment_volume paints the same rule
    assert np.array_equal(
        m.labels, resolve_overlaps(vol.shape, [m.object(1).masks(), m.object(2).masks()], (2.0, 1.0, 1.0))
    )


# ---------------------------------------------------------------- undo and redo
def test_undo_and_redo_step_labels_and_key_slices_together(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    layer = np.zeros(vol.shape, np.uint16)
    seen = []
    for step in (
        lambda: m.add_object("big"),
        lambda: m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12)),
        lambda: m.propagate(1, Propagator(backend, emb)),
        lambda: m.paint(np.where(np.arange(24)[:, None, None] == 8, 0, m.labels)),
        lambda: m.delete_object(1),
    ):
        apply(layer, step())
        seen.append((np.array(m.labels), [(o.id, o.name, tuple(o.key_slices)) for o in m.objects]))
    assert m.history.descriptions() == [
        "add object 1",
        "commit slice 12 of big",
        "propagate big",
        "paint",
        "delete big",
    ]
    for i in range(len(seen) - 2, -1, -1):  # undo back to the first step, checking every state on the way
        apply(layer, m.undo())
        assert np.array_equal(m.labels, seen[i][0]) and np.array_equal(layer, m.labels)
        assert [(o.id, o.name, tuple(o.key_slices)) for o in m.objects] == seen[i][1]
    apply(layer, m.undo())
    assert len(m) == 0 and not m.labels.any() and m.undo() is None
    for i in range(len(seen)):
        apply(layer, m.redo())
        assert np.array_equal(m.labels, seen[i][0]) and np.array_equal(layer, m.labels)
    assert m.redo() is None
    m.undo()
    m.add_object("new")  # a new step forgets what was undone
    assert not m.can_redo


def test_a_failing_step_is_rolled_back(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("a")
    before = m.history.descriptions()
    with pytest.raises(InputError):
        with m.batch("two commits"):
            m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
            m.commit(1, 40, key_prompt(big, 12))  # outside the volume
    assert m.object(1).key_slices == [] and not m.labels.any() and m.history.descriptions() == before


# ---------------------------------------------------------------- runs
def test_a_run_is_a_job_on_a_copy_and_equals_the_propagator(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("big")
    p = key_prompt(big, 12)
    m.commit(1, 12, p, key_mask(backend, emb, p, 12))
    live = m.object(1).state
    run = m.propagation(1, Propagator(backend, emb))
    job = run.steps()
    first = next(job)
    assert isinstance(first, Progress) and first.payload.index != 12 and first.total >= first.done == 1
    assert first.payload.index in run.state.results and first.payload.index not in live.results, (
        "the run works on a copy: the object's state is untouched until finish"
    )
    cs = m.apply(run, first)
    assert cs.slices(0) == [first.payload.index] and np.array_equal(
        m.labels[first.payload.index] == 1, first.payload.mask
    )
    with pytest.raises(UsageError):
        m.undo()  # not while the run works on the object
    for event in job:
        m.apply(run, event)
    cs = m.finish(run)
    assert m.object(1).state is live and not live.needs_run  # same object, the run's results adopted
    ref = PropagationState(shape=vol.shape)
    ref.add_prompt(12, p)
    Propagator(backend, emb).propagate(ref)
    assert np.array_equal(m.labels == 1, ref.volume_mask()) and np.array_equal(m.labels, painted_objects(m))
    assert m.history.descriptions()[-1] == "propagate big"
    m.undo()
    assert (m.labels == 1).sum() == (m.labels[12] == 1).sum(), "one undo takes the whole run back"


def test_cancelled_run_keeps_finished_slices_and_resumes(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    run = m.propagation(1, Propagator(backend, emb))
    job = run.steps()
    done = [next(job).payload.index for _ in range(3)]
    job.close()  # what napari's worker.quit() does
    m.finish(run)
    st = m.object(1).state
    assert st.needs_run and all(i in st.results for i in done) and not run.completed
    kept = {i: st.results[i] for i in done}
    m.propagate(1, Propagator(backend, emb))
    assert not st.needs_run and all(np.array_equal(st.results[i], k) for i, k in kept.items())
    assert dice(m.labels == 1, big) > 0.99


class SlowBackend(BrightInBoxBackend):
    """The fake box model, 30 ms per decode: a run lasts long enough to paint during it."""

    def decode_low_res(self, *a, **k):
        time.sleep(0.03)
        return super().decode_low_res(*a, **k)


def test_painting_during_a_running_propagation_corrupts_nothing(scene):
    """The run goes on in a worker thread while the owner's thread applies its
    slices and the user paints a slice the run has not reached yet; the result
    equals painting after a finished run, and nothing raised."""
    vol, big, small, _, _ = scene
    backend = SlowBackend()
    emb = SliceEmbeddings(backend, vol, Window(0, 255), axis=0)
    p = key_prompt(big, 12)

    def fresh() -> Annotation:
        m = Annotation(vol.shape)
        m.add_object("big")
        m.commit(1, 12, p, key_mask(backend, emb, p, 12))
        return m

    def paint(m: Annotation) -> None:
        user = np.array(m.labels)
        user[6] = 0
        user[6, 28:36, 26:34] = 1  # the user's own mask on slice 6
        m.paint(user)

    ref = fresh()  # the reference: run, then paint, then run again
    ref.propagate(1, Propagator(backend, emb))
    paint(ref)
    ref.propagate(1, Propagator(backend, emb))

    m = fresh()
    run = m.propagation(1, Propagator(backend, emb))
    events: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def worker() -> None:  # as napari's thread_worker: only the job, never the model
        try:
            for event in run.steps():
                events.put(event)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        events.put(None)

    threading.Thread(target=worker).start()
    shown, painted_at = [], None
    while (event := events.get(timeout=60)) is not None:
        m.apply(run, event)
        if event.payload is None:  # a step that finished no slice
            continue
        shown.append(event.payload.index)
        if len(shown) == 2:  # the run is on its way upwards; slice 6 comes later
            painted_at = len(shown)
            paint(m)
            assert m.object(1).painted == {6} and np.array_equal(m.labels[6] == 1, ref.labels[6] == 1)
    assert set(m.object(1).state.results) == {6, 12}, "the worker thread never wrote the model's state"
    m.finish(run)
    assert not errors and painted_at == 2 and 6 in shown, "the run went past the painted slice"
    st = m.object(1).state
    assert np.array_equal(st.user_masks[6], ref.object(1).state.user_masks[6]), "the paint was kept"
    assert np.array_equal(m.labels[6], ref.labels[6]), "the run did not paint over the user's slice"
    assert st.needs_run, "the painted slice's neighbourhood is marked for the next run"
    m.propagate(1, Propagator(backend, emb))
    assert np.array_equal(m.labels, ref.labels)
    assert m.history.descriptions() == [
        "add object 1",
        "commit slice 12 of big",
        "paint",
        "propagate big",
        "propagate big",
    ]


def test_correction_run_and_its_refusals(scene):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    prop = Propagator(backend, emb)
    m.propagate(1, prop)
    with pytest.raises(InputError):
        m.correction(1, Correction((99, 0, 0), 1), prop)
    assert m.object(1).corrections == []
    cs = m.correct(1, Correction((8, 32, 30), 0), prop)
    assert m.object(1).corrections == [Correction((8, 32, 30), 0)] and cs.objects == {1}
    assert m.labels[8, 32, 30] == 0
    m2 = Annotation((1, 64, 64), is_2d=True)
    m2.add_object("flat")
    m2.commit(1, 0, mask=big[12][None][0])
    with pytest.raises(UsageError):
        m2.propagation(1, prop)


# ---------------------------------------------------------------- saving, replay, the key rule
def test_saved_and_restored_annotation_continues(scene, tmp_path):
    vol, big, small, backend, emb = scene
    m = Annotation(vol.shape, spacing_zyx=(2.0, 0.5, 0.5))
    m.add_object("big", color=(1, 2, 3))
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    run = m.propagation(1, Propagator(backend, emb))
    job = run.steps()
    for _ in range(4):
        next(job)
    job.close()
    m.finish(run)  # half propagated: the rest is still to do after restoring
    m.add_object("small")
    user = np.array(m.labels)
    user[10][small[10]] = 2
    m.paint(user)
    meta, arrays = split_arrays(annotation_to_dict(m))
    np.savez_compressed(tmp_path / "a.npz", **{k.replace("/", "|"): v for k, v in arrays.items()})
    with np.load(tmp_path / "a.npz") as npz:
        back = annotation_from_dict(join_arrays(meta, {k.replace("|", "/"): npz[k] for k in npz.files}))
    assert np.array_equal(back.labels, m.labels) and back.current_id == m.current_id
    assert [(o.id, o.name, o.color, o.key_slices, o.painted) for o in back.objects] == [
        (o.id, o.name, o.color, o.key_slices, o.painted) for o in m.objects
    ]
    assert back.object(1).state.stops == m.object(1).state.stops
    assert back.object(1).state.dirty == m.object(1).state.dirty and back.object(1).state.needs_run
    back.propagate(1, Propagator(backend, emb))
    m.propagate(1, Propagator(backend, emb))
    assert np.array_equal(back.labels, m.labels)
    meta["version"] = 99
    with pytest.raises(InputError, match="newer"):
        annotation_from_dict(join_arrays(meta, arrays))


def test_segment_volume_is_a_replay_through_the_model(scene):
    vol, big, small, backend, emb = scene
    pf = PromptsFile(
        objects=[
            ObjectPrompts(1, "big", [key_prompt(big, 12)], window=[0, 255], propagate=True),
            ObjectPrompts(2, "small", [key_prompt(small, 10)], window=[0, 255], propagate=True),
        ]
    )
    res = segment_volume(Volume(vol, metadata={"modality": "CT"}), pf, backend)
    model = res.annotation
    assert np.array_equal(model.labels, res.labels) and [o.name for o in model.objects] == ["big", "small"]
    # by hand, as the widget does it: the same label map
    m = Annotation(vol.shape)
    for o in pf.objects:
        m.add_object(o.name, object_id=o.id)
        [p] = o.prompts
        m.commit(o.id, p.slice, p, key_mask(backend, emb, p, p.slice))
        m.propagate(o.id, Propagator(backend, emb))
    assert np.array_equal(m.labels, res.labels)
    assert model.history.descriptions() == ["prompts file"], "the replay is one undoable step"
    model.undo()
    assert not model.labels.any() and model.objects == [], "the replay is one undoable step"
    model.redo()
    assert np.array_equal(model.labels, res.labels) and [o.name for o in model.objects] == ["big", "small"]
    # the history's snapshots are frozen, but what undo and redo put back is live: work goes on
    cut = key_prompt(big, 14)
    model.commit(1, 14, cut, key_mask(backend, emb, cut, 14) & False)
    model.propagate(1, Propagator(backend, emb))
    assert not (model.labels[14] == 1).any() and 14 in model.object(1).key_slices
    model.undo()
    model.undo()
    assert np.array_equal(model.labels, res.labels)
    # the command line keeps no undo history, so no snapshot of any object: the same labels
    bare = segment_volume(Volume(vol, metadata={"modality": "CT"}), pf, backend, undo=False)
    assert np.array_equal(bare.labels, res.labels) and not bare.annotation.can_undo


def test_history_snapshots_are_frozen_and_small(scene):
    """The undo history keeps each touched object as a frozen copy: immutable containers,
    empty ones shared (an empty set is 216 bytes, thousands of objects keep several)."""
    vol, big, _small, backend, emb = scene
    m = Annotation(vol.shape)
    m.add_object("big")
    m.commit(1, 12, key_prompt(big, 12), key_mask(backend, emb, key_prompt(big, 12), 12))
    entry = m.history.peek_undo()
    snap = entry.after[1]
    assert entry.before[1] is not None and entry.before[1].key_slices == []  # the object existed, still empty
    with pytest.raises(AttributeError):
        snap.state.dirty.add(3)
    with pytest.raises(TypeError):
        snap.state.user_masks[3] = big[3]
    fresh = [m.object(1).snapshot(frozen=True) for _ in range(2)]
    assert fresh[0].painted is fresh[1].painted and fresh[0].state.user_masks is fresh[1].state.user_masks
    live = m.object(1)
    assert live.state.dirty is not snap.state.dirty and isinstance(live.state.dirty, set)


class _StubPredictor:
    """Stands in for a SlicePredictor: a fixed single answer and three candidates."""

    backend = embedding = None

    def __init__(self, single: np.ndarray, many: list[np.ndarray]) -> None:
        self.single, self.many = single, many

    def predict(self, prompt=None, previous=None, multimask=True) -> Prediction:
        masks = np.stack(self.many if multimask else [self.single])
        k = len(masks)
        return Prediction(
            masks,
            np.linspace(0.9, 0.5, k, dtype=np.float32),
            np.zeros((k, 4, 4), np.float32),
            np.zeros((k, 4), np.float32),
        )


def _stub_outputs(monkeypatch, masks: list[np.ndarray]) -> None:
    """The model's own answers to a box (candidates.box_outputs) replaced by ``masks``."""
    import napari_sam.candidates as ks

    k = len(masks)
    out = Prediction(np.stack(masks), np.full(k, 0.2, np.float32), np.zeros((k, 4, 4), np.float32), np.zeros((k, 4)))
    monkeypatch.setattr(ks, "box_outputs", lambda backend, emb, box: out)


def test_decode_key_box_fit_takes_the_models_multimask_outputs(monkeypatch):
    """A box-only model's predictor ranks hypotheses of the single output only; the
    box-fit choice also weighs the model's multimask outputs, where the whole object may be."""
    part = np.zeros((20, 20), bool)
    part[5:9, 5:9] = True
    whole = np.zeros((20, 20), bool)
    whole[4:16, 4:16] = True
    _stub_outputs(monkeypatch, [part, part, whole, part])
    stub = _StubPredictor(single=part, many=[part])
    box = SlicePrompt(box=(4, 4, 15, 15))
    assert np.array_equal(decode_key(stub, box, key_choice="single").mask, part)
    assert np.array_equal(decode_key(stub, box, key_choice="box_fit").mask, whole)


def test_decode_key_box_fit_puts_the_candidate_that_explains_the_box_first(monkeypatch):
    part = np.zeros((20, 20), bool)
    part[5:9, 5:9] = True
    whole = np.zeros((20, 20), bool)
    whole[4:16, 4:16] = True
    box = SlicePrompt(box=(4, 4, 15, 15))
    _stub_outputs(monkeypatch, [part])
    stub = _StubPredictor(single=part, many=[part, whole])
    assert np.array_equal(decode_key(stub, box, key_choice="single").mask, part)
    chosen = decode_key(stub, box, key_choice="box_fit")
    assert np.array_equal(chosen.mask, whole) and np.array_equal(chosen.masks[1], part) and len(chosen.masks) == 2
    clicks = SlicePrompt(points=np.array([[6.0, 6.0]], np.float32), labels=np.array([1]))
    assert np.array_equal(decode_key(stub, clicks, key_choice="box_fit").mask, part)  # boxes only
    with pytest.raises(InputError):
        decode_key(stub, box, key_choice="best")
