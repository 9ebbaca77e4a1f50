"""The websocket protocol's sans-I/O core: message parsing, per-client state and bounded outboxes.

Nothing here touches a socket, a thread or an event loop. :class:`Hub` takes decoded client messages and
engine updates, and fills each :class:`Client`'s :class:`Outbox`; the I/O adapter
(``streamtag/publishers/websocket.py``) moves bytes and carries out the :class:`Action` objects the hub hands
back (opening a source, adding an audio stream). The wire format is documented in ``docs/protocol.md`` and
``docs/protocol.schema.json``.

Back-pressure: broadcasting must never stall the engine or other clients, so each client has a bounded outbox
that keeps only the NEWEST few pending updates per stream. Updates discarded before a slow client read them are
counted, and the next message it gets carries ``"dropped": n``.

Hostile clients: every message of the wrong shape gets a ``bad_message`` error and the connection stays; JSON is
parsed with its nesting depth bounded and non-finite numbers refused, so every reply is valid JSON; the
``streams`` list waits in each outbox as one slot (a newer list replaces an unsent one) and title changes are
coalesced to one broadcast per second per stream; :class:`RateLimiter` and :class:`HandshakeThrottle` are the
clock-driven budgets the I/O layer enforces (audio seconds, messages, failed handshakes).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

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
    "RateLimiter",
    "HandshakeThrottle",
    "LogLimiter",
    "ERROR_CODES",
    "parse_message",
    "valid_stream_name",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
AUDIO_FORMATS = ("pcm16", "float32")  # binary audio frame encodings a client may send (little endian)
MAX_AUDIO_CHANNELS = 8
MIN_AUDIO_RATE, MAX_AUDIO_RATE = 4000, 192000  # Hz accepted for websocket audio-in
MAX_PENDING_CONTROL = 256  # replies/errors queued for one client before it counts as too slow
MAX_JSON_DEPTH = 8  # nesting levels of a client message (the protocol needs 3: {"streams": [..]})
MAX_LIST_NAMES = 1024  # names in one subscribe/unsubscribe
MAX_ID_CHARS = 128  # a request "id" string longer than this is refused
AUDIO_STARTS_PER_S, AUDIO_STARTS_BURST = 0.5, 3.0  # audio_start budget per connection (then rate_limited)
MAX_DETAIL = 300  # characters of a stream_status detail
STREAM_STATUSES = ("dropped", "reconnecting", "connected")  # source events sent to subscribers
TITLE_INTERVAL_S = 1.0  # s: at most one `streams` broadcast per stream per interval for title changes
ERROR_CODES = ("bad_json", "bad_message", "unknown_type", "unknown_stream", "unauthorized", "stream_exists",
               "bad_audio", "source_error", "limit_exceeded", "rate_limited")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
# what json.dumps(msg, ensure_ascii=False, allow_nan=False) does, without building an encoder per message
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

CLIENT_TYPES = ("subscribe", "unsubscribe", "add_source", "remove_source", "audio_start", "audio_stop", "stats")


def valid_stream_name(name: Any) -> TypeGuard[str]:
    """Stream names: 1-64 of letters, digits, ``_ . : -``, starting with a letter or digit."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


