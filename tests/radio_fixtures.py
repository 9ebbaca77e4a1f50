"""Real servers for radio tests: a loopback Icecast2 fed by ffmpeg, a threaded static HTTP server, clip makers.

    with icecast_server(tmp_path) as ice:                 # ice.port, ice.admin_password (or: port, pw = ice)
        with feed(ice.port, "/live.mp3", clip, "mp3"):     # ffmpeg -re -stream_loop -1 ... icecast://
            set_title(ice.port, "/live.mp3", "Artist - Song", ice.admin_password)
            ...
        ice.stop(); ice.start()                            # same port, same config

Icecast refuses to run as root unless the config has <security><changeowner>; as root it then switches to
nobody/nogroup *before* opening its logs, so its log dir is made outside pytest's 0700 tmp tree and handed to
nobody. As a normal user no changeowner section is written and the log dir lives in tmp_path.
Everything binds 127.0.0.1; every process is stopped in a ``finally``; every wait is bounded.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import grp
import http.server
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ICECAST = shutil.which("icecast2") or shutil.which("icecast")
FFMPEG = shutil.which("ffmpeg")
SOURCE_PASSWORD = "streamtag-source"
ADMIN_PASSWORD = "streamtag-admin"
START_TIMEOUT_S = 10.0

FEED_CODECS = {  # fmt -> ffmpeg output options and the content type Icecast announces
    "mp3": (["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"], "audio/mpeg"),
    "aac": (["-c:a", "aac", "-b:a", "96k", "-f", "adts"], "audio/aac"),
    "ogg": (["-c:a", "libvorbis", "-q:a", "3", "-f", "ogg"], "application/ogg"),
}


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate ``process`` if it still runs; kill it when it ignores that for ``timeout`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def require_ffmpeg() -> str:
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    return FFMPEG


def require_icecast() -> str:
    require_ffmpeg()
    if ICECAST is None:
        pytest.skip("icecast2 is not installed (apt-get install icecast2)")
    return ICECAST


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


# clips ------------------------------------------------------------------------------------------------------------


def ffmpeg_generate(path: Path, lavfi: str, seconds: float, *, sr: int = 44100, channels: int = 1,
                    codec_args: list[str] | None = None) -> Path:
    """Render a lavfi source graph to ``path`` (codec chosen by the extension unless ``codec_args``)."""
    cmd = [require_ffmpeg(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", lavfi, "-t", f"{seconds}",
           "-ar", str(sr), "-ac", str(channels), *(codec_args or []), str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    return path


def tone_clip(path: Path, seconds: float = 5.0, freq: float = 440.0, **kw) -> Path:
    return ffmpeg_generate(path, f"sine=frequency={freq}:sample_rate=48000", seconds, **kw)


def music_clip(path: Path, seconds: float = 8.0, **kw) -> Path:
    """A music-like clip: an A-minor arpeggio over a bass note with a 2 Hz amplitude 'beat'."""
    expr = ("0.25*sin(2*PI*110*t)"
            "+0.2*sin(2*PI*(220+110*mod(floor(4*t),3))*t)*(0.6+0.4*cos(2*PI*2*t))"
            "+0.1*sin(2*PI*659.25*t)*exp(-6*mod(t,0.5))")
    return ffmpeg_generate(path, f"aevalsrc='{expr}':s=44100", seconds, **kw)


# icecast ----------------------------------------------------------------------------------------------------------


def _icecast_config(port: int, log_dir: Path, pid_file: Path, as_root: bool, max_clients: int = 32) -> str:
    security = ("<security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group>"
                "</changeowner></security>") if as_root else "<security><chroot>0</chroot></security>"
    return f"""<icecast>
  <location>loopback test</location>
  <admin>test@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits>
    <clients>{max_clients}</clients><sources>8</sources><queue-size>524288</queue-size>
    <client-timeout>30</client-timeout><header-timeout>10</header-timeout><source-timeout>5</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>32768</burst-size>
  </limits>
  <authentication>
    <source-password>{SOURCE_PASSWORD}</source-password>
    <relay-password>{SOURCE_PASSWORD}</relay-password>
    <admin-user>admin</admin-user>
    <admin-password>{ADMIN_PASSWORD}</admin-password>
  </authentication>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>{log_dir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
    <pidfile>{pid_file}</pidfile>
  </paths>
  <logging>
    <accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel><logsize>10000</logsize>
  </logging>
  {security}
</icecast>
"""


@dataclass
class IcecastServer:
    """A real icecast2 process on 127.0.0.1:port; stop() and start() again keep the port and config."""

    config: Path
    log_dir: Path
    port: int
    admin_password: str = ADMIN_PASSWORD
    source_password: str = SOURCE_PASSWORD
    process: subprocess.Popen | None = None
    _cleanup: list = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.port, self.admin_password))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the port may linger briefly after a stop
            self.process = subprocess.Popen(
                [ICECAST, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            try:
                wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 5.0, "icecast")
            except TimeoutError:
                pass
            if self.process.poll() is None and port_open(self.port):
                return
            err = self.stop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"icecast2 did not start on port {self.port}: {err}; log: {self.error_log()}")
            time.sleep(0.3)

    def stop(self) -> str:
        process, self.process = self.process, None
        if process is None:
            return ""
        stop_process(process)
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        return err.strip()

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.log_dir / "error.log").read_text(errors="replace")[-2000:]
        return ""


@contextlib.contextmanager
def icecast_server(tmp_path: Path, port: int | None = None, *, max_clients: int = 32) -> Iterator[IcecastServer]:
    """Start icecast2 on a free loopback port with a config written into ``tmp_path`` (at most ``max_clients``
    listeners); always stopped after."""
    require_icecast()
    as_root = os.geteuid() == 0
    cleanup: list[Path] = []
    if as_root:  # icecast opens its logs after switching to nobody: the dir must be reachable and writable
        log_dir = Path(tempfile.mkdtemp(prefix="streamtag-icecast-log-"))
        os.chown(log_dir, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        os.chmod(log_dir, 0o755)
        cleanup.append(log_dir)
    else:
        log_dir = tmp_path / "icecast-log"
        log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = tmp_path / "icecast.xml"
    config.write_text(_icecast_config(port, log_dir, log_dir / "icecast.pid", as_root, max_clients))
    server = IcecastServer(config=config, log_dir=log_dir, port=port)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        for p in cleanup:
            shutil.rmtree(p, ignore_errors=True)


def _admin_get(port: int, path: str, admin_password: str, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(f"admin:{admin_password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def mount_live(port: int, mount: str, admin_password: str = ADMIN_PASSWORD) -> bool:
    with contextlib.suppress(OSError, urllib.error.URLError):
        return f'mount="{mount}"'.encode() in _admin_get(port, "/admin/listmounts", admin_password, 2.0)
    return False


def set_title(port: int, mount: str, title: str, admin_password: str = ADMIN_PASSWORD) -> None:
    """Set the ICY StreamTitle of ``mount`` through Icecast's admin endpoint."""
    query = urllib.parse.urlencode({"mount": mount, "mode": "updinfo", "song": title})
    body = _admin_get(port, f"/admin/metadata?{query}", admin_password)
    if b"successful" not in body.lower():
        raise RuntimeError(f"icecast refused the metadata update: {body[:200]!r}")


@contextlib.contextmanager
def feed(port: int, mount: str, clip: Path, fmt: str = "mp3", *, source_password: str = SOURCE_PASSWORD,
         admin_password: str = ADMIN_PASSWORD, wait: bool = True, loop: bool = True,
         encoded: bool = False) -> Iterator[subprocess.Popen]:
    """ffmpeg -re -stream_loop -1 -i clip ... icecast://source:PW@127.0.0.1:PORT/mount; killed on exit.

    ``loop=False`` plays the clip once, so the mount ends (a stream that ends). ``encoded``: ``clip`` is already
    in ``fmt`` (:func:`encode`), and ffmpeg only paces its packets to Icecast, encoding nothing (a benchmark's
    machine then spends no CPU on the stations' encoders, as a monitoring host does not)."""
    codec_args, content_type = FEED_CODECS[fmt]
    if encoded:
        codec_args = ["-c:a", "copy", *codec_args[codec_args.index("-f"):]]
    cmd = [require_ffmpeg(), "-nostdin", "-v", "error", "-re", "-stream_loop", "-1" if loop else "0",
           "-i", str(clip), "-vn",
           *([] if encoded else ["-ac", "2", "-ar", "44100"]), *codec_args, "-content_type", content_type,
           f"icecast://source:{source_password}@127.0.0.1:{port}{mount}"]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if wait:
            wait_until(lambda: mount_live(port, mount, admin_password) or process.poll() is not None,
                       START_TIMEOUT_S, f"mount {mount}")
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"the ffmpeg feeder for {mount} exited: {err.strip()[-500:]}")
        yield process
    finally:
        stop_process(process)
        if process.stderr:
            process.stderr.close()


