"""The station log (streamtag/store): a real SQLite file written by the real writer thread, real failures (a size
limit that makes SQLite answer "database or disk is full", another process's lock), a real `serve --record`
process killed with SIGKILL, and `streamtag report` over what it left."""
from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from live_fixtures import REPO, TINY_LABELS, tiny_bundle, write_tone_wav

from streamtag.cli import main
from streamtag.errors import ConfigError
from streamtag.events import GenreUpdate
from streamtag.store import SCHEMA_VERSION, StationLog, load_report, parse_duration


def _u(stream: str, t: float, top: str, wall: float, p: float = 0.8, title: str | None = None) -> GenreUpdate:
    probs = {label: (p if label == top else 0.01) for label in TINY_LABELS}
    return GenreUpdate(stream=stream, t=t, top=[(top, p)], probs=probs, raw=dict(probs), model="tiny",
                       wall=datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds"),
                       title=title)


def _feed(slog: StationLog, stream: str, genres: list[str], *, t0_wall: float, hop: float = 1.0,
          title: str | None = None) -> None:
    slog.on_stream_added(stream, "test", title)
    for i, g in enumerate(genres):
        slog.on_update([_u(stream, (i + 1) * hop, g, t0_wall + (i + 1) * hop, title=title)])
    slog.on_stream_removed(stream, None)


def _t0(span: float) -> float:
    """A start (Unix s) for ``span`` seconds of updates that end before now and do not cross a half-hour
    boundary: the reports' hourly rows (UTC, or a local zone at :30) must not depend on when the test runs."""
    end = time.time() - 10.0
    boundary = (end + 5.0) // 1800 * 1800
    if end - span - 5.0 <= boundary:
        end = boundary - 10.0
    return end - span


def _rows(path, sql, *args):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_segments_and_hourly_aggregates_agree(tmp_path):
    db = str(tmp_path / "log.db")
    t0 = _t0(70)
    slog = StationLog(db, checkpoint_s=0.0)
    _feed(slog, "jazzfm", ["jazz"] * 30 + ["rock"] * 10 + ["jazz"] * 20, t0_wall=t0, title="Take Five")
    _feed(slog, "rockfm", ["rock"] * 40, t0_wall=t0 + 20)
    slog.close()
    assert slog.dropped == 0 and slog.failed == 0
    segs = _rows(db, "SELECT station, family, end_ts - start_ts, closed, title FROM segments ORDER BY station, "
                     "start_ts")
    assert [(s, f, round(d), c) for s, f, d, c, _ in segs] == [
        ("jazzfm", "jazz", 30, 1), ("jazzfm", "rock", 10, 1), ("jazzfm", "jazz", 20, 1), ("rockfm", "rock", 40, 1)]
    assert segs[0][4] == "Take Five"
    # the hourly rows hold exactly the segments' time, per station and family
    hourly = dict(((s, f), v) for s, f, v in _rows(db, "SELECT station, family, SUM(seconds) FROM hourly "
                                                       "GROUP BY station, family"))
    assert hourly[("jazzfm", "jazz")] == pytest.approx(50, abs=1e-6)
    assert hourly[("jazzfm", "rock")] == pytest.approx(10, abs=1e-6)
    assert hourly[("rockfm", "rock")] == pytest.approx(40, abs=1e-6)
    assert _rows(db, "PRAGMA journal_mode")[0][0] == "wal"
    assert _rows(db, "PRAGMA user_version")[0][0] == SCHEMA_VERSION

    report = load_report(db, since=3600)
    shares = {(s, f): share for s, _, f, _, share, _ in report.shares}
    assert shares[("jazzfm", "jazz")] + shares[("jazzfm", "rock")] == pytest.approx(1.0)
    assert shares[("rockfm", "rock")] == pytest.approx(1.0)
    assert len(load_report(db, station="rockfm", since=3600).segments) == 1


