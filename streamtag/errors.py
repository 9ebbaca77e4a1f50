"""One exception tree for everything a user can cause.

Every message is a single line that names the input and says what to do about it; the CLI prints
``str(error)`` and never a traceback for these.
"""
from __future__ import annotations

import _thread
import logging
import threading

__all__ = [
    "StreamtagError",
    "ConfigError",
    "SourceError",
    "ModelError",
    "DeviceError",
    "ProtocolError",
    "close_quietly",
    "Terminated",
    "output_failed",
    "output_failure",
]

_OUTPUT_FAILURES: list[OSError] = []  # the first error that kept the command's results from being written


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


def output_failed(error: OSError) -> None:
    """Say, from any thread, that the command's results cannot be written (a full disk, a reader that left): the
    command is ended as if interrupted (nothing more can reach its output), and the CLI reports this once, as
    ``cannot write output: ...`` with exit code 74 (0, quietly, for a reader that left a pipe)."""
    if _OUTPUT_FAILURES:
        return
    _OUTPUT_FAILURES.append(error)
    if threading.current_thread() is not threading.main_thread():
        _thread.interrupt_main()


def output_failure(*, take: bool = False) -> OSError | None:
    """The error :func:`output_failed` was told of first (None: the output was fine); ``take`` forgets it."""
    failure = _OUTPUT_FAILURES[0] if _OUTPUT_FAILURES else None
    if take:
        _OUTPUT_FAILURES.clear()
    return failure


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: the terminal hung up), raised in the main thread like Ctrl-C so that the same cleanup
    runs; ``code`` is the exit code (143 for SIGTERM, 129 for SIGHUP: 128 + the signal's number)."""

    def __init__(self, code: int = 143) -> None:
        super().__init__()
        self.code = code
