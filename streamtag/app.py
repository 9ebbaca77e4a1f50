"""The app loops: what ``stream``, ``listen``, ``demo`` (:func:`run_live`) and ``serve`` (:func:`run_serve`) run.

They build a :class:`~streamtag.live.LiveRunner`, hand it the sinks the output needs (JSON lines or the rich
dashboard, plus the stderr status lines and the end-of-run summary below), add the sources and wait for the
end: all sources ended, ``duration`` elapsed, or Ctrl-C. The CLI only parses arguments and calls these.

On the terminal (stderr): a source event such as a dropped radio stream is one line
(``streamtag: radio: reconnecting in 2.0 s (attempt 1)``) in JSON-lines mode, and the dashboard's status line
in dashboard mode; on exit every stream gets a one-line summary (audio tagged, updates, top genre over the
run, reconnects, overruns, how it ended).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from .errors import SourceError, StreamtagError, Terminated, close_quietly
from .events import GenreUpdate
from .live import LiveRunner, close_all, freeze_startup_objects
from .publishers import is_silent, status_message
from .publishers.jsonl import JsonlSink

if TYPE_CHECKING:
    from .live import Engine, Runner, Source
    from .publishers.websocket import ServerConfig
    from .sources.pool import PooledSource, SourcePool

__all__ = ["run_live", "run_serve", "RunSummary", "StatusLines", "StationListReload", "REFRESH_HZ"]

log = logging.getLogger(__name__)

REFRESH_HZ = 4.0  # dashboard refreshes per second
POLL_S = 0.05  # s between checks for the end of a JSON-lines run
HEALTH_EVERY_S = 30.0  # s between serve's one-line health summaries
OPEN_AT_ONCE = 32  # serve's own sources opened at once at the start (each mostly waits on the network)


class StatusLines:
    """A sink printing source events that users must know about (reconnecting, reconnected) as one line each."""

    KINDS = ("reconnecting", "connected")

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self._lock = threading.Lock()

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        pass

    def on_update(self, updates: list[GenreUpdate]) -> None:
        pass

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        if kind in self.KINDS:
            _line(self.err, f"streamtag: {name}: {status_message(kind, detail)}", self._lock)

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        pass


@dataclass
class _Tally:
    source: str = ""
    t: float = 0.0  # s of audio the last update describes
    updates: int = 0
    silent: int = 0  # updates below the silence threshold (left out of the run's top genre)
    sums: dict[str, float] = field(default_factory=dict)  # label -> sum of raw probabilities over non-silent hops
    reconnects: int = 0
    overruns: int = 0
    end: str = "live"


class RunSummary:
    """A sink that tallies each stream for the one-line summary printed on exit (:meth:`lines`).

    The run's top genre is the label with the highest mean raw probability over the stream's non-silent hops
    (:func:`streamtag.publishers.is_silent`), like ``streamtag tag``'s summary of a file.
    """

    def __init__(self) -> None:
        self.streams: dict[str, _Tally] = {}
        self.stopping = False  # set before the runner stops: streams removed from then on were stopped, not ended
        self.reasons: dict[str, str] = {}  # name -> why it is being removed (a station list's reload), for its line
        self._lock = threading.Lock()

    def _tally(self, name: str) -> _Tally:
        return self.streams.setdefault(name, _Tally())

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        with self._lock:
            self.streams[name] = _Tally(source=source)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        with self._lock:
            for u in updates:
                s = self._tally(u.stream)
                s.updates += 1
                s.t = max(s.t, u.t)
                s.overruns = int(u.extra.get("overruns") or 0) + int(u.extra.get("input_overruns") or 0)
                if is_silent(u):
                    s.silent += 1
                    continue
                for label, p in u.raw.items():
                    s.sums[label] = s.sums.get(label, 0.0) + float(p)

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        if kind == "connected":  # sources report "connected" after a drop (the first connection is before)
            with self._lock:
                self._tally(name).reconnects += 1

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self._lock:
            s = self._tally(name)
            reason = self.reasons.pop(name, None)
            s.end = (f"failed: {error}" if error is not None else reason if reason is not None
                     else "stopped" if self.stopping else "ended")

    def top(self, name: str) -> tuple[str, float] | None:
        """The run's top genre of ``name`` and its mean raw probability (None: no non-silent hop)."""
        with self._lock:
            s = self.streams[name]
            heard = s.updates - s.silent
            if not s.sums or heard <= 0:
                return None
            label = max(s.sums, key=lambda k: s.sums[k])
            return label, s.sums[label] / heard

    def lines(self) -> list[str]:
        """One line per stream: ``NAME: 63.5 s tagged, 127 updates, top rock (mean 0.41), 1 reconnect, 0 overruns,
        ended``."""
        out = []
        for name in list(self.streams):
            s = self.streams[name]
            top = self.top(name)
            genre = f"top {top[0]} (mean {top[1]:.2f})" if top else "top – (no music heard)"
            silent = f" ({s.silent} silent)" if s.silent else ""
            out.append(
                f"{name}: {s.t:.1f} s tagged, {s.updates} update{'s' if s.updates != 1 else ''}{silent}, {genre}, "
                f"{s.reconnects} reconnect{'s' if s.reconnects != 1 else ''}, "
                f"{s.overruns} overrun{'s' if s.overruns != 1 else ''}, {s.end}"
            )
        return out


