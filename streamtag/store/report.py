"""``streamtag report PATH``: what the station log holds, per station: family shares per hour or day, and the
segment list. The numbers come from SQL over the two tables (streamtag/store/schema.py); this module only lays
them out as a table, CSV, or one self-contained HTML page with a stacked-bar chart. Times are UTC, or the
machine's local time with ``--tz local`` (periods then start at local hours and midnights).
"""
from __future__ import annotations

import argparse
import csv
import html
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from ..errors import ConfigError
from .log import parse_duration
from .schema import SCHEMA_VERSION, connect, describe

__all__ = ["Report", "load_report", "cmd_report", "SHARES_SQL", "SEGMENTS_SQL"]

PERIOD_FORMATS = {"hour": "%Y-%m-%d %H:%M", "day": "%Y-%m-%d"}
TZ_MODIFIERS = {"utc": "+0 seconds", "local": "localtime"}  # SQLite date modifiers

# each station's family shares per period: seconds headlined, share of the period's logged time, mean confidence
SHARES_SQL = """
SELECT station,
       strftime(:fmt, hour, 'unixepoch', :tz) AS period,
       family,
       SUM(seconds) AS seconds,
       SUM(seconds) / SUM(SUM(seconds)) OVER (PARTITION BY station, strftime(:fmt, hour, 'unixepoch', :tz)) AS share,
       SUM(conf_seconds) / SUM(seconds) AS confidence
FROM hourly
WHERE hour + 3600 > :since AND (:station IS NULL OR station = :station) AND seconds > 0
GROUP BY station, period, family
ORDER BY station, period, seconds DESC, family
"""

SEGMENTS_SQL = """
SELECT station, start_ts, end_ts, family, genre, confidence, title
FROM segments
WHERE end_ts > :since AND (:station IS NULL OR station = :station)
ORDER BY station, start_ts
"""


@dataclass
class Report:
    since: float  # Unix seconds
    by: str  # "hour" or "day"
    shares: list[tuple[str, str, str, float, float, float]]  # station, period, family, seconds, share, confidence
    segments: list[tuple[str, float, float, str, str, float, str | None]]
    local: bool = False  # times in the machine's local time zone, else UTC

    @property
    def tz(self) -> str:
        """The zone's name as shown in the headings: UTC, or the local zone's abbreviation (e.g. CET)."""
        return datetime.fromtimestamp(self.since).astimezone().strftime("%Z") if self.local else "UTC"

    def time(self, ts: float) -> str:
        """``ts`` (Unix seconds) as YYYY-MM-DD HH:MM:SS in the report's zone."""
        when = datetime.fromtimestamp(ts).astimezone() if self.local else datetime.fromtimestamp(ts, timezone.utc)
        return when.strftime("%Y-%m-%d %H:%M:%S")


