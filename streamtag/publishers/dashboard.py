"""Terminal dashboard (rich): a sink that keeps its own small state, a pure ``render(state)``, and a thin
:class:`Dashboard` that shows it live.

State is kept apart from rendering: :class:`DashboardSink` builds its state ONLY from the sink calls the live
runner makes (``on_update``, ``on_title``, ``on_status``, ...), never from engine internals; ``state()`` freezes
it into a :class:`DashboardState` of plain values; :func:`render` turns a state into a renderable and touches
nothing else; :class:`Dashboard` pushes renderables to ``rich.live.Live`` at a rate its caller owns.

What the numbers mean (the views tell the truth):

- the headline is the **family** playing now with the leading genre inside it, "rock · indie rock"
  (``GenreUpdate.family`` and ``top[0]``), and its number is the headline's confidence: the family's share of
  the bars (``GenreUpdate.families``); while another family leads the bars but the smoother still holds the
  headline, the headline says so ("held: country 44% rising"). An update without a family (a producer that predates families) heads
  with ``top[0]`` and its bar, as before; when such a held genre is not the highest bar, the headline says so
  ("held: folk 22% challenging").
- the bars are the smoothed belief in every shown genre (``GenreUpdate.probs``: graded moving averages of the
  model's outputs), highest first, coloured by family, the headline genre marked ``▶``; a line below gives the
  families' shares.
- the strip is the headline family over the last few minutes, one coloured cell per few seconds (``·``: no
  music heard then), with the latest runs written out ("jazz 1:20 → rock 0:35").
- silence: an update whose input level (``level_db``: RMS in dBFS of the audio read for that hop) is below
  :data:`SILENCE_DB` shows the stream as "silence" and leaves its genre state (headline, bars, strip) as it
  was: a silent ending does not get a genre.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import StreamtagError
from ..events import GenreUpdate
from . import SILENCE_DB, status_message

__all__ = ["StreamView", "DashboardState", "DashboardSink", "render", "Dashboard", "bar", "SILENCE_DB"]

BAR_WIDTH = 32  # characters of a full probability bar
LEVEL_WIDTH = 24  # characters of the level meter
LEVEL_FLOOR_DB = -60.0  # dBFS shown as an empty meter
HISTORY_LEN = 2000  # headline entries kept per stream at most (the strip needs STRIP_SECONDS of them)
STRIP_SECONDS = 180.0  # s of headline history drawn in the strip
STRIP_CELLS = 40  # cells of the strip (4.5 s each)
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue", "bright_red")
_EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class StreamView:
    """What the dashboard shows of one stream (plain values)."""

    name: str
    source: str = ""
    title: str | None = None  # ICY StreamTitle for radio, the clip's name in a playlist
    t: float = 0.0  # s of audio the latest update describes
    probs: tuple[tuple[str, float], ...] = ()  # the bars: smoothed belief in every shown label (last non-silent hop)
    top: tuple[str, float] | None = None  # headline genre and its bar (last non-silent hop)
    family: str | None = None  # headline family (last non-silent hop; None: the update had none)
    families: tuple[tuple[str, float], ...] = ()  # every family's share of the bars (last non-silent hop)
    history: tuple[tuple[float, str], ...] = ()  # (t, headline family or genre) of recent non-silent hops
    level_db: float | None = None  # input level of the latest hop, dBFS
    latency_ms: float | None = None  # audio arrival -> update, ms
    overruns: int = 0  # ring-buffer overruns + device/input overflows
    updates: int = 0
    status: str = "live"  # "live", "ended" or an error message
    notice: str | None = None  # a source event in progress, e.g. "reconnecting in 2.0 s (attempt 3)"
    silent: bool = False  # the latest hop was below the silence threshold


@dataclass(frozen=True)
class DashboardState:
    model: str
    sample_rate: int  # Hz, the model's input rate
    hop_seconds: float
    streams: tuple[StreamView, ...] = ()
    labels: tuple[str, ...] = ()  # every shown label (fixes colours across streams)
    taxonomy: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (family, its genres): a genre takes its family's colour
    max_bars: int = 12  # bars per stream (highest first)
    step_ms: float | None = None  # last engine step, ms
    elapsed: float = 0.0  # s since start
    footer: str = "Ctrl-C to stop"
    silence_db: float = SILENCE_DB  # dBFS, the silence threshold


def bar(p: float, width: int = BAR_WIDTH) -> str:
    """A left-aligned bar of ``width`` characters for p in [0, 1] (eighth-block resolution)."""
    p = min(1.0, max(0.0, p if math.isfinite(p) else 0.0))
    eighths = int(round(p * width * 8))
    full, rest = divmod(eighths, 8)
    s = "█" * full + (_EIGHTHS[rest] if rest and full < width else "")
    return s.ljust(width)


def _color(label: str, state: DashboardState) -> str:
    """A family's colour, a genre's family's colour, else the label's own (fixed across streams and frames)."""
    names = [name for name, _ in state.taxonomy]
    if label not in names:
        label = next((name for name, genres in state.taxonomy if label in genres), label)
    i = names.index(label) if label in names else (
        len(names) + state.labels.index(label) if label in state.labels else sum(map(ord, label)))
    return PALETTE[i % len(PALETTE)]


def _runs(history: tuple[tuple[float, str], ...]) -> list[tuple[str, float, float]]:
    """(label, first t, last t) of each run of equal labels, oldest first."""
    runs: list[tuple[str, float, float]] = []
    for t, label in history:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], t)
        else:
            runs.append((label, t, t))
    return runs


def _mmss(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


def _strip(history: tuple[tuple[float, str], ...], now: float, state: DashboardState) -> Text:
    """The headline over the last STRIP_SECONDS: STRIP_CELLS coloured cells (the latest headline in each), oldest
    left; ``·`` where no music was heard; then the latest runs with their lengths."""
    text = Text()
    cell = STRIP_SECONDS / STRIP_CELLS
    start = now - STRIP_SECONDS
    cells: list[str | None] = [None] * STRIP_CELLS
    for t, label in history:
        k = int((t - start) // cell)
        if 0 <= k < STRIP_CELLS:
            cells[k] = label
    first = next((k for k, c in enumerate(cells) if c is not None), STRIP_CELLS)
    for k, entry in enumerate(cells):
        if k < first:
            continue  # before the stream's first music: nothing drawn
        if entry is None:
            text.append("·", style="dim")
        else:
            text.append("█", style=_color(entry, state))
    runs = _runs(tuple((t, lab) for t, lab in history if t > start))[-3:]
    if runs:
        hop = state.hop_seconds
        text.append("  ")
        text.append(" → ".join(f"{label} {_mmss(b - a + hop)}" for label, a, b in runs), style="dim")
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


def _headline(s: StreamView, state: DashboardState) -> Text:
    head = Text()
    best = max(s.probs, key=lambda lp: lp[1]) if s.probs else None
    if s.silent:
        head.append("◼ silence", style="bold dim")
        level = f"{s.level_db:.1f} dBFS" if s.level_db is not None else "no level"
        head.append(f"  {level} < {state.silence_db:g} dBFS · genre state held", style="dim")
    elif s.top is not None and s.family is not None:
        share = dict(s.families).get(s.family)
        head.append("▶ ", style="bold")
        head.append(s.family, style=f"bold {_color(s.family, state)}")
        if s.top[0].lower() != s.family:
            head.append(" · ")
            head.append(s.top[0], style=_color(s.top[0], state))
        if share is not None:
            head.append(f"  {share:.0%}", style="bold")
            head.append(" of the bars", style="dim")
            lead = max(s.families, key=lambda fs: fs[1])
            if lead[0] != s.family and lead[1] > share:
                # the HMM holds the family while another leads the bars for a moment: say so
                head.append(f"  held: {lead[0]} {lead[1]:.0%} rising", style="dim")
    elif s.top is not None:
        head.append("▶ ", style="bold")
        head.append(s.top[0], style=f"bold {_color(s.top[0], state)}")
        head.append(f"  {s.top[1]:.0%}", style="bold")
        if best is not None and best[0] != s.top[0] and best[1] > s.top[1]:
            # hysteresis: a challenger is higher but has not led by the margin for long enough yet
            head.append(f"  held: {best[0]} {best[1]:.0%} challenging", style="dim")
    else:
        head.append("listening… (first update after one window of audio)", style="dim")
    return head


def _stream_panel(s: StreamView, state: DashboardState) -> Panel:
    rows: list[RenderableType] = [_headline(s, state)]
    if s.title:
        rows.append(Text(f"♪ {s.title}", style="italic"))

    bars = Table.grid(padding=(0, 1))
    bars.add_column(no_wrap=True, width=1)
    bars.add_column(justify="right", no_wrap=True)
    bars.add_column(no_wrap=True)
    bars.add_column(justify="right", no_wrap=True)
    held = s.top[0] if s.top is not None else None
    for label, p in sorted(s.probs, key=lambda lp: -lp[1])[: state.max_bars]:
        style = "dim" if s.silent else _color(label, state)
        bars.add_row("▶" if label == held else "", label, Text(bar(p), style=style), f"{p:.2f}")
    rows.append(bars)

    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    if s.families:
        fam = Text()
        for i, (name, share) in enumerate(sorted(s.families, key=lambda fs: -fs[1])[:4]):
            fam.append(" · " if i else "", style="dim")
            fam.append(f"{name} {share:.0%}", style="dim" if s.silent else _color(name, state))
        facts.add_row("families", fam)
    facts.add_row("history", _strip(s.history, s.t, state))
    facts.add_row("level", _level(s.level_db))
    lat = f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "–"
    over = Text(f"overruns {s.overruns}", style="bold red" if s.overruns else "")
    facts.add_row("stream", Text.assemble(f"t {s.t:7.1f} s · updates {s.updates} · latency {lat} · ", over))
    if s.source:
        facts.add_row("source", Text(s.source, overflow="ellipsis", no_wrap=True))
    rows.append(facts)

    border = "green" if s.status == "live" else "yellow" if s.status == "ended" else "red"
    subtitle = None if s.status == "live" else Text(s.status, style=border)
    if s.notice and s.status == "live":
        border = "yellow"
        subtitle = Text(s.notice, style="yellow")
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


@dataclass
class _Record:
    """The sink's mutable record of one stream."""

    name: str
    source: str = ""
    title: str | None = None
    t: float = 0.0
    probs: tuple[tuple[str, float], ...] = ()
    top: tuple[str, float] | None = None
    family: str | None = None
    families: tuple[tuple[str, float], ...] = ()
    history: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    level_db: float | None = None
    latency_ms: float | None = None
    overruns: int = 0
    updates: int = 0
    status: str = "live"
    notice: str | None = None
    silent: bool = False

    def view(self) -> StreamView:
        return StreamView(
            name=self.name, source=self.source, title=self.title, t=self.t, probs=self.probs, top=self.top,
            family=self.family, families=self.families, history=tuple(self.history), level_db=self.level_db, latency_ms=self.latency_ms,
            overruns=self.overruns, updates=self.updates, status=self.status, notice=self.notice,
            silent=self.silent,
        )


