"""Many Icecast/Shoutcast stations on one thread: non-blocking sockets, ICY demuxing, PyAV parse + decode
(MP3, ADTS AAC, and Ogg Vorbis through a small page reader).

A thread per station (a blocking read, FFmpeg's demuxer pulling bytes through a Python callback for every TCP
segment) costs far more than the decoding itself: each station wakes for every few hundred bytes and takes the
GIL every time. A :class:`MuxLoop` instead reads all its stations' sockets in one pass every :data:`TICK_S`
(a selector says which have bytes), strips the ICY metadata (:class:`IcyDemuxer`), cuts the bytes into packets
with the codec's own parser (``CodecContext.parse``) and decodes them: no container, no read callback, no thread.

    worker process
      open thread:  open_network(url) -> http_get (policy after DNS and on every redirect, header deadline)
                    MP3 / ADTS AAC / Ogg Vorbis live stream? -> NetStation: decode until the first frame
                    anything else (HLS, playlists, Ogg Opus, a file over HTTP, chunked, unknown types)
                        -> open_url(..., response=the same answer): the Source classes, thread per station
      MuxLoop:      every tick (TICK_S, longer with many stations): recv what each ready socket has, ICY -> parse
                    (Ogg: OggReader) -> decode -> AudioPipeline (downmix + soxr HQ to 16 kHz, the whole read at
                    once) -> deliver(station, audio, (since, until)): the bytes came in between ``since`` (the socket
                    was last seen empty) and ``until`` (the last read that got some)
                    deadlines: no byte for read_timeout, no decoded audio for stall_timeout -> a drop
      on a drop:    a short-lived thread runs the Reconnector (backoff with jitter, max_retries; every attempt is
                    the blocking connect above, policy included) and hands the new connection back to the loop

Decoding with the codec's parser gives the same samples as FFmpeg's demuxer for these codecs (checked in
tests/test_sources_mux.py), and the conversion to blocks is the same :class:`AudioPipeline`.
"""
from __future__ import annotations

import logging
import math
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import numpy as np

from ..errors import SourceError
from .base import MAX_BAD_PACKETS, AudioPipeline, EventCallback, Source, describe_av_error, emit_event, set_title
from .http_client import Cancel, HttpResponse, IcyDemuxer, http_get, parse_stream_title
from .policy import SourcePolicy, display_name
from .reconnect import UNSET, Reconnector, ReconnectPolicy, Unset, merge_policy
from .url import MAX_METAINT, open_url

__all__ = ["NetStation", "MuxLoop", "open_network", "MUX_CODECS", "TICK_S", "MAX_TICK_S", "tick_for"]

log = logging.getLogger(__name__)

# s between the loop's passes over its sockets: a pass's fixed cost per station (a recv, a parse, a resampler call,
# a delivery) is about as large as decoding a 0.1 s read, so many stations are read less often: TICK_S up to
# TICK_STATIONS stations, then longer, up to MAX_TICK_S. Bytes wait in the socket up to a tick (counted in latency).
TICK_S = 0.1
MAX_TICK_S = 0.2
TICK_STATIONS = 100
CHECK_S = 0.5  # s between deadline checks
RECV_SIZE = 65536  # bytes asked per recv
MAX_RECV_PER_TICK = 8  # recv calls per station per pass (a burst beyond 512 kB waits for the next pass)
# keep_connect_s: what a connect decodes of the bytes it read (Icecast's burst-on-connect: 2-4 s per station, more on
# some servers) when its owner keeps only the newest keep_connect_s of them (the pool: PRESTART_KEEP_S). MP3/AAC
# only: the newest packets covering keep_connect_s + CONNECT_PRIME_S, counting CONNECT_PACKET_S per packet (the
# shortest MP3/AAC frame, 1024 samples at 48 kHz, is 21 ms). A decoder that starts there matches one that decoded
# everything after 1 frame (AAC) or 3 (MP3: its bit reservoir and overlap reach back that far).
CONNECT_PRIME_S = 0.25
CONNECT_PACKET_S = 0.02
MAX_OGG_PAGE = 27 + 255 + 255 * 255  # bytes: the largest Ogg page
MAX_OGG_PACKET = 1 << 20  # bytes: a packet spanning pages beyond this is garbage (resynchronised)
# Content types the loop decodes itself, and the FFmpeg decoder of each (the one FFmpeg's demuxer picks);
# "ogg": Ogg pages read here (OggReader), Vorbis decoded by FFmpeg (an Ogg of another codec keeps the old reader)
MUX_CODECS = {
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
    "audio/x-ogg": "ogg",
    "audio/vorbis": "ogg",
    "audio/mpeg": "mp3float",
    "audio/mp3": "mp3float",
    "audio/mpeg3": "mp3float",
    "audio/x-mpeg": "mp3float",
    "audio/x-mp3": "mp3float",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
    "audio/x-aacp": "aac",
}
RECONNECT_FIELDS = frozenset({
    "reconnect", "max_retries", "connect_timeout", "header_timeout", "read_timeout", "stall_timeout",
    "fetch_timeout", "backoff_initial", "backoff_max", "healthy_after", "segment_retries",
})


