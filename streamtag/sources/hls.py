"""HTTP Live Streaming: master/media m3u8 playlists, segments fetched over HTTP and decoded as one continuous stream.

A master playlist picks its highest-bandwidth variant (or that variant's default audio rendition). A VOD playlist
(``#EXT-X-ENDLIST``) is read from its first segment to its last; a live one starts three segments from the live edge
and is re-polled every target duration, skipping media sequence numbers already read. Segments (MPEG-TS, ADTS AAC,
MP3, fragmented MP4 after its ``#EXT-X-MAP``) are concatenated into one byte stream for a single PyAV demuxer,
restarted at ``#EXT-X-DISCONTINUITY``. Encrypted streams are refused with a clear error.

Every playlist and segment download has an overall deadline (``fetch_timeout``, 30 s) besides the per-read one;
every URL (variants, segments, redirects) is checked against the source policy after DNS resolution.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import av
import av.error
import numpy as np

from ..errors import SourceError
from .base import (
    AudioPipeline,
    AvReader,
    EventCallback,
    Source,
    describe_av_error,
    interruptible,
    iter_frames,
)
from .http_client import Cancel, fetch_bytes
from .policy import PolicyError, SourcePolicy, display_name, refused
from .reconnect import UNSET, Reconnector, ReconnectPolicy, Unset, merge_policy

__all__ = [
    "HlsSource",
    "MasterPlaylist",
    "MediaPlaylist",
    "Segment",
    "Variant",
    "parse_playlist",
    "is_hls_text",
]

log = logging.getLogger(__name__)

PLAYLIST_LIMIT = 4 << 20  # bytes
SEGMENT_LIMIT = 64 << 20  # bytes
MIN_TARGET_DURATION = 0.5  # s: a live playlist is never polled faster than every 0.25 s, whatever it claims
MAX_TARGET_DURATION = 60.0  # s
MAX_ARRIVALS = 64  # segments whose download times are kept (the decoder reads at most a segment or two ahead)
LIVE_EDGE_SEGMENTS = 3  # a live stream starts this many segments before the end (RFC 8216, 6.3.3)
SEGMENT_FORMATS = {".ts": "mpegts", ".aac": "aac", ".mp3": "mp3", ".m4s": "mp4", ".mp4": "mp4", ".m4a": "mp4"}
_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass
class Segment:
    uri: str  # absolute
    duration: float  # seconds
    sequence: int  # media sequence number
    title: str = ""
    discontinuity: bool = False


@dataclass
class MediaPlaylist:
    url: str
    target_duration: float
    media_sequence: int
    segments: list[Segment]
    ended: bool
    key_method: str | None = None
    map_uri: str | None = None


@dataclass
class Variant:
    uri: str
    bandwidth: int
    codecs: str = ""
    audio_group: str | None = None


@dataclass
class MasterPlaylist:
    url: str
    variants: list[Variant]
    audio_renditions: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # GROUP-ID -> renditions
    key_method: str | None = None


def _attributes(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTR_RE.findall(text)}


def _seconds(text: str, default: float, *, low: float, high: float) -> float:
    """A playlist's number of seconds, clamped to [low, high]; ``default`` when it is not a finite number."""
    try:
        value = float(text.strip())
    except ValueError:
        return default
    if not math.isfinite(value):
        return default
    return min(high, max(low, value))


def is_hls_text(text: str) -> bool:
    return text.lstrip("\ufeff \r\n").startswith("#EXTM3U") and (
        "#EXT-X-TARGETDURATION" in text or "#EXT-X-STREAM-INF" in text
    )


def parse_playlist(text: str, url: str) -> MasterPlaylist | MediaPlaylist:
    """Parse an m3u8 playlist; relative URIs are resolved against ``url``; SourceError for a malformed one."""
    try:
        return _parse_playlist(text, url)
    except ValueError as e:  # a URI urljoin cannot parse ("http://[bad"), ...
        raise SourceError(f"{display_name(url)}: not a valid HLS playlist; check the URL") from e


