"""Websocket server: a sink of the live runner that serves its updates to many clients, takes audio in, and
serves the web page, on one port.

This is the I/O adapter around the sans-I/O protocol core (``streamtag/protocol.py``): it runs a
``websockets.asyncio.server`` on an asyncio loop, feeds client messages to the :class:`~streamtag.protocol.Hub`,
carries out the actions the hub returns, and moves each client's bounded outbox onto its socket in a writer
task of its own, so a slow client only ever delays itself. It is handed a runner (``streamtag.live.LiveRunner``
or anything with its methods) and registers itself as one of its sinks; what the runner reports arrives from
its threads and crosses into the loop with ``call_soon_threadsafe``. Sources a client names are opened only
through ``streamtag.sources.open_source`` under the server's :class:`~streamtag.sources.policy.SourcePolicy`.

Safe by default (``docs/security.md``): loopback bind, browser Origins checked, Host checked on loopback (DNS
rebinding), tokens of 16+ characters, failed handshakes throttled per address, and a bound on everything a client
can make the server hold: connections, streams, audio streams, audio seconds per second, messages per second,
frames queued per connection, sources still opening.

Plain HTTP GETs on the same port serve the web page (``streamtag/web``) and ``/healthz``.
Wire format: ``docs/protocol.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__
from ..errors import ConfigError, SourceError, StreamtagError, close_quietly
from ..events import GenreUpdate, to_dicts
from ..protocol import (
    MAX_PENDING_CONTROL,
    Action,
    AddSource,
    AudioStart,
    AudioStop,
    Client,
    ClientError,
    HandshakeThrottle,
    Hub,
    LogLimiter,
    RateLimiter,
    RemoveSource,
    valid_stream_name,
)
from ..sources.policy import PolicyError, SourcePolicy, display_name

__all__ = [
    "ServerConfig",
    "WebsocketServer",
    "add_serve_security_args",
    "config_from_args",
    "check_bind",
    "is_loopback",
    "public_source",
    "WEB_DIR",
]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~6 s of 44.1 kHz float32 mono audio per binary frame
MIN_TOKEN_CHARS = 16  # a shorter --token is refused at start (guessable)
RATE_NOTICE_INTERVAL_S = 10.0  # s between two `rate_limited` notices to one client
FRAMES_QUEUED = 4  # incoming frames websockets buffers per connection before it stops reading the socket
REFUSED_BYTES_PER_MESSAGE = 16384  # a refused binary frame costs 1 message + 1 per this many bytes of it
AUDIO_FRAME_MESSAGES = 0.1  # an audio frame costs this many messages (500 frames/s at 50 messages/s: no client
#                             makes the server handle audio one sample at a time; the page sends 10 frames/s)
AUDIO_FRAME_MIN_BYTES = 1024  # an audio frame counts at least this much against the backlog (bounds its length)
CLOSE_TIMEOUT_S = 5.0  # s a closing handshake may take before the server drops the TCP connection
KEEPALIVE_POLL_S = 0.25  # s between two looks of the keepalive at a connection it waits to hear from
PUBLISH_CHUNK = 8  # updates turned into JSON together (one rounding pass) on the loop
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "ip6-localhost")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, and refuse guessable tokens (ConfigError)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"--token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} random ones, "
            "e.g. --token $(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on non-loopback address {host!r} without a token; add --token T "
            "(clients then connect with ?token=T) or bind 127.0.0.1"
        )


def public_source(uri: str) -> str:
    """What clients are shown of a source: URLs without credentials or query, files by name only."""
    return display_name(uri)


def _safe_text(text: str, limit: int = 200) -> str:
    """One printable line of at most ``limit`` characters (nothing a remote sent can forge a log or reply line)."""
    line = "".join(ch if ch.isprintable() else " " for ch in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _is_file_uri(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``streamtag serve`` takes; every limit's flag is named beside it (docs/security.md)."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (see WebsocketServer.port)
    token: str | None = None  # --token: required to connect when set; enables add_source / remove_source
    allowed_origins: tuple[str, ...] = ()  # --allowed-origin: browser Origins allowed besides the server's own; "*": any
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # --max-message-bytes: largest incoming message
    queue_streams: int = 256  # per-client outbox bound: streams with pending updates (at least the streams there are)
    queue_depth: int = 8  # per-client outbox bound: pending updates per stream (older ones are dropped)
    file_speed: float | None = 1.0  # pacing of file sources (x real time; None: as fast as decoded)
    web_dir: Path | None = WEB_DIR  # static files served over HTTP (None: no page)
    ping_interval: float | None = 20.0  # s between keepalive pings (None: no keepalive)
    ping_timeout: float = 20.0  # s a client may stay silent after a ping (no pong, no frame) before it is closed
    handshake_timeout: float = 10.0  # s a connection may take to send its HTTP request (slowloris)
    max_connections: int = 128  # --max-connections: websocket connections at once
    max_connections_per_address: int = 32  # --max-connections-per-address: of those, from one client address
    max_streams: int = 64  # --max-streams: streams at once (sources and audio in)
    max_audio_streams: int = 16  # --max-audio-streams: audio-in streams at once (one per connection)
    audio_rate: float = 2.0  # --max-audio-rate: s of audio per s one connection may send (then throttled)
    audio_burst: float = 1.0  # s of audio a connection may send ahead of that rate
    message_rate: float = 50.0  # --max-message-rate: text messages per s per connection (then throttled)
    auth_failures: int = 5  # --auth-failures: failed handshakes per address per minute before it gets 429
    open_timeout: float = 15.0  # --open-timeout: s an add_source may take to open its source
    max_pending_opens: int = 4  # sources opening at once (each in a thread of its own)
    max_requests_in_flight: int = 8  # add_source/remove_source of one connection running at once
    audio_backlog_bytes: int | None = None  # audio frames read ahead of the rate per connection (None: 2 messages)
    log_interval: float = 60.0  # s: throttling and refused handshakes are logged once per address per interval
    allow_files: tuple[Path, ...] = ()  # --allow-files: directories add_source may open files under
    allow_private_urls: bool = False  # --allow-private-urls: loopback/private/link-local URLs for add_source
    top: int | None = None  # --top: genres kept in each update's "top" (the web page shows that many bars)

    def __post_init__(self) -> None:
        check_bind(self.host, self.token)
        if self.max_message_bytes < 1024:
            raise ConfigError(f"--max-message-bytes {self.max_message_bytes} is too small; use at least 1024")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        for flag, value in (("--max-connections", self.max_connections),
                            ("--max-connections-per-address", self.max_connections_per_address),
                            ("--max-streams", self.max_streams),
                            ("--max-audio-streams", self.max_audio_streams),
                            ("--auth-failures", self.auth_failures), ("max_pending_opens", self.max_pending_opens),
                            ("max_requests_in_flight", self.max_requests_in_flight)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{flag} must be a whole number >= 1, got {value}")
        for flag, x in (("--max-audio-rate", self.audio_rate), ("audio_burst", self.audio_burst),
                        ("--max-message-rate", self.message_rate), ("--open-timeout", self.open_timeout),
                        ("handshake_timeout", self.handshake_timeout), ("ping_timeout", self.ping_timeout),
                        ("log_interval", self.log_interval)):
            if not (math.isfinite(x) and x > 0):
                raise ConfigError(f"{flag} must be a positive number, got {x}")
        if self.top is not None and not (isinstance(self.top, int) and self.top >= 1):
            raise ConfigError(f"--top must be a whole number >= 1, got {self.top}")
        for d in self.allow_files:
            if not Path(d).is_dir():
                raise ConfigError(f"--allow-files {d}: not a directory; name a directory of audio files")
        for origin in self.allowed_origins:
            if origin != "*" and not (origin.startswith(("http://", "https://")) and "/" not in origin[8:]):
                raise ConfigError(f"--allowed-origin {origin!r}: use scheme://host[:port], e.g. https://example.org")

    @property
    def backlog_bytes(self) -> int:
        """Bytes of audio frames one connection may have read but not yet handed to the engine."""
        return self.audio_backlog_bytes if self.audio_backlog_bytes is not None else 2 * self.max_message_bytes

    @property
    def policy(self) -> SourcePolicy:
        """What a client's add_source may open."""
        return SourcePolicy(allow_files=tuple(self.allow_files), allow_private_urls=self.allow_private_urls)