def encode(clip: Path, fmt: str, out: Path, *, loops: int = 0) -> subprocess.Popen:
    """Start encoding ``clip`` (played ``1 + loops`` times) as a feed of ``fmt`` would (44.1 kHz stereo,
    FEED_CODECS) into ``out``, for ``feed(..., encoded=True)``; the caller waits for the process."""
    codec_args, _ = FEED_CODECS[fmt]
    return subprocess.Popen([require_ffmpeg(), "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops),
                             "-i", str(clip), "-vn", "-ac", "2", "-ar", "44100", *codec_args, str(out)],
                            stdin=subprocess.DEVNULL)


# static HTTP ------------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    redirects: dict[str, str] = {}
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".m3u8": "application/vnd.apple.mpegurl",
        ".hls": "application/vnd.apple.mpegurl",  # an HLS playlist known only by its content type
        ".pls": "audio/x-scpls",
        ".ts": "video/mp2t",
        ".aac": "audio/aac",
        ".mp3": "audio/mpeg",
        ".ogg": "audio/ogg",
    }

    def do_GET(self) -> None:
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def self_signed_cert(directory: Path) -> Path:
    """A PEM file with a self-signed certificate and key for 127.0.0.1 (openssl CLI; skips without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    pem = directory / "loopback.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(pem)],
                   check=True, timeout=60, capture_output=True)
    return pem


@contextlib.contextmanager
def http_server(directory: Path, redirects: dict[str, str] | None = None,
                tls_cert: Path | None = None) -> Iterator[str]:
    """Serve ``directory`` on a free loopback port from a thread; yields the base URL (no trailing slash).

    ``redirects`` maps request paths to Location URLs answered with 302; ``tls_cert`` (PEM with key) makes it
    an https:// server."""
    import ssl

    handler_class = type("Handler", (_QuietHandler,), {"redirects": dict(redirects or {})})
    handler = functools.partial(handler_class, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_hls(directory: Path, clip: Path, *, segment_seconds: float = 1.0, codec: str = "aac",
             segment_type: str = "mpegts") -> Path:
    """A VOD HLS rendition of ``clip`` in ``directory`` (MPEG-TS segments, or fragmented MP4 with an init section
    when ``segment_type="fmp4"``); returns the playlist path."""
    directory.mkdir(parents=True, exist_ok=True)
    playlist = directory / "index.m3u8"
    codec_args = ["-c:a", "aac", "-b:a", "96k"] if codec == "aac" else ["-c:a", "libmp3lame", "-b:a", "128k"]
    ext = "m4s" if segment_type == "fmp4" else "ts"
    cmd = [require_ffmpeg(), "-nostdin", "-v", "error", "-y", "-i", str(clip), "-vn", *codec_args,
           "-f", "hls", "-hls_time", f"{segment_seconds}", "-hls_list_size", "0", "-hls_playlist_type", "vod",
           "-hls_segment_type", segment_type, "-hls_segment_filename", str(directory / f"seg%03d.{ext}"),
           str(playlist)]
    subprocess.run(cmd, check=True, timeout=60)
    return playlist


@contextlib.contextmanager
def stalling_server(payload: bytes, content_type: str = "audio/mpeg", status_line: str = "HTTP/1.0 200 OK",
                    extra_headers: str = "", hang: bool = True) -> Iterator[str]:
    """An HTTP server that sends headers and ``payload``, then goes silent without closing (a stalled stream),
    or with ``hang=False`` closes the connection (a cut download).

    Yields the URL; every connection is closed when the context exits."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(conn)
            with contextlib.suppress(OSError):
                conn.settimeout(2.0)
                conn.recv(65536)
                head = f"{status_line}\r\nContent-Type: {content_type}\r\n{extra_headers}\r\n"
                conn.sendall(head.encode("latin-1") + payload)
                if not hang:
                    conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/stall.mp3"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in connections:
            conn.close()


class ScriptedServer:
    """A raw TCP server on loopback that runs ``handler(conn, index, stop)`` for every connection it accepts
    (each on its own thread): the way to play a slow, broken or hostile HTTP server byte by byte."""

    def __init__(self, handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.host = host
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self.requests: list[bytes] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/stream.mp3") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = self.connections
            self.connections += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            self.requests.append(request)
            self.handler(conn, index, self.stop)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)


def trickle(conn: socket.socket, data: bytes, interval: float, stop: threading.Event) -> None:
    """Send ``data`` one byte every ``interval`` seconds (until ``stop``), as a slowloris-style server would."""
    for i in range(len(data)):
        if stop.wait(interval):
            return
        conn.sendall(data[i : i + 1])
