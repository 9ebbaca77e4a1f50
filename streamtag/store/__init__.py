"""The station log: closed segments and hourly family aggregates of live streams in SQLite (``--record PATH``),
and the reports made from it (``streamtag report PATH``). Schema: :mod:`streamtag.store.schema`."""
from __future__ import annotations

from .log import DEFAULT_KEEP, StationLog, check_record_args, parse_duration
from .report import Report, load_report
from .schema import SCHEMA_VERSION

__all__ = ["StationLog", "parse_duration", "check_record_args", "load_report", "Report", "SCHEMA_VERSION", "DEFAULT_KEEP"]