def run_live(
    engine: Engine,
    sources: Mapping[str, Source | PooledSource],
    *,
    output: str = "auto",
    speed: float | None = None,
    duration: float | None = None,
    top: int | None = None,
    describe: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    console: Any = None,
    refresh_hz: float = REFRESH_HZ,
    segments: bool = False,
    record: str | None = None,
    keep: str | None = None,
    pool: SourcePool | None = None,
    reload: StationListReload | None = None,
    health_every: float = 0.0,
) -> int:
    """Tag ``sources`` (name -> source) live until they all end, Ctrl-C/SIGTERM, or ``duration`` s; returns an exit
    code (130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP).

    ``output``: "dashboard" (rich, needs a terminal), "jsonl" (GenreUpdate JSON lines on ``stdout``) or "auto"
    (dashboard when stdout is a terminal). ``speed`` paces every source at that many times real time (None: as
    fast as they yield). ``describe`` maps stream names to the input as shown (default: the name). ``top`` limits
    the genres per JSON update and the bars per stream. Status lines and the per-stream summaries go to
    ``stderr``. ``pool``: the :class:`~streamtag.sources.pool.SourcePool` the pooled sources came from (closed
    here). Raises the engine's error, or the first source's :class:`StreamtagError`, after cleanup.
    ``segments``: JSON lines also carry a ``segment`` event per closed segment; ``record``: the station log's
    file (``keep``: its retention, e.g. "30d"); see :mod:`streamtag.live_outputs`. ``reload``: the station list
    the stations came from (``stream --sources``); SIGHUP re-reads it and applies the difference, even under
    nohup, instead of ending the run. ``health_every``: with JSON lines, serve's health summary (and its warning
    when behind) on ``stderr`` every that many seconds (0: never).
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        if output == "auto":
            output = "dashboard" if out.isatty() else "jsonl"
        if output not in ("dashboard", "jsonl"):
            raise StreamtagError(f"unknown output {output!r}; use dashboard, jsonl or auto")
        if duration is not None and not duration > 0:
            raise StreamtagError(f"--duration must be positive, got {duration}")
    except StreamtagError:
        close_all(sources.values())
        if pool is not None:
            pool.close()
        raise
    summary = RunSummary()
    dash_sink = None
    if output == "jsonl":
        sinks: list[Any] = [summary, JsonlSink(out, top=top), StatusLines(err)]
    else:
        from .publishers.dashboard import DashboardSink

        dash_sink = DashboardSink.for_engine(engine)
        sinks = [summary, dash_sink]
    try:  # --segments, --record: the segment events and the station log (streamtag.live_outputs)
        from .live_outputs import extra_sinks

        jsonl = next((s for s in sinks if isinstance(s, JsonlSink)), None)
        extra, close_extra = extra_sinks(engine, err=err, record=record, keep=keep,
                                         on_segment=jsonl.write_event if segments and jsonl is not None else None)
    except BaseException:
        close_all(sources.values())
        if pool is not None:
            pool.close()
        raise
    health = None
    if health_every > 0 and dash_sink is None:
        from .health import Health

        health = Health(pids=pool.pids if pool is not None else None)
        extra = [health, *extra]
    runner = LiveRunner(engine, [*sinks, *extra]).start()
    freeze_startup_objects()
    t0 = time.monotonic()
    next_health = t0 + health_every
    code = 0
    control = LiveControl(runner, summary, dash_sink, speed)
    try:
        with terminate_as_interrupt(hangup=reload.request if reload is not None else None):
            added = []
            try:
                for name, src in sources.items():
                    runner.add_source(name, src, speed=speed, display=(describe or {}).get(name, name))
                    added.append(name)
            finally:
                close_all(s for n, s in sources.items() if n not in added)

            def finished() -> bool:
                nonlocal next_health
                if reload is not None:  # a SIGHUP since the last look (the handler only counts it)
                    reload.run_pending(control)
                if health is not None and time.monotonic() >= next_health:
                    next_health = time.monotonic() + health_every
                    _log_health(err, health.summary(runner), health.advice())
                if runner.engine_error is not None or not runner.active():
                    return True
                return duration is not None and time.monotonic() - t0 >= duration

            if dash_sink is not None:
                _dashboard_loop(runner, dash_sink, finished, console=console or _console(out),
                                n_streams=len(sources), top=top, refresh_hz=refresh_hz, t0=t0)
            else:
                while not finished():
                    time.sleep(POLL_S)
                runner.flush()
    except Terminated as stopped:
        code = stopped.code
    except KeyboardInterrupt:
        code = 130
    finally:
        summary.stopping = True
        runner.stop()
        close_extra()
        if pool is not None:
            pool.close()
        for line in summary.lines():
            _line(err, f"streamtag: {line}")
    if runner.engine_error is not None:
        e = runner.engine_error
        raise e if isinstance(e, StreamtagError) else StreamtagError(f"engine failed: {type(e).__name__}: {e}")
    errors = runner.errors()
    if errors and code == 0:
        raise next(iter(errors.values()))
    return code


@contextmanager
def terminate_as_interrupt(hangup: Callable[[], None] | None = None) -> Iterator[None]:
    """Within: SIGTERM, and SIGHUP (a closed terminal, an ssh session that dropped), raise :class:`Terminated` in
    the main thread (elsewhere signals cannot be handled), so the command ends as after Ctrl-C: what it finished
    is kept and summarized. A SIGHUP that Python ignores (``nohup``) stays ignored. ``hangup``: SIGHUP calls it
    instead, even under nohup (a station list's reload: it must only note the request, it runs in a signal
    handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    def on_hup(signum: int, frame: object) -> None:
        if hangup is not None:
            hangup()

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None and hangup is not None:
        previous[hup] = signal.signal(hup, on_hup)
    elif hup is not None and signal.getsignal(hup) is not signal.SIG_IGN:
        previous[hup] = signal.signal(hup, on_term)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def open_concurrently(opens: list[tuple[str, Callable[[], Any]]], at_once: int = OPEN_AT_ONCE) -> dict[str, Any]:
    """Call each (name, open) ``at_once`` at a time (each mostly waits on the network: 500 stations open in
    seconds, not minutes); returns name -> source in the given order. The first failure in that order is raised
    once the opens before it are done, after closing what did open; opens still running are left to their pool's
    close()."""
    out: dict[str, Any] = {}
    executor = ThreadPoolExecutor(max(1, at_once), thread_name_prefix="open")
    futures = [(name, executor.submit(fn)) for name, fn in opens]
    try:
        for name, fut in futures:
            out[name] = fut.result()
        return out
    except BaseException:
        for _, fut in futures:
            fut.cancel()
        for _, fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                close_quietly(fut.result())
        raise
    finally:  # never wait here for opens still running (Ctrl-C during start-up)
        executor.shutdown(wait=False, cancel_futures=True)


def _console(out: TextIO) -> Any:
    from rich.console import Console

    return Console(file=out)


def _dashboard_loop(runner: LiveRunner, sink: Any, finished: Any, *, console: Any, n_streams: int,
                    top: int | None, refresh_hz: float, t0: float) -> None:
    from .publishers.dashboard import Dashboard

    dash = Dashboard(console)
    with dash:
        while True:
            done = finished()
            if done:
                runner.flush()
            dash.show(sink.state(max_bars=min(top or 99, dash.max_bars_for(n_streams)),
                                 elapsed=time.monotonic() - t0, footer="done" if done else "Ctrl-C to stop"))
            if done:
                return
            time.sleep(1.0 / refresh_hz)


def run_serve(engine: Engine | None, config: ServerConfig, sources: Sequence[tuple[str, str]] = (), *,
              stations: Sequence[tuple[str, str]] = (), stderr: TextIO | None = None,
              health_every: float = HEALTH_EVERY_S, record: str | None = None, keep: str | None = None,
              runner: Runner | None = None, stations_file: str | None = None) -> int:
    """Run the websocket server (``config``: publishers.websocket.ServerConfig) with ``sources`` (name, uri: a
    first connection that fails stops the start) and ``stations`` (name, uri from a station list: one that fails
    keeps retrying with backoff) until SIGINT/SIGTERM; returns an exit code. Every ``health_every`` s (0: never) a
    one-line health summary goes to stderr, and a warning that says what limits the process when it is behind. ``record``: the station log's file (``keep``: its retention). ``runner``: a
    started runner to serve instead of a LiveRunner of ``engine`` fed by a source pool (``serve --cluster``'s
    gateway, which opens what the sources name on its workers). ``stations_file``: the station list ``stations``
    came from; SIGHUP re-reads it and applies the difference (:func:`_reload_stations`)."""
    return asyncio.run(_serve(engine, config, sources, stations, stderr or sys.stderr, health_every,
                              record=record, keep=keep, runner=runner, stations_file=stations_file))


async def _serve(engine: Engine | None, config: ServerConfig, sources: Sequence[tuple[str, str]],
                 stations: Sequence[tuple[str, str]], err: TextIO, health_every: float, *,
                 record: str | None = None, keep: str | None = None, runner: Runner | None = None,
                 stations_file: str | None = None) -> int:
    from .health import Health
    from .live_outputs import extra_sinks
    from .publishers.websocket import WebsocketServer
    from .sdnotify import Notifier
    from .sources.policy import SourcePolicy
    from .sources.pool import SourcePool

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    systemd = Notifier()  # a Type=notify service's READY/RELOADING/STOPPING/STATUS/WATCHDOG (no-op elsewhere)

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError):  # not on the main thread / not on this platform
            pass
    # SIGHUP: with a station list, a reload (those during the start: one once it runs), even under nohup (an
    # operator's `kill -HUP`; a hang-up then only re-reads the list); without one, a clean stop as SIGTERM (a closed
    # terminal), not the default action that kills the process, unless SIGHUP is ignored (nohup)
    hups: list[int] = []
    reload: _Reloader | None = None
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or (stations_file is None and signal.getsignal(hup) is signal.SIG_IGN):
        stations_file = None
    else:
        try:
            loop.add_signal_handler(hup, request_stop if stations_file is None else lambda: hups.append(1))
        except (NotImplementedError, RuntimeError):
            stations_file = None
    # segment events for the clients and the station log (streamtag.live_outputs): sinks ahead of the server, so
    # a stream's last segment reaches its subscribers before its end notice
    server: Any = None
    extra, close_extra = extra_sinks(runner.engine if runner is not None else engine, err=err, record=record,
                                     keep=keep,
                                     on_segment=lambda seg: server.on_segment(seg) if server is not None else None)
    pool: SourcePool | None = None
    health: Health | None = None
    live: LiveRunner | None = None
    ready: dict[str, list[Any]] = {}  # uri -> sources opened before the server starts (the same uri may repeat)
    if runner is None:
        if engine is None:
            raise StreamtagError("serve needs an engine or a runner")
        pool = SourcePool(engine.sample_rate)
        health = Health(pids=pool.pids)
        live = LiveRunner(engine, [health, *extra])
        live.start()
        runner = live
        opener: Any = pool.open
    else:  # serve --cluster's gateway, started already: its workers open what a source names
        health = Health()  # /metrics only: the health line and `stats` need the decoders' figures, on the workers
        for sink in [health, *extra]:
            runner.add_sink(sink)
        opener = getattr(runner, "open_source", None)  # the gateway's (not part of the Runner protocol)
    freeze_startup_objects()

    listed: dict[str, str] = dict(stations)  # the station list's entries now served (name -> uri)
    retrying: Counter[str] = Counter()  # uri -> station-list opens under way (SIGHUP): retried in the pool, as at the start

    def open_named(uri: str, sample_rate: int, policy: SourcePolicy) -> Any:
        waiting = ready.get(uri)
        if waiting:
            return waiting.pop(0)
        if pool is not None and retrying.get(uri):
            return pool.open(uri, sample_rate, policy, retry_open=True)
        return opener(uri, sample_rate, policy)  # a client's add_source, under the server's policy

    server = WebsocketServer(runner, config, open_source=open_named)  # a sink of the runner
    if record is not None:
        server.history_log = record  # the web page's timeline reads the station log
    if health is not None:
        gauge, served = health, runner
        server.hub.station_stats = lambda: gauge.stations(served)
        server.metrics = lambda: gauge.metrics(served)
    reporter: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    named = [*sources, *stations]
    try:
        if pool is not None:
            # The user's own inputs are open before the first client connects (a --source that fails stops the
            # start), many at once: each open waits on the network. A station list's network entries answer at
            # once and connect in their decoder process (one that is down keeps retrying).
            opening: asyncio.Future[Any] = asyncio.ensure_future(_open_all(
                pool, [(uri, i >= len(sources)) for i, (_, uri) in enumerate(named)], pool.sample_rate))
            done, _ = await asyncio.wait([opening, stop], return_when=asyncio.FIRST_COMPLETED)
            if opening not in done:  # stopped while the sources were opening
                opening.cancel()
                return 0
            for (_, uri), src in zip(named, opening.result()):
                ready.setdefault(uri, []).append(src)
        for name, uri in named:
            await server.add_source(name, uri, policy=SourcePolicy.permissive())
        async with server:
            host = config.host if ":" not in config.host else f"[{config.host}]"
            query = "?token=<TOKEN>" if config.token else ""
            n = len(named)
            _line(err, f"streamtag: serving {server.url} · web page http://{host}:{server.port}/{query}"
                       + (f" · {n} sources" if n > 1 else "") + " · Ctrl-C to stop")
            systemd.ready(f"serving {server.url} · {n} source{'s' if n != 1 else ''}")
            if systemd.watchdog_s is not None:
                watchdog = asyncio.ensure_future(_feed_watchdog(systemd, runner, systemd.watchdog_s / 2))
            if health is not None and health_every > 0:
                reporter = asyncio.ensure_future(_report_health(health, runner, err, health_every, systemd))
            if stations_file is not None and hup is not None:
                path = stations_file
                reload = _Reloader(lambda: _reload_stations(path, listed, server, retrying, err, systemd))
                loop.add_signal_handler(hup, reload.request)
                from .hangups import take

                if hups or take():  # during the start: in this loop's handler, or before it (the model loading)
                    reload.request()
            await stop
            systemd.stopping()
            t_stop = time.monotonic()
            # the engine stops first: the server's close then removes its streams without waiting for steps
            await loop.run_in_executor(None, runner.stop)
            log.info("stopping: engine and sources stopped in %.2f s", time.monotonic() - t_stop)
    finally:
        t_close = time.monotonic()
        if reporter is not None:
            reporter.cancel()
        if watchdog is not None:
            watchdog.cancel()
        systemd.close()
        if reload is not None and reload.task is not None:
            reload.task.cancel()
        await loop.run_in_executor(None, runner.stop)
        await loop.run_in_executor(None, close_extra)
        log.info("stopping: clients and outputs closed in %.2f s", time.monotonic() - t_close)
        if pool is not None:
            t_pool = time.monotonic()
            await loop.run_in_executor(None, pool.close)
            log.info("stopping: decoder processes ended in %.2f s", time.monotonic() - t_pool)
    return 0