class DashboardSink:
    """A sink that keeps what the dashboard shows, built only from the runner's sink calls (thread-safe).

    ``model``, ``sample_rate``, ``hop_seconds`` and ``labels`` describe the engine for the header; use
    :meth:`for_engine` to take them from an engine's read-only metadata. Ended streams stay shown.
    """

    def __init__(self, *, model: str, sample_rate: int, hop_seconds: float, labels: tuple[str, ...] = (),
                 silence_db: float = SILENCE_DB, taxonomy: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> None:
        self.model, self.sample_rate, self.hop_seconds = model, int(sample_rate), float(hop_seconds)
        self.labels = tuple(labels)
        self.taxonomy = tuple(taxonomy)
        self.silence_db = float(silence_db)
        self._streams: dict[str, _Record] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_engine(cls, engine: Any, **kw: Any) -> DashboardSink:
        from ..taxonomy import bundle_taxonomy

        return cls(model=engine.bundle.name, sample_rate=engine.sample_rate, hop_seconds=engine.hop_seconds,
                   labels=tuple(engine.labels_shown), taxonomy=bundle_taxonomy(engine.bundle).families, **kw)

    def _record(self, name: str) -> _Record:
        rec = self._streams.get(name)
        if rec is None:
            rec = self._streams[name] = _Record(name)
        return rec

    def is_silent(self, level_db: float | None) -> bool:
        """Whether a hop at ``level_db`` dBFS counts as silence (None: no level known, not silence)."""
        return level_db is not None and not level_db >= self.silence_db

    # -- the Sink calls ------------------------------------------------------------------------------------
    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        with self._lock:
            self._streams[name] = _Record(name, source=source, title=title)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        with self._lock:
            for u in updates:
                rec = self._record(u.stream)
                rec.updates += 1
                rec.t = u.t
                if u.title is not None:
                    rec.title = u.title
                extra = u.extra
                level = extra.get("level_db")
                rec.level_db = float(level) if isinstance(level, int | float) else None
                latency = extra.get("latency_ms")
                rec.latency_ms = float(latency) if isinstance(latency, int | float) else None
                rec.overruns = int(extra.get("overruns") or 0) + int(extra.get("input_overruns") or 0)
                rec.silent = self.is_silent(rec.level_db)
                if rec.silent:
                    continue  # silence does not update the genre state
                rec.probs = tuple(u.probs.items())
                rec.family = u.family
                rec.families = tuple(u.families.items())
                if u.top:
                    label, p = u.top[0]
                    rec.top = (label, float(p))
                    rec.history.append((u.t, u.family or label))
                    while rec.history and rec.history[0][0] < u.t - STRIP_SECONDS:
                        rec.history.popleft()

    def on_title(self, name: str, title: str | None) -> None:
        with self._lock:
            self._record(name).title = title

    def on_status(self, name: str, kind: str, detail: str) -> None:
        with self._lock:
            rec = self._record(name)
            rec.notice = None if kind == "connected" else status_message(kind, detail)

    def forget(self, name: str) -> None:
        """Drop ``name``'s bar (a station the list no longer names)."""
        with self._lock:
            self._streams.pop(name, None)

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self._lock:
            rec = self._record(name)
            rec.status = str(error) if error is not None else "ended"
            rec.notice = None

    # -- the view ------------------------------------------------------------------------------------------
    def state(self, *, max_bars: int = 12, elapsed: float = 0.0, footer: str = "Ctrl-C to stop") -> DashboardState:
        """A frozen snapshot of the state, for :func:`render`."""
        with self._lock:
            views = tuple(rec.view() for rec in self._streams.values())
        return DashboardState(
            model=self.model, sample_rate=self.sample_rate, hop_seconds=self.hop_seconds, streams=views,
            labels=self.labels, taxonomy=self.taxonomy, max_bars=max_bars, elapsed=elapsed, footer=footer, silence_db=self.silence_db,
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
