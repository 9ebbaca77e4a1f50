"""Station lists for ``serve --sources FILE`` and ``stream --sources FILE``: many stations without many flags.

A list is a local file in one of three forms (told apart by its first lines, not its name):

- ``name=url`` lines (``#`` starts a comment line)::

      jazz=https://radio.example/jazz.mp3
      news=http://radio.example:8000/news.aac

- an M3U (``#EXTM3U``, ``#EXTINF:-1,Station name`` before each URL): the name comes from the ``#EXTINF`` title;
- a PLS (``[playlist]``, ``File1=``, ``Title1=``).

Entries may be anything ``open_source`` opens (URLs, or paths relative to the list's folder). Names that the
M3U/PLS titles or the URLs suggest are made into valid stream names (letters, digits, ``_.:-``) and made unique
with ``#2``-like suffixes turned into ``-2``. A bad line is a :class:`ConfigError` naming the file and the line.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError
from .policy import display_name

__all__ = ["read_station_list", "parse_station_list", "MAX_STATIONS"]

MAX_STATIONS = 10_000
MAX_LIST_BYTES = 4 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.:\-]+")


def _make_name(text: str) -> str:
    name = _BAD_CHARS.sub("-", text).strip("-_.:")[:64]
    return name or "station"


def _name_of_url(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.hostname:
        tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
        return _make_name(f"{parts.hostname}-{tail}" if tail else parts.hostname)
    return _make_name(Path(parts.path if parts.scheme == "file" else uri).stem)


def _resolve(entry: str, folder: Path) -> str:
    if "://" in entry:
        return entry
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else folder / path)


def parse_station_list(text: str, *, label: str, folder: Path) -> list[tuple[str, str]]:
    """(name, uri) pairs of a station list's ``text``; ConfigError ``"LABEL line N: ..."`` for a bad line."""
    lines = text.lstrip("\ufeff").splitlines()
    head = [line.strip().lower() for line in lines[:5]]
    out: list[tuple[str, str]] = []

    def bad(lineno: int, problem: str) -> ConfigError:
        return ConfigError(f"{label} line {lineno}: {problem}; use NAME=URL lines, an M3U or a PLS file")

    def add(lineno: int, name: str, uri: str, derived: bool) -> None:
        if not uri or any(c in uri for c in "\0\r\n"):
            raise bad(lineno, "no URL or path")
        if not derived and not _NAME_RE.match(name):
            raise bad(lineno, f"stream name {name[:40]!r} must be 1-64 letters, digits and _.:- ")
        taken = {n for n, _ in out}
        if name in taken:
            if not derived:
                raise bad(lineno, f"stream name {name!r} given twice")
            base, k = name[:60], 2
            while f"{base}-{k}" in taken:
                k += 1
            name = f"{base}-{k}"
        if len(out) >= MAX_STATIONS:
            raise bad(lineno, f"more than {MAX_STATIONS} stations")
        out.append((name, _resolve(uri, folder)))

    if "[playlist]" in head:  # PLS
        files: dict[int, tuple[int, str]] = {}
        titles: dict[int, str] = {}
        for lineno, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith((";", "#", "[")):
                continue
            key, sep, value = line.partition("=")
            key = key.strip().lower()
            if not sep:
                raise bad(lineno, f"{line[:40]!r} is not KEY=VALUE")
            if key.startswith("file") and key[4:].isdigit():
                files[int(key[4:])] = (lineno, value.strip())
            elif key.startswith("title") and key[5:].isdigit():
                titles[int(key[5:])] = value.strip()
        for k in sorted(files):
            lineno, uri = files[k]
            add(lineno, _make_name(titles[k]) if titles.get(k) else _name_of_url(uri), uri, True)
        return out
    m3u = any(h.startswith("#extm3u") for h in head)
    title: str | None = None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.upper().startswith("#EXTINF:"):
                title = line.split(",", 1)[1].strip() if "," in line else None
            continue
        name, sep, uri = line.partition("=")
        if not m3u and sep and "://" not in name and "/" not in name:
            add(lineno, name.strip(), uri.strip(), False)
        elif m3u or "://" in line:
            add(lineno, _make_name(title) if title else _name_of_url(line), line, True)
        else:
            raise bad(lineno, f"{line[:40]!r} is neither NAME=URL nor a URL")
        title = None
    return out


def read_station_list(path: str | Path) -> list[tuple[str, str]]:
    """The (name, uri) pairs of the station list at ``path`` (a local file); ConfigError for any problem."""
    p = Path(path)
    label = display_name(str(path))
    try:
        with p.open("rb") as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"--sources {label}: no such file; give a station list (NAME=URL lines, M3U or PLS)") from e
    except IsADirectoryError as e:
        raise ConfigError(f"--sources {label}: is a directory; give a station list file") from e
    except OSError as e:
        raise ConfigError(f"--sources {label}: cannot read it ({e.strerror or type(e).__name__})") from e
    if len(data) > MAX_LIST_BYTES:
        raise ConfigError(f"--sources {label}: larger than {MAX_LIST_BYTES} bytes; is this a station list?")
    text = data.decode("utf-8", errors="replace")
    if "#EXT-X-TARGETDURATION" in text or "#EXT-X-STREAM-INF" in text:
        raise ConfigError(f"--sources {label}: is an HLS playlist (one stream); use it as --source NAME=URL")
    stations = parse_station_list(text, label=f"--sources {label}", folder=p.parent)
    if not stations:
        raise ConfigError(f"--sources {label}: lists no station; use NAME=URL lines, an M3U or a PLS file")
    return stations