def _parse_playlist(text: str, url: str) -> MasterPlaylist | MediaPlaylist:
    if not text.lstrip("\ufeff \r\n").startswith("#EXTM3U"):
        raise SourceError(f"{url}: not an HLS playlist (no #EXTM3U header); check the URL")
    lines = [line.strip() for line in text.splitlines()]
    if any(line.startswith("#EXT-X-STREAM-INF") for line in lines):
        master = MasterPlaylist(url=url, variants=[])
        pending: dict[str, str] | None = None
        for line in lines:
            if line.startswith("#EXT-X-STREAM-INF:"):
                pending = _attributes(line.split(":", 1)[1])
            elif line.startswith("#EXT-X-MEDIA:"):
                attrs = _attributes(line.split(":", 1)[1])
                if attrs.get("URI"):
                    attrs["URI"] = urljoin(url, attrs["URI"])
                if attrs.get("TYPE") == "AUDIO" and "GROUP-ID" in attrs:
                    master.audio_renditions.setdefault(attrs["GROUP-ID"], []).append(attrs)
            elif line.startswith("#EXT-X-SESSION-KEY:"):
                method = _attributes(line.split(":", 1)[1]).get("METHOD", "NONE")
                if method != "NONE":
                    master.key_method = method
            elif line and not line.startswith("#") and pending is not None:
                bandwidth = pending.get("BANDWIDTH", "0")
                master.variants.append(
                    Variant(
                        uri=urljoin(url, line),
                        bandwidth=int(bandwidth) if bandwidth.isdigit() and len(bandwidth) <= 15 else 0,
                        codecs=pending.get("CODECS", ""),
                        audio_group=pending.get("AUDIO"),
                    )
                )
                pending = None
        if not master.variants:
            raise SourceError(f"{url}: the HLS master playlist lists no streams; check the URL")
        return master

    target = 10.0
    sequence = 0
    segments: list[Segment] = []
    ended = False
    key_method: str | None = None
    map_uri: str | None = None
    duration: float | None = None
    title = ""
    discontinuity = False
    for line in lines:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = _seconds(line.split(":", 1)[1], 10.0, low=MIN_TARGET_DURATION, high=MAX_TARGET_DURATION)
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            text = line.split(":", 1)[1].strip()
            sequence = int(text) if text.isdigit() and len(text) < 19 else 0
        elif line.startswith("#EXTINF:"):
            value = line.split(":", 1)[1]
            length, _, title = value.partition(",")
            duration = _seconds(length, 0.0, low=0.0, high=MAX_TARGET_DURATION)
        elif line.startswith("#EXT-X-DISCONTINUITY") and not line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE"):
            discontinuity = True
        elif line.startswith("#EXT-X-ENDLIST"):
            ended = True
        elif line.startswith("#EXT-X-KEY:"):
            method = _attributes(line.split(":", 1)[1]).get("METHOD", "NONE")
            if method != "NONE":
                key_method = method
        elif line.startswith("#EXT-X-MAP:"):
            uri = _attributes(line.split(":", 1)[1]).get("URI")
            if uri:
                map_uri = urljoin(url, uri)
        elif line and not line.startswith("#"):
            segments.append(
                Segment(
                    uri=urljoin(url, line),
                    duration=duration if duration is not None else target,
                    sequence=sequence + len(segments),
                    title=title.strip(),
                    discontinuity=discontinuity,
                )
            )
            duration, title, discontinuity = None, "", False
    return MediaPlaylist(url, target, sequence, segments, ended, key_method, map_uri)


def _encrypted(url: str, method: str) -> SourceError:
    return SourceError(
        f"{url}: the HLS stream is encrypted (METHOD={method}); encrypted HLS is not supported, "
        "use an unencrypted stream URL"
    )


