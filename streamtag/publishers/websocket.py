"""Websocket server: live genre updates for many clients, audio in, and the web page, on one port.

This is the I/O adapter around the sans-I/O protocol core (``streamtag/protocol.py``): it runs a
``websockets.asyncio.server`` on an asyncio loop, feeds client messages to the :class:`~streamtag.protocol.Hub`,
carries out the actions the hub returns, and moves each client's bounded outbox onto its socket in a writer
task of its own, so a slow client only ever delays itself. The engine runs in a :class:`~streamtag.live.LiveRunner`
thread; its updates cross into the loop with ``call_soon_threadsafe``.

Plain HTTP GETs on the same port serve the web page (``streamtag/web``) and ``/healthz``.
Wire format: ``docs/protocol.md``.
"""
from __future__ import annotations

import asyncio
import email.utils
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__
from ..errors import ConfigError, StreamtagError
from ..events import GenreUpdate
from ..live import LiveRunner
from ..protocol import AddSource, AudioStart, AudioStop, Client, Hub, RemoveSource, valid_stream_name

__all__ = ["ServerConfig", "GenreServer", "check_bind", "is_loopback", "WEB_DIR"]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~6 s of 44.1 kHz float32 mono audio per binary frame
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (ConfigError)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on non-loopback address {host!r} without a token; add --token T "
            "(clients then connect with ?token=T) or bind 127.0.0.1"
        )