def tick_for(stations: int) -> float:
    """The loop's pass interval for this many stations: TICK_S, growing linearly past TICK_STATIONS."""
    return min(MAX_TICK_S, max(TICK_S, TICK_S * stations / TICK_STATIONS))


def mux_codec(response: HttpResponse) -> str | None:
    """The decoder the loop would use for ``response``, or None when it is not a live MP3/AAC stream."""
    codec = MUX_CODECS.get(response.content_type)
    if codec is None or response.content_length is not None or response._chunked:
        return None  # a file over HTTP (it ends, and is checked for completeness) or a chunked body: UrlSource
    return codec


class NotVorbis(ValueError):
    """An Ogg stream whose first logical stream is not Vorbis (Opus, FLAC, ...): the thread reader takes it."""


def _xiph_lacing(headers: list[bytes]) -> bytes:
    """Vorbis extradata as FFmpeg's Ogg demuxer hands it to the decoder: the three header packets, Xiph-laced."""
    def lace(n: int) -> bytes:
        return b"\xff" * (n // 255) + bytes([n % 255])

    return b"\x02" + lace(len(headers[0])) + lace(len(headers[1])) + b"".join(headers)


class OggReader:
    """Sans-I/O Ogg Vorbis: ``feed(bytes) -> [audio packets]``; the three Vorbis headers of the (first) logical
    stream go to ``extradata`` (``headers_done`` turns True), and a new stream (a chained Ogg, a new song on some
    servers) starts over: ``restarted`` is set so the caller makes a new decoder. Garbage between pages is
    skipped up to the next ``OggS``; NotVorbis when the stream is not Vorbis."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._packet = bytearray()
        self.serial: int | None = None
        self.headers: list[bytes] = []
        self.extradata = b""
        self.restarted = False
        self.skipped = 0  # bytes of garbage skipped

    @property
    def headers_done(self) -> bool:
        return len(self.headers) == 3

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            start = buf.find(b"OggS", pos)
            if start < 0:
                keep = max(pos, len(buf) - 3)  # "Ogg" may be the start of a capture pattern
                self.skipped += keep - pos
                pos = keep
                break
            self.skipped += start - pos
            pos = start
            if len(buf) - pos < 27:
                break
            n_seg = buf[pos + 26]
            if len(buf) - pos < 27 + n_seg:
                break
            segments = bytes(buf[pos + 27 : pos + 27 + n_seg])
            size = 27 + n_seg + sum(segments)
            if len(buf) - pos < size:
                break
            if buf[pos + 4] != 0:  # not version 0: not a page, look further
                pos += 4
                continue
            htype = buf[pos + 5]
            serial = int.from_bytes(buf[pos + 14 : pos + 18], "little")
            self._page(bytes(buf[pos : pos + size]), htype, serial, segments, n_seg, out)
            pos += size
        del buf[:pos]
        return out

    def _page(self, page: bytes, htype: int, serial: int, segments: bytes, n_seg: int, out: list[bytes]) -> None:
        if htype & 0x02:  # beginning of a logical stream: this one's headers follow
            if self.serial is not None and serial != self.serial and self.headers_done:
                self.restarted = True
            self.serial, self.headers, self._packet = serial, [], bytearray()
        if serial != self.serial:
            return  # another logical stream (or none started yet)
        if not htype & 0x01:  # not a continuation: a packet left open is lost
            self._packet.clear()
        body = 27 + n_seg
        for length in segments:
            self._packet += page[body : body + length]
            body += length
            if len(self._packet) > MAX_OGG_PACKET:
                self._packet.clear()
            elif length < 255:
                self._packet_done(bytes(self._packet), out)
                self._packet.clear()

    def _packet_done(self, packet: bytes, out: list[bytes]) -> None:
        if self.headers_done:
            out.append(packet)
            return
        kind = 2 * len(self.headers) + 1  # 1 identification, 3 comment, 5 setup
        if len(packet) < 7 or packet[0] != kind or packet[1:7] != b"vorbis":
            if not self.headers and packet[:1] != b"\x01":
                raise NotVorbis(packet[:8])
            self.headers = []  # joined in the middle of headers: wait for the next stream start
            return
        self.headers.append(packet)
        if self.headers_done:
            self.extradata = _xiph_lacing(self.headers)


@dataclass
class _Conn:
    """One connection of a station: its socket, ICY demuxer and decoder (used by one thread at a time)."""

    response: HttpResponse
    demuxer: IcyDemuxer | None
    codec: Any  # av.AudioCodecContext (None: an Ogg stream before its Vorbis headers)
    ogg: OggReader | None = None
    started: float = field(default_factory=time.monotonic)
    # when the socket was last known empty: bytes read later arrived after it (the latency's starting point)
    empty_at: float = field(default_factory=time.monotonic)
    first_pass: int = 0  # the loop's first pass that selected this socket
    last_byte: float = field(default_factory=time.monotonic)
    last_audio: float = field(default_factory=time.monotonic)
    bad: int = 0  # consecutive undecodable packets

    def close(self) -> None:
        self.response.close()


class NetStation:
    """A live MP3 / ADTS AAC / Ogg Vorbis stream over HTTP(S) read by a :class:`MuxLoop` (no thread of its own).

    It has what the source pool reads of a source: ``name``, ``label``, ``title``, ``info``, ``sample_rate``,
    ``block_size``, ``live``, ``bytes_in`` (audio bytes after ICY demuxing), ``decode_errors``, ``reconnects``,
    and ``close()`` (any thread, any number of times). The first connection is made (and its first frame decoded)
    by the constructor, so a dead URL fails at once, as for :class:`~streamtag.sources.url.UrlSource`.
    """

    live = True

    def __init__(
        self,
        url: str,
        sample_rate: int,
        *,
        response: HttpResponse,
        block_seconds: float = 0.1,
        reconnect: ReconnectPolicy | None = None,
        policy: SourcePolicy | None = None,
        name: str | None = None,
        on_event: EventCallback | None = None,
        keep_connect_s: float | None = None,
    ) -> None:
        # the checks and names of a Source, without its iterator
        probe = Source(name or display_name(url).split("://", 1)[-1], sample_rate, block_seconds)
        self.name, self.sample_rate, self.block_size = probe.name, probe.sample_rate, probe.block_size
        self.label = display_name(url)
        self.url = url
        self.policy = policy if policy is not None else SourcePolicy.permissive()
        self.reconnect_policy = reconnect if reconnect is not None else ReconnectPolicy()
        self.on_event = on_event
        self.title: str | None = None
        self.info: dict[str, Any] = {}
        self.bytes_in = 0
        self.decode_errors = 0
        self.key: Any = None  # the owner's handle (the pool's station record)
        self.since = (0.0, 0.0)  # when the bytes of the latest audio delivered came in (first, last)
        self._closed = threading.Event()
        self._cancel = Cancel(self._closed)
        self._retry = Reconnector(self.reconnect_policy, label=self.label, closed=self._closed, emit=self._emit)
        self.pipeline = AudioPipeline(self.sample_rate, self.block_size, whole=True)
        self.early: list[np.ndarray] = []  # audio decoded while connecting (the loop delivers it first)
        self.early_since = 0.0  # when the connection that decoded ``early`` began reading
        # keep_connect_s: its owner keeps only the newest keep_connect_s of the audio decoded while connecting, and
        # of what a read decodes while ``keeping()`` says so (the pool: before the station's start and in its first
        # FRESH_S). Those reads decode only the packets that cover it (with CONNECT_PRIME_S); the others, all.
        self._keep_tail = None if keep_connect_s is None else math.ceil(
            (max(0.0, float(keep_connect_s)) + CONNECT_PRIME_S) / CONNECT_PACKET_S)
        self.keeping: Callable[[], bool] | None = None
        self.connect_skipped = 0  # packets read but not decoded (keep_connect_s)
        self._first_connect = True
        self.conn: _Conn | None = self._connect(response)
        self._first_connect = False

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def reconnects(self) -> int:
        return self._retry.reconnects

    def close(self) -> None:
        """Stop the station (any thread, idempotent): a connect or reconnect in progress gives up, and the loop
        drops the socket on its next pass (the socket is shut down here so nothing more arrives)."""
        self._closed.set()
        conn = self.conn
        if conn is not None:
            conn.response.abort()

    def release(self) -> None:
        """Close a station that was never given to a loop (its owner gave up on it before the start)."""
        self.close()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def _emit(self, kind: str, detail: str) -> None:
        emit_event(self, kind, detail)

    def _on_metadata(self, block: bytes) -> None:
        title = parse_stream_title(block)
        if title is not None:
            set_title(self, title)

    # connecting (blocking: the open thread, or a reconnect thread) ---------------------------------------------
    def _connect(self, response: HttpResponse | None = None) -> _Conn:
        label, p = self.label, self.reconnect_policy
        if response is None:
            response = http_get(
                self.url, icy=True, connect_timeout=p.connect_timeout, read_timeout=p.read_timeout,
                header_timeout=p.header_timeout, policy=self.policy, cancel=self._cancel,
            )
        try:
            codec_name = mux_codec(response)
            if codec_name is None:
                raise SourceError(f"{label}: the server no longer sends a live MP3/AAC/Ogg stream; check the URL")
            metaint_text = response.headers.get("icy-metaint", "")
            ok = metaint_text.isdigit() and len(metaint_text) <= 8
            metaint = int(metaint_text) if ok and 0 < int(metaint_text) <= MAX_METAINT else None
            demuxer = IcyDemuxer(metaint) if metaint else None
            if codec_name == "ogg":
                conn = _Conn(response, demuxer, None, OggReader())
            else:
                conn = _Conn(response, demuxer, av.CodecContext.create(codec_name, "r"))
            no_audio = f"{label}: no audio arrived within {p.stall_timeout:g} s; check the URL or try again later"
            deadline = time.monotonic() + p.stall_timeout
            if not self.early:
                self.early_since = conn.started
            frame = None
            tail = self._keep_tail if self._first_connect or self._keeping() else None
            while frame is None:
                if self.closed:
                    raise SourceError(f"{label}: closed")
                try:
                    data = response.read(RECV_SIZE, deadline=deadline)
                except TimeoutError as e:
                    raise SourceError(no_audio) from e
                except OSError as e:
                    raise SourceError(f"{label}: the connection failed ({describe_av_error(e)}); try again") from e
                if not data:
                    raise SourceError(f"{label}: the stream ended before any audio; check the URL or try again later")
                try:
                    frame = self._decode(conn, data, self.early, tail=tail)
                except NotVorbis:
                    raise
                except (av.error.FFmpegError, ValueError) as e:
                    raise SourceError(
                        f"{label}: the stream could not be decoded ({describe_av_error(e)}); check the URL"
                    ) from e
            rest = bytes(response._reader.buffer)  # body bytes the header read took along
            response._reader.buffer.clear()
            if rest:
                self._decode(conn, rest, self.early, tail=tail)
            response._sock.setblocking(False)
            conn.empty_at = time.monotonic()  # the body read so far is decoded: newer bytes arrive after this
        except BaseException:
            response.close()
            raise
        headers = response.headers
        self.info = {
            "uri": label,
            "url": display_name(response.url),
            "content_type": response.content_type or None,
            "format": "mp3" if codec_name.startswith("mp3") else codec_name,
            "codec": "vorbis" if codec_name == "ogg" else codec_name,
            "sample_rate": frame.sample_rate,
            "channels": frame.layout.nb_channels,
            "bitrate_kbps": headers.get("icy-br"),
            "station": headers.get("icy-name"),
            "genre": headers.get("icy-genre"),
            "icy_metaint": metaint,
            "server": headers.get("server"),
            "reconnects": self.reconnects,
            "reader": "mux",
        }
        log.info("%s: connected (%s, %s %d Hz, %d ch)", label, response.content_type, codec_name, frame.sample_rate,
                 frame.layout.nb_channels)
        return conn

    def _decode(self, conn: _Conn, data: bytes, out: list[np.ndarray], tail: int | None = None) -> av.AudioFrame | None:
        """ICY-demux, parse and decode ``data``; complete blocks go to ``out``; the last frame (None if none).
        FFmpegError once MAX_BAD_PACKETS packets in a row would not decode. ``tail``: decode only the last ``tail``
        packets of an MP3/AAC read (a connect whose older audio its owner drops anyway)."""
        if conn.demuxer is not None:
            data, blocks = conn.demuxer.feed(data)
            for block in blocks:
                self._on_metadata(block)
        if not data:
            return None
        self.bytes_in += len(data)
        if conn.ogg is not None:
            ogg = conn.ogg
            packets: list[Any] = [av.Packet(p) for p in ogg.feed(data)]
            if ogg.restarted or (conn.codec is None and ogg.headers_done):
                ogg.restarted = False
                if conn.codec is not None:  # a new logical stream: the old decoder's tail, then a new one
                    out += self.pipeline.restart()
                conn.codec = av.CodecContext.create("vorbis", "r")
                conn.codec.extradata = ogg.extradata
            if conn.codec is None:
                return None
        else:
            packets = conn.codec.parse(data)
            if tail is not None and len(packets) > tail:
                self.connect_skipped += len(packets) - tail
                packets = packets[-tail:]
        codec = conn.codec
        last: av.AudioFrame | None = None
        for packet in packets:
            try:
                frames = codec.decode(packet)
            except (av.error.FFmpegError, ValueError) as e:  # one corrupt packet (or the first of an ADTS stream
                # joined mid-frame, which the AAC decoder fails with odd codes, EPERM among them): skip it
                conn.bad += 1
                self.decode_errors += 1
                if conn.bad > MAX_BAD_PACKETS:
                    raise
                log.debug("%s: skipping an undecodable packet: %s", self.label, describe_av_error(e))
                continue
            conn.bad = 0
            if frames:
                # into the pipeline's fifo now, so that the decoder's frame buffers are reused: a read of seconds
                # (a burst) held as frames grew FFmpeg's buffer pool for good (~1.5 MB per Ogg station)
                out += self.pipeline.gather(frames)
                last = frames[-1]
        if last is None:
            return None
        out += self.pipeline.push_frames(())  # one conversion for the whole read
        conn.last_audio = time.monotonic()
        return last

    # reading (the loop thread) ------------------------------------------------------------------------------------
    def read_ready(self, out: list[np.ndarray]) -> str | None:
        """Read what the socket has (non-blocking) and decode it into ``out``; a reason when the connection
        dropped (end of stream, error, undecodable data), else None."""
        conn = self.conn
        if conn is None or self.closed:
            return "closed"
        sock = conn.response._sock
        tail = self._keep_tail if self._keeping() else None
        for _ in range(MAX_RECV_PER_TICK):
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                conn.empty_at = time.monotonic()
                break
            except OSError as e:
                return e.strerror or type(e).__name__
            if not data:
                return "the server ended the stream"
            conn.last_byte = time.monotonic()
            try:
                self._decode(conn, data, out, tail=tail)
            except (av.error.FFmpegError, ValueError) as e:
                return f"undecodable data ({describe_av_error(e)})"
            if len(data) < RECV_SIZE and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                conn.empty_at = conn.last_byte  # all it had: later bytes arrive after this read
                break
        return None

    def _keeping(self) -> bool:
        return self._keep_tail is not None and self.keeping is not None and bool(self.keeping())

    def overdue(self, now: float) -> str | None:
        """A reason when a deadline passed: no byte for read_timeout, or no decoded audio for stall_timeout."""
        conn = self.conn
        if conn is None:
            return None
        p = self.reconnect_policy
        if now - conn.last_byte >= p.read_timeout:
            return f"no data for {p.read_timeout:g} s"
        if now - conn.last_audio >= p.stall_timeout:
            return f"no audio for {p.stall_timeout:g} s"
        return None

    def reconnect(self, reason: str) -> _Conn | None:
        """After a drop (blocking: a thread of its own): backoff and reconnect per the policy. None when closed;
        SourceError when the retries ran out, PolicyError when a redirect now points somewhere forbidden."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            self._retry.healthy(time.monotonic() - conn.started)
            conn.close()
        if self.closed:
            return None
        self._retry.dropped(reason)
        conn = self._retry.reconnect(self._connect)
        if conn is not None and self.closed:
            conn.close()
            return None
        if conn is not None:
            self.info["reconnects"] = self.reconnects
        return conn


class MuxLoop:
    """One thread that reads every :class:`NetStation` given to it. ``deliver(station, blocks)`` and
    ``ended(station, error)`` are called from the loop's thread (``ended`` also from a reconnect thread);
    ``ended`` is not called for a station closed by its owner."""

    def __init__(
        self,
        deliver: Callable[[NetStation, list[np.ndarray], tuple[float, float]], None],
        ended: Callable[[NetStation, BaseException | None], None],
        stopping: threading.Event,
    ) -> None:
        self._deliver = deliver
        self._ended = ended
        self._stopping = stopping
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._incoming: list[NetStation] = []
        self._stations: set[NetStation] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass = 0  # passes so far (a pass: one select over every socket, then the reads)

    def add(self, station: NetStation) -> None:
        """Start reading ``station`` (connected; any thread)."""
        with self._lock:
            self._incoming.append(station)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mux", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        next_check = time.monotonic() + CHECK_S
        selected_at = time.monotonic()  # when the latest pass's select ran
        while not self._stopping.is_set():
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for station in incoming:
                self._register(station)
            if not self._stations:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            tick = time.monotonic() + tick_for(len(self._stations))
            # A socket that the previous pass's select found empty got its bytes after that select: the audio
            # decoded now is stamped with that time (or the socket's last empty read, if later), so a figure of
            # latency counts the time bytes wait here for the next pass, not only what follows the decoding.
            previous, selected_at = selected_at, time.monotonic()
            self._pass += 1
            events = self._selector.select(0)
            for key, _ in events:
                station = key.data
                out: list[np.ndarray] = []
                conn = station.conn
                try:
                    since = 0.0 if conn is None else (
                        max(conn.empty_at, previous) if conn.first_pass < self._pass else conn.empty_at)
                    reason = station.read_ready(out)
                    if out:
                        # bytes came in from ``since`` until the last read that got some
                        station.since = (since, max(since, conn.last_byte if conn is not None else since))
                        self._deliver(station, out, station.since)
                except Exception as e:  # a bug must end its station, not the loop
                    log.exception("%s: reading failed", station.label)
                    self._unregister(station)
                    station.release()
                    self._ended(station, e)
                    continue
                if reason is not None:
                    self._drop(station, reason)
            now = time.monotonic()
            for station in [s for s in self._stations if s.closed]:
                self._drop(station, "closed")
            if now >= next_check:
                next_check = now + CHECK_S
                for station in list(self._stations):
                    reason = station.overdue(now)
                    if reason is not None:
                        self._drop(station, reason)
            self._stopping.wait(max(0.0, tick - time.monotonic()))
        for station in list(self._stations):
            self._unregister(station)
            station.close()
            if station.conn is not None:
                station.conn.close()
        self._selector.close()

    def _register(self, station: NetStation) -> None:
        conn = station.conn
        if station.closed or conn is None:
            if conn is not None:
                conn.close()
            return
        if station.early:
            early, station.early = station.early, []
            station.since = (station.early_since, max(station.early_since, conn.empty_at))
            self._deliver(station, early, station.since)
        conn.last_byte = conn.last_audio = time.monotonic()
        conn.first_pass = self._pass + 1  # registered before the next pass's select
        try:
            self._selector.register(conn.response._sock, selectors.EVENT_READ, station)
        except (OSError, ValueError):  # closed under us
            conn.close()
            return
        self._stations.add(station)

    def _unregister(self, station: NetStation) -> None:
        self._stations.discard(station)
        conn = station.conn
        if conn is not None:
            try:
                self._selector.unregister(conn.response._sock)
            except (KeyError, ValueError, OSError):
                pass

    def _drop(self, station: NetStation, reason: str) -> None:
        self._unregister(station)
        tail = station.pipeline.restart()
        if tail and not station.closed:
            self._deliver(station, tail, station.since)  # the resampler's tail: audio of bytes read already
        if station.closed:
            if station.conn is not None:
                station.conn.close()
                station.conn = None
            return
        threading.Thread(target=self._reconnect, args=(station, reason), name="mux-reconnect", daemon=True).start()

    def _reconnect(self, station: NetStation, reason: str) -> None:
        try:
            conn = station.reconnect(reason)
        except SourceError as e:  # PolicyError included: a redirect the policy refuses ends the station too
            self._ended(station, e)
            return
        except Exception as e:  # a bug must end the station, not the worker
            log.exception("%s: reconnecting failed", station.label)
            self._ended(station, e)
            return
        if conn is None:
            return
        station.conn = conn
        self.add(station)


def open_network(
    uri: str,
    sample_rate: int,
    *,
    policy: SourcePolicy | None = None,
    block_seconds: float = 0.1,
    on_event: EventCallback | None = None,
    name: str | None = None,
    format: str | None = None,
    reconnect: ReconnectPolicy | None = None,
    max_retries: int | None | Unset = UNSET,
    keep_connect_s: float | None = None,
    **timeouts: float | int | None,
) -> NetStation | Source:
    """Open an http(s) URL for a pool worker: a live MP3/AAC/Vorbis Icecast/Shoutcast stream as a :class:`NetStation`
    (for a :class:`MuxLoop`), anything else as the Source :func:`open_url` makes of the same answer.

    ``timeouts``: the other :class:`ReconnectPolicy` fields by name, as for ``open_source``. ``keep_connect_s``: the
    caller keeps only that many seconds of the audio a live station decodes while it connects (the newest);
    :class:`NetStation` then decodes only what covers them.
    """
    retry = merge_policy(reconnect, max_retries=max_retries, **timeouts)
    policy = policy if policy is not None else SourcePolicy.permissive()
    common: dict[str, Any] = {"block_seconds": block_seconds, "reconnect": retry, "policy": policy, "format": format,
                              "name": name, "on_event": on_event}
    if urlsplit(uri).path.lower().endswith(".m3u8"):
        return open_url(uri, sample_rate, **common)
    response = http_get(uri, icy=True, connect_timeout=retry.connect_timeout, read_timeout=retry.read_timeout,
                        header_timeout=retry.header_timeout, policy=policy)
    if format is not None or mux_codec(response) is None:
        return open_url(uri, sample_rate, response=response, **common)
    try:
        return NetStation(uri, sample_rate, response=response, block_seconds=block_seconds, reconnect=retry,
                          policy=policy, name=name, on_event=on_event, keep_connect_s=keep_connect_s)
    except NotVorbis:  # Ogg Opus/FLAC: FFmpeg's demuxer, on a connection of its own
        response.close()
        return open_url(uri, sample_rate, **common)
    except BaseException:
        response.close()
        raise


def muxable(uri: str, options: dict[str, Any]) -> bool:
    """Whether :func:`open_network` should open ``uri`` (an http(s) URL with only reconnect/name options)."""
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    return scheme in ("http", "https") and set(options) <= RECONNECT_FIELDS | {"name"}

