"""Internet radio: Icecast / Shoutcast / plain HTTP audio, with ICY titles and automatic reconnects.

The first connection is made when the source is opened, so a typo (unknown host, refused port, 404 mount, a web
page instead of a stream) fails at once with a one-line SourceError. Later drops (the server ends the stream,
closes the socket, or sends nothing for ``read_timeout`` seconds) are retried with exponential backoff and jitter;
on each reconnect the decoder and the resampler restart and the iterator simply goes on yielding blocks.

Deadlines (``ReconnectPolicy``): connect 10 s; the whole header phase 15 s (a server trickling its headers
cannot hold the connection); each body read 15 s; and no decoded audio for ``stall_timeout`` = 15 s, bytes or
not (a server trickling garbage or a few bytes a second), counts as a drop, reconnected with backoff.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
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
from .http_client import Cancel, HttpResponse, IcyReader, http_get, parse_stream_title
from .policy import SourcePolicy, display_name
from .reconnect import UNSET, Reconnector, ReconnectPolicy, Unset, merge_policy

__all__ = ["UrlSource", "open_url", "FORMAT_BY_CONTENT_TYPE", "MPEGURL_TYPES"]

log = logging.getLogger(__name__)

FORMAT_BY_CONTENT_TYPE = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mpeg3": "mp3",
    "audio/x-mpeg": "mp3",
    "audio/x-mp3": "mp3",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
    "audio/x-aacp": "aac",
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
    "audio/x-ogg": "ogg",
    "audio/opus": "ogg",
    "audio/vorbis": "ogg",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/webm": "matroska",
    "video/mp2t": "mpegts",
}
MPEGURL_TYPES = {
    "application/vnd.apple.mpegurl",
    "application/x-mpegurl",
    "audio/mpegurl",
    "audio/x-mpegurl",
}
PLS_TYPES = {"audio/x-scpls", "application/pls+xml", "audio/scpls"}
WEB_PAGE_TYPES = {"application/xhtml+xml", "application/json", "application/xml"}  # and every text/*
# Small probe: a live stream should start playing after a few frames, not after 5 s of analysis.
AV_OPTIONS = {"probesize": "32768", "analyzeduration": "500000"}
PLAYLIST_LIMIT = 1 << 20  # bytes
MAX_METAINT = 1 << 20  # bytes of audio between ICY metadata blocks; larger values are ignored


@dataclass
class _Connection:
    response: HttpResponse
    container: Any
    frames: Iterator[av.AudioFrame]
    first: av.AudioFrame
    reader: AvReader

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.response.close()


def _shown_ctype(ctype: str) -> str:
    """A Content-Type fit for an error message: one we know, or a neutral phrase (never the server's text)."""
    known = FORMAT_BY_CONTENT_TYPE.keys() | MPEGURL_TYPES | PLS_TYPES | WEB_PAGE_TYPES | {"text/html", "text/plain"}
    if ctype in known:
        return ctype
    return "no content type" if not ctype else "an unexpected content type"


class UrlSource(Source):
    """An HTTP(S) audio stream (Icecast, Shoutcast, or a plain audio file over HTTP).

    Deadlines and retries come from ``reconnect`` (:class:`ReconnectPolicy`); the other keyword arguments, when
    given, override its fields. ``policy`` (:class:`SourcePolicy`, None = permissive) is applied to the address of
    every connection, after DNS and after every redirect.
    """

    def __init__(
        self,
        url: str,
        sample_rate: int,
        *,
        block_seconds: float = 0.1,
        reconnect: ReconnectPolicy | None = None,
        max_retries: int | None | Unset = UNSET,
        connect_timeout: float | None = None,
        header_timeout: float | None = None,
        read_timeout: float | None = None,
        stall_timeout: float | None = None,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
        healthy_after: float | None = None,
        format: str | None = None,
        name: str | None = None,
        on_event: EventCallback | None = None,
        policy: SourcePolicy | None = None,
        response: HttpResponse | None = None,
    ) -> None:
        self.label = display_name(url)
        super().__init__(name or self.label.split("://", 1)[-1], sample_rate, block_seconds)
        self.on_event = on_event
        self.url = url
        self.policy = policy if policy is not None else SourcePolicy.permissive()
        self.reconnect_policy = merge_policy(
            reconnect, max_retries=max_retries, connect_timeout=connect_timeout, header_timeout=header_timeout,
            read_timeout=read_timeout, stall_timeout=stall_timeout, backoff_initial=backoff_initial,
            backoff_max=backoff_max, healthy_after=healthy_after,
        )
        self.format = format
        self._retry = Reconnector(self.reconnect_policy, label=self.label, closed=self._closed, emit=self._emit)
        self._cancel = Cancel(self._closed)
        self._progress = time.monotonic()  # when audio was last decoded (stall detection)
        self._response: HttpResponse | None = None
        self._conn: _Connection | None = self._connect(response)

    # back-compatible views of the policy -------------------------------------------------------------------------
    @property
    def max_retries(self) -> int | None:
        return self.reconnect_policy.max_retries

    @property
    def read_timeout(self) -> float:
        return self.reconnect_policy.read_timeout

    @property
    def live(self) -> bool:
        """A live stream (Icecast/Shoutcast, or HTTP audio of unknown length), not a file served over HTTP: its
        audio is of the moment, so a reader that is not ready for it yet may drop it rather than fall behind."""
        response = self._response
        return response is None or response.content_length is None or bool(self.info.get("icy_metaint"))

    @property
    def reconnects(self) -> int:
        return self._retry.reconnects

    # connection ------------------------------------------------------------------------------------------------
    def _connect(self, response: HttpResponse | None = None) -> _Connection:
        """Connect, open the decoder and decode the first frame; SourceError on any failure."""
        label = self.label
        p = self.reconnect_policy
        if response is None:
            response = http_get(
                self.url, icy=True, connect_timeout=p.connect_timeout, read_timeout=p.read_timeout,
                header_timeout=p.header_timeout, policy=self.policy, cancel=self._cancel,
            )
        self._response = response
        if self.closed:  # close() ran while we connected
            response.close()
            raise SourceError(f"{label}: closed")
        ctype = response.content_type
        if ctype in WEB_PAGE_TYPES or ctype.startswith("text/"):
            response.close()
            raise SourceError(
                f"{label}: the server sent {_shown_ctype(ctype)} (a web page?), not an audio stream; "
                "use the stream's own URL (often ending in .mp3, .aac, .ogg or /stream)"
            )
        fmt = self.format or FORMAT_BY_CONTENT_TYPE.get(ctype)  # None: let FFmpeg sniff the bytes
        metaint_text = response.headers.get("icy-metaint", "")
        ok = metaint_text.isdigit() and len(metaint_text) <= 8  # a hostile header: no 10**5-digit int()
        metaint = int(metaint_text) if ok and 0 < int(metaint_text) <= MAX_METAINT else None
        self._progress = time.monotonic()
        icy = IcyReader(response, metaint, self._on_metadata, progress=lambda: self._progress,
                        stall_timeout=p.stall_timeout)
        reader = AvReader(icy.read, self._closed)
        no_audio = f"{label}: no audio arrived within {p.stall_timeout:g} s; check the URL or try again later"
        container = None
        try:
            with interruptible(reader):
                try:
                    container = av.open(reader, mode="r", format=fmt, options=AV_OPTIONS)
                except TimeoutError as e:
                    raise SourceError(no_audio) from e
                except (av.error.FFmpegError, OSError, ValueError) as e:
                    if self.closed:
                        raise SourceError(f"{label}: closed") from e
                    raise SourceError(
                        f"{label}: the stream ({_shown_ctype(ctype)}) is not audio that FFmpeg can decode "
                        f"({describe_av_error(e)}); check the URL"
                    ) from e
                try:
                    if not container.streams.audio:
                        raise SourceError(f"{label}: the stream has no audio track; check the URL")
                    stream = container.streams.audio[0]
                    frames = iter_frames(container, stream, self)
                    first = next(frames, None)
                    if first is None:
                        if self.closed:
                            raise SourceError(f"{label}: closed")
                        raise SourceError(
                            f"{label}: the stream ended before any audio; check the URL or try again later"
                        )
                except TimeoutError as e:
                    raise SourceError(no_audio) from e
                except (av.error.FFmpegError, OSError, ValueError) as e:
                    raise SourceError(
                        f"{label}: the stream could not be decoded ({describe_av_error(e)}); check the URL"
                    ) from e
        except BaseException:
            if container is not None:
                container.close()
            response.close()
            raise
        self._progress = time.monotonic()
        headers = response.headers
        self.info = {
            "uri": label,
            "url": display_name(response.url),
            "content_type": ctype or None,
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "sample_rate": first.sample_rate,
            "channels": first.layout.nb_channels,
            "bitrate_kbps": headers.get("icy-br"),
            "station": headers.get("icy-name"),
            "genre": headers.get("icy-genre"),
            "icy_metaint": metaint,
            "server": headers.get("server"),
            "reconnects": self.reconnects,
        }
        log.info(
            "%s: connected (%s, %s %d Hz, %d ch)",
            label, ctype or "?", stream.codec_context.name, first.sample_rate, first.layout.nb_channels,
        )
        return _Connection(response, container, frames, first, reader)

    def _on_metadata(self, block: bytes) -> None:
        title = parse_stream_title(block)
        if title is not None:
            self._set_title(title)

    def _backoff(self, attempt: int) -> float:
        """Delay before reconnect attempt ``attempt`` (the policy's backoff with jitter)."""
        return self.reconnect_policy.backoff(attempt)

    # iteration -------------------------------------------------------------------------------------------------
    def _blocks(self) -> Generator[np.ndarray, None, None]:
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        conn = self._conn
        self._conn = None
        while conn is not None:
            started = time.monotonic()
            response = conn.response
            finite = response.content_length is not None and not self.info.get("icy_metaint")  # a file over HTTP
            try:
                with interruptible(conn.reader):
                    frame: av.AudioFrame | None = conn.first
                    while frame is not None:
                        blocks = pipeline.push_frame(frame)
                        if blocks and not finite:  # a live stream's (a file's bytes may wait in the socket for long)
                            self.arrived = response.take_arrival()  # the bytes read so far for these blocks
                        yield from blocks
                        if self.closed:
                            return
                        # the stall clock runs only while we wait for the next frame, not while the consumer
                        # holds the generator: "no decoded audio for stall_timeout s" of network time
                        self._progress = time.monotonic()
                        frame = next(conn.frames, None)
                    reason = "the server ended the stream"
                    if finite:  # read what the demuxer left (trailing tags) to tell the end of the file from a cut
                        for _ in range(64):
                            if not response.read(65536):
                                break
            except TimeoutError as e:
                reason = str(e) or f"no data for {self.read_timeout:g} s"
            except (av.error.FFmpegError, OSError, ValueError) as e:
                reason = describe_av_error(e)
            finally:
                conn.close()
            if self.closed:
                return
            if finite:
                if response.complete:
                    yield from pipeline.finish()
                    return
                raise SourceError(
                    f"{self.label}: the download stopped after {response.bytes_read} of {response.content_length} "
                    f"bytes ({reason}); try again"
                )
            yield from pipeline.restart()
            self._retry.healthy(time.monotonic() - started)
            self._retry.dropped(reason)
            conn = self._retry.reconnect(self._connect)
            if conn is None or self.closed:
                if conn is not None:
                    conn.close()
                return
            self.info["reconnects"] = self.reconnects

    def _abort(self) -> None:
        cancel = getattr(self, "_cancel", None)
        if cancel is not None:
            cancel.cancel()
        response = getattr(self, "_response", None)
        if response is not None:
            response.abort()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# dispatch ---------------------------------------------------------------------------------------------------------


def _playlist_entry(text: str, base_url: str) -> str | None:
    """First stream URL of a PLS (``File1=``) or plain M3U playlist."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith((";", "[")):
            continue
        if "=" in line and line.lower().startswith("file"):
            return urljoin(base_url, line.split("=", 1)[1].strip())
        if not line.startswith("#") and "=" not in line:
            return urljoin(base_url, line)
    return None


def open_url(
    url: str,
    sample_rate: int,
    *,
    block_seconds: float = 0.1,
    reconnect: ReconnectPolicy | None = None,
    policy: SourcePolicy | None = None,
    format: str | None = None,
    name: str | None = None,
    on_event: EventCallback | None = None,
    response: HttpResponse | None = None,
    _depth: int = 0,
) -> Source:
    """Open an http(s) URL as radio (Icecast/Shoutcast/HTTP audio), HLS, or a PLS/M3U playlist pointing at one.

    Every address contacted (the URL, each redirect, the playlist's entry, HLS variants and segments) is checked
    against ``policy`` after DNS resolution. ``response``: the URL's answer, already received (by
    :func:`http_get` with ``icy=True`` and the same policy), used instead of a first request of its own.
    """
    from .hls import HlsSource, is_hls_text  # local import: hls imports this module

    label = display_name(url)
    p = reconnect if reconnect is not None else ReconnectPolicy()
    policy = policy if policy is not None else SourcePolicy.permissive()
    common: dict[str, Any] = {"block_seconds": block_seconds, "reconnect": p, "policy": policy, "format": format,
                              "name": name, "on_event": on_event}
    path = urlsplit(url).path.lower()
    if path.endswith(".m3u8") and response is None:
        return HlsSource(url, sample_rate, **common)
    if response is None:
        response = http_get(url, icy=True, connect_timeout=p.connect_timeout, read_timeout=p.read_timeout,
                            header_timeout=p.header_timeout, policy=policy)
    ctype = response.content_type
    if ctype in MPEGURL_TYPES or ctype in PLS_TYPES or path.endswith((".pls", ".m3u")):
        try:
            data = response.read_all(PLAYLIST_LIMIT, label, deadline=time.monotonic() + p.fetch_timeout)
        except OSError as e:
            raise SourceError(f"{label}: the playlist download failed ({type(e).__name__}); try again") from e
        finally:
            response.close()
        text = data.decode("utf-8", errors="replace")
        if is_hls_text(text):
            return HlsSource(url, sample_rate, playlist_text=text, **common)
        try:
            entry = _playlist_entry(text, response.url)
        except ValueError as e:  # an entry urljoin cannot parse
            raise SourceError(f"{label}: the playlist's entry is not a valid URL; check the URL") from e
        if entry is None:
            raise SourceError(f"{label}: the playlist lists no stream URL; check the URL")
        if _depth >= 3 or not entry.lower().startswith(("http://", "https://")):
            raise SourceError(f"{label}: the playlist's entry is not a usable http(s) stream URL")
        log.info("%s: playlist -> %s", label, display_name(entry))
        return open_url(entry, sample_rate, _depth=_depth + 1, **common)
    try:
        return UrlSource(url, sample_rate, response=response, **common)
    except BaseException:
        response.close()
        raise