async def _open_all(pool: SourcePool, specs: Sequence[tuple[str, bool]], sample_rate: int) -> list[Any]:
    """Open (uri, retry_open) in the pool through :func:`open_concurrently` (OPEN_AT_ONCE at a time), off the event
    loop; the first failure in order is raised."""
    from .sources.policy import SourcePolicy

    opens: list[tuple[str, Callable[[], Any]]] = [
        (str(i), partial(pool.open, uri, sample_rate, SourcePolicy.permissive(), retry_open=retry))
        for i, (uri, retry) in enumerate(specs)]
    # its own thread, never waited for here: after a stop during start-up, pool.close() ends the opens still running
    executor = ThreadPoolExecutor(1, thread_name_prefix="open-all")
    try:
        return list((await asyncio.get_running_loop().run_in_executor(executor, open_concurrently, opens)).values())
    finally:
        executor.shutdown(wait=False)


class _Reloader:
    """Runs ``reload()`` (a coroutine) for each request, one at a time: requests during a run make one more run
    after it, so the newest file is always applied and two reloads never interleave."""

    def __init__(self, reload: Callable[[], Any]) -> None:
        self.reload = reload
        self.task: asyncio.Task[None] | None = None
        self.again = False

    def request(self) -> None:
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.again = False
            try:
                await self.reload()
            except Exception:  # a bug must not end the server: the stations keep running as they were
                log.exception("reloading the station list failed")
            if not self.again:
                return