def add_serve_security_args(p: argparse.ArgumentParser) -> None:
    """The serve command's security flags and limits (one block; ``config_from_args`` reads them back).

    These definitions win over any earlier ones of the same flags on ``p`` (``--token``, ``--allowed-origin``,
    ``--max-message-bytes`` may already be there), so the CLI can call this wherever it builds ``serve``.
    """
    d = ServerConfig()
    g = p.add_argument_group("security and limits (docs/security.md)", conflict_handler="resolve")
    g.add_argument("--token", default=None,
                   help=f"clients must connect with ?token=T (>= {MIN_TOKEN_CHARS} chars); allows add_source "
                        "(default: none; required on a non-loopback --host)")
    g.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser Origin allowed besides the server's own page (repeatable; '*': any, not advised)")
    g.add_argument("--allow-files", action="append", default=[], metavar="DIR", type=Path,
                   help="add_source may open files under DIR (repeatable; default: no local files)")
    g.add_argument("--allow-private-urls", action="store_true",
                   help="add_source may open loopback, private and link-local URLs (default: refused)")
    g.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, metavar="N",
                   help=f"largest message a client may send (default {d.max_message_bytes})")
    g.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                   help=f"websocket connections at once (default {d.max_connections})")
    g.add_argument("--max-connections-per-address", type=int, default=d.max_connections_per_address, metavar="N",
                   help=f"of those, connections from one client address (default {d.max_connections_per_address})")
    g.add_argument("--max-streams", type=int, default=d.max_streams, metavar="N",
                   help=f"streams at once, sources and audio in (default {d.max_streams})")
    g.add_argument("--max-audio-streams", type=int, default=d.max_audio_streams, metavar="N",
                   help=f"audio-in streams at once, one per connection (default {d.max_audio_streams})")
    g.add_argument("--max-audio-rate", type=float, default=d.audio_rate, metavar="X",
                   help=f"seconds of audio per second one connection may send before it is throttled "
                        f"(default {d.audio_rate:g})")
    g.add_argument("--max-message-rate", type=float, default=d.message_rate, metavar="N",
                   help=f"text messages per second per connection before it is throttled (default {d.message_rate:g})")
    g.add_argument("--auth-failures", type=int, default=d.auth_failures, metavar="N",
                   help=f"failed handshakes per address per minute before it is refused (default {d.auth_failures})")
    g.add_argument("--open-timeout", type=float, default=d.open_timeout, metavar="S",
                   help=f"seconds an add_source may take to open its source (default {d.open_timeout:g})")


