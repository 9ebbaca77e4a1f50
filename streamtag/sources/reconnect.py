"""One reconnect policy for every network source: deadlines, backoff with jitter, and the reconnect loop itself.

``UrlSource`` (Icecast/Shoutcast/HTTP) and ``HlsSource`` share :class:`ReconnectPolicy` and :class:`Reconnector`:

    retry = Reconnector(policy, label="radio.example/live.mp3", closed=self._closed, emit=self._emit)
    ...the stream drops...
    retry.dropped("the server ended the stream")       # event ("dropped", reason)
    conn = retry.reconnect(self._connect)                # events ("reconnecting", "in 2.0 s (attempt 3)"),
                                                         #        ("connected", label); None when closed

Events are worded so that ``f"{kind} {detail}"`` reads as a sentence: "reconnecting in 2.0 s (attempt 3)".
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ConfigError, SourceError
from .policy import PolicyError

__all__ = ["ReconnectPolicy", "Reconnector", "StallError", "UNSET", "Unset", "merge_policy"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unset:
    """The type of :data:`UNSET`: "this option was not given" where None is a meaningful value."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


class StallError(TimeoutError):
    """No progress (no bytes, or no decoded audio) within a deadline; ``str(e)`` says which, in words."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """Deadlines and retry behaviour of a network source (all times in seconds)."""

    connect_timeout: float = 10.0  # DNS + TCP (+ TLS) connect of one attempt
    header_timeout: float = 15.0  # the WHOLE status line + headers: a server trickling them cannot keep it open
    read_timeout: float = 15.0  # any single body read (no byte at all for this long -> dropped)
    stall_timeout: float = 15.0  # no decoded audio for this long (bytes or not) -> dropped, reconnect
    fetch_timeout: float = 30.0  # one whole HLS playlist or segment download
    backoff_initial: float = 0.5  # delay before the first reconnect attempt
    backoff_max: float = 30.0  # delays double per failed attempt up to this
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1] (no stampedes)
    max_retries: int | None = None  # consecutive failed attempts before giving up; None = forever, 0 = never
    healthy_after: float = 30.0  # this long connected resets the attempt count
    segment_retries: int = 2  # HLS: tries per segment beyond the first, then it is skipped

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "header_timeout", "read_timeout", "stall_timeout", "fetch_timeout",
                     "backoff_initial", "backoff_max", "healthy_after"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"jitter must be in [0, 1], got {self.jitter!r}")
        if self.max_retries is not None and (not isinstance(self.max_retries, int) or self.max_retries < 0):
            raise ConfigError(f"max_retries must be None (forever) or an integer >= 0, got {self.max_retries!r}")
        if not isinstance(self.segment_retries, int) or self.segment_retries < 0:
            raise ConfigError(f"segment_retries must be an integer >= 0, got {self.segment_retries!r}")

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt`` (1-based): initial * 2**(attempt-1), capped, times the jitter."""
        nominal = min(self.backoff_max, self.backoff_initial * 2.0 ** min(max(0, attempt - 1), 64))
        return nominal * random.uniform(1.0 - self.jitter, 1.0)


def merge_policy(reconnect: ReconnectPolicy | None, *, max_retries: int | None | Unset = UNSET,
                 **overrides: float | None) -> ReconnectPolicy:
    """``reconnect`` (or the defaults) with the explicitly given options applied."""
    base = reconnect if reconnect is not None else ReconnectPolicy()
    changes: dict[str, float | int | None] = {k: v for k, v in overrides.items() if v is not None}
    if not isinstance(max_retries, Unset):
        changes["max_retries"] = max_retries
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


class Reconnector:
    """The reconnect loop, written once: counts consecutive failures, waits with backoff, gives up per policy."""

    def __init__(
        self,
        policy: ReconnectPolicy,
        *,
        label: str,
        closed: threading.Event,
        emit: Callable[[str, str], None],
    ) -> None:
        self.policy = policy
        self.label = label
        self._closed = closed
        self._emit = emit
        self.failures = 0  # consecutive failed attempts since the last healthy period
        self.reconnects = 0  # successful reconnects in this source's life
        self._reason = ""

    def healthy(self, seconds: float) -> None:
        """The connection that just ended had lasted ``seconds``: long enough resets the attempt count."""
        if seconds >= self.policy.healthy_after:
            self.failures = 0

    def dropped(self, reason: str) -> None:
        self._reason = reason
        log.warning("%s: stream dropped (%s)", self.label, reason)
        self._emit("dropped", reason)

    def reconnect(self, connect: Callable[[], T]) -> T | None:
        """Call ``connect`` until it succeeds, with backoff between attempts; None when the source was closed.

        SourceError when ``max_retries`` consecutive attempts failed; a PolicyError from ``connect`` (a redirect
        that now points somewhere forbidden) ends the loop at once.
        """
        last_error = ""
        while True:
            self.failures += 1
            limit = self.policy.max_retries
            if limit is not None and self.failures > limit:
                if limit == 0:
                    raise SourceError(f"{self.label}: the stream ended ({self._reason}); allow retries to reconnect")
                last = f" (last: {last_error})" if last_error else ""
                raise SourceError(
                    f"{self.label}: the stream ended ({self._reason}) and {limit} reconnect attempts failed{last}; "
                    "check the station, or allow more retries"
                )
            delay = self.policy.backoff(self.failures)
            log.info("%s: reconnecting in %.1f s (attempt %d)", self.label, delay, self.failures)
            self._emit("reconnecting", f"in {delay:.1f} s (attempt {self.failures})")
            if self._closed.wait(delay):
                return None
            try:
                conn = connect()
            except PolicyError:
                raise
            except SourceError as e:
                last_error = str(e).removeprefix(f"{self.label}: ").split(";")[0]
                log.warning("%s", e)
                if self._closed.is_set():
                    return None
                continue
            self.reconnects += 1
            self._emit("connected", self.label)
            return conn
