"""Health of a live process: the one-line summary ``serve`` logs, and the per-station figures clients ask for.

:class:`Health` is a sink of the live runner (it counts updates, latencies and how streams ended) and reads the
pooled sources' figures (bytes, samples, decode errors, reconnects, state; sent by the decoder processes every
second) and the engine's backlog per stream. Nothing here imports the engine or the network.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StreamtagError
from .events import GenreUpdate

if TYPE_CHECKING:
    from .live import LiveRunner

__all__ = ["Health", "process_cpu_seconds"]

MAX_LATENCIES = 200_000  # latencies kept between two summaries (the newest)


def process_cpu_seconds(pids: list[int] | None = None) -> float:
    """CPU seconds (user + system) used by this process and the processes ``pids`` (Linux /proc; elsewhere
    this process only)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids or []:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return total


class Health:
    """A sink tallying the live figures; :meth:`summary` gives serve's line, :meth:`stations` the per-station
    figures of the ``stats`` request (docs/protocol.md)."""

    def __init__(self, pids: Any = None) -> None:
        self._pids = pids  # callable -> the decoder processes' pids (their CPU counts as ours)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=MAX_LATENCIES)
        self._updates = 0
        self._failed: set[str] = set()
        self._since = time.monotonic()
        self._cpu_since = process_cpu_seconds(self._pid_list())
        self._prev: dict[str, tuple[float, int]] = {}  # station -> (t, bytes_in) at the previous stats request
        self._updates_by: dict[str, int] = {}

    def _pid_list(self) -> list[int]:
        return list(self._pids()) if callable(self._pids) else []

    # -- sink ------------------------------------------------------------------------------------------------
    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        with self._lock:
            self._failed.discard(name)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        with self._lock:
            self._updates += len(updates)
            for u in updates:
                self._updates_by[u.stream] = self._updates_by.get(u.stream, 0) + 1
                latency = u.extra.get("latency_ms")
                if isinstance(latency, int | float) and math.isfinite(latency):
                    self._latencies.append(float(latency))

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self._lock:
            self._updates_by.pop(name, None)
            self._prev.pop(name, None)
            if error is not None:
                self._failed.add(name)

    # -- figures ---------------------------------------------------------------------------------------------
    def summary(self, runner: LiveRunner) -> str:
        """``12 stations: 10 live, 1 reconnecting, 1 failed · 24.0 updates/s · p99 latency 180 ms · CPU 35%``;
        rates over the time since the previous summary."""
        now = time.monotonic()
        cpu = process_cpu_seconds(self._pid_list())
        with self._lock:
            elapsed = max(1e-9, now - self._since)
            rate = self._updates / elapsed
            lat = np.fromiter(self._latencies, dtype=np.float64)
            self._updates = 0
            self._latencies.clear()
            failed = len(self._failed)
            cpu_share = (cpu - self._cpu_since) / elapsed
            self._since, self._cpu_since = now, cpu
        pooled = runner.pooled()
        streams = runner.streams()
        reconnecting = sum(1 for s in pooled.values() if s.stats.state in ("reconnecting", "opening"))
        live = len(streams) - reconnecting
        p99 = f"{np.percentile(lat, 99):.0f} ms" if lat.size else "–"
        total = len(streams) + failed
        return (f"{total} station{'s' if total != 1 else ''}: {live} live, {reconnecting} reconnecting, "
                f"{failed} failed · {rate:.1f} updates/s · p99 latency {p99} · CPU {100 * cpu_share:.0f}%")

    def stations(self, runner: LiveRunner) -> dict[str, dict[str, Any]]:
        """Per station: state, bytes_per_s (since the previous request), decode_errors, reconnects, lag_s (audio
        waiting for the engine), updates."""
        now = time.monotonic()
        pooled = runner.pooled()
        out: dict[str, dict[str, Any]] = {}
        for name in runner.streams():
            src = pooled.get(name)
            fig: dict[str, Any] = {"lag_s": round(runner.engine.backlog(name), 3),
                                   "updates": self._updates_by.get(name, 0)}
            if src is not None:
                s = src.stats
                prev_t, prev_bytes = self._prev.get(name, (s.t, s.bytes_in))
                rate = (s.bytes_in - prev_bytes) / (now - prev_t) if now - prev_t > 0.5 else None
                if rate is not None or name not in self._prev:
                    self._prev[name] = (now, s.bytes_in)
                fig.update(state=s.state, bytes_per_s=None if rate is None else round(rate),
                           bytes_in=s.bytes_in, decode_errors=s.decode_errors, reconnects=s.reconnects,
                           audio_s=round(s.samples / runner.engine.sample_rate, 1))
            else:
                fig["state"] = "live"
            out[name] = fig
        return out