def config_from_args(args: argparse.Namespace, **fields: Any) -> ServerConfig:
    """A ServerConfig from :func:`add_serve_security_args`' flags plus ``fields`` (host, port, file_speed...)."""
    return ServerConfig(
        token=args.token,
        allowed_origins=tuple(args.allowed_origin),
        allow_files=tuple(args.allow_files),
        allow_private_urls=args.allow_private_urls,
        max_message_bytes=args.max_message_bytes,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        max_streams=args.max_streams,
        max_audio_streams=args.max_audio_streams,
        audio_rate=args.max_audio_rate,
        message_rate=args.max_message_rate,
        auth_failures=args.auth_failures,
        open_timeout=args.open_timeout,
        **fields,
    )


def _open_source(uri: str, sample_rate: int, policy: SourcePolicy) -> Any:
    """``streamtag.sources.open_source`` under ``policy`` (it checks paths, DNS answers and every redirect)."""
    from ..sources import open_source

    return open_source(uri, sample_rate, policy=policy)


def _run_in_thread(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run ``fn`` in a daemon thread of its own (never a shared pool another client may need)."""
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
            fut.exception()  # retrieved: one awaited gets it all the same, one given up on (a timeout, shutdown)
            #                  must not make asyncio print "Future exception was never retrieved" and a traceback

    def work() -> None:
        try:
            result: tuple[bool, Any] = (True, fn())
        except BaseException as e:  # handed to the awaiting coroutine, which decides
            result = (False, e)
        try:
            loop.call_soon_threadsafe(settle, *result)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            if result[0]:
                close_quietly(result[1])

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut


class WebsocketServer:
    """A sink of ``runner`` with a websocket server in front. ``async with WebsocketServer(runner, config)``.

    The caller owns the runner (starts and stops it). The server removes on close the streams it added
    (sources and audio in) and unregisters itself; streams it did not add are shown but never touched.
    ``open_source(uri, sample_rate, policy)`` opens what add_source names (tests swap it).
    """

    def __init__(
        self,
        runner: Any,
        config: ServerConfig | None = None,
        *,
        open_source: Callable[[str, int, SourcePolicy], Any] = _open_source,
    ) -> None:
        self.runner = runner
        self.config = config or ServerConfig()
        self.open_source = open_source
        engine = runner.engine  # read-only metadata
        self.sample_rate: int = engine.sample_rate
        self.hub = Hub(
            model=engine.bundle.name,
            labels=list(engine.labels_shown),
            sample_rate=engine.sample_rate,
            hop_seconds=engine.hop_seconds,
            max_message_bytes=self.config.max_message_bytes,
            queue_streams=self.config.queue_streams,
            queue_depth=self.config.queue_depth,
            server=f"streamtag/{__version__}",
            max_streams=self.config.max_streams,
            max_audio_streams=self.config.max_audio_streams,
        )
        self.throttle = HandshakeThrottle(max_failures=self.config.auth_failures)
        self.log_limiter = LogLimiter(interval=self.config.log_interval)
        self._requests: set[asyncio.Task[None]] = set()  # add_source/remove_source requests running
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._static: dict[str, Path] = {}
        if self.config.web_dir is not None and self.config.web_dir.is_dir():
            self._static = {"/" + p.name: p for p in self.config.web_dir.iterdir() if p.suffix in _CONTENT_TYPES}
            if "/index.html" in self._static:
                self._static["/"] = self._static["/index.html"]
        self._own: set[str] = set()  # streams this server added (removed on close)
        self._reserved: set[str] = set()  # names of sources still opening
        self._owners: dict[str, int] = {}  # audio-in stream -> client id, for the hub
        self._reasons: dict[str, str] = {}  # stream -> why we removed it (for stream_ended)
        self._opening = 0  # open_source threads still running (timed-out ones included)
        self._title_timer: asyncio.TimerHandle | None = None
        self.updates_sent = 0
        self.refused: dict[int, int] = {}  # HTTP status -> handshakes refused with it
        self.history_log: str | None = None  # the station log (--record) that /api/history reads (web_api.py)
        self.metrics: Callable[[], str] | None = None  # /metrics' Prometheus text (set by serve: Health.metrics)
        if "*" in self.config.allowed_origins:
            log.warning("--allowed-origin '*': any web page the user visits can read every stream and send audio")
        runner.add_sink(self)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()

    async def start(self) -> WebsocketServer:
        """Start listening. Streams added before this (``--source``) are in the first ``hello`` already."""
        self._bind_loop()
        try:
            self._server = await serve(
                self._handler,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=self.config.max_message_bytes,
                max_queue=FRAMES_QUEUED,
                ping_interval=None,  # our own keepalive (_Connection): any frame counts as a sign of life
                open_timeout=self.config.handshake_timeout,  # a slower handshake (slowloris) is dropped
                close_timeout=5.0,
                server_header=f"streamtag/{__version__}",
                compression=None,  # small JSON at a high rate: deflate costs more CPU than it saves
            )
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port} ({e.strerror or e}); "
                "pick another --port or stop the other server"
            ) from e
        log.info("serving on ws://%s:%d", self.config.host, self.port)
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._requests):  # requests still running (a source still opening): their answer is moot
            task.cancel()
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=5.0)
        for name in sorted(self._own):  # leave the runner as we found it
            await self._remove(name, "server stopped")
        remove_sink = getattr(self.runner, "remove_sink", None)
        if remove_sink is not None:
            remove_sink(self)

    async def __aenter__(self) -> WebsocketServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    # -- sources -----------------------------------------------------------------------------------------
    async def add_source(self, name: str, uri: str, *, policy: SourcePolicy | None = None) -> None:
        """Open ``uri`` under ``policy`` (default: the server's) and tag it as stream ``name``.

        The open runs in a thread of its own, at most ``max_pending_opens`` at once, and this returns within
        ``open_timeout`` s whatever the remote does (a source that opens after that is closed).
        """
        self._bind_loop()
        if not valid_stream_name(name):
            raise ConfigError(f"invalid stream name {name!r}: use letters, digits and _.:-")
        if name in self.hub.streams or name in self._reserved or name in self.runner.streams():
            raise ClientError("stream_exists", f"stream {name!r} already exists; pick another name")
        if self._opening >= self.config.max_pending_opens:
            raise ClientError("limit_exceeded", f"{self._opening} sources are still opening; try again later")
        policy = self.config.policy if policy is None else policy
        shown = public_source(uri)
        assert self._loop is not None
        self._opening += 1
        self._reserved.add(name)
        try:
            fut = _run_in_thread(self._loop, lambda: self.open_source(uri, self.sample_rate, policy), f"open-{name}")
            fut.add_done_callback(self._opened)
            try:
                source = await asyncio.wait_for(asyncio.shield(fut), self.config.open_timeout)
            except asyncio.CancelledError:  # the server is closing: the thread's source, if any, is closed
                fut.add_done_callback(self._discard_late)
                raise
            except asyncio.TimeoutError:
                fut.add_done_callback(self._discard_late)
                raise SourceError(
                    f"{shown}: no answer within {self.config.open_timeout:g} s (--open-timeout); check the URL"
                ) from None
            except PolicyError as e:
                raise PolicyError(_safe_text(str(e))) from None  # says "refused by policy", nothing more
            except StreamtagError as e:
                raise SourceError(_safe_text(str(e))) from None
            except Exception as e:  # a source bug: one line, not the connection
                log.exception("opening %s failed", shown)
                raise SourceError(f"{shown}: cannot open ({type(e).__name__})") from None
            speed = self.config.file_speed if _is_file_uri(uri) else None
            self._own.add(name)
            try:
                self.runner.add_source(name, source, speed=speed, display=shown)
            except BaseException:
                self._own.discard(name)
                close_quietly(source)
                raise
            self._stream_added(name, shown, getattr(source, "title", None))
        finally:
            self._reserved.discard(name)
        log.info("stream %s: source %s added", name, shown)

    def _opened(self, fut: asyncio.Future[Any]) -> None:
        self._opening -= 1

    @staticmethod
    def _discard_late(fut: asyncio.Future[Any]) -> None:
        """A source that opened after add_source gave up: nobody will read it."""
        if not fut.cancelled() and fut.exception() is None:
            close_quietly(fut.result())

    async def remove_source(self, name: str, reason: str = "removed") -> None:
        await self._remove(name, reason)

    async def remove_sources(self, names: Sequence[str], reason: str = "removed") -> None:
        """:meth:`remove_source` for many at once: the runner takes them all out between two engine steps."""
        names = list(names)
        if not names:
            return
        self._bind_loop()
        assert self._loop is not None
        for name in names:
            self._reasons[name] = reason
        runner = self.runner
        remove_many = getattr(runner, "remove_many", None)

        def remove() -> None:
            if remove_many is not None:
                remove_many(names)
                return
            for name in names:  # a runner without remove_many (serve --cluster's gateway)
                try:
                    runner.remove(name)
                except StreamtagError:  # already gone
                    pass

        await _run_in_thread(self._loop, remove, f"remove-{len(names)}")
        for name in names:
            self._stream_gone(name, None)

    async def _remove(self, name: str, reason: str) -> None:
        self._bind_loop()
        assert self._loop is not None
        self._reasons[name] = reason
        try:
            await _run_in_thread(self._loop, lambda: self.runner.remove(name), f"remove-{name}")
        except StreamtagError:  # already gone
            pass
        self._stream_gone(name, None)

    # -- sink (called from the runner's threads) ---------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        self._call(self._stream_added, name, source, title)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        self._call(self._publish, updates)  # serialized on the loop: the engine thread goes back to the audio

    def on_title(self, name: str, title: str | None) -> None:
        self._call(self._set_title, name, title)

    def on_status(self, name: str, kind: str, detail: str) -> None:
        detail = _safe_text(detail)
        log.info("stream %s: %s %s", name, kind, detail)
        self._call(self.hub.stream_status, name, kind, detail)

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        self._call(self._stream_gone, name, error)

    def on_segment(self, segment: Any) -> None:
        """A closed segment (streamtag.segments.SegmentSink's callback): the ``segment`` event to subscribers."""
        self._call(self.hub.publish_event, segment.to_dict())

    # -- on the loop -------------------------------------------------------------------------------------
    def _stream_added(self, name: str, source: str, title: str | None) -> None:
        if name not in self.hub.streams:
            self.hub.stream_added(name, source, title, owner=self._owners.get(name))

    def _publish(self, updates: list[GenreUpdate]) -> None:
        live = [u for u in updates if u.stream in self.hub.streams]
        # a few at a time: each update's dict (its "top" is 30 small lists) is encoded and dropped before the
        # collector runs, instead of a whole step's dicts surviving into its older generations
        for i in range(0, len(live), PUBLISH_CHUNK):
            for d in to_dicts(live[i : i + PUBLISH_CHUNK]):
                if self.config.top is not None:
                    d["top"] = d["top"][: self.config.top]
                self.hub.publish(d)

    def _set_title(self, name: str, title: str | None) -> None:
        delay = self.hub.set_title(name, title)
        self._schedule_titles(delay)

    def _schedule_titles(self, delay: float | None) -> None:
        if delay is None or self._loop is None or self._title_timer is not None:
            return
        self._title_timer = self._loop.call_later(delay, self._flush_titles)

    def _flush_titles(self) -> None:
        self._title_timer = None
        self._schedule_titles(self.hub.flush_titles())

    def _stream_gone(self, name: str, error: StreamtagError | None) -> None:
        reason = self._reasons.pop(name, None) or (_safe_text(str(error)) if error else "ended")
        self._own.discard(name)
        self._owners.pop(name, None)
        if name in self.hub.streams:
            log.info("stream %s ended: %s", name, reason)
            self.hub.stream_removed(name, reason)

    # -- HTTP --------------------------------------------------------------------------------------------
    def _refuse(self, connection: ServerConnection, status: HTTPStatus, text: str,
                headers: Sequence[tuple[str, str]] = ()) -> Response:
        self.refused[status.value] = self.refused.get(status.value, 0) + 1
        response = connection.respond(status, text + "\n")
        for k, v in headers:
            response.headers[k] = v
        return response

    def _origin_allowed(self, origin: str | None, host: str) -> bool:
        if origin is None:  # not a browser: browsers always send Origin on websocket handshakes
            return True
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/") in allowed:
            return True
        return origin.rstrip("/") in (f"http://{host}", f"https://{host}")  # the page this server served

    def _host_allowed(self, host: str) -> bool:
        """On loopback only loopback names (a DNS name that rebinds to 127.0.0.1 is refused)."""
        if not is_loopback(self.config.host):
            return True
        hostname = urlsplit(f"//{host}").hostname or ""
        if is_loopback(hostname) or hostname in _LOOPBACK_NAMES:
            return True
        return any(urlsplit(o).hostname == hostname for o in self.config.allowed_origins)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._check_request(connection, request)
        except Exception as e:  # a bug: one line in the log (websockets would log a traceback) and a 500
            log.error("handshake from %s failed (%s: %s)", connection.remote_address[0] if connection.remote_address
                      else "?", type(e).__name__, _safe_text(str(e), 200))
            log.debug("handshake failed", exc_info=True)
            return connection.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._http(connection, request)
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        wait = self.throttle.blocked_for(address)
        if wait > 0:
            self._log_refusal(address, "too many failed handshakes (429)")
            return self._refuse(connection, HTTPStatus.TOO_MANY_REQUESTS,
                                f"too many failed handshakes from {address}; retry in {math.ceil(wait)} s",
                                [("Retry-After", str(math.ceil(wait)))])
        hosts, origins = request.headers.get_all("Host"), request.headers.get_all("Origin")
        if len(hosts) > 1 or len(origins) > 1:
            self._log_refusal(address, "more than one Host or Origin header")
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "more than one Host or Origin header")
        host = hosts[0] if hosts else ""
        origin = origins[0] if origins else None
        if not self._host_allowed(host):
            self._log_refusal(address, f"Host {_safe_text(host, 80)!r} is not this loopback server")
            return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                f"Host {_safe_text(host, 80)!r} not served here; connect to 127.0.0.1:{self.port}")
        if not self._origin_allowed(origin, host):
            shown = _safe_text(origin or "", 80)
            self._log_refusal(address, f"Origin {shown!r} not allowed")
            return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                f"Origin {shown!r} not allowed; start the server with --allowed-origin {shown}")
        if self.config.token is not None:
            token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
            auth = request.headers.get("Authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            if not hmac.compare_digest(token.encode(), self.config.token.encode()):
                self.throttle.failed(address)
                self._log_refusal(address, "missing or wrong token")
                return self._refuse(connection, HTTPStatus.UNAUTHORIZED,
                                    "missing or wrong token; connect with ?token=T")
        if len(self.hub.clients) >= self.config.max_connections:
            self._log_refusal(address, f"{len(self.hub.clients)} connections (--max-connections)")
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE,
                                "server full (--max-connections); try again later", [("Retry-After", "5")])
        if (held := self._connections_from(address)) >= self.config.max_connections_per_address:
            self._log_refusal(address, f"{held} connections from it (--max-connections-per-address)")
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE,
                                f"too many connections from {address} (--max-connections-per-address); close one "
                                "first", [("Retry-After", "5")])
        return None

    def _log_once(self, address: str, kind: str, level: int, message: str) -> None:
        """Log ``message`` about ``address`` at most once per ``log_interval`` per kind (a flood of refusals or
        throttled messages costs one line a minute), saying how many were held back since the last one."""
        held = self.log_limiter.allow(f"{kind} {address}")
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            log.log(level, "%s%s", message, more)

    def _log_refusal(self, address: str, reason: str) -> None:
        self._log_once(address, "refused", logging.WARNING, f"refused {address}: {reason}")

    def _connections_from(self, address: str) -> int:
        return sum(1 for c in self.hub.clients.values() if c.peer == address)

    def _http(self, connection: ServerConnection, request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path.startswith("/api/") or path == "/metrics":  # JSON for the web page, Prometheus text (web_api.py)
            from ..web_api import handle

            return handle(self, connection, request, path)
        file = self._static.get(path)
        if file is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {_safe_text(path, 80)}\n")
        body = file.read_bytes()  # small files, read on request so edits show without a restart
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", _CONTENT_TYPES[file.suffix]),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer"),
            ]
        )
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    # -- websocket connections ---------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        peer = str(ws.remote_address[0]) if ws.remote_address else "?"
        if len(self.hub.clients) >= self.config.max_connections:  # handshakes that raced past the check
            await ws.close(1013, "server full (--max-connections); try again later")
            return
        if self._connections_from(peer) >= self.config.max_connections_per_address:
            await ws.close(1013, "too many connections from this address; close one first")
            return
        try:
            await _Connection(self, ws, peer).run()
        except Exception as e:  # a bug: one line in the log (websockets would log a traceback), never the server
            log.error("connection from %s failed (%s: %s)", peer, type(e).__name__, _safe_text(str(e), 200))
            log.debug("connection failed", exc_info=True)

    async def _push_paced(self, stream: str, samples: np.ndarray, budget: RateLimiter,
                          over_budget: Callable[[float, str], Any]) -> None:
        """Hand ``samples`` to the runner in slices of at most one hop, each within the connection's audio
        budget: a big frame never lands as many hops at once, which would delay every other stream's next one."""
        step = max(1, int(min(self.hub.hop_seconds, 0.5) * self.sample_rate))
        for i in range(0, samples.shape[0], step):
            piece = np.asarray(samples[i : i + step], dtype=np.float32)
            if (wait := budget.take(piece.shape[0] / self.sample_rate)) > 0:
                await over_budget(wait, f"audio faster than {self.config.audio_rate:g}x real time")
            if stream not in self.hub.streams:
                return
            self.runner.push(stream, piece)

    async def _perform(self, client: Client, action: Action) -> None:
        request: dict[str, Any] = {"id": action.request_id} if action.request_id is not None else {}
        try:
            if isinstance(action, AddSource):
                request["type"] = "add_source"
                log.info("client %d: add_source %s = %s", client.id, action.name, public_source(action.uri))
                await self.add_source(action.name, action.uri)
                self.hub.reply(client, {"type": "source_added", "name": action.name, "uri": action.uri}, request)
            elif isinstance(action, RemoveSource):
                request["type"] = "remove_source"
                removal = asyncio.ensure_future(self.remove_source(action.name))
                try:
                    await asyncio.wait_for(asyncio.shield(removal), self.config.open_timeout)
                except asyncio.TimeoutError:
                    raise SourceError(f"stream {action.name}: still stopping after {self.config.open_timeout:g} s; "
                                      "it ends when its source lets go") from None
                self.hub.reply(client, {"type": "source_removed", "name": action.name}, request)
            elif isinstance(action, AudioStart):
                request["type"] = "audio_start"
                self._owners[action.stream] = client.id
                self._own.add(action.stream)
                try:
                    self.runner.add_stream(action.stream, display="websocket")
                except StreamtagError:
                    client.audio.pop(action.stream, None)
                    self._owners.pop(action.stream, None)
                    self._own.discard(action.stream)
                    raise
                self._stream_added(action.stream, "websocket", None)
                client.subscriptions.add(action.stream)
                self.hub.subscriptions_changed()
                self.hub.reply(
                    client,
                    {"type": "audio_started", "stream": action.stream, "sample_rate": action.sample_rate,
                     "engine_sample_rate": self.sample_rate},
                    request,
                )
            elif isinstance(action, AudioStop):
                request["type"] = "audio_stop"
                await self._stop_audio(action.stream, action.reason)
                self.hub.reply(client, {"type": "audio_stopped", "stream": action.stream}, request)
        except ClientError as e:
            self.hub.error(client, e.code, str(e), request)
        except StreamtagError as e:
            code = "source_error" if request.get("type") in ("add_source", "remove_source") else "bad_message"
            self.hub.error(client, code, _safe_text(str(e), 300), request)
        except Exception as e:  # a bug: one line in the log and a reply, never the connection or the server
            log.error("client %d: %s failed (%s: %s)", client.id, request.get("type", "request"), type(e).__name__,
                      _safe_text(str(e), 200))
            log.debug("request failed", exc_info=True)
            self.hub.error(client, "source_error" if request.get("type") == "add_source" else "bad_message",
                           f"{request.get('type', 'request')} failed on the server ({type(e).__name__})", request)

    async def _stop_audio(self, stream: str, reason: str) -> None:
        if stream in self._own:
            await self._remove(stream, reason)
        else:
            self._stream_gone(stream, None)




