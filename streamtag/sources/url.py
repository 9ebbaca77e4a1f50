"""Internet radio: Icecast / Shoutcast / plain HTTP audio, with ICY titles and automatic reconnects.

The first connection is made when the source is opened, so a typo (unknown host, refused port, 404 mount, a web
page instead of a stream) fails at once with a one-line SourceError. Later drops (the server ends the stream,
closes the socket, or sends nothing for ``read_timeout`` seconds) are retried with exponential backoff and jitter;
on each reconnect the decoder and the resampler restart and the iterator simply goes on yielding blocks.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import av
import av.error
import numpy as np

from ..errors import SourceError
from .base import AudioPipeline, EventCallback, Source, describe_av_error, frame_to_array, iter_frames
from .http_client import HttpResponse, IcyReader, http_get, parse_stream_title

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


@dataclass
class _Connection:
    response: HttpResponse
    container: Any
    frames: Iterator[av.AudioFrame]
    first: av.AudioFrame

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.response.close()


class UrlSource(Source):
    """An HTTP(S) audio stream (Icecast, Shoutcast, or a plain audio file over HTTP)."""

    def __init__(
        self,
        url: str,
        sample_rate: int,
        *,
        block_seconds: float = 0.1,
        max_retries: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 15.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        healthy_after: float = 30.0,
        format: str | None = None,
        name: str | None = None,
        on_event: EventCallback | None = None,
        response: HttpResponse | None = None,
        **_ignored: Any,  # HLS-only options (segment_retries) passed through open_url
    ) -> None:
        parts = urlsplit(url)
        super().__init__(name or (parts.netloc + parts.path), sample_rate, block_seconds)
        self.on_event = on_event
        self.url = url
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.format = format
        self.reconnects = 0
        self._response: HttpResponse | None = None
        self._conn: _Connection | None = self._connect(response)

    # connection ------------------------------------------------------------------------------------------------
    def _connect(self, response: HttpResponse | None = None) -> _Connection:
        """Connect, open the decoder and decode the first frame; SourceError on any failure."""
        url = self.url
        if response is None:
            response = http_get(
                url, icy=True, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
            )
        self._response = response
        ctype = response.content_type
        if ctype in WEB_PAGE_TYPES or ctype.startswith("text/"):
            response.close()
            raise SourceError(
                f"{url}: the server sent {ctype} (a web page?), not an audio stream; "
                "use the stream's own URL (often ending in .mp3, .aac, .ogg or /stream)"
            )
        fmt = self.format or FORMAT_BY_CONTENT_TYPE.get(ctype)  # None: let FFmpeg sniff the bytes
        metaint_text = response.headers.get("icy-metaint", "")
        metaint = int(metaint_text) if metaint_text.isdigit() and int(metaint_text) > 0 else None
        reader = IcyReader(response, metaint, self._on_metadata)
        try:
            container = av.open(reader, mode="r", format=fmt, options=AV_OPTIONS)
        except TimeoutError as e:
            response.close()
            raise SourceError(f"{url}: no audio arrived within {self.read_timeout:g} s; try again later") from e
        except (av.error.FFmpegError, OSError, ValueError) as e:
            response.close()
            raise SourceError(
                f"{url}: the stream ({ctype or 'no content type'}) is not audio that FFmpeg can decode "
                f"({describe_av_error(e)}); check the URL"
            ) from e
        try:
            if not container.streams.audio:
                raise SourceError(f"{url}: the stream has no audio track; check the URL")
            stream = container.streams.audio[0]
            frames = iter_frames(container, stream)
            first = next(frames, None)
            if first is None:
                raise SourceError(f"{url}: the stream ended before any audio; check the URL or try again later")
        except TimeoutError as e:
            container.close()
            response.close()
            raise SourceError(f"{url}: no audio arrived within {self.read_timeout:g} s; try again later") from e
        except (av.error.FFmpegError, OSError, ValueError) as e:
            container.close()
            response.close()
            raise SourceError(
                f"{url}: the stream could not be decoded ({describe_av_error(e)}); check the URL"
            ) from e
        except SourceError:
            container.close()
            response.close()
            raise
        headers = response.headers
        self.info = {
            "uri": self.url,
            "url": response.url,
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
            self.url, ctype or "?", stream.codec_context.name, first.sample_rate, first.layout.nb_channels,
        )
        return _Connection(response, container, frames, first)

    def _on_metadata(self, block: bytes) -> None:
        title = parse_stream_title(block)
        if title is not None:
            self._set_title(title)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: initial * 2**(attempt-1), capped, scaled by a random 0.5 .. 1."""
        delay = min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempt - 1))
        return delay * random.uniform(0.5, 1.0)

    # iteration -------------------------------------------------------------------------------------------------
    def _blocks(self) -> Iterator[np.ndarray]:
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        failures = 0  # consecutive reconnects without a healthy period
        conn = self._conn
        self._conn = None
        while conn is not None:
            started = time.monotonic()
            response = conn.response
            finite = response.content_length is not None and not self.info.get("icy_metaint")  # a file over HTTP
            try:
                frame: av.AudioFrame | None = conn.first
                while frame is not None:
                    yield from pipeline.push(frame_to_array(frame), frame.sample_rate)
                    if self.closed:
                        return
                    frame = next(conn.frames, None)
                reason = "the server ended the stream"
                if finite:  # read what the demuxer left (trailing tags) to tell the end of the file from a cut
                    for _ in range(64):
                        if not response.read(65536):
                            break
            except TimeoutError:
                reason = f"no data for {self.read_timeout:g} s"
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
                    f"{self.url}: the download stopped after {response.bytes_read} of {response.content_length} "
                    f"bytes ({reason}); try again"
                )
            yield from pipeline.restart()
            if time.monotonic() - started >= self.healthy_after:
                failures = 0
            log.warning("%s: stream dropped (%s)", self.url, reason)
            self._emit("disconnected", reason)
            conn = None
            last_error = ""
            while conn is None:
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    if self.max_retries == 0:
                        raise SourceError(f"{self.url}: the stream ended ({reason}); allow retries to reconnect")
                    raise SourceError(
                        f"{self.url}: the stream ended ({reason}) and {self.max_retries} reconnect attempts failed "
                        f"(last: {last_error}); check the station, or allow more retries"
                    )
                delay = self._backoff(failures)
                log.info("%s: reconnecting in %.1f s (attempt %d)", self.url, delay, failures)
                self._emit("reconnecting", f"attempt {failures} in {delay:.1f} s")
                if self._closed.wait(delay):
                    return
                try:
                    conn = self._connect()
                except SourceError as e:
                    last_error = str(e).removeprefix(f"{self.url}: ").split(";")[0]
                    log.warning("%s", e)
                if self.closed:
                    if conn is not None:
                        conn.close()
                    return
            self.reconnects += 1
            self.info["reconnects"] = self.reconnects
            self._emit("connected", self.url)

    def _abort(self) -> None:
        response = self._response
        if response is not None:
            response.abort()
        conn = getattr(self, "_conn", None)
        if conn is not None and self._gen is None:
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


