"""A small HTTP(S) client for streams, and the ICY (Shoutcast/Icecast) in-band metadata parser.

Why not urllib: Shoutcast v1 servers answer ``ICY 200 OK``, which ``http.client`` rejects, and a live stream needs
short reads (``read1``), separate connect/read timeouts and a way to abort a blocked read from another thread.
The ICY part is sans-I/O: ``IcyDemuxer.feed(bytes) -> (audio bytes, [metadata blocks])``.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..errors import SourceError

__all__ = [
    "USER_AGENT",
    "HttpResponse",
    "http_get",
    "fetch_bytes",
    "IcyDemuxer",
    "IcyReader",
    "parse_stream_title",
]

log = logging.getLogger(__name__)

USER_AGENT = f"streamtag/{__version__} (music genre tagger; Python)"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_HEADER_BYTES = 65536
READ_SIZE = 16384  # bytes asked from the socket per read


@dataclass
class HttpResponse:
    """An open response: status, lower-cased headers, and a body read with short reads."""

    url: str  # final URL, after redirects
    status: int
    reason: str
    headers: dict[str, str]
    _sock: socket.socket
    _file: object  # BufferedReader over the socket
    _remaining: int | None = None  # Content-Length left, None when unknown
    _chunked: bool = False
    _chunk_left: int = 0
    _eof: bool = False
    _complete: bool = False  # the whole body of known length (Content-Length / final chunk) was read
    bytes_read: int = 0

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value and value.strip().isdigit() else None

    @property
    def complete(self) -> bool:
        """True when a body of known length (Content-Length or chunked) was read to its very end."""
        return self._complete

    def read(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` body bytes, as soon as any are available; b"" at the end of the body."""
        if self._eof or n <= 0:
            return b""
        if self._chunked:
            data = self._read_chunked(n)
        else:
            if self._remaining is not None:
                n = min(n, self._remaining)
            data = self._file.read1(n) if n else b""  # type: ignore[attr-defined]
            if self._remaining is not None:
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._eof = self._complete = True
        if not data:
            self._eof = True
        self.bytes_read += len(data)
        return data

    def _read_chunked(self, n: int) -> bytes:
        f = self._file
        if self._chunk_left == 0:
            line = f.readline(1024)  # type: ignore[attr-defined]
            if not line:
                return b""
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self._eof = self._complete = True
                return b""
            self._chunk_left = size
        data = f.read1(min(n, self._chunk_left))  # type: ignore[attr-defined]
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and data:
            f.readline(16)  # type: ignore[attr-defined]  # CRLF after the chunk
        return data

    def read_all(self, limit: int, label: str) -> bytes:
        """The whole body (playlists, HLS segments); SourceError when larger than ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while True:
            data = self.read(65536)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise SourceError(f"{label}: the response is larger than {limit} bytes; is this the right URL?")
            parts.append(data)
        return b"".join(parts)

    def abort(self) -> None:
        """Unblock a read in another thread (it then sees the end of the body)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._eof = True
        self.abort()
        try:
            self._file.close()  # type: ignore[attr-defined]
        finally:
            self._sock.close()


