"""One exception tree for everything a user can cause.

Every message is a single line that names the input and says what to do about it; the CLI prints
``str(error)`` and never a traceback for these.
"""
from __future__ import annotations

import logging

__all__ = [
    "StreamtagError",
    "ConfigError",
    "SourceError",
    "ModelError",
    "DeviceError",
    "ProtocolError",
    "close_quietly",
]


class StreamtagError(Exception):
    """Base class: ``str(e)`` is a one-line, user-facing message."""


class ConfigError(StreamtagError):
    """An invalid option or parameter (bad hop, unknown device string, inconsistent bundle config)."""


class SourceError(StreamtagError):
    """An input that cannot be read: missing/corrupt file, unreachable host, HTTP error, ended stream."""


class ModelError(StreamtagError):
    """A model bundle that cannot be found or loaded."""


class DeviceError(StreamtagError):
    """An audio or compute device problem (PortAudio missing, no input device, CUDA unavailable)."""


class ProtocolError(StreamtagError):
    """A malformed or unauthorized message on the websocket protocol."""


def close_quietly(resource: object) -> None:
    """Call ``resource.close()`` if it has one, best effort: a failing close (logged at debug level) must not
    mask the real outcome (the error or the exit that led to closing it)."""
    close = getattr(resource, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        logging.getLogger("streamtag").debug("closing %r failed", resource, exc_info=True)