class ClientError(ProtocolError):
    """A bad client message; ``code`` is the protocol's machine-readable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _reject_constant(name: str) -> Any:
    raise ClientError("bad_json", f"message holds {name}; JSON numbers must be finite")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ClientError("bad_json", f"number {text[:20]} is out of range; JSON numbers must be finite")
    return x


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` levels of lists/objects (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def parse_message(text: str | bytes) -> dict[str, Any]:
    """Decode one client text message into a dict with a known ``type``; :class:`ClientError` otherwise.

    Nesting is bounded (``MAX_JSON_DEPTH``) and NaN, Infinity and out-of-range numbers are refused, so whatever
    the server echoes (a request's ``id``) serializes back to valid JSON.
    """
    try:
        msg = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as e:
        raise ClientError("bad_message", f"message nests deeper than {MAX_JSON_DEPTH} levels") from e
    except json.JSONDecodeError as e:
        raise ClientError("bad_json", f"message is not valid JSON ({e.msg} at character {e.pos})") from e
    except (UnicodeDecodeError, ValueError) as e:  # bad UTF-8; an integer of more than 4300 digits
        raise ClientError("bad_json", f"message is not valid JSON ({str(e)[:80]})") from e
    if not isinstance(msg, dict):
        raise ClientError("bad_message", "message must be a JSON object with a 'type'")
    if not _depth(msg, MAX_JSON_DEPTH):
        raise ClientError("bad_message", f"message nests deeper than {MAX_JSON_DEPTH} levels")
    if "id" in msg and not _valid_id(msg["id"]):
        del msg["id"]  # never echoed
        raise ClientError("bad_message", f"'id' must be a string of at most {MAX_ID_CHARS} characters or a number")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        shown = repr(kind)[:40] if isinstance(kind, (str, int, float, bool)) or kind is None else type(kind).__name__
        raise ClientError("unknown_type", f"unknown message type {shown}; expected one of {', '.join(CLIENT_TYPES)}")
    return msg


def _valid_id(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_ID_CHARS
    if isinstance(value, bool) or value is None:
        return value is None
    if isinstance(value, int):
        return abs(value) < 2**53
    return isinstance(value, float)  # finite: parse_message refuses the others


def _stream_list(msg: dict[str, Any]) -> list[str] | None:
    """``streams`` as a list of names, or None for ``"*"`` (every stream, present and future)."""
    streams = msg.get("streams", msg.get("stream"))
    if streams == "*":
        return None
    if isinstance(streams, str):
        streams = [streams]
    if (not isinstance(streams, list) or not streams or len(streams) > MAX_LIST_NAMES
            or not all(isinstance(s, str) for s in streams)):
        raise ClientError("bad_message", f"{msg['type']}: 'streams' must be \"*\" or a list of 1-{MAX_LIST_NAMES} names")
    return streams


def _few(names: Iterable[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated (an error message stays short whatever a client sent)."""
    items = list(itertools.islice(names, limit + 1))
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "")


# -- per-client outbox -------------------------------------------------------------------------------------
class Outbox:
    """Bounded queue of serialized messages for one client.

    Control messages (hello, replies, errors) are kept in order; at most ``MAX_PENDING_CONTROL`` of them
    (:attr:`overflowed` turns True past that, and the adapter closes the connection). A keyed control message (a
    state snapshot: the stream list, a stream's status or last segment) replaces its unsent predecessor, so
    those are bounded by their keys (a few per stream) and do not count toward that limit: a subscriber to
    "*" of 500 stations that all report ``connected`` at once is not too slow. Updates keep only the
    newest ``depth`` pending per stream, for at most ``max_streams`` streams, and go out round-robin across
    streams. Every update discarded unsent counts in :attr:`dropped`, reported (and reset) as ``"dropped": n``
    in the next message popped. ``depth`` absorbs the bursts of an engine catching up (several hops of a
    stream in one step) without loss; a client slower than the stream rate keeps only the newest.
    """

    def __init__(self, max_streams: int = 256, depth: int = 8) -> None:
        if max_streams <= 0 or depth <= 0:
            raise ValueError("max_streams and depth must be positive")
        self.max_streams, self.depth = max_streams, depth
        self._control: deque[list[str | None]] = deque()  # [text, key] cells: a keyed one is replaced in place
        self._keyed: dict[str, list[str | None]] = {}  # key -> its pending cell
        self._n_unkeyed = 0  # pending control messages without a key (the ones MAX_PENDING_CONTROL bounds)
        self._updates: OrderedDict[str, deque[str]] = OrderedDict()  # round-robin order of streams
        self._n_updates = 0
        self.dropped = 0  # updates lost since the last message popped
        self.dropped_total = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._control) + self._n_updates

    def put_control(self, msg: dict[str, Any] | str, *, key: str | None = None) -> None:
        """Queue a control message (a dict, or its JSON text when one message goes to many clients); one with a
        ``key`` replaces the unsent one of the same key (a state snapshot such as the stream list, where only the
        newest matters), so snapshots never pile up."""
        text = msg if isinstance(msg, str) else _ENCODE(msg)
        if key is not None and (pending := self._keyed.get(key)) is not None:
            pending[0] = text
            return
        if key is None:
            if self._n_unkeyed >= MAX_PENDING_CONTROL:
                self.overflowed = True
                return
            self._n_unkeyed += 1
        cell: list[str | None] = [text, key]
        self._control.append(cell)
        if key is not None:
            self._keyed[key] = cell

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
            self._control.extend([t, ""] for t in q)  # key "": bounded by depth, neither keyed nor counted

    def _lost(self, n: int) -> None:
        self.dropped += n
        self.dropped_total += n

    def pop(self) -> str | None:
        """The next message to send (control first), with ``dropped`` attached when updates were lost."""
        if self._control:
            text, key = self._control.popleft()
            assert text is not None
            if key is None:
                self._n_unkeyed -= 1
            elif key:
                del self._keyed[key]
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

    def check(self, data: bytes) -> float:
        """Seconds of audio in one binary frame; :class:`ClientError` for a torn frame or non-finite samples.
        Cheap (no conversion): the server checks a frame when it arrives and converts it when its turn comes."""
        if len(data) % self._frame_bytes:
            raise ClientError(
                "bad_audio",
                f"binary frame of {len(data)} bytes is not a whole number of {self.format} x {self.channels} "
                f"samples ({self._frame_bytes} bytes each)",
            )
        if self._dtype.kind == "f" and not np.all(np.isfinite(np.frombuffer(data, dtype=self._dtype))):
            raise ClientError("bad_audio", "audio frame holds NaN or infinite samples")
        return len(data) // self._frame_bytes / self.sample_rate

    def decode(self, data: bytes, *, checked: bool = False) -> np.ndarray:
        """(N,) float32 at ``target_rate`` for one binary frame (``checked``: :meth:`check` already passed)."""
        if not checked:
            self.check(data)
        x = np.frombuffer(data, dtype=self._dtype)  # (N * C,) interleaved
        self.samples_in += x.shape[0] // self.channels
        return self._converter.push(x)


