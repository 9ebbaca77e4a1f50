"""Audio sources: every input becomes an iterator of mono float32 blocks at the model's sample rate.

    with open_source("https://radio.example/live.mp3", 16000) as source:
        for block in source:          # (block_size,) float32, block_size = round(block_seconds * sr)
            engine.push(source.name, block)
            ... source.title ...      # latest ICY StreamTitle, or None

``open_source`` dispatch: ``"-"`` is stdin; ``http://`` / ``https://`` is radio (HLS when the path ends in .m3u8
or the server says it is an m3u8 playlist; PLS/M3U playlists are followed; otherwise Icecast/Shoutcast/HTTP audio);
a local ``.pls``/``.m3u``/``.m3u8`` is a playlist whose entries play in turn; anything else is a file path
(``file://`` URLs too). Every failure a user can cause raises ``SourceError`` with a one-line message; what a
caller may open is decided by a :class:`SourcePolicy` (``PolicyError``: "refused by policy").
"""
from __future__ import annotations

import os
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from ..errors import SourceError
from .base import AudioPipeline, EventCallback, Source
from .file import FileSource, probe_duration, read_audio
from .hls import HlsSource
from .playlist import Playlist
from .playlist_file import PLAYLIST_SUFFIXES, PlaylistFileSource
from .policy import PolicyError, SourcePolicy, check_file, check_stdin, display_name
from .reconnect import UNSET, ReconnectPolicy, Unset, merge_policy
from .stdin import StdinSource
from .url import UrlSource, open_url

__all__ = [
    "open_source",
    "read_audio",
    "probe_duration",
    "display_name",
    "Source",
    "EventCallback",
    "AudioPipeline",
    "FileSource",
    "UrlSource",
    "HlsSource",
    "Playlist",
    "StdinSource",
    "PlaylistFileSource",
    "ReconnectPolicy",
    "SourcePolicy",
    "SourceError",
    "PolicyError",
]

MAX_PLAYLIST_DEPTH = 3


def open_source(
    uri: str | os.PathLike[str],
    sample_rate: int,
    *,
    policy: SourcePolicy | None = None,
    block_seconds: float = 0.1,
    name: str | None = None,
    on_event: EventCallback | None = None,
    reconnect: ReconnectPolicy | None = None,
    max_retries: int | None | Unset = UNSET,
    connect_timeout: float | None = None,
    header_timeout: float | None = None,
    read_timeout: float | None = None,
    stall_timeout: float | None = None,
    fetch_timeout: float | None = None,
    backoff_initial: float | None = None,
    backoff_max: float | None = None,
    healthy_after: float | None = None,
    segment_retries: int | None = None,
    format: str | None = None,
    raw_rate: int | None = None,
    raw_format: str = "s16le",
    raw_channels: int = 1,
    fileobj: BinaryIO | None = None,
    _depth: int = 0,
) -> Source:
    """Open ``uri`` as a Source of mono float32 blocks at ``sample_rate`` Hz, ``block_seconds`` long.

    ``policy`` (None: permissive, the command line's own inputs) says what may be opened: local files only under
    ``policy.allow_files``, ``-`` only with ``allow_stdin``, private/loopback addresses only with
    ``allow_private_urls`` (checked after DNS, on every redirect and every playlist entry). A refusal is a
    :class:`PolicyError` "<display>: refused by policy".

    Radio/HLS: ``reconnect`` (:class:`ReconnectPolicy`), or its fields one by one (``max_retries`` None = forever,
    ``connect_timeout``, ``header_timeout``, ``read_timeout``, ``stall_timeout``, ``fetch_timeout``,
    ``backoff_initial``, ``backoff_max``, ``healthy_after``, ``segment_retries``), and ``format`` (FFmpeg demuxer
    name). Stdin: ``raw_rate`` (raw PCM instead of a sniffed container), ``raw_format`` ("s16le" | "s32le" |
    "f32le"), ``raw_channels``, ``format``, ``fileobj``. All: ``name`` and ``on_event`` (``callback(kind,
    detail)``). A misspelt option is a TypeError, as for any Python function.
    """
    text = os.fspath(uri)
    retry = merge_policy(
        reconnect, max_retries=max_retries, connect_timeout=connect_timeout, header_timeout=header_timeout,
        read_timeout=read_timeout, stall_timeout=stall_timeout, fetch_timeout=fetch_timeout,
        backoff_initial=backoff_initial, backoff_max=backoff_max, healthy_after=healthy_after,
        segment_retries=segment_retries,
    )
    explicit_policy = policy is not None
    policy = policy if policy is not None else SourcePolicy.permissive()
    label = display_name(text) if explicit_policy else text
    source: Source
    if text == "-":
        check_stdin(policy, "stdin")
        source = StdinSource(sample_rate, block_seconds=block_seconds, raw_rate=raw_rate, raw_format=raw_format,
                             raw_channels=raw_channels, format=format, fileobj=fileobj, name=name or "stdin")
    else:
        scheme = urlsplit(text).scheme.lower() if "://" in text else ""
        if scheme in ("http", "https"):
            return open_url(text, sample_rate, block_seconds=block_seconds, reconnect=retry, policy=policy,
                            format=format, name=name, on_event=on_event)
        if scheme and scheme != "file":
            raise SourceError(
                f"{display_name(text)}: unsupported URL scheme {scheme[:16]}://; use http(s)://, a file path, "
                "or - for stdin"
            )
        path = unquote(urlsplit(text).path) if scheme == "file" else text
        if explicit_policy:
            path = str(check_file(path, policy, label))
        if path.lower().endswith(PLAYLIST_SUFFIXES):
            if _depth >= MAX_PLAYLIST_DEPTH:
                raise SourceError(f"{label}: playlists nested more than {MAX_PLAYLIST_DEPTH} deep")

            def open_entry(spec: str) -> Source:
                return open_source(
                    spec, sample_rate, policy=policy, block_seconds=block_seconds, reconnect=retry, format=format,
                    _depth=_depth + 1,
                )

            source = PlaylistFileSource(path, sample_rate, open_entry=open_entry, block_seconds=block_seconds,
                                        name=name, label=label)
        else:
            source = FileSource(path, sample_rate, block_seconds=block_seconds, name=name, label=label)
    if on_event is not None:
        source.on_event = on_event
    return source