RELOAD_AT_ONCE = 16  # station-list opens under way at once during a reload (at most the server's open slots)
LIMIT_RETRIES = 300  # 0.1 s apart: how long a reload's open waits for a free open slot


async def _add_when_a_slot_frees(server: Any, name: str, uri: str) -> None:
    """``server.add_source`` of a listed station, waiting while a client's opens hold the server's open slots."""
    from .protocol import ClientError
    from .sources.policy import SourcePolicy

    for _ in range(LIMIT_RETRIES):
        try:
            return await server.add_source(name, uri, policy=SourcePolicy.permissive())
        except ClientError as e:
            if e.code != "limit_exceeded":
                raise
            await asyncio.sleep(0.1)
    raise SourceError(f"the server's {server.config.max_pending_opens} open slots stayed busy")


async def _reload_stations(path: str, listed: dict[str, str], server: Any, retrying: Counter[str],
                           err: TextIO, systemd: Any = None) -> None:
    """SIGHUP: re-read the station list at ``path`` and apply what changed to the running server. A station
    whose entry is gone is removed (its subscribers get ``stream_ended``, reason "removed from the station
    list"); a new entry is added; an entry whose URL changed is removed and added again; an entry that is no
    longer running (it ended, failed for good, or a client removed it) is started again. The others keep
    playing untouched. A list that cannot be read or parsed changes nothing (one line says why); a station that
    cannot be added gets one line and the others go on. ``listed`` (name -> uri, the list's stations served) is
    updated in place; streams given by ``--source`` or added by clients are never touched, and a new entry
    that takes one of their names is refused. ``systemd``: a :class:`~streamtag.sdnotify.Notifier`, told
    RELOADING=1 first and READY=1 with the report at the end."""
    if systemd is None:
        await _apply_station_list(path, listed, server, retrying, err)
        return
    systemd.reloading()  # `systemctl reload` waits for the READY=1, which comes whatever happens
    status = "reload failed; the stations keep running as they were"
    try:
        status = await _apply_station_list(path, listed, server, retrying, err)
    finally:
        systemd.ready(status)