# -- budgets the I/O layer enforces ---------------------------------------------------------------------------
class RateLimiter:
    """A token bucket: ``rate`` units per second, ``burst`` units banked at most.

    :meth:`take` spends ``amount`` and returns how many seconds the caller must wait before acting on it (0.0
    within budget). The server throttles by waiting, so a client over its budget slows down (its socket and TCP
    window fill, which stops the sender) and nothing it sent is lost.
    """

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate > 0 and burst > 0):
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = burst
        self._t = clock()
        self.throttled_s = 0.0  # total seconds of waiting imposed so far

    def available(self) -> float:
        """Units that :meth:`take` would grant now without a wait (nothing is spent)."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        return self._tokens

    def take(self, amount: float) -> float:
        self._tokens = self.available() - amount
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self.throttled_s += wait
        return wait

    def refund(self, amount: float) -> None:
        """Give back what a refused request took."""
        self._tokens = min(self.burst, self._tokens + amount)


class HandshakeThrottle:
    """Failed handshakes per address: past ``max_failures`` within ``window`` s, the address is refused until its
    oldest failure leaves the window. Remembers at most ``max_addresses`` addresses (the oldest are forgotten)."""

    def __init__(self, *, max_failures: int = 5, window: float = 60.0, max_addresses: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.max_addresses, self.clock = max_failures, window, max_addresses, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.refused = 0

    def _recent(self, address: str) -> deque[float] | None:
        q = self._failures.get(address)
        if q is None:
            return None
        now = self.clock()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[address]
            return None
        return q

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0.0: it may now)."""
        q = self._recent(address)
        if q is None or len(q) < self.max_failures:
            return 0.0
        self.refused += 1
        return max(0.0, q[0] + self.window - self.clock())

    def failed(self, address: str) -> None:
        q = self._recent(address)
        if q is None:
            q = self._failures[address] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        q.append(self.clock())


