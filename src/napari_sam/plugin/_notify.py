"""napari notifications for the plugin's messages (one line each, never a traceback)."""

from __future__ import annotations

from ..errors import NapariSamError

__all__ = ["notify", "notify_error"]


def notify(level: str, message: str) -> None:
    """A napari notification (``level``: info, warning, error)."""
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning, "error": notifications.show_error}[level](
        message
    )


def notify_error(error: BaseException) -> None:
    """An error as a notification: ours (bad input, wrong order) as a warning with
    its message, anything else as an error with its type."""
    if isinstance(error, NapariSamError):
        notify("warning", f"napari-sam: {error}")
    else:
        notify("error", f"napari-sam: {type(error).__name__}: {error}")