async def _apply_station_list(path: str, listed: dict[str, str], server: Any, retrying: Counter[str],
                              err: TextIO) -> str:
    """:func:`_reload_stations`' work; returns its one-line report."""
    from .sources.policy import display_name
    from .sources.stations import read_station_list

    loop = asyncio.get_running_loop()
    label = display_name(path)
    try:
        new = dict(await loop.run_in_executor(None, read_station_list, path))
    except StreamtagError as e:
        _line(err, f"streamtag: reload: {e}; the {len(listed)} stations keep running as they were")
        return f"reload failed: {e}"
    running = set(server.runner.streams()) | set(server.hub.streams)
    diff = StationDiff.of(listed, new, running)
    for name in [*diff.removed, *diff.changed]:
        del listed[name]
    await server.remove_sources([n for n in [*diff.removed, *diff.changed] if n in running], REMOVED_FROM_LIST)
    failed: set[str] = set()
    gate = asyncio.Semaphore(max(1, min(RELOAD_AT_ONCE, server.config.max_pending_opens)))

    async def start(name: str) -> None:
        uri = new[name]
        if name in server.runner.streams() or name in server.hub.streams:
            failed.add(name)
            _line(err, f"streamtag: reload: station {name!r} not added: a stream of that name is already "
                       "served (given by --source or added by a client); rename it in the list")
            return
        async with gate:
            retrying[uri] += 1
            try:
                await _add_when_a_slot_frees(server, name, uri)
                listed[name] = uri
            except StreamtagError as e:
                failed.add(name)
                _line(err, f"streamtag: reload: station {name!r} not added: {e}")
            finally:
                retrying[uri] -= 1

    await asyncio.gather(*(start(n) for n in diff.starts))
    _line(err, f"streamtag: reloaded {label}: {diff.report(failed)}")
    return f"reloaded {label}: {diff.report(failed)}"