def open_url(url: str, sample_rate: int, *, block_seconds: float = 0.1, _depth: int = 0, **opts: Any) -> Source:
    """Open an http(s) URL as radio (Icecast/Shoutcast/HTTP audio), HLS, or a PLS/M3U playlist pointing at one."""
    from .hls import HlsSource, is_hls_text  # local import: hls imports this module

    path = urlsplit(url).path.lower()
    timeouts = {k: opts[k] for k in ("connect_timeout", "read_timeout") if k in opts}
    if path.endswith(".m3u8"):
        return HlsSource(url, sample_rate, block_seconds=block_seconds, **opts)
    response = http_get(url, icy=True, **timeouts)
    ctype = response.content_type
    if ctype in MPEGURL_TYPES or ctype in PLS_TYPES or path.endswith((".pls", ".m3u")):
        try:
            data = response.read_all(PLAYLIST_LIMIT, url)
        except OSError as e:
            raise SourceError(f"{url}: the playlist download failed ({e}); try again") from e
        finally:
            response.close()
        text = data.decode("utf-8", errors="replace")
        if is_hls_text(text):
            return HlsSource(url, sample_rate, block_seconds=block_seconds, playlist_text=text, **opts)
        entry = _playlist_entry(text, response.url)
        if entry is None:
            raise SourceError(f"{url}: the playlist lists no stream URL; check the URL")
        if _depth >= 3 or not entry.lower().startswith(("http://", "https://")):
            raise SourceError(f"{url}: the playlist points at {entry!r}, which is not a usable stream URL")
        log.info("%s: playlist -> %s", url, entry)
        return open_url(entry, sample_rate, block_seconds=block_seconds, _depth=_depth + 1, **opts)
    return UrlSource(url, sample_rate, block_seconds=block_seconds, response=response, **opts)
