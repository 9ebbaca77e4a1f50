"""The station log's schema, in one place, with its version (``PRAGMA user_version``).

Times are Unix seconds (UTC). ``segments`` holds one row per segment; a segment still playing is a row with
``closed = 0`` whose ``end_ts`` the writer moves forward every few seconds (so a crash loses only the last
seconds), set to 1 when the segment closes. ``hourly`` holds, per station, UTC hour and family, the seconds that
family was the headline and the confidence integrated over them (``conf_seconds / seconds`` is its mean).
Reports read only these two tables, with SQL (streamtag/store/report.py).
"""
from __future__ import annotations

import sqlite3

from ..errors import ConfigError

__all__ = ["SCHEMA_VERSION", "SCHEMA", "ensure_schema", "connect"]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    start_ts REAL NOT NULL,          -- Unix seconds, UTC
    end_ts REAL NOT NULL,
    family TEXT NOT NULL,
    genre TEXT NOT NULL,             -- the leading genre inside the family
    confidence REAL NOT NULL,        -- mean headline probability
    title TEXT,                      -- ICY title, when the station sends one
    model TEXT NOT NULL DEFAULT '',
    closed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS segments_by_station_time ON segments (station, end_ts);
CREATE INDEX IF NOT EXISTS segments_by_time ON segments (end_ts);
CREATE TABLE IF NOT EXISTS hourly (
    station TEXT NOT NULL,
    hour INTEGER NOT NULL,           -- Unix seconds of the UTC hour's start
    family TEXT NOT NULL,
    seconds REAL NOT NULL,           -- seconds the family was the headline in that hour
    conf_seconds REAL NOT NULL,      -- confidence integrated over those seconds
    PRIMARY KEY (station, hour, family)
) WITHOUT ROWID;
"""

BUSY_TIMEOUT_S = 2.0  # s a statement waits for another process's lock before "database is locked"


def connect(path: str, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in WAL mode (``readonly``: the file must exist; nothing is created or written)."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing committed
    except sqlite3.Error as e:
        raise ConfigError(f"station log {path}: {describe(e)}") from e
    return conn


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new file; refuse a file written by a newer streamtag or not a station log."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(f"station log {path} has schema version {version}, newer than this streamtag's "
                              f"{SCHEMA_VERSION}; upgrade streamtag or record to another file")
        if version == 0:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables - {"segments", "hourly"}:
                raise ConfigError(f"{path} is an SQLite database but not a streamtag station log; "
                                  "record to another file")
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    except sqlite3.Error as e:
        raise ConfigError(f"station log {path}: {describe(e)}") from e


def describe(e: sqlite3.Error) -> str:
    """One line saying what went wrong and what to do."""
    text = str(e)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return "the database is locked by another process (another streamtag --record on the same file?); " \
               "stop it or record to another file"
    if "full" in low:
        return "the disk is full (or the database reached its size limit); free space, or lower --keep"
    if "not a database" in low or "malformed" in low:
        return "not a valid SQLite database; record to another file"
    if "unable to open" in low or "readonly" in low or "read-only" in low:
        return "cannot open or write the file; check that its folder exists and is writable"
    return f"{text} ({type(e).__name__})"