REMOVED_FROM_LIST = "removed from the station list"


@dataclass
class StationDiff:
    """What a station list's reload changes: names removed, changed (a new URL: removed, then started again),
    restarted (listed as before but no longer running: it ended or failed for good) and added."""

    removed: list[str]
    changed: list[str]
    restarted: list[str]
    added: list[str]
    unchanged: int

    @classmethod
    def of(cls, listed: Mapping[str, str], new: Mapping[str, str], running: set[str]) -> StationDiff:
        """``listed``: the entries served now (name -> uri); ``new``: the list as it reads now; ``running``: the
        streams still playing."""
        changed = [n for n, u in new.items() if n in listed and listed[n] != u]
        restarted = [n for n, u in new.items() if listed.get(n) == u and n not in running]
        added = [n for n in new if n not in listed]
        return cls([n for n in listed if n not in new], changed, restarted, added,
                   len(new) - len(changed) - len(restarted) - len(added))

    @property
    def starts(self) -> list[str]:
        """The names to (re)open, in the list's order within each kind."""
        return [*self.changed, *self.restarted, *self.added]

    def report(self, failed: set[str]) -> str:
        """``1 added, 1 removed, 1 changed, 1 restarted, 1 unchanged, 1 failed`` (``failed``: starts that failed)."""
        def done(names: list[str]) -> int:
            return len([n for n in names if n not in failed])

        return (f"{done(self.added)} added, {len(self.removed)} removed, {done(self.changed)} changed, "
                f"{done(self.restarted)} restarted, {self.unchanged} unchanged"
                + (f", {len(failed)} failed" if failed else ""))