class LogLimiter:
    """At most one log line per key (a client address) per ``interval`` s: :meth:`allow` returns how many lines
    were held back since the last one it allowed, or None to hold this one back. Remembers ``max_keys`` keys."""

    def __init__(self, *, interval: float = 60.0, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.max_keys, self.clock = interval, max_keys, clock
        self._last: OrderedDict[str, list[float]] = OrderedDict()  # key -> [when allowed, lines held back since]

    def allow(self, key: str) -> int | None:
        now = self.clock()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        self._last[key] = [now, 0]
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return held


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
    starts: RateLimiter | None = None  # audio_start budget (each start and stop is news to every "*" client)

    def wants(self, stream: str) -> bool:
        return self.all_streams or stream in self.subscriptions

    def send(self, msg: dict[str, Any] | str, *, key: str | None = None) -> None:
        self.outbox.put_control(msg, key=key)
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
        max_streams: int = 64,
        max_audio_streams: int = 16,
        title_interval: float = TITLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.labels = model, list(labels)
        self.sample_rate, self.hop_seconds = sample_rate, hop_seconds
        self.max_message_bytes, self.server = max_message_bytes, server
        self.queue_streams, self.queue_depth = queue_streams, queue_depth
        self.max_streams, self.max_audio_streams = max_streams, max_audio_streams
        self.title_interval, self.clock = title_interval, clock
        self.streams: dict[str, StreamInfo] = {}
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self.published: Counter[str] = Counter()  # updates published per stream
        self._title_sent: dict[str, float] = {}  # stream -> when its title last went out
        self._titles_pending: set[str] = set()  # streams whose newest title has not gone out yet
        self.station_stats: Callable[[], dict[str, dict[str, Any]]] | None = None  # the "stats" request's figures
        # who hears each stream, rebuilt after any subscription or connection change (see audience): publishing an
        # update asked every client, so 400 websocket senders (each subscribed to its own stream) made every step
        # cost O(updates x clients) on the event loop
        self._audiences: tuple[list[Client], dict[str, list[Client]]] | None = None

    def audience(self, stream: str) -> list[Client]:
        """The clients that hear ``stream`` (``Client.wants``), in the order they connected within each kind."""
        if self._audiences is None:
            everyone: list[Client] = []
            chosen: dict[str, list[Client]] = {}
            for c in self.clients.values():
                if c.all_streams:
                    everyone.append(c)
                else:
                    for name in c.subscriptions:
                        chosen.setdefault(name, []).append(c)
            self._audiences = everyone, chosen
        everyone, chosen = self._audiences
        some = chosen.get(stream)
        return everyone + some if some else everyone

    def subscriptions_changed(self) -> None:
        """Call after changing a client's ``subscriptions`` or ``all_streams`` from outside the hub."""
        self._audiences = None

    # -- connections -------------------------------------------------------------------------------------
    def connect(self, *, authorized: bool, peer: str = "", notify: Callable[[], None] | None = None) -> Client:
        client = Client(id=self._next_id, authorized=authorized, outbox=Outbox(self._queue_streams(), self.queue_depth),
                        peer=peer)
        if notify is not None:
            client.notify = notify
        client.starts = RateLimiter(rate=AUDIO_STARTS_PER_S, burst=AUDIO_STARTS_BURST, clock=self.clock)
        self._next_id += 1
        self.clients[client.id] = client
        self._audiences = None
        client.send(self.hello(client))
        return client

    def disconnect(self, client: Client) -> list[AudioStop]:
        """Forget ``client``; returns the audio streams it fed, for the adapter to remove."""
        self.clients.pop(client.id, None)
        self._audiences = None
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
        # encoded once for every client: 400 websocket senders starting made 400 x 400 encodings of a 400-stream
        # list, ~30 s of the event loop's time while their audio waited
        text = _ENCODE({"type": "streams", "streams": [s.to_dict() for s in self.streams.values()]})
        for c in self.clients.values():
            c.send(text, key="streams")  # an unsent older list is replaced, never queued behind
        self._titles_pending.clear()  # every current title just went out

    def _queue_streams(self) -> int:
        # A client's queue holds pending updates of at most this many streams: never fewer than the streams there
        # are, or a "*" subscriber of 500 stations would lose whole streams' updates whenever one step published
        # more than 256 of them at once. Still bounded: by the streams the server's limits let exist.
        return max(self.queue_streams, len(self.streams))

    def stream_added(self, name: str, source: str, title: str | None = None, owner: int | None = None) -> None:
        self.streams[name] = StreamInfo(name, source, title, owner)
        bound = self._queue_streams()
        for c in self.clients.values():
            c.outbox.max_streams = max(c.outbox.max_streams, bound)
        self._broadcast_streams()

    def stream_removed(self, name: str, reason: str) -> None:
        if self.streams.pop(name, None) is None:
            return
        self._title_sent.pop(name, None)
        ended = _ENCODE({"type": "stream_ended", "stream": name, "reason": reason})
        for c in self.clients.values():
            if c.wants(name):
                c.outbox.flush_stream(name)  # its last update goes out before the end notice
                # keyed, so bounded by the streams rather than counted as unread replies: 300 files of one
                # length end at once, and a server stopping ends every stream, which closed a "*" subscriber
                # as too slow (1008) instead of with the stop's 1001
                c.send(ended, key=f"ended:{name}")
            c.subscriptions.discard(name)
            c.audio.pop(name, None)
        self._audiences = None
        self._broadcast_streams()

    def stream_status(self, name: str, status: str, detail: str) -> int:
        """Tell ``name``'s subscribers what its source is doing (``dropped``, ``reconnecting``, ``connected``);
        ``detail`` must already be safe to show. One unsent notice per stream and client: a newer one replaces
        it, so a flapping source cannot fill a slow client's queue. Returns how many clients it went to."""
        if name not in self.streams or status not in STREAM_STATUSES:
            return 0
        msg = _ENCODE({"type": "stream_status", "stream": name, "status": status, "detail": detail[:MAX_DETAIL]})
        audience = self.audience(name)
        for c in audience:
            c.send(msg, key=f"status:{name}")
        return len(audience)

    def set_title(self, name: str, title: str | None) -> float | None:
        """Record ``name``'s new title; broadcast now, or return in how many seconds :meth:`flush_titles` should
        run (a stream's title goes out at most once per ``title_interval``; the newest wins)."""
        info = self.streams.get(name)
        if info is None or info.title == title:
            return None
        info.title = title
        now = self.clock()
        due = self._title_sent.get(name, -math.inf) + self.title_interval
        if now >= due:
            self._title_sent[name] = now
            self._broadcast_streams()
            return None
        first = name not in self._titles_pending
        self._titles_pending.add(name)
        return due - now if first else None  # one timer per pending stream

    def flush_titles(self) -> float | None:
        """Broadcast titles that waited out their interval; returns when to call again (None: nothing waits)."""
        if not self._titles_pending:
            return None
        now = self.clock()
        due = {n: self._title_sent.get(n, -math.inf) + self.title_interval for n in self._titles_pending}
        if any(now >= d for d in due.values()):
            for n in self._titles_pending:
                self._title_sent[n] = now
            self._broadcast_streams()
            return None
        return min(due.values()) - now

    # -- engine side -------------------------------------------------------------------------------------
    def publish(self, update: dict[str, Any]) -> int:
        """Queue one update (``GenreUpdate.to_dict()``) for every subscriber; returns how many."""
        stream = update["stream"]
        try:
            text = _ENCODE(update)  # serialized once for every client
        except ValueError:
            log.warning("update of %s holds a non-finite number; not sent", stream)
            return 0
        audience = self.audience(stream)
        for c in audience:
            c.outbox.put_update(stream, text)
            c.notify()
        self.published[stream] += 1
        return len(audience)

    def publish_event(self, event: dict[str, Any]) -> int:
        """Send a stream's event other than an update (a closed ``segment``) to its subscribers. At most one unsent
        per stream, kind and client (a newer one replaces it): bounded however slow the client."""
        stream = event["stream"]
        audience = self.audience(stream)
        text = _ENCODE(event)
        for c in audience:
            c.send(text, key=f"{event['type']}:{stream}")
        return len(audience)

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
            actions: list[Action] = getattr(self, "_on_" + msg["type"])(client, msg)
            return actions
        except ClientError as e:
            self.error(client, e.code, str(e), msg)
            return []
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a shape no check above foresaw
            log.warning("client %d: unexpected message shape (%s: %s)", client.id, type(e).__name__, e)
            self.error(client, "bad_message", f"{msg['type'] if msg else 'message'}: fields of the wrong type; "
                       "see docs/protocol.md", msg)
            return []

    def accept_audio(self, client: Client, data: bytes) -> tuple[str, float] | None:
        """Check one binary frame of the client's audio stream -> (stream, seconds of audio), or None after an
        ``error`` reply: a frame before ``audio_start`` is refused and is no audio of any stream."""
        if not client.audio:
            self.error(client, "bad_audio", "binary frame before audio_start; send audio_start first "
                       "(the frame was discarded)")
            return None
        if len(client.audio) > 1:
            self.error(client, "bad_audio", "binary frames are ambiguous with several audio streams open")
            return None
        stream, decoder = next(iter(client.audio.items()))
        try:
            return stream, decoder.check(data)
        except ClientError as e:
            self.error(client, e.code, str(e))
            return None

    def decode_audio(self, client: Client, stream: str, data: bytes) -> np.ndarray | None:
        """Samples at the engine rate of a frame :meth:`accept_audio` took; None once ``stream`` has ended."""
        decoder = client.audio.get(stream)
        return None if decoder is None else decoder.decode(data, checked=True)

    def receive_audio(self, client: Client, data: bytes) -> tuple[str, np.ndarray] | None:
        """Check and decode one binary frame of the client's audio stream -> (stream, samples at engine rate)."""
        got = self.accept_audio(client, data)
        if got is None:
            return None
        samples = self.decode_audio(client, got[0], data)
        return None if samples is None else (got[0], samples)

    def _check_known(self, streams: list[str], msg: dict[str, Any]) -> None:
        unknown = [s for s in streams if s not in self.streams]
        if unknown:
            raise ClientError(
                "unknown_stream",
                f"unknown stream(s) {_few(repr(s)[:70] for s in unknown)}; streams: {_few(self.streams) or '(none)'}",
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
        self._audiences = None
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
        self._audiences = None
        self._subscribed(client, msg)
        return []

    def _on_stats(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        """Per-station health figures (``station_stats``, set by the server's owner; docs/protocol.md)."""
        streams = _stream_list(msg) if "streams" in msg else None
        figures = self.station_stats() if self.station_stats is not None else {}
        if streams is not None:
            self._check_known(streams, msg)
            figures = {k: v for k, v in figures.items() if k in streams}
        self.reply(client, {"type": "stats", "streams": figures}, msg)
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
        if len(uri) > 2048:
            raise ClientError("bad_message", "add_source: 'uri' is longer than 2048 characters")
        if name in self.streams:
            raise ClientError("stream_exists", f"stream {name!r} already exists; remove it first or pick another name")
        self._check_room()
        return [AddSource(client.id, msg.get("id"), name=name, uri=uri)]

    def _on_remove_source(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        self._require_auth(client, "remove_source")
        name = msg.get("name")
        if not valid_stream_name(name):
            raise ClientError("bad_message", "remove_source: 'name' must be a stream name")
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
            raise ClientError("limit_exceeded", "this connection already sends a stream (one per connection); "
                              "send audio_stop first or open another connection")
        if client.starts is not None and client.starts.take(1.0) > 0:
            client.starts.refund(1.0)  # a refused start costs nothing
            raise ClientError("rate_limited", f"audio_start more than {AUDIO_STARTS_BURST:g} times in a row; "
                              f"wait {1 / AUDIO_STARTS_PER_S:g} s between starts")
        self._check_room()
        n_audio = sum(len(c.audio) for c in self.clients.values())
        if n_audio >= self.max_audio_streams:
            raise ClientError("limit_exceeded", f"the server already takes {n_audio} audio streams (its limit, "
                              "--max-audio-streams); try again later")
        client.audio[stream] = AudioDecoder(
            sample_rate=rate, fmt=fmt, channels=channels, target_rate=self.sample_rate
        )
        client.subscriptions.add(stream)  # the sender hears its own stream
        self._audiences = None
        return [AudioStart(client.id, msg.get("id"), stream=stream, sample_rate=rate, format=fmt, channels=channels)]

    def _on_audio_stop(self, client: Client, msg: dict[str, Any]) -> list[Action]:
        stream = msg.get("stream", next(iter(client.audio), None))
        if stream is None:
            raise ClientError("bad_message", "audio_stop: this connection sends no stream; send audio_start first")
        if not valid_stream_name(stream):
            raise ClientError("bad_message", "audio_stop: 'stream' must be a stream name")
        if stream not in client.audio:
            raise ClientError("bad_message", f"audio_stop: this connection sends no stream {stream!r}")
        return [AudioStop(client.id, msg.get("id"), stream=stream)]

    def _check_room(self) -> None:
        if len(self.streams) >= self.max_streams:
            raise ClientError("limit_exceeded", f"the server already has {len(self.streams)} streams (its limit, "
                              "--max-streams); remove one first")
