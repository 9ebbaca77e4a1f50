"""Health of a live process: the one-line summary ``serve`` logs, and the per-station figures clients ask for.

:class:`Health` is a sink of the live runner (it counts updates, latencies and how streams ended) and reads the
pooled sources' figures (bytes, samples, decode errors, reconnects, state; sent by the decoder processes every
second) and the engine's backlog per stream. Nothing here imports the engine or the network.

The summary also says when the process is **behind**: fewer updates than its live stations should give, or a p99
latency over 1 s, two summaries in a row (the first one after a start holds its start-up burst). Then
:meth:`Health.advice` tells the operator what limits it: the machine's CPU, with how many stations of this model
fit on it, or, with idle cores, the stations themselves (late or bursty audio: the ``stats`` request shows which).
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StreamtagError
from .events import GenreUpdate

if TYPE_CHECKING:
    from .live import LiveRunner

__all__ = ["Health", "machine_cpu", "process_cpu_seconds", "LATENCY_BUCKETS_S"]

MAX_LATENCIES = 200_000  # latencies kept between two summaries (the newest)
BEHIND_P99_MS = 1000.0  # a summary whose p99 latency is above this is behind
BEHIND_SHARE = 0.95  # ... or whose stations live throughout gave fewer than this share of their expected updates
CPU_BOUND = 0.85  # the machine's CPU is the limit when at least this share of it is busy
# upper bounds of the /metrics latency histogram (s): real time ends at 1 s (BEHIND_P99_MS)
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


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


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine since boot, all cores, in clock ticks (Linux /proc/stat; their
    ratio is what the summary uses); None elsewhere."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    total = sum(fields)
    return total - fields[3] - fields[4], total


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
        self._machine_since = machine_cpu()
        self._added: dict[str, float] = {}  # stream -> when it was added
        # pooled stations live at the previous summary, long enough to answer: station -> (its updates, reconnects)
        self._steady: dict[str, tuple[int, int]] = {}
        self._behind_before = False
        self._advice: str | None = None
        self._skipped: dict[str, float] = {}  # stream -> s its start-up catch-up had skipped at the previous summary
        # for /metrics, never reset: updates, and their latencies as a histogram (counts per LATENCY_BUCKETS_S bound,
        # the last one above every bound), their sum (s) and count
        self._updates_total = 0
        self._latency_counts = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)
        self._latency_sum = 0.0
        self._latency_n = 0

    def _pid_list(self) -> list[int]:
        return list(self._pids()) if callable(self._pids) else []

    # -- sink ------------------------------------------------------------------------------------------------
    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        with self._lock:
            self._failed.discard(name)
            self._added[name] = time.monotonic()

    def on_update(self, updates: list[GenreUpdate]) -> None:
        latencies = [float(x) for u in updates
                     if isinstance(x := u.extra.get("latency_ms"), int | float) and math.isfinite(x)]
        seconds = np.asarray(latencies, dtype=np.float64) / 1000.0
        buckets = np.searchsorted(LATENCY_BUCKETS_S, seconds, side="left")  # le: a latency equal to a bound is in it
        with self._lock:
            self._updates += len(updates)
            self._updates_total += len(updates)
            for u in updates:
                self._updates_by[u.stream] = self._updates_by.get(u.stream, 0) + 1
            self._latencies.extend(latencies)
            np.add.at(self._latency_counts, buckets, 1)
            self._latency_sum += float(seconds.sum())
            self._latency_n += len(latencies)

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self._lock:
            self._updates_by.pop(name, None)
            self._prev.pop(name, None)
            self._added.pop(name, None)
            self._steady.pop(name, None)
            if error is not None:
                self._failed.add(name)

    # -- figures ---------------------------------------------------------------------------------------------
    def _take_interval(self, now: float, cpu: float) -> tuple[float, float, np.ndarray, float]:
        """(seconds, updates/s, latencies in ms, CPU in cores) since the previous summary, which this starts
        again; call with ``_lock`` held."""
        elapsed = max(1e-9, now - self._since)
        rate = self._updates / elapsed
        lat = np.fromiter(self._latencies, dtype=np.float64)
        self._updates = 0
        self._latencies.clear()
        cpu_share = (cpu - self._cpu_since) / elapsed
        self._since, self._cpu_since = now, cpu
        return elapsed, rate, lat, cpu_share

    def summary(self, runner: LiveRunner) -> str:
        """``12 stations: 10 live, 1 reconnecting, 1 failed · 24.0 updates/s (20 expected) · p99 latency 180 ms ·
        CPU 35%``; rates over the time since the previous summary. "expected": what the pooled stations live since
        the previous summary should have given (one update per hop each); absent when there are none. Sets
        :meth:`advice`."""
        now = time.monotonic()
        cpu = process_cpu_seconds(self._pid_list())
        machine = machine_cpu()
        engine = runner.engine
        with self._lock:
            elapsed, rate, lat, cpu_share = self._take_interval(now, cpu)
            failed = len(self._failed)
            machine_share = None
            if machine is not None and self._machine_since is not None and machine[1] > self._machine_since[1]:
                machine_share = (machine[0] - self._machine_since[0]) / (machine[1] - self._machine_since[1])
            self._machine_since = machine
            updates_by = dict(self._updates_by)
            added = dict(self._added)
            steady_before = self._steady
        pooled = runner.pooled()
        streams = runner.streams()
        reconnecting = sum(1 for s in pooled.values() if s.stats.state in ("reconnecting", "opening"))
        live = len(streams) - reconnecting
        p99_ms = float(np.percentile(lat, 99)) if lat.size else None
        p99 = "–" if p99_ms is None else f"{p99_ms:.0f} ms"
        total = len(streams) + failed
        # expected updates: the pooled stations that were live, answering and unbroken since the previous summary
        first_answer = engine.first_answer_seconds + engine.hop_seconds
        steady: dict[str, tuple[int, int]] = {}
        got = expected = 0.0
        n_steady = 0  # stations counted: live through the interval, not reconnected
        for name, src in pooled.items():
            if src.stats.state != "live" or now - added.get(name, now) < first_answer:
                continue
            count, reconnects = updates_by.get(name, 0), src.stats.reconnects
            steady[name] = (count, reconnects)
            before = steady_before.get(name)
            if before is not None and before[1] == reconnects:
                n_steady += 1
                got += count - before[0]
                expected += elapsed / engine.hop_seconds
        with self._lock:
            self._steady = steady
        expect = f" ({expected / elapsed:.0f} expected)" if n_steady else ""
        # behind: a stations' worth of hops (their phase) plus the share short, or the p99 over the limit
        short = n_steady > 0 and expected - got > (1 - BEHIND_SHARE) * expected + n_steady
        slow = p99_ms is not None and p99_ms > BEHIND_P99_MS
        behind = short or slow
        self._advice = None
        if behind and self._behind_before:
            self._advice = self._explain(runner, rate=got / elapsed if n_steady else rate,
                                         expected=expected / elapsed if n_steady else None, p99=p99,
                                         ours=cpu_share, machine=machine_share, stations=len(streams))
        self._behind_before = behind
        return (f"{total} station{'s' if total != 1 else ''}: {live} live, {reconnecting} reconnecting, "
                f"{failed} failed · {rate:.1f} updates/s{expect} · p99 latency {p99} · CPU {100 * cpu_share:.0f}%"
                + self._skipped_since(runner, streams))

    def _skipped_since(self, runner: LiveRunner, streams: list[str]) -> str:
        """`` · 12.5 s of late audio skipped (3 stations catching up)`` when live stations' start-up catch-up
        (Engine.catch_up) skipped audio since the previous summary, else ""."""
        caught_up = getattr(runner.engine, "caught_up_seconds", None)
        if caught_up is None:
            return ""
        now = {name: caught_up(name) for name in streams}
        new = {name: s - self._skipped.get(name, 0.0) for name, s in now.items() if s > self._skipped.get(name, 0.0)}
        self._skipped = now
        if not new:
            return ""
        n = len(new)
        return f" · {sum(new.values()):.1f} s of late audio skipped ({n} station{'s' if n != 1 else ''} catching up)"

    def advice(self) -> str | None:
        """After :meth:`summary`: what to do when this summary and the one before it were behind, else None."""
        return self._advice

    @staticmethod
    def _explain(runner: LiveRunner, *, rate: float, expected: float | None, p99: str, ours: float,
                 machine: float | None, stations: int) -> str:
        cores = os.cpu_count() or 1
        what = (f"{rate:.1f} of {expected:.0f} expected updates/s" if expected is not None else f"{rate:.1f} updates/s")
        head = f"behind: {what}, p99 latency {p99}"
        if machine is None:
            return f"{head}; this process and its decoders use {ours:.2f} cores: try fewer stations"
        if machine >= CPU_BOUND:
            other = max(0.0, machine * cores - ours)  # the other processes' share of the machine
            fit = int(stations * max(0.0, CPU_BOUND * cores - other) / ours) if ours > 0 else 0
            return (f"{head}. The machine's CPU is the limit: its {cores} cores are {100 * machine:.0f}% busy "
                    f"(this process and its decoders {ours:.2f} cores, other processes {other:.2f}); about {fit} "
                    f"stations of {runner.engine.bundle.name} fit here. Remove stations, run a lighter model, or spread the stations "
                    f"over machines (serve --cluster)")
        return (f"{head}, while the machine's CPU is only {100 * machine:.0f}% busy: stations' audio arrives late "
                f"or in bursts. The stats request shows each station's lag and bytes/s")

    def stations(self, runner: Any) -> dict[str, dict[str, Any]]:
        """Per station: state, bytes_per_s (since the previous request), decode_errors, reconnects, lag_s (audio
        waiting for the engine), skipped_s (audio skipped to catch up in its start-up), updates. ``serve
        --cluster``'s gateway (a runner with ``placement``): state (``live`` on a worker, ``waiting`` for one),
        worker, updates, moves."""
        if hasattr(runner, "placement"):
            return self._placed(runner)
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
                caught_up = getattr(runner.engine, "caught_up_seconds", None)
                if caught_up is not None:  # audio skipped to catch up in its start-up (Engine.catch_up)
                    fig["skipped_s"] = round(caught_up(name), 2)
            else:
                fig["state"] = "live"
            out[name] = fig
        return out

    def _placed(self, gateway: Any) -> dict[str, dict[str, Any]]:
        moves = gateway.station_moves()
        with self._lock:
            updates_by = dict(self._updates_by)
        return {name: {"state": "live" if worker is not None else "waiting", "worker": worker,
                       "updates": updates_by.get(name, 0), "moves": moves.get(name, 0)}
                for name, worker in gateway.placement().items()}

    def cluster_summary(self, gateway: Any) -> str:
        """``serve --cluster``'s health line: ``12 stations: 11 on workers, 1 waiting · 3 workers ready · 24.0
        updates/s · p99 latency 180 ms · workers' CPU 35% of 6 cores · gateway CPU 4%`` (rates since the previous
        line; the latencies as measured on the workers)."""
        with self._lock:
            _, rate, lat, ours = self._take_interval(time.monotonic(), process_cpu_seconds())
        placed = gateway.placement()
        workers = gateway.workers()
        ready = [w for w in workers if w["ready"]]
        waiting = sum(1 for w in placed.values() if w is None)
        used = sum(float(w["load"].get("cpu", 0.0)) for w in ready)
        cores = sum(float(w.get("cores", 0.0)) for w in ready)
        p99 = f"{np.percentile(lat, 99):.0f} ms" if lat.size else "–"
        n = len(placed)
        starting = len(workers) - len(ready)
        return (f"{n} station{'s' if n != 1 else ''}: {n - waiting} on workers, {waiting} waiting · "
                f"{len(ready)} worker{'s' if len(ready) != 1 else ''} ready"
                + (f" ({starting} starting)" if starting else "")
                + f" · {rate:.1f} updates/s · p99 latency {p99} · workers' CPU "
                + (f"{100 * used / cores:.0f}% of {cores:g} cores" if cores > 0 else "–")
                + f" · gateway CPU {100 * ours:.0f}%")

    def metrics(self, runner: Any) -> str:
        """The Prometheus text exposition (format 0.0.4) served at ``/metrics``: counters that never reset while
        the process runs (a station's restart its own), so a scraper computes rates itself (docs/protocol.md,
        "Metrics"). Station names are safe label values as they are (letters, digits and ``_.:-``).

        ``runner``: a :class:`~streamtag.live.LiveRunner`, or ``serve --cluster``'s gateway: its stations have
        no pooled source or backlog here (they run on the workers); a station is up while it is placed on a
        worker, and the gateway adds its own families (``metric_families``: workers, moves)."""
        from . import __version__

        cpu = process_cpu_seconds(self._pid_list())
        pooled: dict[str, Any] = runner.pooled() if hasattr(runner, "pooled") else {}
        placed = runner.placement() if hasattr(runner, "placement") else None
        streams = runner.streams()
        engine = runner.engine
        backlog = getattr(engine, "backlog", None)
        with self._lock:
            updates_total = self._updates_total
            counts = np.cumsum(self._latency_counts)
            lat_sum, lat_n = self._latency_sum, self._latency_n
            updates_by = dict(self._updates_by)
            failed = len(self._failed)
        states = {"live": 0, "opening": 0, "reconnecting": 0}
        for name in streams:
            src = pooled.get(name)
            state = src.stats.state if src is not None else "live"
            if placed is not None and placed.get(name) is None:
                state = "opening"  # waiting for a worker with room
            states[state if state in states else "live"] += 1
        out: list[str] = []

        def family(name: str, kind: str, text: str, rows: Sequence[tuple[str, float | int]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_number(value)}" for labels, value in rows)

        family("streamtag_build_info", "gauge", "streamtag's version and the model it runs (always 1)",
               [(f'{{version="{__version__}",model="{_label(engine.bundle.name)}"}}', 1)])
        family("streamtag_stations", "gauge", "stations by state (failed: ended with an error, no longer retrying)",
               [(f'{{state="{k}"}}', v) for k, v in states.items()] + [('{state="failed"}', failed)])
        family("streamtag_updates_total", "counter", "genre updates published, all streams", [("", updates_total)])
        bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS_S), "+Inf"]
        family("streamtag_update_latency_seconds", "histogram",
               "an update's latency: its newest audio's arrival to its publication",
               [(f'_bucket{{le="{b}"}}', int(c)) for b, c in zip(bounds, counts)]
               + [("_sum", lat_sum), ("_count", lat_n)])
        family("streamtag_cpu_seconds_total", "counter", "CPU time of this process and its decoder processes"
               + (" (the gateway: the workers report theirs)" if placed is not None else ""), [("", cpu)])
        per: dict[str, list[tuple[str, float | int]]] = {key: [] for key, _, _ in _STATION_METRICS}
        for name in streams:
            label = f'{{station="{_label(name)}"}}'
            src = pooled.get(name)
            up = (src is None or src.stats.state == "live") and (placed is None or placed.get(name) is not None)
            per["up"].append((label, int(up)))
            per["updates_total"].append((label, updates_by.get(name, 0)))
            if backlog is not None:
                per["lag_seconds"].append((label, backlog(name)))
            if src is not None:
                st = src.stats
                per["bytes_total"].append((label, st.bytes_in))
                per["decode_errors_total"].append((label, st.decode_errors))
                per["reconnects_total"].append((label, st.reconnects))
                per["audio_seconds_total"].append((label, st.samples / engine.sample_rate))
        for key, kind, text in _STATION_METRICS:
            if per[key] or placed is None:  # the gateway has no decoder figures: those families would stay empty
                family(f"streamtag_station_{key}", kind, text, per[key])
        for name, kind, text, rows in (runner.metric_families() if hasattr(runner, "metric_families") else []):
            family(name, kind, text, rows)
        return "\n".join(out) + "\n"


# /metrics' per-station families: (name after streamtag_station_, type, help)
_STATION_METRICS = (
    ("up", "gauge", "1 while the station is connected and playing, 0 while it opens or reconnects"),
    ("updates_total", "counter", "genre updates of the station"),
    ("lag_seconds", "gauge", "the station's audio waiting for the engine"),
    ("bytes_total", "counter", "bytes read from the station's server"),
    ("decode_errors_total", "counter", "undecodable packets skipped"),
    ("reconnects_total", "counter", "reconnections after drops"),
    ("audio_seconds_total", "counter", "seconds of audio decoded"),
)


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "NaN" if math.isnan(value) else repr(round(float(value), 6))