class LiveControl:
    """What a station list's reload may do to a running :func:`run_live`: add and remove streams (the summary
    line and the dashboard say why a stream went)."""

    def __init__(self, runner: LiveRunner, summary: RunSummary, dashboard: Any, speed: float | None) -> None:
        self.runner, self._summary, self._dashboard, self._speed = runner, summary, dashboard, speed

    def streams(self) -> set[str]:
        return set(self.runner.streams())

    def add(self, name: str, source: Any, display: str) -> None:
        self.runner.add_source(name, source, speed=self._speed, display=display)

    def remove(self, names: list[str], reason: str) -> None:
        """Take ``names`` out together (one wait for the engine between two steps)."""
        for name in names:
            self._summary.reasons[name] = reason
        self.runner.remove_many(names)
        if self._dashboard is not None:  # their bars go: the list no longer names them
            for name in names:
                self._dashboard.forget(name)


class StationListReload:
    """``stream --sources FILE``: each SIGHUP re-reads the list and applies the difference to the run, as ``serve
    --sources`` does (:func:`_reload_stations`): a gone entry is removed (its summary line says "removed from the
    station list"), a new one is opened (one that is down keeps retrying), a changed URL is reopened, a station
    that ended or failed for good starts again, the others play on. A list that cannot be read changes nothing.

    :meth:`request` only counts (it runs in the signal handler); :meth:`run_pending` applies the requests since
    the last run (one reload for any number), on the main thread between looks at the run."""

    def __init__(self, path: str, stations: Sequence[tuple[str, str]], open_station: Callable[[str], Any], *,
                 taken: set[str], err: TextIO) -> None:
        self.path, self.listed = path, dict(stations)
        self._open, self._taken, self._err = open_station, set(taken), err
        self._requested = self._applied = 0

    def request(self) -> None:
        self._requested += 1  # an int: no lock a signal handler could deadlock on

    def run_pending(self, live: LiveControl) -> None:
        from .hangups import take

        self._requested += take()  # SIGHUPs before this object's handler was installed (the model was loading)
        if self._requested == self._applied:
            return
        self._applied = self._requested
        from .sources.policy import display_name
        from .sources.stations import read_station_list

        label = display_name(self.path)
        try:
            new = dict(read_station_list(self.path))
        except StreamtagError as e:
            _line(self._err, f"streamtag: reload: {e}; the {len(self.listed)} stations keep running as they were")
            return
        running = live.streams()
        diff = StationDiff.of(self.listed, new, running)
        for name in [*diff.removed, *diff.changed]:
            del self.listed[name]
        live.remove([n for n in [*diff.removed, *diff.changed] if n in running], REMOVED_FROM_LIST)
        failed: set[str] = set()
        opens: list[tuple[str, Callable[[], Any]]] = []
        running = live.streams()
        for name in diff.starts:
            if name in self._taken or name in running:
                failed.add(name)
                _line(self._err, f"streamtag: reload: station {name!r} not added: a stream of that name is given on "
                                 "the command line; rename it in the list")
            else:
                opens.append((name, partial(_error_or, self._open, new[name])))
        for name, got in open_concurrently(opens).items():
            if isinstance(got, StreamtagError):
                failed.add(name)
                _line(self._err, f"streamtag: reload: station {name!r} not added: {got}")
                continue
            try:
                live.add(name, got, display=name)
            except StreamtagError as e:
                close_quietly(got)
                failed.add(name)
                _line(self._err, f"streamtag: reload: station {name!r} not added: {e}")
                continue
            self.listed[name] = new[name]
        _line(self._err, f"streamtag: reloaded {label}: {diff.report(failed)}")


