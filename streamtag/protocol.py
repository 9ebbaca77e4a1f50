"""The websocket protocol's sans-I/O core: message parsing, per-client state and bounded outboxes.

Nothing here touches a socket, a thread or an event loop. :class:`Hub` takes decoded client messages and
engine updates, and fills each :class:`Client`'s :class:`Outbox`; the I/O adapter
(``streamtag/publishers/websocket.py``) moves bytes and carries out the :class:`Action` objects the hub hands
back (opening a source, adding an audio stream). The wire format is documented in ``docs/protocol.md`` and
``docs/protocol.schema.json``.

Back-pressure: broadcasting must never stall the engine or other clients, so each client has a bounded outbox
that keeps only the NEWEST few pending updates per stream. Updates discarded before a slow client read them are
counted, and the next message it gets carries ``"dropped": n``.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "AUDIO_FORMATS",
    "Outbox",
    "Client",
    "Hub",
    "Action",
    "AddSource",
    "RemoveSource",
    "AudioStart",
    "AudioStop",
    "AudioDecoder",
    "parse_message",
    "valid_stream_name",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
AUDIO_FORMATS = ("pcm16", "float32")  # binary audio frame encodings a client may send (little endian)
MAX_AUDIO_CHANNELS = 8
MIN_AUDIO_RATE, MAX_AUDIO_RATE = 4000, 192000  # Hz accepted for websocket audio-in
MAX_PENDING_CONTROL = 256  # replies/errors queued for one client before it counts as too slow
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")

CLIENT_TYPES = ("subscribe", "unsubscribe", "add_source", "remove_source", "audio_start", "audio_stop")


def valid_stream_name(name: Any) -> bool:
    """Stream names: 1-64 of letters, digits, ``_ . : -``, starting with a letter or digit."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


class ClientError(ProtocolError):
    """A bad client message; ``code`` is the protocol's machine-readable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_message(text: str | bytes) -> dict[str, Any]:
    """Decode one client text message into a dict with a known ``type``; :class:`ClientError` otherwise."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClientError("bad_json", f"message is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from e
    if not isinstance(msg, dict):
        raise ClientError("bad_message", "message must be a JSON object with a 'type'")
    kind = msg.get("type")
    if kind not in CLIENT_TYPES:
        raise ClientError("unknown_type", f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}")
    return msg


def _stream_list(msg: dict[str, Any]) -> list[str] | None:
    """``streams`` as a list of names, or None for ``"*"`` (every stream, present and future)."""
    streams = msg.get("streams", msg.get("stream"))
    if streams == "*":
        return None
    if isinstance(streams, str):
        streams = [streams]
    if not isinstance(streams, list) or not streams or not all(isinstance(s, str) for s in streams):
        raise ClientError("bad_message", f"{msg['type']}: 'streams' must be \"*\" or a non-empty list of names")
    return streams


# -- per-client outbox -------------------------------------------------------------------------------------
class Outbox:
    """Bounded queue of serialized messages for one client.

    Control messages (hello, replies, errors) are kept in order; at most ``MAX_PENDING_CONTROL`` of them
    (:attr:`overflowed` turns True past that, and the adapter closes the connection). Updates keep only the
    newest ``depth`` pending per stream, for at most ``max_streams`` streams, and go out round-robin across
    streams. Every update discarded unsent counts in :attr:`dropped`, reported (and reset) as ``"dropped": n``
    in the next message popped. ``depth`` absorbs the bursts of an engine catching up (several hops of a
    stream in one step) without loss; a client slower than the stream rate keeps only the newest.
    """

    def __init__(self, max_streams: int = 256, depth: int = 8) -> None:
        if max_streams <= 0 or depth <= 0:
            raise ValueError("max_streams and depth must be positive")
        self.max_streams, self.depth = max_streams, depth
        self._control: deque[str] = deque()
        self._updates: OrderedDict[str, deque[str]] = OrderedDict()  # round-robin order of streams
        self._n_updates = 0
        self.dropped = 0  # updates lost since the last message popped
        self.dropped_total = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._control) + self._n_updates

    def put_control(self, msg: dict[str, Any]) -> None:
        if len(self._control) >= MAX_PENDING_CONTROL:
            self.overflowed = True
            return
        self._control.append(json.dumps(msg, ensure_ascii=False))

    def put_update(self, stream: str, text: str) -> None:
        """Queue one serialized update (a JSON object) of ``stream``; the oldest pending one goes past ``depth``."""
        q = self._updates.get(stream)
        if q is None:
            if len(self._updates) >= self.max_streams:
                _, evicted = self._updates.popitem(last=False)
                self._n_updates -= len(evicted)
                self._lost(len(evicted))
            q = self._updates[stream] = deque()
        q.append(text)
        self._n_updates += 1
        if len(q) > self.depth:
            q.popleft()  # stale: a newer update of the same stream is waiting
            self._n_updates -= 1
            self._lost(1)

    def flush_stream(self, stream: str) -> None:
        """Move ``stream``'s pending updates ahead of the control messages queued after this call."""
        q = self._updates.pop(stream, None)
        if q:
            self._n_updates -= len(q)
            self._control.extend(q)

    def _lost(self, n: int) -> None:
        self.dropped += n
        self.dropped_total += n

    def pop(self) -> str | None:
        """The next message to send (control first), with ``dropped`` attached when updates were lost."""
        if self._control:
            text = self._control.popleft()
        elif self._updates:
            stream, q = next(iter(self._updates.items()))
            text = q.popleft()
            self._n_updates -= 1
            if q:
                self._updates.move_to_end(stream)  # round-robin: other streams go first
            else:
                del self._updates[stream]
        else:
            return None
        if self.dropped:
            text = f'{text[:-1]}, "dropped": {self.dropped}}}'  # every message is a JSON object: "{...}"
            self.dropped = 0
        return text


