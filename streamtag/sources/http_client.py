"""A small HTTP(S) client for streams, and the ICY (Shoutcast/Icecast) in-band metadata parser.

Why not urllib: Shoutcast v1 servers answer ``ICY 200 OK``, which ``http.client`` rejects, and a live stream needs
short reads (``read1``), separate connect/read timeouts and a way to abort a blocked read from another thread.
The ICY part is sans-I/O: ``IcyDemuxer.feed(bytes) -> (audio bytes, [metadata blocks])``.
"""
from __future__ import annotations

import errno
import http
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..errors import SourceError
from .policy import PolicyError, SourcePolicy, check_address, display_name, refused
from .reconnect import StallError

__all__ = [
    "USER_AGENT",
    "Cancel",
    "Timeouts",
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
MAX_HEADER_BYTES = 65536  # status line + headers, in all
MAX_HEADERS = 200  # header lines
READ_SIZE = 16384  # bytes asked from the socket per read


class _Cancelled(ConnectionAbortedError):
    """The source was closed while a read or connect was waiting."""


class Cancel:
    """Closes what a connect or read in another thread is waiting on: ``cancel()`` wakes it within ``SLICE``."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event if event is not None else threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def cancel(self) -> None:
        self.event.set()


SLICE = 0.2  # s: the longest a blocked network call waits before it checks for cancellation


def _wait_slice(deadline: float) -> float:
    return max(0.001, min(SLICE, deadline - time.monotonic()))


class _SocketReader:
    """Buffered reads from a socket where every call has a deadline and wakes on cancellation."""

    def __init__(self, sock: socket.socket, cancel: Cancel) -> None:
        self.sock = sock
        self.cancel = cancel
        self.buffer = bytearray()
        self.eof = False
        # When the bytes came in: a recv that waits, or gets less than it asked, leaves the socket empty at that
        # moment, so the bytes of the next recv arrived after it. ``_span`` (first, last): the bytes received since
        # the last take_arrival() came in between those times.
        self.empty_at = time.monotonic()
        self._span: tuple[float, float] | None = None
        self._last_span = (self.empty_at, self.empty_at)

    def take_arrival(self) -> tuple[float, float]:
        """(first, last): when the bytes received since the previous call came in (``time.monotonic()``); the
        previous span again when nothing came in since (the bytes still being used are those)."""
        if self._span is not None:
            self._last_span, self._span = self._span, None
        return self._last_span

    def _fill(self, deadline: float, what: str) -> bool:
        """Receive more bytes into the buffer; False at EOF; StallError past ``deadline``."""
        while True:
            if self.cancel.cancelled:
                raise _Cancelled("the source was closed")
            if time.monotonic() >= deadline:
                raise StallError(what)
            try:
                self.sock.settimeout(_wait_slice(deadline))
                data = self.sock.recv(READ_SIZE)
            except (TimeoutError, ssl.SSLWantReadError):
                self.empty_at = time.monotonic()
                continue
            if not data:
                self.eof = True
                return False
            now = time.monotonic()
            self._span = (self.empty_at if self._span is None else self._span[0], now)
            if len(data) < READ_SIZE and not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                self.empty_at = now  # all it had
            self.buffer += data
            return True

    def read1(self, n: int, deadline: float, what: str) -> bytes:
        if not self.buffer and not self.eof:
            self._fill(deadline, what)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def readline(self, limit: int, deadline: float, what: str) -> bytes:
        while True:
            i = self.buffer.find(b"\n", 0, limit)
            if i >= 0:
                line = bytes(self.buffer[: i + 1])
                del self.buffer[: i + 1]
                return line
            if len(self.buffer) >= limit:
                line = bytes(self.buffer[:limit])
                del self.buffer[:limit]
                return line
            if self.eof or not self._fill(deadline, what):
                line = bytes(self.buffer)
                self.buffer.clear()
                return line


@dataclass
class HttpResponse:
    """An open response: status, lower-cased headers, and a body read with short, deadline-bound reads."""

    url: str  # final URL, after redirects
    status: int
    reason: str  # as the server sent it: never put it in an error message
    headers: dict[str, str]
    _sock: socket.socket
    _reader: _SocketReader
    read_timeout: float = 15.0  # s any single read may wait for a byte
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
        value = (self.headers.get("content-length") or "").strip()
        return int(value) if value.isdigit() and len(value) <= 18 else None  # no 10**5-digit int() of a header

    @property
    def complete(self) -> bool:
        """True when a body of known length (Content-Length or chunked) was read to its very end."""
        return self._complete

    def read(self, n: int = READ_SIZE, *, deadline: float | None = None) -> bytes:
        """Up to ``n`` body bytes, as soon as any are available; b"" at the end of the body.

        Waits at most ``read_timeout`` (or until ``deadline``, a ``time.monotonic()`` value, if sooner), then
        raises :class:`StallError` (a TimeoutError); a cancelled read raises ConnectionAbortedError.
        """
        if self._eof or n <= 0:
            return b""
        limit = time.monotonic() + self.read_timeout
        if deadline is not None:
            limit = min(limit, deadline)
        what = f"no data for {self.read_timeout:g} s"
        if self._chunked:
            data = self._read_chunked(n, limit, what)
        else:
            if self._remaining is not None:
                n = min(n, self._remaining)
            data = self._reader.read1(n, limit, what) if n else b""
            if self._remaining is not None:
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._eof = self._complete = True
        if not data:
            self._eof = True
        self.bytes_read += len(data)
        return data

    def _read_chunked(self, n: int, deadline: float, what: str) -> bytes:
        r = self._reader
        if self._chunk_left == 0:
            line = r.readline(1024, deadline, what)
            if not line:
                return b""
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError as e:
                raise OSError("bad chunked transfer encoding") from e
            if size < 0:
                raise OSError("bad chunked transfer encoding")
            if size == 0:
                self._eof = self._complete = True
                return b""
            self._chunk_left = size
        data = r.read1(min(n, self._chunk_left), deadline, what)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and data:
            r.readline(16, deadline, what)  # CRLF after the chunk
        return data

    def take_arrival(self) -> tuple[float, float]:
        """When the body bytes received since the previous call came in: (first, last), ``time.monotonic()``."""
        return self._reader.take_arrival()

    def read_all(self, limit: int, label: str, *, deadline: float | None = None) -> bytes:
        """The whole body (playlists, HLS segments); SourceError when larger than ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while True:
            data = self.read(65536, deadline=deadline)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise SourceError(f"{label}: the response is larger than {limit} bytes; is this the right URL?")
            parts.append(data)
        return b"".join(parts)

    def abort(self) -> None:
        """Unblock a read in another thread (it then raises ConnectionAbortedError or sees the end)."""
        self._reader.cancel.cancel()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._eof = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _getaddrinfo(host: str, port: int, deadline: float, cancel: Cancel) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo`` with a deadline and cancellation (the lookup itself cannot be interrupted, so a
    name is looked up on a daemon thread we stop waiting for); numeric addresses need no lookup thread."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    result: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread below
            result.append(e)
        finally:
            done.set()

    threading.Thread(target=lookup, name="streamtag-dns", daemon=True).start()
    while not done.wait(_wait_slice(deadline)):
        if cancel.cancelled:
            raise _Cancelled("the source was closed")
        if time.monotonic() >= deadline:
            raise TimeoutError
    if isinstance(result[0], BaseException):
        raise result[0]
    return list(result[0])


def _resolve(
    url: str, label: str, host: str, port: int, policy: SourcePolicy, deadline: float, cancel: Cancel
) -> list[tuple[Any, ...]]:
    """getaddrinfo, then the policy on every address: only addresses the policy allows are kept (and used)."""
    try:
        infos = _getaddrinfo(host, port, deadline, cancel)
    except TimeoutError as e:
        raise SourceError(f"{label}: cannot resolve host {host!r} in time; check the URL and your network") from e
    except socket.gaierror as e:
        raise SourceError(f"{label}: cannot resolve host {host!r} ({e.strerror}); check the URL") from e
    except (UnicodeError, OSError) as e:
        raise SourceError(f"{label}: cannot resolve host {host!r}; check the URL") from e
    allowed = []
    for info in infos:
        try:
            check_address(str(info[4][0]), policy, label)
        except PolicyError:
            continue
        allowed.append(info)
    if not allowed:
        raise refused(label)
    return allowed


def _connect(
    url: str, label: str, host: str, port: int, https: bool, connect_timeout: float, policy: SourcePolicy,
    cancel: Cancel, overall: float,
) -> socket.socket:
    """A connected (TLS-wrapped) socket to an address the policy allows; never re-resolves after the check."""
    deadline = min(time.monotonic() + connect_timeout, overall)
    last: OSError | None = None
    sock: socket.socket | None = None
    for family, type_, proto, _, address in _resolve(url, label, host, port, policy, deadline, cancel):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(address)
            while err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                if cancel.cancelled:
                    raise _Cancelled("the source was closed")
                if time.monotonic() >= deadline:
                    raise TimeoutError
                _, writable, _ = select.select([], [sock], [], _wait_slice(deadline))
                if writable:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            break
        except _Cancelled:
            sock.close()
            raise
        except TimeoutError as e:
            sock.close()
            raise SourceError(
                f"{label}: no answer from {host}:{port} within {connect_timeout:g} s; check the URL and your network"
            ) from e
        except OSError as e:
            sock.close()
            sock, last = None, e
    if sock is None:
        if last is not None and last.errno == errno.ECONNREFUSED:
            raise SourceError(
                f"{label}: connection refused by {host}:{port}; check the URL and that the server is running"
            ) from last
        raise SourceError(f"{label}: cannot connect to {host}:{port} ({last and last.strerror}); check the URL")
    if https:
        try:
            sock.setblocking(True)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            sock.close()
            detail = e.reason if isinstance(e, ssl.SSLError) and e.reason else type(e).__name__
            raise SourceError(f"{label}: TLS handshake with {host} failed ({detail}); check the URL or use http://") from e
    return sock


def _request_once(
    url: str, headers: dict[str, str], timeouts: Timeouts, policy: SourcePolicy, cancel: Cancel, overall: float
) -> HttpResponse:
    label = display_name(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{label}: not an http(s):// URL with a host name; check the URL")
    https = scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError as e:
        raise SourceError(f"{label}: bad port in the URL; check the URL") from e
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    if any(c in target + host_header for c in "\r\n\0 "):
        raise SourceError(f"{label}: the URL contains spaces or control characters; check the URL")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Connection: close", "", ""]
    try:
        sock = _connect(url, label, host, port, https, timeouts.connect, policy, cancel, overall)
    except _Cancelled as e:
        raise SourceError(f"{label}: closed while connecting") from e
    reader = _SocketReader(sock, cancel)
    # the whole header phase, however the bytes trickle in, and all redirects together within `overall`
    deadline = min(time.monotonic() + timeouts.header, overall)
    what = f"no complete answer within {timeouts.header:g} s"
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        status_line = reader.readline(MAX_HEADER_BYTES, deadline, what).decode("latin-1").strip()
        if not status_line:
            raise SourceError(f"{label}: the server closed the connection without answering; check the URL")
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not (fields[0].startswith("HTTP/") or fields[0] == "ICY") or not fields[1].isdigit():
            raise SourceError(f"{label}: the server did not answer in HTTP; check the URL")
        status, reason = int(fields[1]), (fields[2] if len(fields) > 2 else "")
        response_headers: dict[str, str] = {}
        size = 0
        while True:
            line = reader.readline(MAX_HEADER_BYTES, deadline, what)
            size += len(line)
            if size > MAX_HEADER_BYTES or len(response_headers) > MAX_HEADERS:
                raise SourceError(f"{label}: the response headers are too large; check the URL")
            if not line:
                raise SourceError(f"{label}: the server closed the connection in the middle of its headers")
            text = line.decode("latin-1").strip()
            if not text:
                break
            if ":" in text:
                key, value = text.split(":", 1)
                response_headers[key.strip().lower()] = value.strip()
    except StallError as e:
        sock.close()
        raise SourceError(f"{label}: the server did not answer within {timeouts.header:g} s; try again later") from e
    except _Cancelled as e:
        sock.close()
        raise SourceError(f"{label}: closed while connecting") from e
    except OSError as e:
        sock.close()
        raise SourceError(
            f"{label}: connection failed while reading the answer ({e.strerror or type(e).__name__}); try again later"
        ) from e
    except BaseException:
        sock.close()
        raise
    response = HttpResponse(
        url=url, status=status, reason=reason, headers=response_headers, _sock=sock, _reader=reader,
        read_timeout=timeouts.read,
    )
    response._chunked = "chunked" in response_headers.get("transfer-encoding", "").lower()
    if not response._chunked:
        response._remaining = response.content_length
    return response


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # s to connect (DNS excluded: the resolver has its own)
    header: float = 15.0  # s for the whole status line and headers
    read: float = 15.0  # s any single body read may wait


def http_get(
    url: str,
    *,
    icy: bool = False,
    connect_timeout: float = 10.0,
    read_timeout: float = 15.0,
    header_timeout: float | None = None,
    max_redirects: int = 5,
    policy: SourcePolicy | None = None,
    cancel: Cancel | None = None,
) -> HttpResponse:
    """GET ``url`` following redirects; SourceError (one line, naming the URL) for any failure or status >= 400.

    ``policy`` (None: permissive) is applied to the resolved address of the URL and of every redirect target;
    the connection goes to the address that was checked. ``cancel`` aborts a connect or header read in progress.
    All hops together take at most ``connect_timeout + header_timeout`` seconds (DNS lookups included).
    """
    policy = policy if policy is not None else SourcePolicy.permissive()
    cancel = cancel if cancel is not None else Cancel()
    timeouts = Timeouts(connect_timeout, header_timeout if header_timeout is not None else read_timeout, read_timeout)
    label = display_name(url)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if icy:
        headers["Icy-MetaData"] = "1"
    current = url
    overall = time.monotonic() + timeouts.connect + timeouts.header  # every redirect hop shares this budget
    for _ in range(max_redirects + 1):
        try:
            response = _request_once(current, headers, timeouts, policy, cancel, overall)
        except PolicyError:
            raise refused(label) from None
        except SourceError as e:
            if current == url:
                raise
            raise SourceError(f"{label}: after a redirect, {str(e).removeprefix(display_name(current) + ': ')}") from e
        if response.status in REDIRECTS and "location" in response.headers:
            response.close()
            location = response.headers["location"]
            try:
                current = urljoin(current, location)
            except ValueError as e:
                raise SourceError(f"{label}: the server redirected to an invalid URL; check the URL") from e
            if urlsplit(current).scheme.lower() not in ("http", "https"):
                raise refused(label)  # file://, gopher://, ...: never followed
            log.debug("%s: redirected to %s", label, display_name(current))
            continue
        if response.status >= 400:
            response.close()
            what = f"HTTP {response.status} {_phrase(response.status)}".strip()
            if response.status == 404:
                raise SourceError(f"{label}: {what}; check the URL (for Icecast/Shoutcast, the mount point name)")
            if response.status in (401, 403):
                raise SourceError(f"{label}: {what}; the server refuses access to this stream")
            raise SourceError(f"{label}: {what}; the server refused the request, try again later or check the URL")
        if response.status >= 300:
            response.close()
            raise SourceError(f"{label}: HTTP {response.status} without a usable redirect; check the URL")
        if response.status < 200:
            response.close()
            raise SourceError(f"{label}: HTTP {response.status} is not an answer to a GET; check the URL")
        return response
    raise SourceError(f"{label}: more than {max_redirects} redirects; check the URL")


def _phrase(status: int) -> str:
    """The standard reason phrase (the server's own is remote text and is never shown)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def fetch_bytes(
    url: str,
    *,
    limit: int = 64 << 20,
    connect_timeout: float = 10.0,
    read_timeout: float = 15.0,
    total_timeout: float | None = None,
    policy: SourcePolicy | None = None,
    cancel: Cancel | None = None,
) -> tuple[bytes, HttpResponse]:
    """The whole body of ``url`` (and its closed response, for headers and the final URL).

    ``total_timeout`` bounds the whole download (connect, headers and body), so a server that trickles cannot
    hold it open; it defaults to no overall bound beyond the per-read ``read_timeout``.
    """
    start = time.monotonic()
    label = display_name(url)
    header_timeout = read_timeout if total_timeout is None else min(read_timeout, total_timeout)
    response = http_get(url, connect_timeout=connect_timeout, read_timeout=read_timeout,
                        header_timeout=header_timeout, policy=policy, cancel=cancel)
    deadline = None if total_timeout is None else start + total_timeout
    try:
        data = response.read_all(limit, label, deadline=deadline)
        length = response.content_length
        if length is not None and len(data) < length:
            raise SourceError(f"{label}: the download stopped after {len(data)} of {length} bytes; try again")
        return data, response
    except TimeoutError as e:
        if deadline is not None and time.monotonic() >= deadline:
            raise SourceError(f"{label}: the download took longer than {total_timeout:g} s; try again") from e
        raise SourceError(f"{label}: the download stalled for {read_timeout:g} s; try again") from e
    except _Cancelled as e:
        raise SourceError(f"{label}: closed during the download") from e
    except OSError as e:
        raise SourceError(f"{label}: the download failed ({e.strerror or type(e).__name__}); try again") from e
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
    """File-like ``read(n)`` over a response's audio bytes, ICY metadata removed and handed to ``on_metadata``.

    With ``progress`` (a callable giving the ``time.monotonic()`` of the last decoded audio) a read also fails
    with :class:`StallError` once ``stall_timeout`` seconds pass without progress, bytes arriving or not.
    """

    def __init__(
        self,
        response: HttpResponse,
        metaint: int | None,
        on_metadata: Callable[[bytes], None],
        *,
        progress: Callable[[], float] | None = None,
        stall_timeout: float = 15.0,
    ) -> None:
        self._response = response
        self._demuxer = IcyDemuxer(metaint) if metaint else None
        self._on_metadata = on_metadata
        self._buffer = b""
        self._progress = progress
        self._stall_timeout = stall_timeout

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = READ_SIZE
        while not self._buffer:
            deadline = None
            if self._progress is not None:
                deadline = self._progress() + self._stall_timeout
                if time.monotonic() >= deadline:
                    raise StallError(f"no audio for {self._stall_timeout:g} s")
            try:
                raw = self._response.read(max(n, 4096), deadline=deadline)
            except StallError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StallError(f"no audio for {self._stall_timeout:g} s") from None
                raise
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
