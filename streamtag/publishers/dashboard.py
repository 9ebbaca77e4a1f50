"""Terminal dashboard (rich): a pure ``render(state)`` plus a thin :class:`Dashboard` that shows it live.

State is kept apart from rendering: :func:`snapshot` reads the engine into a :class:`DashboardState` (plain
values, no references into the engine), :func:`render` turns a state into a renderable and touches nothing
else, and :class:`Dashboard` pushes renderables to ``rich.live.Live`` at a rate its caller owns.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["StreamView", "DashboardState", "render", "snapshot", "Dashboard", "bar"]

BAR_WIDTH = 32  # characters of a full probability bar
LEVEL_WIDTH = 24  # characters of the level meter
LEVEL_FLOOR_DB = -60.0  # dBFS shown as an empty meter
HISTORY_SHOWN = 48  # top-genre history entries drawn in the timeline
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue", "bright_red")
_EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class StreamView:
    """What the dashboard shows of one stream (plain values)."""

    name: str
    source: str = ""
    title: str | None = None  # ICY StreamTitle for radio
    t: float = 0.0  # s of audio received
    probs: tuple[tuple[str, float], ...] = ()  # smoothed probability of every shown label
    top: tuple[str, float] | None = None  # held top genre and its smoothed probability
    history: tuple[str, ...] = ()  # recent top genres, oldest first
    level_db: float | None = None  # input level, dBFS
    latency_ms: float | None = None  # audio arrival -> update, ms
    overruns: int = 0  # ring-buffer overruns + device/input overflows
    updates: int = 0
    status: str = "live"  # "live", "ended" or an error message


@dataclass(frozen=True)
class DashboardState:
    model: str
    sample_rate: int  # Hz, the model's input rate
    hop_seconds: float
    streams: tuple[StreamView, ...] = ()
    labels: tuple[str, ...] = ()  # every shown label (fixes colours across streams)
    max_bars: int = 12  # bars per stream (highest first)
    step_ms: float | None = None  # last engine step, ms
    elapsed: float = 0.0  # s since start
    footer: str = "Ctrl-C to stop"


def bar(p: float, width: int = BAR_WIDTH) -> str:
    """A left-aligned bar of ``width`` characters for p in [0, 1] (eighth-block resolution)."""
    p = min(1.0, max(0.0, p if math.isfinite(p) else 0.0))
    eighths = int(round(p * width * 8))
    full, rest = divmod(eighths, 8)
    s = "█" * full + (_EIGHTHS[rest] if rest and full < width else "")
    return s.ljust(width)


def _color(label: str, labels: tuple[str, ...]) -> str:
    i = labels.index(label) if label in labels else sum(map(ord, label))
    return PALETTE[i % len(PALETTE)]


def _runs(history: tuple[str, ...]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for label in history:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    return runs


def _timeline(history: tuple[str, ...], labels: tuple[str, ...]) -> Text:
    recent = history[-HISTORY_SHOWN:]
    text = Text()
    for label, n in _runs(recent):
        text.append("▇" * n, style=_color(label, labels))
    runs = _runs(recent)[-4:]
    if runs:
        text.append("  ")
        text.append(" → ".join(f"{label}×{n}" for label, n in runs), style="dim")
    return text


def _level(level_db: float | None) -> Text:
    if level_db is None or not math.isfinite(level_db):
        return Text("─" * LEVEL_WIDTH + "   silence", style="dim")
    frac = min(1.0, max(0.0, (level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB))
    n = int(round(frac * LEVEL_WIDTH))
    style = "red" if level_db > -3 else "yellow" if level_db > -12 else "green"
    text = Text("▮" * n, style=style)
    text.append("─" * (LEVEL_WIDTH - n), style="dim")
    text.append(f" {level_db:6.1f} dBFS")
    return text


def _stream_panel(s: StreamView, state: DashboardState) -> Panel:
    head = Text()
    if s.top is not None:
        head.append("▶ ", style="bold")
        head.append(s.top[0], style=f"bold {_color(s.top[0], state.labels)}")
        head.append(f"  {s.top[1]:.0%}", style="bold")
    else:
        head.append("listening… (first update after one window of audio)", style="dim")
    rows: list[RenderableType] = [head]
    if s.title:
        rows.append(Text(f"♪ {s.title}", style="italic"))

    bars = Table.grid(padding=(0, 1))
    bars.add_column(justify="right", no_wrap=True)
    bars.add_column(no_wrap=True)
    bars.add_column(justify="right", no_wrap=True)
    for label, p in sorted(s.probs, key=lambda lp: -lp[1])[: state.max_bars]:
        bars.add_row(label, Text(bar(p), style=_color(label, state.labels)), f"{p:.2f}")
    rows.append(bars)

    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    facts.add_row("history", _timeline(s.history, state.labels))
    facts.add_row("level", _level(s.level_db))
    lat = f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "–"
    over = Text(f"overruns {s.overruns}", style="bold red" if s.overruns else "")
    facts.add_row("stream", Text.assemble(f"t {s.t:7.1f} s · updates {s.updates} · latency {lat} · ", over))
    if s.source:
        facts.add_row("source", Text(s.source, overflow="ellipsis", no_wrap=True))
    rows.append(facts)

    border = "green" if s.status == "live" else "yellow" if s.status == "ended" else "red"
    subtitle = None if s.status == "live" else Text(s.status, style=border)
    return Panel(Group(*rows), title=f"[bold]{s.name}[/]", subtitle=subtitle, border_style=border)


def render(state: DashboardState) -> RenderableType:
    """The whole dashboard for ``state`` (pure: no I/O, no clock)."""
    step = f" · step {state.step_ms:.0f} ms" if state.step_ms is not None else ""
    header = Text.assemble(
        ("streamtag ", "bold"),
        f"model {state.model} · {state.sample_rate} Hz · hop {state.hop_seconds:.2f} s",
        step,
        f" · {len(state.streams)} stream{'s' if len(state.streams) != 1 else ''}",
        (f" · {state.elapsed:.0f} s", "dim"),
    )
    panels = [_stream_panel(s, state) for s in state.streams]
    if not panels:
        panels = [Panel(Text("no streams yet", style="dim"))]
    if len(panels) > 1:
        grid = Table.grid(expand=True, padding=(0, 1))
        cols = 2 if len(panels) >= 2 else 1
        for _ in range(cols):
            grid.add_column(ratio=1)
        for i in range(0, len(panels), cols):
            chunk = panels[i : i + cols]
            grid.add_row(*chunk, *([""] * (cols - len(chunk))))
        body: RenderableType = grid
    else:
        body = panels[0]
    return Group(header, body, Text(state.footer, style="dim"))


def snapshot(
    engine: Any,
    *,
    sources: Mapping[str, str] | None = None,
    extra_overruns: Mapping[str, int] | None = None,
    status: Mapping[str, str] | None = None,
    max_bars: int = 12,
    elapsed: float = 0.0,
    footer: str = "Ctrl-C to stop",
) -> DashboardState:
    """Read an Engine (streamtag.pipeline.Engine) into a DashboardState of plain values."""
    views = []
    for name, st in list(engine.streams.items()):
        latest = st.latest
        extra = latest.extra if latest is not None else {}
        views.append(
            StreamView(
                name=name,
                source=(sources or {}).get(name, ""),
                title=st.title,
                t=st.t,
                probs=tuple(latest.probs.items()) if latest is not None else (),
                top=tuple(latest.top[0]) if latest is not None and latest.top else None,  # type: ignore[arg-type]
                history=tuple(label for _, label, _ in list(st.history)),
                level_db=st.level_db if math.isfinite(st.level_db) else None,
                latency_ms=extra.get("latency_ms"),
                overruns=st.overruns + int((extra_overruns or {}).get(name, 0)),
                updates=st.updates,
                status=(status or {}).get(name, "live"),
            )
        )
    return DashboardState(
        model=engine.bundle.name,
        sample_rate=engine.sample_rate,
        hop_seconds=engine.hop_seconds,
        streams=tuple(views),
        labels=tuple(engine.labels_shown),
        max_bars=max_bars,
        step_ms=getattr(engine, "last_step_ms", None),
        elapsed=elapsed,
        footer=footer,
    )


@dataclass
class Dashboard:
    """Shows renderables with ``rich.live.Live``; the caller decides when (``show`` refreshes at once)."""

    console: Console | None = None
    _live: Live | None = field(default=None, init=False)

    def __enter__(self) -> Dashboard:
        self._live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stderr=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def show(self, state: DashboardState) -> None:
        if self._live is not None:
            self._live.update(render(state), refresh=True)

    def max_bars_for(self, n_streams: int) -> int:
        """Bars per stream that fit the terminal height (rough: 9 rows of chrome per stream row)."""
        height = (self.console or Console()).size.height
        rows = max(1, math.ceil(n_streams / 2)) if n_streams > 1 else 1
        return int(max(3, min(16, height // rows - 10)))