def _error_or(fn: Callable[[str], Any], arg: str) -> Any:
    """``fn(arg)``, or the StreamtagError it raised (one station's failure is its own)."""
    try:
        return fn(arg)
    except StreamtagError as e:
        return e


async def _report_health(health: Any, runner: Any, err: TextIO, every: float, systemd: Any = None) -> None:
    gateway = hasattr(runner, "placement")  # serve --cluster: the stations' decoders and engines are on the workers
    while True:
        await asyncio.sleep(every)
        summary = health.cluster_summary(runner) if gateway else health.summary(runner)
        _log_health(err, summary, health.advice())
        if systemd is not None:
            systemd.send(STATUS=summary)  # `systemctl status` shows the latest


def _log_health(err: TextIO, summary: str, advice: str | None) -> None:
    """The health line (serve's every --health-every s, and stream's with JSON lines), and its warning if any."""
    _line(err, f"streamtag: health: {summary}")
    if advice:
        _line(err, f"streamtag: warning: {advice}")


async def _feed_watchdog(systemd: Any, runner: Any, every: float) -> None:
    """systemd's watchdog (WatchdogSec=): WATCHDOG=1 every ``every`` s while this loop runs and the engine
    thread keeps iterating (it does every 50 ms even with no audio); a stuck engine stops the pings and systemd
    restarts the service. serve --cluster's gateway has no engine thread here: the loop alone answers."""
    seen = getattr(runner, "iterations", None)
    while True:
        await asyncio.sleep(every)
        now = getattr(runner, "iterations", None)
        if now is None or now != seen:
            systemd.send(WATCHDOG=1)
        seen = now


def _line(err: TextIO, text: str, lock: threading.Lock | None = None) -> None:
    try:
        if lock is not None:
            with lock:
                print(text, file=err, flush=True)
        else:
            print(text, file=err, flush=True)
    except (OSError, ValueError):  # stderr closed (a pipe's reader left, a terminal hung up): nothing left to tell
        pass