@pytest.fixture
def kolkata():
    """The process's local zone set to UTC+5:30 (a half-hour offset), restored afterwards."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_report_in_local_time_shifts_periods_and_times(tmp_path, kolkata, capsys):
    """`report --tz local`: the same rows, with periods starting at local hours (here :30 past the UTC hour) and
    segment times in local time; UTC stays the default."""
    db = str(tmp_path / "log.db")
    slog = StationLog(db, checkpoint_s=0.0)
    _feed(slog, "jazzfm", ["jazz"] * 30, t0_wall=_t0(40))
    slog.close()
    utc, local = load_report(db, since=3600), load_report(db, since=3600, local=True)
    assert [r[2:] for r in utc.shares] == [r[2:] for r in local.shares] and utc.segments == local.segments
    assert all(p.endswith(":00") for _, p, *_ in utc.shares) and all(p.endswith(":30") for _, p, *_ in local.shares)
    start = utc.segments[0][1]
    shifted = datetime.strptime(local.time(start), "%Y-%m-%d %H:%M:%S") - datetime.strptime(utc.time(start),
                                                                                             "%Y-%m-%d %H:%M:%S")
    assert shifted.total_seconds() == 5.5 * 3600 and local.tz == "IST" and utc.tz == "UTC"
    assert main(["report", db, "--since", "1h", "--format", "csv", "--what", "segments", "--tz", "local"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("station,start_local,end_local") and local.time(start) in out


def test_retention_deletes_what_is_older_than_keep(tmp_path):
    db = str(tmp_path / "log.db")
    slog = StationLog(db, checkpoint_s=0.0)
    _feed(slog, "old", ["folk"] * 10, t0_wall=time.time() - 3 * 86400)
    _feed(slog, "new", ["folk"] * 10, t0_wall=time.time() - 60)
    slog.close()
    assert {r[0] for r in _rows(db, "SELECT station FROM segments")} == {"old", "new"}
    StationLog(db, keep=parse_duration("2d")).close()  # retention runs at start
    assert {r[0] for r in _rows(db, "SELECT station FROM segments")} == {"new"}
    assert {r[0] for r in _rows(db, "SELECT station FROM hourly")} == {"new"}


def test_disk_full_is_one_line_and_never_blocks_the_live_path(tmp_path):
    db = str(tmp_path / "log.db")
    StationLog(db).close()  # create the schema
    err = io.StringIO()
    pages = _rows(db, "PRAGMA page_count")[0][0]
    slog = StationLog(db, checkpoint_s=0.0, max_pages=pages, err=err)  # not one more page: SQLITE_FULL
    slog.on_stream_added("s", "x", None)
    long_title = "x" * 20000  # rows larger than a page: every write needs a new page
    t0 = time.monotonic()
    for i in range(200):
        slog.on_update([_u("s", i + 1.0, TINY_LABELS[i % 2], time.time(), title=long_title)])
    assert time.monotonic() - t0 < 5.0  # the sink hands off; it never waits for the failing disk
    slog.on_stream_removed("s", None)
    slog.close()
    lines = err.getvalue().splitlines()
    assert slog.failed > 0 and lines, "the failed writes were not reported"
    assert len(lines) == 1 and "disk is full" in lines[0] and lines[0].startswith("streamtag: error: station log")


def test_a_locked_database_and_bad_files_give_one_line_errors(tmp_path):
    db = str(tmp_path / "log.db")
    StationLog(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConfigError, match="locked by another process"):
            StationLog(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # a lock taken while recording: the records wait and are written once it is released, none lost
    err = io.StringIO()
    slog = StationLog(db, checkpoint_s=0.0, err=err)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        _feed(slog, "held", ["jazz"] * 5 + ["rock"] * 5, t0_wall=time.time() - 20)
        deadline = time.monotonic() + 20
        while "locked" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    slog.close()
    assert err.getvalue().count("\n") == 1 and "locked by another process" in err.getvalue()
    assert slog.failed == 0
    assert [r[0] for r in _rows(db, "SELECT family FROM segments WHERE station = 'held' ORDER BY start_ts")] == \
        ["jazz", "rock"]
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE songs (x)")
    conn.close()
    with pytest.raises(ConfigError, match="not a streamtag station log"):
        StationLog(str(other))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a valid SQLite database"):
        StationLog(str(text))
    with pytest.raises(ConfigError, match="30d"):
        parse_duration("thirty days")
    with pytest.raises(ConfigError, match="not found"):
        load_report(str(tmp_path / "missing.db"))


def test_report_command_table_csv_html(tmp_path, capsys):
    db = str(tmp_path / "log.db")
    slog = StationLog(db, checkpoint_s=0.0)
    _feed(slog, "jazzfm", ["jazz"] * 30 + ["rock"] * 10, t0_wall=_t0(50), title="Blue <Train>")
    slog.close()
    assert main(["report", db]) == 0
    out = capsys.readouterr().out
    assert "jazzfm" in out and "jazz 75%" in out and "rock 25%" in out and "Blue <Train>" in out
    assert main(["report", db, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["family"]: float(r["share"]) for r in rows} == {"jazz": 0.75, "rock": 0.25}
    assert main(["report", db, "--format", "csv", "--what", "segments", "--station", "jazzfm"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["family"] for r in rows] == ["jazz", "rock"] and rows[0]["title"] == "Blue <Train>"
    assert main(["report", db, "--format", "html", "--by", "day"]) == 0
    page = capsys.readouterr().out
    assert "<svg" in page and "Blue &lt;Train&gt;" in page and "<script" not in page
    assert main(["report", db, "--format", "csv", "--what", "both"]) == 1
    assert "one table" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none.db")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err


@pytest.mark.slow
def test_kill_9_loses_at_most_the_last_seconds(tmp_path):
    """A real `serve --record` process, killed with SIGKILL while a stream plays: the log is intact and holds the
    stream up to a few seconds before the kill."""
    bundle = tiny_bundle(tmp_path / "tiny")
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=120.0, sr=16000)
    db = str(tmp_path / "log.db")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--port", "0", "--source", f"radio={wav}", "--speed", "1",
         "--record", db, "--model", str(bundle.path), "--device", "cpu", "--hop", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 90
        first = None
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(db):
                try:
                    first = _rows(db, "SELECT MAX(end_ts) FROM segments")[0][0]
                except sqlite3.OperationalError:  # the schema is being created
                    first = None
                if first is not None:
                    break
            time.sleep(0.2)
        assert first is not None, f"nothing recorded; stderr: {proc.stderr.read().decode() if proc.poll() else ''}"
        time.sleep(6.0)  # it keeps playing: segments close and the open one moves forward
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _rows(db, "PRAGMA integrity_check")[0][0] == "ok"
    last = _rows(db, "SELECT MAX(end_ts) FROM segments WHERE station = 'radio'")[0][0]
    print(f"kill -9: the log ends {killed_at - last:.2f} s before the kill")
    assert last > first and killed_at - last < 5.0, f"{killed_at - last:.1f} s lost"
    covered = _rows(db, "SELECT SUM(end_ts - start_ts) FROM segments")[0][0]
    hourly = _rows(db, "SELECT SUM(seconds) FROM hourly")[0][0]
    assert hourly == pytest.approx(covered, abs=1e-3)  # the aggregates match the segments, even after the kill
    report = load_report(db, since=3600)
    periods: dict[str, float] = {}
    for _, period, _, _, share, _ in report.shares:
        periods[period] = periods.get(period, 0.0) + share
    assert report.segments and periods and all(v == pytest.approx(1.0) for v in periods.values())
