"""Mouse events for driving napari layers in tests, without napari's private test utilities.

:func:`mouse` builds the event napari's mouse callbacks read (world
``position``, ``button``, ``modifiers``, ``dims_displayed``,
``view_direction``, ``is_dragging``) and calls the layer's press, move or
release callbacks through napari's public ``napari.utils.interactions``. The
event is wrapped in a ``wrapt.ObjectProxy``, as napari's own events are: a
drag callback keeps the press event, and napari points its ``__wrapped__`` at
each later move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import wrapt
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

__all__ = ["MouseEvent", "mouse"]


@dataclass
class MouseEvent:
    """What napari's layer mouse callbacks read from a vispy mouse event."""

    type: str
    position: tuple[float, ...] = (0.0, 0.0)  # world coordinates
    is_dragging: bool = False
    button: int | None = 1
    modifiers: list[str] = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))  # canvas coordinates
    view_direction: list[float] | None = None
    up_direction: list[float] | None = None
    dims_displayed: list[int] = field(default_factory=lambda: [0, 1])
    delta: tuple[float, float] | None = None
    native: Any = None
    handled: bool = False


def mouse(layer: Any, kind: str, world: Any, **kw: Any) -> None:
    """Press, move or release (``kind``: mouse_press, mouse_move, mouse_release) at the
    world position ``world`` on ``layer``, in a 2D view of its last two axes."""
    n = len(world)
    event = MouseEvent(
        type=kind,
        position=tuple(float(v) for v in world),
        dims_displayed=list(range(n))[-2:],
        view_direction=[1.0] + [0.0] * (n - 1),
        **kw,
    )
    {
        "mouse_press": mouse_press_callbacks,
        "mouse_move": mouse_move_callbacks,
        "mouse_release": mouse_release_callbacks,
    }[kind](layer, wrapt.ObjectProxy(event))
