"""Audio sources: every input becomes an iterator of mono float32 blocks at the model's sample rate.

    with open_source("https://radio.example/live.mp3", 16000) as source:
        for block in source:          # (block_size,) float32, block_size = round(block_seconds * sr)
            engine.push(source.name, block)
            ... source.title ...      # latest ICY StreamTitle, or None

``open_source`` dispatch: ``"-"`` is stdin; ``http://`` / ``https://`` is radio (HLS when the path ends in .m3u8
or the server says it is an m3u8 playlist; PLS/M3U playlists are followed; otherwise Icecast/Shoutcast/HTTP audio);
anything else is a file path (``file://`` URLs too). Every failure a user can cause raises ``SourceError`` with a
one-line message.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, SourceError
from .base import AudioPipeline, EventCallback, Source
from .file import FileSource, probe_duration, read_audio
from .hls import HlsSource
from .playlist import Playlist
from .stdin import StdinSource
from .url import UrlSource, open_url

__all__ = [
    "open_source",
    "read_audio",
    "probe_duration",
    "Source",
    "EventCallback",
    "AudioPipeline",
    "FileSource",
    "UrlSource",
    "HlsSource",
    "Playlist",
    "StdinSource",
    "SourceError",
]

_RADIO_OPTS = {
    "max_retries", "connect_timeout", "read_timeout", "backoff_initial", "backoff_max", "healthy_after",
    "segment_retries", "format",
}
_STDIN_OPTS = {"raw_rate", "raw_format", "raw_channels", "format", "fileobj"}


def open_source(uri: str | os.PathLike[str], sample_rate: int, *, block_seconds: float = 0.1, **opts: Any) -> Source:
    """Open ``uri`` as a Source of mono float32 blocks at ``sample_rate`` Hz, ``block_seconds`` long.

    Options by kind: radio/HLS ``max_retries`` (None: forever), ``connect_timeout``, ``read_timeout``,
    ``backoff_initial``, ``backoff_max``, ``format``; stdin ``raw_rate``, ``raw_format`` ("s16le" | "s32le" |
    "f32le"), ``raw_channels``; all ``name`` and ``on_event`` (``callback(kind, detail)``).
    """
    text = os.fspath(uri)
    unknown = set(opts) - _RADIO_OPTS - _STDIN_OPTS - {"name", "on_event"}
    if unknown:
        raise ConfigError(f"unknown source option(s): {', '.join(sorted(unknown))}")
    on_event = opts.pop("on_event", None)
    if text == "-":
        opts = {k: v for k, v in opts.items() if k in _STDIN_OPTS or k == "name"}
        source: Source = StdinSource(sample_rate, block_seconds=block_seconds, **opts)
        if on_event is not None:
            source.on_event = on_event
        return source
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in ("http", "https"):
        opts = {k: v for k, v in opts.items() if k in _RADIO_OPTS or k == "name"}
        return open_url(text, sample_rate, block_seconds=block_seconds, on_event=on_event, **opts)
    opts = {k: v for k, v in opts.items() if k == "name"}
    if scheme == "file":
        source = FileSource(unquote(urlsplit(text).path), sample_rate, block_seconds=block_seconds, **opts)
    elif scheme:
        raise SourceError(f"{text}: unsupported URL scheme {scheme}://; use http(s)://, a file path, or - for stdin")
    else:
        source = FileSource(text, sample_rate, block_seconds=block_seconds, **opts)
    if on_event is not None:
        source.on_event = on_event
    return source