class _SegmentStream:
    """File-like ``read(n)`` over consecutive segments; ends at the end of the stream or at a discontinuity."""

    def __init__(self, segments: Iterator[tuple[Segment, bytes]], carry: tuple[Segment, bytes] | None) -> None:
        self._segments = segments
        self.carry = carry  # the segment that starts the next stream (after a discontinuity)
        self.ended = False  # no more segments at all
        self._buffer = memoryview(b"")
        self._started = False
        self.current: Segment | None = None

    def _next(self) -> bool:
        item: tuple[Segment, bytes] | None
        if self.carry is not None:
            item, self.carry = self.carry, None
        else:
            item = next(self._segments, None)
            if item is None:
                self.ended = True
                return False
            if item[0].discontinuity and self._started:
                self.carry = item
                return False
        assert item is not None
        self.current, data = item
        self._buffer = memoryview(data)
        self._started = True
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._buffer:
            if not self._next():
                return b""
        if n is None or n < 0:
            n = len(self._buffer)
        data = bytes(self._buffer[:n])
        self._buffer = self._buffer[n:]
        return data


class HlsSource(Source):
    """An HLS (m3u8) stream, VOD or live."""

    def __init__(
        self,
        url: str,
        sample_rate: int,
        *,
        block_seconds: float = 0.1,
        playlist_text: str | None = None,
        reconnect: ReconnectPolicy | None = None,
        max_retries: int | None | Unset = UNSET,
        connect_timeout: float | None = None,
        header_timeout: float | None = None,
        read_timeout: float | None = None,
        stall_timeout: float | None = None,
        fetch_timeout: float | None = None,
        segment_retries: int | None = None,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
        healthy_after: float | None = None,
        format: str | None = None,
        name: str | None = None,
        on_event: EventCallback | None = None,
        policy: SourcePolicy | None = None,
    ) -> None:
        self.label = display_name(url)
        super().__init__(name or self.label.split("://", 1)[-1], sample_rate, block_seconds)
        self.on_event = on_event
        self.url = url
        self.policy = policy if policy is not None else SourcePolicy.permissive()
        self.reconnect_policy = merge_policy(
            reconnect, max_retries=max_retries, connect_timeout=connect_timeout, header_timeout=header_timeout,
            read_timeout=read_timeout, stall_timeout=stall_timeout, fetch_timeout=fetch_timeout,
            segment_retries=segment_retries, backoff_initial=backoff_initial, backoff_max=backoff_max,
            healthy_after=healthy_after,
        )
        self._retry = Reconnector(self.reconnect_policy, label=self.label, closed=self._closed, emit=self._emit)
        self._cancel = Cancel(self._closed)
        self.format = format
        self.skipped_segments = 0
        self._arrivals: dict[int, tuple[float, float]] = {}  # media sequence -> when its download began and ended
        if playlist_text is not None:
            playlist = parse_playlist(playlist_text, url)
        else:
            playlist = self._fetch_playlist(url)
        if isinstance(playlist, MasterPlaylist):
            if playlist.key_method:
                raise _encrypted(self.label, playlist.key_method)
            media_url = self._choose_variant(playlist)
            log.info("%s: HLS variant %s", self.label, display_name(media_url))
            playlist = self._fetch_playlist(media_url)
            if isinstance(playlist, MasterPlaylist):
                raise SourceError(f"{self.label}: the HLS variant is another master playlist; not supported")
        self._check(playlist)
        if not playlist.segments and playlist.ended:
            raise SourceError(f"{self.label}: the HLS playlist has no segments; check the URL")
        self._playlist = playlist
        first_uri = playlist.segments[0].uri if playlist.segments else ""
        ext = "." + urlsplit(first_uri).path.rsplit(".", 1)[-1].lower() if "." in first_uri else ""
        self._segment_format = self.format or SEGMENT_FORMATS.get(ext)
        self.info = {
            "uri": self.label,
            "url": display_name(playlist.url),
            "content_type": "application/vnd.apple.mpegurl",
            "format": self._segment_format,
            "live": not playlist.ended,
            "target_duration": playlist.target_duration,
            "codec": None,
            "sample_rate": None,
            "channels": None,
            "reconnects": 0,
        }

    @property
    def max_retries(self) -> int | None:
        return self.reconnect_policy.max_retries

    @property
    def reconnects(self) -> int:
        return self._retry.reconnects

    def _fetch(self, url: str, limit: int) -> tuple[bytes, Any]:
        p = self.reconnect_policy
        return fetch_bytes(url, limit=limit, connect_timeout=p.connect_timeout, read_timeout=p.read_timeout,
                           total_timeout=p.fetch_timeout, policy=self.policy, cancel=self._cancel)

    def _fetch_playlist(self, url: str) -> MasterPlaylist | MediaPlaylist:
        """Download and parse a playlist; relative URIs resolve against the URL after redirects."""
        data, response = self._fetch(url, PLAYLIST_LIMIT)
        playlist = parse_playlist(data.decode("utf-8", errors="replace"), response.url)
        playlist.url = url  # re-poll the address we were given (a redirect may point at a one-off URL)
        return playlist

    def _check(self, playlist: MediaPlaylist) -> None:
        if playlist.key_method:
            raise _encrypted(self.label, playlist.key_method)

    @staticmethod
    def _choose_variant(master: MasterPlaylist) -> str:
        best = max(master.variants, key=lambda v: v.bandwidth)  # the first on a tie
        if best.audio_group and best.audio_group in master.audio_renditions:
            renditions = [r for r in master.audio_renditions[best.audio_group] if r.get("URI")]
            if renditions:
                chosen = next((r for r in renditions if r.get("DEFAULT") == "YES"), renditions[0])
                return chosen["URI"]
        return best.uri

    # segments --------------------------------------------------------------------------------------------------
    def _fetch_segment(self, segment: Segment) -> bytes | None:
        """Segment bytes, retried ``segment_retries`` times; None (skipped, with a warning) when it keeps failing.

        A PolicyError (the segment's host is not allowed) is not retried: it ends the stream.
        """
        retries = self.reconnect_policy.segment_retries
        for attempt in range(retries + 1):
            try:
                started = time.monotonic()
                data, _ = self._fetch(segment.uri, SEGMENT_LIMIT)
                # its audio's bytes came in during the download (the latency of an update counts from there)
                self._arrivals[segment.sequence] = (started, time.monotonic())
                while len(self._arrivals) > MAX_ARRIVALS:
                    del self._arrivals[next(iter(self._arrivals))]
                return data
            except PolicyError:
                raise refused(self.label) from None
            except SourceError as e:
                if self.closed:
                    return None
                if attempt < retries:
                    log.info("%s: segment %d failed (%s), retrying", self.label, segment.sequence, e)
                    if self._closed.wait(self.reconnect_policy.backoff(attempt + 1)):
                        return None
                else:
                    log.warning("%s: skipping segment %d: %s", self.label, segment.sequence, e)
        self.skipped_segments += 1
        return None

    def _segments(self) -> Iterator[tuple[Segment, bytes]]:
        """(segment, bytes) in order, re-polling a live playlist; ends at #EXT-X-ENDLIST or on close.

        A live playlist that cannot be reloaded, or that brings no new segment for ``stall_timeout`` seconds
        (at least two target durations), counts as a drop and is re-fetched with the reconnect backoff.
        """
        playlist = self._playlist
        last = -1
        if not playlist.ended and playlist.segments:
            start = max(0, len(playlist.segments) - LIVE_EDGE_SEGMENTS)
            last = playlist.segments[start].sequence - 1
        init = b""
        if playlist.map_uri:
            init = self._fetch_segment(Segment(playlist.map_uri, 0.0, -1)) or b""
        last_new = time.monotonic()
        while not self.closed:
            new = [s for s in playlist.segments if s.sequence > last]
            for segment in new:
                if self.closed:
                    return
                data = self._fetch_segment(segment)
                last = segment.sequence
                if data is None:
                    continue
                if segment.title:
                    self._set_title(segment.title)
                yield segment, init + data
                init = b""  # fMP4: the init section goes once before the first media segment
            if playlist.ended:
                return
            now = time.monotonic()
            if new:
                last_new = now
                self._retry.healthy(float("inf"))
            wait = playlist.target_duration if new else playlist.target_duration / 2
            if self._closed.wait(wait):
                return
            stall = max(self.reconnect_policy.stall_timeout, 2 * playlist.target_duration)
            reloaded: MasterPlaylist | MediaPlaylist | None = None
            if time.monotonic() - last_new >= stall:
                self._retry.dropped(f"no new segment for {stall:g} s")
                last_new = time.monotonic()
            else:
                try:
                    reloaded = self._fetch_playlist(playlist.url)
                except PolicyError:
                    raise refused(self.label) from None
                except SourceError as e:
                    if self.closed:
                        return
                    self._retry.dropped(f"the playlist could not be reloaded ({str(e).split(': ', 1)[-1]})")
            if reloaded is None:
                reloaded = self._retry.reconnect(functools.partial(self._fetch_playlist, playlist.url))
                if reloaded is None:
                    return
                self.info["reconnects"] = self.reconnects
            if isinstance(reloaded, MasterPlaylist):
                raise SourceError(f"{self.label}: the live playlist turned into a master playlist; not supported")
            self._check(reloaded)
            if reloaded.segments and reloaded.segments[-1].sequence < last:
                log.warning("%s: media sequence went back (server restart?); following it", self.label)
                last = reloaded.segments[0].sequence - 1
            playlist = reloaded

    def _abort(self) -> None:
        cancel = getattr(self, "_cancel", None)
        if cancel is not None:
            cancel.cancel()

    def _blocks(self) -> Generator[np.ndarray, None, None]:
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        segments = self._segments()
        carry: tuple[Segment, bytes] | None = None
        decoded_any = False
        while not self.closed:
            stream = _SegmentStream(segments, carry)
            reader = AvReader(stream.read, self._closed)
            try:
                with interruptible(reader):
                    container = av.open(reader, mode="r", format=self._segment_format)
            except (av.error.FFmpegError, OSError, ValueError) as e:
                if self.closed or (stream.ended and stream.current is None):
                    break  # closed, or no segments left
                raise SourceError(
                    f"{self.label}: the HLS segments are not audio that FFmpeg can decode ({describe_av_error(e)})"
                ) from e
            try:
                if not container.streams.audio:
                    raise SourceError(f"{self.label}: the HLS segments have no audio track; check the URL")
                audio = container.streams.audio[0]
                frames = iter_frames(container, audio, self)
                while True:
                    with interruptible(reader):
                        frame = next(frames, None)
                    if frame is None:
                        break
                    if not decoded_any:
                        decoded_any = True
                        self.info.update(
                            codec=audio.codec_context.name,
                            sample_rate=frame.sample_rate,
                            channels=frame.layout.nb_channels,
                        )
                    blocks = pipeline.push_frame(frame)
                    if blocks and stream.current is not None:
                        self.arrived = self._arrivals.get(stream.current.sequence, self.arrived)
                    yield from blocks
                    if self.closed:
                        return
            except (av.error.FFmpegError, OSError, ValueError) as e:
                log.warning("%s: decoding failed near segment %s (%s); restarting the decoder", self.label,
                            stream.current.sequence if stream.current else "?", describe_av_error(e))
            finally:
                container.close()
            yield from pipeline.restart()
            carry = stream.carry
            if stream.ended:
                break
        if not decoded_any and not self.closed:
            raise SourceError(f"{self.label}: no audio could be decoded from the HLS segments; check the URL")
        yield from pipeline.finish()