def _is_file_uri(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (see GenreServer.port)
    token: str | None = None  # required to connect when set; enables add_source / remove_source
    allowed_origins: tuple[str, ...] = ()  # browser Origins allowed (empty: any); the server's own is added
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # largest incoming message (websockets max_size)
    queue_streams: int = 256  # per-client outbox bound: streams with pending updates
    queue_depth: int = 8  # per-client outbox bound: pending updates per stream (older ones are dropped)
    file_speed: float | None = 1.0  # pacing of file sources (x real time; None: as fast as decoded)
    web_dir: Path | None = WEB_DIR  # static files served over HTTP (None: no page)
    ping_interval: float | None = 20.0  # s between keepalive pings (a client that stops reading is closed)

    def __post_init__(self) -> None:
        check_bind(self.host, self.token)
        if self.max_message_bytes < 1024:
            raise ConfigError(f"--max-message-bytes {self.max_message_bytes} is too small; use at least 1024")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")


def _default_open_source(uri: str, sample_rate: int) -> Any:
    from ..sources import open_source

    return open_source(uri, sample_rate)


@dataclass
class GenreServer:
    """Engine + hub + websocket server. Use ``async with GenreServer(engine, config) as server: ...``."""

    engine: Any
    config: ServerConfig = field(default_factory=ServerConfig)
    open_source: Callable[[str, int], Any] = _default_open_source

    def __post_init__(self) -> None:
        self.hub = Hub(
            model=self.engine.bundle.name,
            labels=list(self.engine.labels_shown),
            sample_rate=self.engine.sample_rate,
            hop_seconds=self.engine.hop_seconds,
            max_message_bytes=self.config.max_message_bytes,
            queue_streams=self.config.queue_streams,
            queue_depth=self.config.queue_depth,
            server=f"streamtag/{__version__}",
        )
        self.runner = LiveRunner(
            self.engine, self._updates_from_thread, on_end=self._ended_from_thread, on_title=self._title_from_thread
        )
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._static: dict[str, Path] = {}
        if self.config.web_dir is not None and self.config.web_dir.is_dir():
            self._static = {"/" + p.name: p for p in self.config.web_dir.iterdir() if p.suffix in _CONTENT_TYPES}
            if "/index.html" in self._static:
                self._static["/"] = self._static["/index.html"]
        self.updates_sent = 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> GenreServer:
        self._loop = asyncio.get_running_loop()
        self.runner.start()
        origins: list[Any] | None = None
        if self.config.allowed_origins:
            own = re.compile(rf"https?://({re.escape(self.config.host)}|localhost|127\.0\.0\.1)(:\d+)?")
            origins = [*self.config.allowed_origins, own, None]  # None: non-browser clients send no Origin
        try:
            self._server = await serve(
                self._handler,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                origins=origins,
                max_size=self.config.max_message_bytes,
                ping_interval=self.config.ping_interval,
                server_header=f"streamtag/{__version__}",
                compression=None,  # small JSON at a high rate: deflate costs more CPU than it saves
            )
        except OSError as e:
            self.runner.stop()
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
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        loop = asyncio.get_running_loop()
        for name in list(self.hub.streams):  # leave the engine as we found it
            await loop.run_in_executor(None, self.runner.remove, name)
            self.hub.stream_removed(name, "server stopped")
        await loop.run_in_executor(None, self.runner.stop)

    async def __aenter__(self) -> GenreServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    # -- sources -----------------------------------------------------------------------------------------
    async def add_source(self, name: str, uri: str) -> None:
        """Open ``uri`` (off the loop: it may connect to a host) and start tagging it as stream ``name``."""
        if not valid_stream_name(name):
            raise ConfigError(f"invalid stream name {name!r}: use letters, digits and _.:-")
        if name in self.hub.streams or name in self.engine.streams:
            raise ConfigError(f"stream {name!r} already exists; pick another name")
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(None, self.open_source, uri, self.engine.sample_rate)
        speed = self.config.file_speed if _is_file_uri(uri) else None
        try:
            self.runner.add_source(name, source, speed=speed)
        except StreamtagError:
            getattr(source, "close", lambda: None)()
            raise
        self.hub.stream_added(name, uri, getattr(source, "title", None))

    async def remove_source(self, name: str, reason: str = "removed") -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.runner.remove, name)
        self.hub.stream_removed(name, reason)

    # -- engine thread -> loop ---------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def _updates_from_thread(self, updates: list[GenreUpdate]) -> None:
        self._call(self._publish, [u.to_dict() for u in updates])

    def _publish(self, updates: list[dict[str, Any]]) -> None:
        for u in updates:
            if u["stream"] in self.hub.streams:
                self.hub.publish(u)

    def _ended_from_thread(self, name: str, error: StreamtagError | None) -> None:
        self._call(self._source_ended, name, str(error) if error else "ended")

    def _source_ended(self, name: str, reason: str) -> None:
        log.info("stream %s ended: %s", name, reason)
        # Let the engine thread emit the hops still in the ring buffer before the stream goes.
        assert self._loop is not None
        self._loop.call_later(0.5, lambda: asyncio.ensure_future(self.remove_source(name, reason)))

    def _title_from_thread(self, name: str, title: str | None) -> None:
        self._call(self.hub.set_title, name, title)

    # -- HTTP --------------------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._http(connection, request)
        if self.config.token is not None:
            token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
            auth = request.headers.get("Authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            if not hmac.compare_digest(token.encode(), self.config.token.encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token; connect with ?token=T\n")
        return None

    def _http(self, connection: ServerConnection, request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        file = self._static.get(path)
        if file is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        body = file.read_bytes()  # small files, read on request so edits show without a restart
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", _CONTENT_TYPES[file.suffix]),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    # -- websocket connections ---------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        wake = asyncio.Event()
        client = self.hub.connect(
            authorized=self.config.token is not None, peer=str(ws.remote_address), notify=wake.set
        )
        writer = asyncio.create_task(self._writer(ws, client, wake))
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    got = self.hub.receive_audio(client, message)
                    if got is not None and got[0] in self.engine.streams:
                        stream, samples = got
                        if samples.size:
                            self.runner.push(stream, samples)
                else:
                    for action in self.hub.receive(client, message):
                        await self._perform(client, action)
                if writer.done():
                    break
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            for stop in self.hub.disconnect(client):
                await self._stop_audio(stop.stream, stop.reason)

    async def _writer(self, ws: ServerConnection, client: Client, wake: asyncio.Event) -> None:
        try:
            while True:
                await wake.wait()
                wake.clear()
                while (text := client.outbox.pop()) is not None:
                    await ws.send(text)  # waits only when THIS client's socket buffer is full
                    self.updates_sent += 1
                if client.outbox.overflowed:
                    await ws.close(1008, "client too slow: too many unread replies")
                    return
        except ConnectionClosed:
            return

    async def _perform(self, client: Client, action: Any) -> None:
        request: dict[str, Any] = {"id": action.request_id} if action.request_id is not None else {}
        try:
            if isinstance(action, AddSource):
                request["type"] = "add_source"
                await self.add_source(action.name, action.uri)
                self.hub.reply(client, {"type": "source_added", "name": action.name, "uri": action.uri}, request)
            elif isinstance(action, RemoveSource):
                request["type"] = "remove_source"
                await self.remove_source(action.name)
                self.hub.reply(client, {"type": "source_removed", "name": action.name}, request)
            elif isinstance(action, AudioStart):
                request["type"] = "audio_start"
                try:
                    self.runner.add_stream(action.stream)
                except StreamtagError:
                    client.audio.pop(action.stream, None)
                    raise
                self.hub.stream_added(action.stream, "websocket", owner=client.id)
                client.subscriptions.add(action.stream)
                self.hub.reply(
                    client,
                    {"type": "audio_started", "stream": action.stream, "sample_rate": action.sample_rate,
                     "engine_sample_rate": self.engine.sample_rate},
                    request,
                )
            elif isinstance(action, AudioStop):
                request["type"] = "audio_stop"
                await self._stop_audio(action.stream, action.reason)
                self.hub.reply(client, {"type": "audio_stopped", "stream": action.stream}, request)
        except StreamtagError as e:
            self.hub.error(client, "source_error" if request.get("type") == "add_source" else "bad_message",
                           str(e), request)

    async def _stop_audio(self, stream: str, reason: str) -> None:
        if stream in self.engine.streams:
            await asyncio.get_running_loop().run_in_executor(None, self.runner.remove, stream)
        self.hub.stream_removed(stream, reason)
