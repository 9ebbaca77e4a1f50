"""The optional outputs of the live commands (``stream``/``serve``): ``segment`` events and the station log.

:func:`extra_sinks` builds the sinks these need, for the app loops (streamtag/app.py) to add to their runner,
and the function that closes them once the runner has stopped (the station log then closes every stream's open
segment and waits for its writer).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from .segments import Segment, SegmentSink, family_resolver

__all__ = ["extra_sinks"]


def extra_sinks(engine: Any, *, err: TextIO, record: str | None = None, keep: str | None = None,
                on_segment: Callable[[Segment], None] | None = None) -> tuple[list[Any], Callable[[], None]]:
    """Sinks for ``--record PATH [--keep 30d]`` and for segment events (``on_segment`` gets each closed segment),
    and a function to call after the runner stopped. Raises a one-line ConfigError for a log it cannot open."""
    family_of = family_resolver(getattr(engine, "bundle", None))
    sinks: list[Any] = []
    closers: list[Callable[[], None]] = []
    if on_segment is not None:
        sinks.append(SegmentSink(on_segment, family_of=family_of))
    if record is not None:
        from .store import DEFAULT_KEEP, StationLog, parse_duration

        station_log = StationLog(record, keep=parse_duration(keep or DEFAULT_KEEP), family_of=family_of, err=err)
        sinks.append(station_log)
        closers.append(station_log.close)

    def close() -> None:
        for c in closers:
            c()

    return sinks, close