def load_report(path: str, *, station: str | None = None, since: float = 86400.0, by: str | None = None,
                now: float | None = None, local: bool = False) -> Report:
    """Read the report of the last ``since`` seconds (``by``: hour or day; default hour up to 2 days, else day;
    ``local``: periods and times in the machine's time zone, else UTC)."""
    if not os.path.isfile(path):
        raise ConfigError(f"station log {path} not found; record one with `streamtag serve --record {path}` "
                          f"or `streamtag stream URL --record {path}`")
    by = by or ("hour" if since <= 2 * 86400 else "day")
    start = (time.time() if now is None else now) - since
    conn = connect(path, readonly=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{path} is not a station log this streamtag reads (schema version {version}, "
                              f"expected {SCHEMA_VERSION})")
        args = {"fmt": PERIOD_FORMATS[by], "since": start, "station": station,
                "tz": TZ_MODIFIERS["local" if local else "utc"]}
        shares = [tuple(r) for r in conn.execute(SHARES_SQL, args)]
        segments = [tuple(r) for r in conn.execute(SEGMENTS_SQL, args)]
    except sqlite3.Error as e:
        raise ConfigError(f"station log {path}: {describe(e)}") from e
    finally:
        conn.close()
    return Report(since=start, by=by, shares=shares, segments=segments, local=local)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _grouped(report: Report) -> dict[str, dict[str, list[tuple[str, float, float, float]]]]:
    """station -> period -> [(family, seconds, share, confidence)], largest first (the SQL's order)."""
    out: dict[str, dict[str, list[tuple[str, float, float, float]]]] = {}
    for station, period, family, seconds, share, conf in report.shares:
        out.setdefault(station, {}).setdefault(period, []).append((family, seconds, share, conf))
    return out


# -- table ---------------------------------------------------------------------------------------------------
def write_table(report: Report, out: TextIO, *, what: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=max(100, Console(file=out).width), highlight=False)
    if what in ("shares", "both"):
        groups = _grouped(report)
        if not groups:
            console.print(f"no family shares since {report.time(report.since)} {report.tz}")
        for station, periods in groups.items():
            t = Table(title=f"{station}: family shares per {report.by} ({report.tz})", title_justify="left",
                      box=None, padding=(0, 2))
            t.add_column(report.by)
            t.add_column("logged", justify="right")
            t.add_column("families (share of the time, mean confidence)")
            for period, rows in periods.items():
                total = sum(r[1] for r in rows)
                t.add_row(period, _minutes(total),
                          "  ".join(f"{f} {100 * share:.0f}% ({conf:.2f})" for f, _, share, conf in rows))
            console.print(t)
            console.print()
    if what in ("segments", "both"):
        t = Table(title=f"segments since {report.time(report.since)} {report.tz}", title_justify="left", box=None,
                  padding=(0, 2))
        for col in ("station", f"start ({report.tz})", "end", "family", "genre", "conf", "title"):
            t.add_column(col)
        for station, a, b, family, genre, conf, title in report.segments:
            t.add_row(station, report.time(a), report.time(b)[11:], family, genre, f"{conf:.2f}", title or "")
        if not report.segments:
            console.print(f"no segments since {report.time(report.since)} {report.tz}")
        else:
            console.print(t)


# -- csv -----------------------------------------------------------------------------------------------------
def write_csv(report: Report, out: TextIO, *, what: str) -> None:
    w = csv.writer(out, lineterminator="\n")
    if what == "segments":
        zone = "local" if report.local else "utc"
        w.writerow(["station", f"start_{zone}", f"end_{zone}", "start_ts", "end_ts", "family", "genre", "confidence", "title"])
        for station, a, b, family, genre, conf, title in report.segments:
            w.writerow([station, report.time(a), report.time(b), f"{a:.3f}", f"{b:.3f}", family, genre, f"{conf:.4f}", title or ""])
    else:
        w.writerow(["station", report.by, "family", "seconds", "share", "confidence"])
        for station, period, family, seconds, share, conf in report.shares:
            w.writerow([station, period, family, f"{seconds:.1f}", f"{share:.4f}", f"{conf:.4f}"])


# -- html ----------------------------------------------------------------------------------------------------
def _chart(periods: dict[str, list[tuple[str, float, float, float]]]) -> str:
    """A stacked bar per period (the families' shares), as inline SVG."""
    from ..plot import family_color

    names = list(periods)
    bar, gap, height, left, bottom = 28, 8, 220, 40, 70
    width = left + len(names) * (bar + gap) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom}" '
             f'font-family="sans-serif" font-size="10" role="img" aria-label="family shares">']
    for i in range(5):
        y = 10 + height * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y + 3}" text-anchor="end">{100 - 25 * i}%</text>')
    for j, period in enumerate(names):
        x = left + j * (bar + gap)
        y = 10.0
        for family, seconds, share, conf in periods[period]:
            h = height * share
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" fill="{family_color(family)}">'
                         f'<title>{html.escape(period)}: {html.escape(family)} {100 * share:.0f}% '
                         f'({seconds / 60:.1f} min, confidence {conf:.2f})</title></rect>')
            y += h
        parts.append(f'<text transform="translate({x + bar / 2},{height + 16}) rotate(60)">'
                     f'{html.escape(period[5:] if len(period) > 10 else period)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_html(report: Report, out: TextIO, *, what: str) -> None:
    from ..plot import family_color

    body: list[str] = []
    if what in ("shares", "both"):
        groups = _grouped(report)
        if not groups:
            body.append(f"<p>No family shares since {report.time(report.since)} {report.tz}.</p>")
        for station, periods in groups.items():
            families = list(dict.fromkeys(f for rows in periods.values() for f, *_ in rows))
            legend = " ".join(f"<span class=sw style='background:{family_color(f)}'></span>{html.escape(f)}"
                              for f in families)
            rows = "".join(
                f"<tr><td>{html.escape(p)}</td><td>{_minutes(sum(r[1] for r in rs))}</td><td>"
                + ", ".join(f"{html.escape(f)} {100 * sh:.0f}%" for f, _, sh, _ in rs) + "</td></tr>"
                for p, rs in periods.items())
            body.append(f"<section class=station><h2>{html.escape(station)}</h2><p>{legend}</p>{_chart(periods)}"
                        f"<table><tr><th>{report.by} ({report.tz})</th><th>logged</th><th>families</th></tr>{rows}</table>"
                        "</section>")
    if what in ("segments", "both"):
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{report.time(a)}</td><td>{report.time(b)[11:]}</td><td><span class=sw "
            f"style='background:{family_color(f)}'></span>{html.escape(f)}</td><td>{html.escape(g)}</td>"
            f"<td>{c:.2f}</td><td>{html.escape(t or '')}</td></tr>" for s, a, b, f, g, c, t in report.segments)
        body.append(f"<h2>Segments</h2><table id=segments><tr><th>station</th><th>start ({report.tz})</th><th>end</th>"
                    f"<th>family</th><th>genre</th><th>confidence</th><th>title</th></tr>{rows}</table>")
    out.write(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamtag station log</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}} table{{border-collapse:collapse;
margin:.5rem 0 1.5rem}} td,th{{padding:.15rem .6rem;text-align:left;border-bottom:1px solid #ddd}}
.sw{{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 .6rem;border-radius:2px;vertical-align:-1px}}
</style></head><body>
<h1>Station log</h1><p>since {report.time(report.since)} {report.tz}, by {report.by}</p>
{"".join(body)}
</body></html>
""")


# -- the command ---------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    since = parse_duration(args.since, "--since")
    if args.by is not None and args.by not in PERIOD_FORMATS:
        raise ConfigError(f"--by {args.by!r}: use hour or day")
    what = args.what or ("shares" if args.format == "csv" else "both")
    if args.format == "csv" and what == "both":
        raise ConfigError("--format csv prints one table: give --what shares or --what segments")
    report = load_report(args.path, station=args.station, since=since, by=args.by, local=args.tz == "local")
    out: Any = sys.stdout
    {"table": write_table, "csv": write_csv, "html": write_html}[args.format](report, out, what=what)
    out.flush()
    return 0
