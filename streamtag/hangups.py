"""SIGHUPs that reach a station list's command before its reload handler runs.

``serve --sources FILE`` and ``stream --sources FILE`` reload their list on SIGHUP, but their handlers are
installed only once the model is loaded and the stations open, seconds after the start. Until then SIGHUP's
default action would kill the process: a ``systemctl reload`` right after ``start``. The command line
installs :func:`count_early` first thing for those commands; the reload handlers :func:`take` what it counted
and apply it as one reload once they run.
"""
from __future__ import annotations

import signal

__all__ = ["count_early", "take"]

_count = 0


def _on_hup(signum: int, frame: object) -> None:
    global _count
    _count += 1  # an int: nothing a signal handler could deadlock on


def count_early() -> None:
    """From now on, count SIGHUPs instead of dying of them (until a reload handler replaces this one)."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None:
        signal.signal(hup, _on_hup)


def take() -> int:
    """The SIGHUPs counted since the last call (0: none)."""
    global _count
    n, _count = _count, 0
    return n