# -- actions the I/O layer carries out ----------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    client_id: int
    request_id: Any = None


@dataclass(frozen=True)
class AddSource(Action):
    name: str = ""
    uri: str = ""


@dataclass(frozen=True)
class RemoveSource(Action):
    name: str = ""


@dataclass(frozen=True)
class AudioStart(Action):
    stream: str = ""
    sample_rate: int = 0
    format: str = "float32"
    channels: int = 1


@dataclass(frozen=True)
class AudioStop(Action):
    stream: str = ""
    reason: str = "stopped"


# -- audio in -----------------------------------------------------------------------------------------------
class AudioDecoder:
    """Binary audio frames (interleaved pcm16 / float32, little endian) -> mono float32 at ``target_rate``."""

    def __init__(self, *, sample_rate: int, fmt: str, channels: int, target_rate: int) -> None:
        from .audio import MonoConverter  # the one PCM -> model-input conversion (stateful: no seams)

        self.sample_rate, self.format, self.channels, self.target_rate = sample_rate, fmt, channels, target_rate
        self._dtype = np.dtype("<i2") if fmt == "pcm16" else np.dtype("<f4")
        self._frame_bytes = self._dtype.itemsize * channels
        self._converter = MonoConverter(sample_rate=sample_rate, target_rate=target_rate, channels=channels)
        self.samples_in = 0

    def decode(self, data: bytes) -> np.ndarray:
        """(N,) float32 at ``target_rate`` for one binary frame; :class:`ClientError` for a torn frame."""
        if len(data) % self._frame_bytes:
            raise ClientError(
                "bad_audio",
                f"binary frame of {len(data)} bytes is not a whole number of {self.format} x {self.channels} "
                f"samples ({self._frame_bytes} bytes each)",
            )
        x = np.frombuffer(data, dtype=self._dtype)  # (N * C,) interleaved
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ClientError("bad_audio", "audio frame holds NaN or infinite samples")
        self.samples_in += x.shape[0] // self.channels
        return self._converter.push(x)


# -- the hub ------------------------------------------------------------------------------------------------
@dataclass
class Client:
    """One connection's protocol state."""

    id: int
    authorized: bool
    outbox: Outbox
    peer: str = ""
    subscriptions: set[str] = field(default_factory=set)
    all_streams: bool = False  # subscribed with "*"
    audio: dict[str, AudioDecoder] = field(default_factory=dict)  # streams this client feeds
    notify: Callable[[], None] = lambda: None  # set by the I/O adapter: "the outbox has something"

    def wants(self, stream: str) -> bool:
        return self.all_streams or stream in self.subscriptions

    def send(self, msg: dict[str, Any]) -> None:
        self.outbox.put_control(msg)
        self.notify()


@dataclass
class StreamInfo:
    name: str
    source: str  # URI, "websocket" for audio-in, or a description
    title: str | None = None
    owner: int | None = None  # client id feeding it (audio-in), None for server sources

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "title": self.title}


