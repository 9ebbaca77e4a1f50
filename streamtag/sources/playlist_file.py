"""A local ``.pls`` / ``.m3u`` / ``.m3u8`` playlist file: its entries opened in turn, as one source.

Entries may be local paths (relative ones resolve against the playlist's folder), ``file://`` URLs or http(s)
URLs; each is opened with ``open_source`` under the same :class:`SourcePolicy`, so a playlist cannot reach a file
or an address its reader could not name directly. An entry that fails to open is skipped with a warning; a
playlist none of whose entries opens is an error. The source's ``title`` is the entry now playing (its PLS
``TitleN`` or M3U ``#EXTINF`` title when given, else its display name), announced through ``on_event("title")``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError
from .base import AudioPipeline, Source
from .policy import PolicyError, display_name

__all__ = ["PLAYLIST_SUFFIXES", "PlaylistEntry", "parse_playlist_text", "read_playlist_file", "PlaylistFileSource"]

log = logging.getLogger(__name__)

PLAYLIST_SUFFIXES = (".pls", ".m3u", ".m3u8")
MAX_PLAYLIST_BYTES = 1 << 20  # a playlist larger than this is not a playlist
MAX_ENTRIES = 10_000
MAX_DEPTH = 3  # playlists inside playlists


@dataclass(frozen=True)
class PlaylistEntry:
    spec: str  # an absolute path, a file:// or an http(s):// URL
    title: str | None = None


def _resolve_entry(text: str, folder: Path) -> str:
    if "://" in text:
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else folder / path)


def parse_playlist_text(text: str, folder: Path) -> list[PlaylistEntry]:
    """Entries of a PLS (``FileN=`` / ``TitleN=``) or M3U (one entry per line, ``#EXTINF:secs,title``) playlist."""
    entries: list[PlaylistEntry] = []
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if any(line.lower() == "[playlist]" for line in lines[:5]):
        files: dict[str, str] = {}
        titles: dict[str, str] = {}
        order: list[str] = []
        for line in lines:
            key, sep, value = line.partition("=")
            key = key.strip().lower()
            if not sep:
                continue
            if key.startswith("file") and key[4:].isdigit():
                files[key[4:]] = value.strip()
                order.append(key[4:])
            elif key.startswith("title") and key[5:].isdigit():
                titles[key[5:]] = value.strip()
        for k in sorted(set(order), key=int):
            if files[k]:
                entries.append(PlaylistEntry(_resolve_entry(files[k], folder), titles.get(k) or None))
        return entries[:MAX_ENTRIES]
    title: str | None = None
    for line in lines:
        if not line:
            continue
        if line.startswith("#"):
            if line.upper().startswith("#EXTINF:"):
                title = line.split(",", 1)[1].strip() if "," in line else None
            continue
        entries.append(PlaylistEntry(_resolve_entry(line, folder), title or None))
        title = None
    return entries[:MAX_ENTRIES]


def read_playlist_file(path: Path, label: str) -> list[PlaylistEntry]:
    """The entries of the playlist file at ``path`` (already checked against the policy)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PLAYLIST_BYTES + 1)
    except FileNotFoundError as e:
        raise SourceError(f"{label}: no such file; check the path") from e
    except IsADirectoryError as e:
        raise SourceError(f"{label}: is a directory; pass a playlist file") from e
    except OSError as e:
        raise SourceError(f"{label}: cannot read the playlist ({e.strerror or type(e).__name__})") from e
    if len(data) > MAX_PLAYLIST_BYTES:
        raise SourceError(f"{label}: larger than {MAX_PLAYLIST_BYTES} bytes; this is not a playlist")
    text = data.decode("utf-8", errors="replace")
    if "#EXT-X-TARGETDURATION" in text or "#EXT-X-STREAM-INF" in text:
        raise SourceError(f"{label}: is an HLS playlist; serve it over http(s):// to play it")
    return parse_playlist_text(text, path.parent)


class PlaylistFileSource(Source):
    """The blocks of each entry in turn; ``open_entry(spec)`` opens one (``open_source`` with the same options)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        *,
        open_entry: Callable[[str], Source],
        block_seconds: float = 0.1,
        name: str | None = None,
        label: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = label or str(self.path)
        super().__init__(name or self.path.name, sample_rate, block_seconds)
        self.entries = read_playlist_file(self.path, self.label)
        if not self.entries:
            raise SourceError(f"{self.label}: the playlist lists no entries; add file paths or stream URLs to it")
        self._open_entry = open_entry
        self._current: Source | None = None
        self.played = 0  # entries that opened
        self.skipped = 0  # entries that failed to open or to decode
        self.info = {"uri": self.label, "format": "playlist", "entries": len(self.entries), "codec": None,
                     "sample_rate": None, "channels": None}
        # open the first playable entry now, so a playlist of nothing playable fails at open time
        self._first = self._open_next(0)
        if self._first is None:
            raise SourceError(f"{self.label}: none of its {len(self.entries)} entries could be opened")

    def _open_next(self, start: int) -> tuple[int, Source] | None:
        for i in range(start, len(self.entries)):
            if self.closed:
                return None
            entry = self.entries[i]
            try:
                source = self._open_entry(entry.spec)
            except PolicyError as e:
                log.warning("%s: entry %d: %s", self.label, i + 1, e)
                self.skipped += 1
                continue
            except SourceError as e:
                log.warning("%s: skipping entry %d: %s", self.label, i + 1, e)
                self.skipped += 1
                continue
            self.played += 1
            return i, source
        return None

    def _blocks(self) -> Generator[np.ndarray, None, None]:
        pipeline = AudioPipeline(self.sample_rate, self.block_size)  # re-blocks across entries (same rate)
        item, self._first = self._first, None
        while item is not None and not self.closed:
            i, source = item
            self._current = source
            entry = self.entries[i]
            self.info.update(entry=i + 1, codec=source.info.get("codec"), sample_rate=source.info.get("sample_rate"),
                             channels=source.info.get("channels"))
            self._set_title(entry.title or display_name(entry.spec))
            try:
                with source:
                    for block in source:
                        yield from pipeline.push(block, self.sample_rate)
            except SourceError as e:
                log.warning("%s: entry %d stopped: %s", self.label, i + 1, e)
                self.skipped += 1
            finally:
                self._current = None
            item = self._open_next(i + 1)
        if not self.closed:
            yield from pipeline.finish()

    def _abort(self) -> None:
        current = getattr(self, "_current", None)
        if current is not None:
            current.close()

    def _release(self) -> None:
        first = getattr(self, "_first", None)
        if first is not None:
            first[1].close()