def _connect(url: str, host: str, port: int, https: bool, connect_timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except socket.gaierror as e:
        raise SourceError(f"{url}: cannot resolve host {host!r} ({e.strerror}); check the URL") from e
    except ConnectionRefusedError as e:
        raise SourceError(
            f"{url}: connection refused by {host}:{port}; check the URL and that the server is running"
        ) from e
    except TimeoutError as e:
        raise SourceError(
            f"{url}: no answer from {host}:{port} within {connect_timeout:g} s; check the URL and your network"
        ) from e
    except OSError as e:
        raise SourceError(f"{url}: cannot connect to {host}:{port} ({e.strerror or e}); check the URL") from e
    if https:
        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise SourceError(f"{url}: TLS handshake with {host} failed ({e}); check the URL or use http://") from e
    return sock


def _request_once(
    url: str, headers: dict[str, str], connect_timeout: float, read_timeout: float
) -> HttpResponse:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{url}: not an http(s):// URL with a host name; check the URL")
    https = scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError as e:
        raise SourceError(f"{url}: bad port in the URL; check the URL") from e
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Connection: close", "", ""]
    sock = _connect(url, host, port, https, connect_timeout)
    try:
        sock.settimeout(read_timeout)
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        f = sock.makefile("rb")
        status_line = f.readline(MAX_HEADER_BYTES).decode("latin-1").strip()
        if not status_line:
            raise SourceError(f"{url}: the server closed the connection without answering; check the URL")
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not (fields[0].startswith("HTTP/") or fields[0] == "ICY") or not fields[1].isdigit():
            raise SourceError(f"{url}: not an HTTP server (it answered {status_line[:60]!r}); check the URL")
        status, reason = int(fields[1]), (fields[2] if len(fields) > 2 else "")
        response_headers: dict[str, str] = {}
        size = 0
        while True:
            line = f.readline(MAX_HEADER_BYTES)
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise SourceError(f"{url}: the response headers are too large; check the URL")
            text = line.decode("latin-1").strip()
            if not text:
                break
            if ":" in text:
                key, value = text.split(":", 1)
                response_headers[key.strip().lower()] = value.strip()
    except TimeoutError as e:
        sock.close()
        raise SourceError(f"{url}: the server did not answer within {read_timeout:g} s; try again later") from e
    except OSError as e:
        sock.close()
        raise SourceError(f"{url}: connection failed while reading the answer ({e}); try again later") from e
    except SourceError:
        sock.close()
        raise
    response = HttpResponse(url=url, status=status, reason=reason, headers=response_headers, _sock=sock, _file=f)
    response._chunked = "chunked" in response_headers.get("transfer-encoding", "").lower()
    if not response._chunked:
        response._remaining = response.content_length
    return response


def http_get(
    url: str,
    *,
    icy: bool = False,
    connect_timeout: float = 10.0,
    read_timeout: float = 15.0,
    max_redirects: int = 5,
) -> HttpResponse:
    """GET ``url`` following redirects; SourceError (one line, naming the URL) for any failure or status >= 400."""
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if icy:
        headers["Icy-MetaData"] = "1"
    current = url
    for _ in range(max_redirects + 1):
        response = _request_once(current, headers, connect_timeout, read_timeout)
        if response.status in REDIRECTS and "location" in response.headers:
            response.close()
            current = urljoin(current, response.headers["location"])
            log.debug("%s: redirected to %s", url, current)
            continue
        if response.status >= 400:
            response.close()
            what = f"HTTP {response.status} {response.reason}".strip()
            if response.status == 404:
                raise SourceError(f"{url}: {what}; check the URL (for Icecast/Shoutcast, the mount point name)")
            if response.status in (401, 403):
                raise SourceError(f"{url}: {what}; the server refuses access to this stream")
            raise SourceError(f"{url}: {what}; the server refused the request, try again later or check the URL")
        if response.status >= 300:
            response.close()
            raise SourceError(f"{url}: HTTP {response.status} without a usable redirect; check the URL")
        return response
    raise SourceError(f"{url}: more than {max_redirects} redirects; check the URL")


def fetch_bytes(
    url: str, *, limit: int = 64 << 20, connect_timeout: float = 10.0, read_timeout: float = 15.0
) -> tuple[bytes, HttpResponse]:
    """The whole body of ``url`` (and its closed response, for headers and the final URL)."""
    response = http_get(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
    try:
        data = response.read_all(limit, url)
        length = response.content_length
        if length is not None and len(data) < length:
            raise SourceError(f"{url}: the download stopped after {len(data)} of {length} bytes; try again")
        return data, response
    except TimeoutError as e:
        raise SourceError(f"{url}: the download stalled for {read_timeout:g} s; try again") from e
    except OSError as e:
        raise SourceError(f"{url}: the download failed ({e}); try again") from e
    finally:
        response.close()


# ICY metadata -----------------------------------------------------------------------------------------------------

_TITLE_RE = re.compile(r"StreamTitle='(.*?)';(?=\s*[A-Za-z_]+=|\s*$)", re.DOTALL)
_TITLE_LOOSE_RE = re.compile(r"StreamTitle='(.*)'", re.DOTALL)


def parse_stream_title(block: bytes) -> str | None:
    """``StreamTitle`` of one ICY metadata block: the title, "" for an empty title, None when the key is absent.

    Blocks are NUL-padded; text is UTF-8 when it decodes as such, else Latin-1 (what old Shoutcast servers send).
    """
    raw = block.rstrip(b"\0")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    match = _TITLE_RE.search(text) or _TITLE_LOOSE_RE.search(text)
    if match is None:
        return None
    return match.group(1).strip()


class IcyDemuxer:
    """Splits an ICY byte stream into audio bytes and metadata blocks (``icy-metaint`` audio bytes, then one
    length byte L, then 16 * L metadata bytes, repeated)."""

    def __init__(self, metaint: int) -> None:
        if metaint <= 0:
            raise ValueError(f"icy-metaint must be positive, got {metaint}")
        self.metaint = metaint
        self._audio_left = metaint
        self._meta_left: int | None = None  # None: expecting the length byte (when _audio_left == 0)
        self._meta = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        audio = bytearray()
        blocks: list[bytes] = []
        view = memoryview(data)
        i = 0
        while i < len(view):
            if self._audio_left > 0:
                take = min(self._audio_left, len(view) - i)
                audio += view[i : i + take]
                self._audio_left -= take
                i += take
            elif self._meta_left is None:
                self._meta_left = view[i] * 16
                i += 1
                if self._meta_left == 0:
                    self._meta_left = None
                    self._audio_left = self.metaint
            else:
                take = min(self._meta_left, len(view) - i)
                self._meta += view[i : i + take]
                self._meta_left -= take
                i += take
                if self._meta_left == 0:
                    blocks.append(bytes(self._meta))
                    self._meta.clear()
                    self._meta_left = None
                    self._audio_left = self.metaint
        return bytes(audio), blocks


class IcyReader:
    """File-like ``read(n)`` over a response's audio bytes, ICY metadata removed and handed to ``on_metadata``."""

    def __init__(self, response: HttpResponse, metaint: int | None, on_metadata: Callable[[bytes], None]) -> None:
        self._response = response
        self._demuxer = IcyDemuxer(metaint) if metaint else None
        self._on_metadata = on_metadata
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = READ_SIZE
        while not self._buffer:
            raw = self._response.read(max(n, 4096))
            if not raw:
                return b""
            if self._demuxer is None:
                self._buffer = raw
            else:
                self._buffer, blocks = self._demuxer.feed(raw)
                for block in blocks:
                    self._on_metadata(block)
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data