class Hub:
    """Protocol state of a whole server: streams, clients and what each is subscribed to."""

    def __init__(
        self,
        *,
        model: str,
        labels: list[str],
        sample_rate: int,
        hop_seconds: float,
        max_message_bytes: int,
        queue_streams: int = 256,
        queue_depth: int = 8,
        server: str = "streamtag",
    ) -> None:
        self.model, self.labels = model, list(labels)
        self.sample_rate, self.hop_seconds = sample_rate, hop_seconds
        self.max_message_bytes, self.server = max_message_bytes, server
        self.queue_streams, self.queue_depth = queue_streams, queue_depth
        self.streams: dict[str, StreamInfo] = {}
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self.published: Counter[str] = Counter()  # updates published per stream

    # -- connections -------------------------------------------------------------------------------------
    def connect(self, *, authorized: bool, peer: str = "", notify: Callable[[], None] | None = None) -> Client:
        client = Client(id=self._next_id, authorized=authorized, outbox=Outbox(self.queue_streams, self.queue_depth),
                        peer=peer)
        if notify is not None:
            client.notify = notify
        self._next_id += 1
        self.clients[client.id] = client
        client.send(self.hello(client))
        return client

    def disconnect(self, client: Client) -> list[AudioStop]:
        """Forget ``client``; returns the audio streams it fed, for the adapter to remove."""
        self.clients.pop(client.id, None)
        return [AudioStop(client.id, stream=s, reason="client disconnected") for s in client.audio]

    def hello(self, client: Client) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "server": self.server,
            "model": self.model,
            "labels": self.labels,
            "sample_rate": self.sample_rate,
            "hop_seconds": round(self.hop_seconds, 4),
            "streams": [s.to_dict() for s in self.streams.values()],
            "authorized": client.authorized,
            "audio_formats": list(AUDIO_FORMATS),
            "max_message_bytes": self.max_message_bytes,
        }

    # -- streams -----------------------------------------------------------------------------------------
    def _broadcast_streams(self) -> None:
        msg = {"type": "streams", "streams": [s.to_dict() for s in self.streams.values()]}
        for c in self.clients.values():
            c.send(msg)

    def stream_added(self, name: str, source: str, title: str | None = None, owner: int | None = None) -> None:
        self.streams[name] = StreamInfo(name, source, title, owner)
        self._broadcast_streams()

    def stream_removed(self, name: str, reason: str) -> None:
        if self.streams.pop(name, None) is None:
            return
        ended = {"type": "stream_ended", "stream": name, "reason": reason}
        for c in self.clients.values():
            if c.wants(name):
                c.outbox.flush_stream(name)  # its last update goes out before the end notice
                c.send(ended)
            c.subscriptions.discard(name)
            c.audio.pop(name, None)
        self._broadcast_streams()

    def set_title(self, name: str, title: str | None) -> None:
        info = self.streams.get(name)
        if info is not None and info.title != title:
            info.title = title
            self._broadcast_streams()

    # -- engine side -------------------------------------------------------------------------------------
    def publish(self, update: dict[str, Any]) -> int:
        """Queue one update (``GenreUpdate.to_dict()``) for every subscriber; returns how many."""
        stream = update["stream"]
        text = json.dumps(update, ensure_ascii=False)  # serialized once for every client
        n = 0
        for c in self.clients.values():
            if c.wants(stream):
                c.outbox.put_update(stream, text)
                c.notify()
                n += 1
        self.published[stream] += 1
        return n

    # -- client side -------------------------------------------------------------------------------------
    def error(self, client: Client, code: str, message: str, request: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request is not None:
            if isinstance(request.get("type"), str):
                msg["request"] = request["type"]
            if "id" in request:
                msg["id"] = request["id"]
        client.send(msg)

    def reply(self, client: Client, msg: dict[str, Any], request: dict[str, Any]) -> None:
        if "id" in request:
            msg = {**msg, "id": request["id"]}
        client.send(msg)

    def receive(self, client: Client, text: str | bytes) -> list[Action]:
        """Handle one text message; replies go to the outbox, side effects come back as actions."""
        msg: dict[str, Any] | None = None
        try:
            msg = parse_message(text)
            return getattr(self, "_on_" + msg["type"])(client, msg)
        except ClientError as e:
            self.error(client, e.code, str(e), msg)
            return []

    def receive_audio(self, client: Client, data: bytes) -> tuple[str, np.ndarray] | None:
        """Decode one binary frame of the client's audio stream -> (stream, samples at engine rate)."""
        if not client.audio:
            self.error(client, "bad_audio", "binary frame before audio_start; send audio_start first")
            return None
        if len(client.audio) > 1:
            self.error(client, "bad_audio", "binary frames are ambiguous with several audio streams open")
            return None
        stream, decoder = next(iter(client.audio.items()))
        try:
            return stream, decoder.decode(data)
        except ClientError as e:
            self.error(client, e.code, str(e))
            return None

    def _check_known(self, streams: list[str], msg: dict[str, Any]) -> None:
        unknown = [s for s in streams if s not in self.streams]
        if unknown:
            raise ClientError(
                "unknown_stream",
                f"unknown stream(s) {', '.join(map(repr, unknown))}; streams: {', '.join(self.streams) or '(none)'}",
            )

    def _subscribed(self, client: Client, msg: dict[str, Any]) -> None:
        subs: str | list[str] = "*" if client.all_streams else sorted(client.subscriptions)
        self.reply(client, {"type": "subscribed", "streams": subs}, msg)

    def _on_subscribe(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        streams = _stream_list(msg)
        if streams is None:
            client.all_streams = True
        else:
            self._check_known(streams, msg)
            client.subscriptions.update(streams)
        self._subscribed(client, msg)
        # The newest update of each newly subscribed stream is not replayed: the next hop brings one.
        return []

    def _on_unsubscribe(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        streams = _stream_list(msg)
        if streams is None:
            client.all_streams = False
            client.subscriptions.clear()
        else:
            self._check_known(streams, msg)
            if client.all_streams:  # "*" minus these: every current stream but them
                client.all_streams = False
                client.subscriptions = set(self.streams)
            client.subscriptions.difference_update(streams)
        self._subscribed(client, msg)
        return []

    def _require_auth(self, client: Client, what: str) -> None:
        if not client.authorized:
            raise ClientError(
                "unauthorized",
                f"{what} needs an authorized client: start the server with --token T and connect with ?token=T",
            )

    def _on_add_source(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        self._require_auth(client, "add_source")
        name, uri = msg.get("name"), msg.get("uri")
        if not valid_stream_name(name):
            raise ClientError("bad_message", f"add_source: invalid stream name {name!r} (letters, digits, _.:-)")
        if not isinstance(uri, str) or not uri:
            raise ClientError("bad_message", "add_source: 'uri' must be a non-empty string")
        if name in self.streams:
            raise ClientError("stream_exists", f"stream {name!r} already exists; remove it first or pick another name")
        return [AddSource(client.id, msg.get("id"), name=name, uri=uri)]

    def _on_remove_source(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        self._require_auth(client, "remove_source")
        name = msg.get("name")
        if not isinstance(name, str):
            raise ClientError("bad_message", "remove_source: 'name' must be a string")
        self._check_known([name], msg)
        return [RemoveSource(client.id, msg.get("id"), name=name)]

    def _on_audio_start(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        stream, rate = msg.get("stream"), msg.get("sample_rate")
        fmt, channels = msg.get("format", "float32"), msg.get("channels", 1)
        if not valid_stream_name(stream):
            raise ClientError("bad_message", f"audio_start: invalid stream name {stream!r} (letters, digits, _.:-)")
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
            raise ClientError(
                "bad_audio", f"audio_start: sample_rate must be an integer in [{MIN_AUDIO_RATE}, {MAX_AUDIO_RATE}] Hz"
            )
        if fmt not in AUDIO_FORMATS:
            raise ClientError("bad_audio", f"audio_start: format {fmt!r} not one of {', '.join(AUDIO_FORMATS)}")
        if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= MAX_AUDIO_CHANNELS:
            raise ClientError("bad_audio", f"audio_start: channels must be an integer in [1, {MAX_AUDIO_CHANNELS}]")
        if stream in self.streams:
            raise ClientError("stream_exists", f"stream {stream!r} already exists; pick another name")
        if client.audio:
            raise ClientError("bad_audio", "this connection already sends a stream; send audio_stop first")
        client.audio[stream] = AudioDecoder(
            sample_rate=rate, fmt=fmt, channels=channels, target_rate=self.sample_rate
        )
        client.subscriptions.add(stream)  # the sender hears its own stream
        return [AudioStart(client.id, msg.get("id"), stream=stream, sample_rate=rate, format=fmt, channels=channels)]

    def _on_audio_stop(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        stream = msg.get("stream") or next(iter(client.audio), None)
        if stream is None or stream not in client.audio:
            raise ClientError("bad_message", f"audio_stop: this connection sends no stream {stream!r}")
        return [AudioStop(client.id, msg.get("id"), stream=stream)]