class _Connection:
    """One websocket connection's tasks, so that nothing one client does makes it (or anyone) wait for its audio:

    - the reader takes every frame as it comes: text requests are answered at once (``add_source`` and
      ``remove_source`` each in a task of their own, at most ``max_requests_in_flight``), audio frames are
      checked and queued for the pump; it stops reading only while ``audio_backlog_bytes`` of audio wait
      (TCP then stops the sender) or while the client is over its message rate;
    - the pump hands the queued audio to the runner within the connection's audio budget, in order with
      ``audio_stop``;
    - the writer moves the outbox onto the socket;
    - the keepalive pings a client it has not heard from for ``ping_interval`` s and closes it (1011) when it
      then hears nothing, pong or frame, for ``ping_timeout`` s, not counting time the server itself spent not
      reading it: a throttled sender's pong that waits behind its own audio never closes it.
    """

    def __init__(self, server: WebsocketServer, ws: ServerConnection, peer: str) -> None:
        self.server, self.ws, self.peer = server, ws, peer
        self.hub, config = server.hub, server.config
        self.config = config
        self.wake = asyncio.Event()
        self.client = self.hub.connect(authorized=config.token is not None, peer=peer, notify=self.wake.set)
        self.messages = RateLimiter(rate=config.message_rate, burst=2 * config.message_rate)
        self.audio = RateLimiter(rate=config.audio_rate, burst=config.audio_burst)
        self.backlog: deque[tuple[str, bytes] | AudioStop] = deque()  # audio (and stops) for the pump, in order
        self.backlog_bytes = 0
        self.has_audio = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.held = False  # the server is not reading this connection (its audio backlog is full, or its messages)
        self.heard = time.monotonic()  # when a frame or a pong last came from it
        self.requests: set[asyncio.Task[None]] = set()
        self.noticed = -math.inf

    async def run(self) -> None:
        client = self.client
        log.info("client %d connected from %s (Origin %s)", client.id, self.peer,
                 _safe_text(self.ws.request.headers.get("Origin", "-") if self.ws.request else "-", 80))
        tasks = {asyncio.create_task(self._read(), name=f"read-{client.id}"),
                 asyncio.create_task(self._write(), name=f"write-{client.id}"),
                 asyncio.create_task(self._pump(), name=f"pump-{client.id}"),
                 asyncio.create_task(self.ws.wait_closed(), name=f"closed-{client.id}")}  # (a held reader waits)
        if self.config.ping_interval is not None:
            tasks.add(asyncio.create_task(self._keepalive(), name=f"keepalive-{client.id}"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (e := task.exception()) is not None and not isinstance(e, ConnectionClosed):
                    log.error("client %d: %s failed (%s: %s); closing it", client.id, task.get_name().split("-")[0],
                              type(e).__name__, _safe_text(str(e), 200))
                    log.debug("connection task failed", exc_info=e)
                    await self._close(1011, "internal error; reconnect")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pending = sum(len(item[1]) for item in self.backlog if not isinstance(item, AudioStop))
            if pending:
                log.info("client %d: %d bytes of its audio not yet handed to the engine were discarded when it "
                         "left", client.id, pending)
            log.info("client %d disconnected", client.id)
            for stop in self.hub.disconnect(client):
                await self.server._stop_audio(stop.stream, stop.reason)
            await self._close(1000, "")

    async def _close(self, code: int, reason: str) -> None:
        """Close within CLOSE_TIMEOUT_S whatever the client does: one that reads nothing cannot hold the close
        handshake (websockets waits for its socket buffer to drain) or the connection open."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.ws.transport.abort()

    # -- reading -----------------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.heard = time.monotonic()
                if isinstance(message, bytes):
                    await self._on_binary(message)
                else:
                    await self._charge(1.0)
                    for action in self.hub.receive(self.client, message):
                        await self._act(action)
        except ConnectionClosed:
            pass

    async def _on_binary(self, data: bytes) -> None:
        got = self.hub.accept_audio(self.client, data)
        if got is None:  # refused (no audio_start, torn, NaN): no audio of any stream; costs messages by its size
            await self._charge(1.0 + len(data) / REFUSED_BYTES_PER_MESSAGE)
            return
        await self._charge(AUDIO_FRAME_MESSAGES)
        if not self.backlog and self.audio.available() >= got[1]:
            # Nothing of this connection is queued and the frame is within its audio rate: hand it over now. The
            # pump would do the same a loop turn later, at the cost of a task wake-up per frame, which at 4,000
            # frames/s (400 senders of 0.1 s) was a GIL-bound event loop's largest item after decoding.
            samples = self.hub.decode_audio(self.client, got[0], data)
            if samples is not None:
                await self.server._push_paced(got[0], samples, self.audio, self._over_budget)
            return
        self.backlog.append((got[0], data))
        self.backlog_bytes += max(len(data), AUDIO_FRAME_MIN_BYTES)
        self.has_audio.set()
        if self.backlog_bytes > self.config.backlog_bytes:  # read ahead far enough: TCP holds the rest
            self.room.clear()
            self.held = True
            try:
                await self.room.wait()
            finally:
                self.held = False

    async def _charge(self, messages: float) -> None:
        if (wait := self.messages.take(messages)) > 0:
            self.held = True
            try:
                await self._over_budget(wait, f"more than {self.config.message_rate:g} messages/s")
            finally:
                self.held = False

    async def _over_budget(self, wait: float, what: str) -> None:
        # Hold this connection only; other clients and streams never wait for it.
        now = time.monotonic()
        if now - self.noticed >= RATE_NOTICE_INTERVAL_S:
            self.noticed = now
            self.hub.error(self.client, "rate_limited", f"{what}; slowed down to that rate")
            self.server._log_once(self.peer, "throttled", logging.INFO,
                                  f"client {self.client.id} ({self.peer}) throttled: {what}")
        await asyncio.sleep(wait)

    async def _act(self, action: Action) -> None:
        if isinstance(action, (AddSource, RemoveSource)):
            self._request(action)
        elif isinstance(action, AudioStop) and self.backlog:
            self.backlog.append(action)  # after the audio sent before it
            self.has_audio.set()
        else:
            await self.server._perform(self.client, action)

    def _request(self, action: AddSource | RemoveSource) -> None:
        """Run an admin request in a task of its own: a slow open never delays another request's reply."""
        if len(self.requests) >= self.config.max_requests_in_flight:
            kind = "add_source" if isinstance(action, AddSource) else "remove_source"
            request: dict[str, Any] = {"type": kind}
            if action.request_id is not None:
                request["id"] = action.request_id
            self.hub.error(self.client, "limit_exceeded", f"{len(self.requests)} requests of this connection are "
                           "still running; wait for one's reply", request)
            return
        task = asyncio.create_task(self.server._perform(self.client, action))
        for tasks in (self.requests, self.server._requests):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    # -- the audio pump ----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        while True:
            if not self.backlog:
                self.has_audio.clear()
                await self.has_audio.wait()
                continue
            item = self.backlog[0]
            try:
                if isinstance(item, AudioStop):
                    await self.server._perform(self.client, item)
                else:
                    samples = self.hub.decode_audio(self.client, item[0], item[1])
                    if samples is not None:
                        await self.server._push_paced(item[0], samples, self.audio, self._over_budget)
            finally:
                self.backlog.popleft()
                if not isinstance(item, AudioStop):
                    self.backlog_bytes -= max(len(item[1]), AUDIO_FRAME_MIN_BYTES)
                if self.backlog_bytes <= self.config.backlog_bytes:
                    self.room.set()

    # -- writing -----------------------------------------------------------------------------------------
    async def _write(self) -> None:
        client = self.client
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while (text := client.outbox.pop()) is not None:
                    await self.ws.send(text)  # waits only when THIS client's socket buffer is full
                    self.server.updates_sent += 1
                if client.outbox.overflowed:
                    log.info("client %d: more than %d unread replies; closing it", client.id, MAX_PENDING_CONTROL)
                    await self._close(1008, "client too slow: too many unread replies")
                    return
        except ConnectionClosed:
            return

    # -- keepalive ---------------------------------------------------------------------------------------
    async def _keepalive(self) -> None:
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        assert interval is not None
        ping: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(interval)
                asked = time.monotonic()
                if asked - self.heard < interval:
                    continue  # it spoke lately
                if ping is None or ping.done():
                    ping = asyncio.create_task(self._ping())
                deadline = asked + timeout
                while self.heard < asked:
                    now = time.monotonic()
                    if self.held:  # the server is not reading it: its pong may wait behind its own frames
                        deadline = now + timeout
                    elif now >= deadline:
                        log.info("client %d (%s): no answer to a ping within %g s; closing it", self.client.id,
                                 self.peer, timeout)
                        await self._close(1011, "keepalive ping timeout")
                        return
                    await asyncio.sleep(min(KEEPALIVE_POLL_S, timeout / 4))
        finally:
            if ping is not None:
                ping.cancel()

    async def _ping(self) -> None:
        try:
            pong = await self.ws.ping()
            await asyncio.shield(pong)
        except Exception:  # closed meanwhile (ConnectionClosed), or the pong never came: the keepalive decides
            return
        self.heard = time.monotonic()
