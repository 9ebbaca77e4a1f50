"""The web page's small JSON requests, served by ``serve`` beside the websocket (GET, same checks as a handshake):

- ``/api/check``: 200 ``{"ok": true, "recording": bool, "families": {family: [genre, ...]}}`` (the model's
  taxonomy over the shown labels: the page colours each bar by its genre's family), or the status a websocket handshake would get with this request's token
  and Host (401, 403) and ``{"error": "..."}``: a browser cannot read why a websocket was refused, so the page
  asks here and says it (e.g. "open the page with ?token=…").
- ``/api/history?stream=NAME&minutes=M``: the stream's segments of the last M minutes (at most 180) from the
  station log when ``--record`` is on: ``{"stream", "recording", "segments": [{"start_ts", "end_ts", "family",
  "genre", "confidence", "title"}]}`` (oldest first, at most ``MAX_SEGMENTS``).
- ``/metrics``: the process's health in Prometheus' text format (``Health.metrics``; docs/protocol.md, "Metrics").
"""
from __future__ import annotations

import email.utils
import hmac
import json
import logging
import sqlite3
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

__all__ = ["handle", "MAX_SEGMENTS", "MAX_MINUTES"]

MAX_SEGMENTS = 500  # segments one history answer holds at most (the newest)
MAX_MINUTES = 180.0  # the longest history one request may ask for
HISTORY_SQL = """
SELECT start_ts, end_ts, family, genre, confidence, title FROM (
    SELECT * FROM segments WHERE station = ? AND end_ts > ? ORDER BY end_ts DESC LIMIT ?
) ORDER BY start_ts
"""


def _json(status: HTTPStatus, body: dict[str, Any]) -> Response:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
        ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
    ])
    return Response(status.value, status.phrase, headers, data)


def _refusal(server: Any, connection: Any, request: Request) -> tuple[HTTPStatus, str] | None:
    """What a websocket handshake with this request's Host and token would be refused with (None: accepted).
    Wrong tokens count against the address as failed handshakes do (the same throttle)."""
    address = str(connection.remote_address[0]) if getattr(connection, "remote_address", None) else "?"
    wait = server.throttle.blocked_for(address)
    if wait > 0:
        return HTTPStatus.TOO_MANY_REQUESTS, f"too many failed attempts; retry in {int(wait) + 1} s"
    host = request.headers.get("Host", "")
    if not server._host_allowed(host):
        return HTTPStatus.FORBIDDEN, f"this page's address ({host}) is not served here; open it as " \
                                     f"http://127.0.0.1:{server.port}/"
    token = server.config.token
    if token is not None:
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            if given:
                server.throttle.failed(address)
            return HTTPStatus.UNAUTHORIZED, ("this server needs a token: open the page as "
                                             "http://HOST:PORT/?token=YOUR_TOKEN" if not given else
                                             "wrong token: check the ?token= in the page's address")
    return None


def handle(server: Any, connection: Any, request: Request, path: str) -> Response:
    refused = _refusal(server, connection, request)
    if refused is not None:
        status, text = refused
        return _json(status, {"ok": False, "status": status.value, "error": text})
    if path == "/api/check":
        return _json(HTTPStatus.OK, {"ok": True, "recording": server.history_log is not None,
                                     "families": _families(server)})
    if path == "/api/history":
        return _history(server, request)
    if path == "/metrics":
        return _metrics(server)
    return _json(HTTPStatus.NOT_FOUND, {"ok": False, "error": f"no such request: {path[:80]}"})


def _metrics(server: Any) -> Response:
    """Prometheus text: the serve process's health (Health.metrics), under the same Host and token checks as the
    page's requests (a scraper sends ``Authorization: Bearer TOKEN`` or ``?token=``)."""
    render = getattr(server, "metrics", None)
    if render is None:
        return _json(HTTPStatus.NOT_FOUND, {"ok": False, "error": "this server has no metrics (streamtag serve "
                                                                  "has them)"})
    try:
        data = render().encode()
    except Exception as e:  # a bug: one line in the log, a 500 to the scraper, never the server
        log.error("/metrics failed (%s: %s)", type(e).__name__, e)
        return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"ok": False, "error": "metrics failed; see the server's log"})
    headers = Headers([
        ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
    ])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, data)


def _families(server: Any) -> dict[str, list[str]]:
    """The model's taxonomy over the shown labels, family -> genres (each genre its own family without one)."""
    from .segments import family_resolver

    engine = server.runner.engine
    family_of = family_resolver(getattr(engine, "bundle", None))
    out: dict[str, list[str]] = {}
    for label in engine.labels_shown:
        out.setdefault(family_of(label), []).append(label)
    return out


def _history(server: Any, request: Request) -> Response:
    query = parse_qs(urlsplit(request.path).query)
    stream = query.get("stream", [""])[0][:200]
    try:
        minutes = min(MAX_MINUTES, max(0.0, float(query.get("minutes", ["10"])[0])))
    except ValueError:
        return _json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": "minutes must be a number"})
    body: dict[str, Any] = {"ok": True, "stream": stream, "recording": server.history_log is not None,
                            "segments": []}
    if server.history_log is None or not stream:
        return _json(HTTPStatus.OK, body)
    try:
        conn = sqlite3.connect(f"file:{server.history_log}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = conn.execute(HISTORY_SQL, (stream, time.time() - 60 * minutes, MAX_SEGMENTS)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"ok": False, "error": f"station log unavailable ({e})"})
    body["segments"] = [{"start_ts": round(a, 3), "end_ts": round(b, 3), "family": f, "genre": g,
                         "confidence": round(c, 4), "title": t} for a, b, f, g, c, t in rows]
    return _json(HTTPStatus.OK, body)
