"""Body of ``streamtag tag``: whole inputs (files, folders, local playlists, URLs, stdin) to one summary each.

    inputs -> expand_inputs (folders walked, playlists read) -> decoder thread (bounded queue of blocks)
           -> FileTagger.push per block -> finish -> summary (+ timeline) on stdout

Decoding runs in a background thread while the model runs in this one, and the decoder moves on to the next
input as soon as the current one is queued, so decoding the next file overlaps tagging this one. A rich progress
bar goes to stderr when stderr is a terminal (nothing extra otherwise). Ctrl-C prints the partial summary of the
input in progress (the finished ones were printed as they finished) and exits 130. The parser is in cli.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import queue
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, SourceError, StreamtagError, Terminated
from .events import GenreUpdate, Summary

__all__ = ["cmd_tag", "expand_inputs", "read_playlist", "TagInput", "AUDIO_EXTENSIONS", "PLAYLIST_EXTENSIONS"]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({
    ".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".wave", ".m4a", ".aac", ".mp4", ".m4b", ".wma", ".aif",
    ".aiff", ".aifc", ".au", ".mka", ".webm", ".wv", ".ape", ".mpc", ".ac3", ".amr", ".caf", ".spx",
})
PLAYLIST_EXTENSIONS = frozenset({".pls", ".m3u", ".m3u8"})
MAX_PLAYLIST_BYTES = 1 << 20  # a local playlist larger than this is refused (1 MiB: ~20k entries)
MAX_PLAYLIST_DEPTH = 4  # playlists listing playlists: nesting deeper than this is refused
URL_DEFAULT_SECONDS = 60.0  # s of a URL tagged when --duration is not given (a live stream never ends)
BLOCK_SECONDS = 2.0  # s per decoded block handed from the decoder thread to the model
QUEUE_BLOCKS = 16  # blocks the decoder may run ahead (bounds memory: 16 x 2 s x 16 kHz x 4 B = 2 MB)


@dataclass(frozen=True)
class TagInput:
    """One input to tag: ``source`` for open_source (path, URL or "-"), or ``error`` when it cannot be."""

    label: str  # the name printed in its summary and errors
    source: str
    error: str | None = None


def _is_url(s: str) -> bool:
    return "://" in s and s.split("://", 1)[0].lower() in ("http", "https")


def _walk(folder: Path, *, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def read_playlist(path: Path) -> list[str] | None:
    """Entries of a local .pls / .m3u / .m3u8 file, relative paths resolved against its folder.

    None when the file is an HLS playlist (#EXT-X- tags): that is one stream, not a list of inputs.
    """
    try:
        size = path.stat().st_size
        if size > MAX_PLAYLIST_BYTES:
            raise SourceError(f"{path}: playlist is {size} bytes, more than {MAX_PLAYLIST_BYTES}; split it up")
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"{path}: cannot read the playlist ({e.strerror or e}); check the path") from e
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if any(line.startswith("#EXT-X-") for line in lines):
        return None
    if path.suffix.lower() == ".pls":
        entries = [line.split("=", 1)[1].strip() for line in lines
                   if "=" in line and line.split("=", 1)[0].strip().lower().startswith("file")]
    else:
        entries = [line for line in lines if line and not line.startswith("#")]
    out = []
    for entry in entries:
        if "://" in entry:
            out.append(entry)
        else:
            p = Path(entry)
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def expand_inputs(inputs: Iterable[str], *, recursive: bool = False, _depth: int = 0,
                  _seen: frozenset[Path] = frozenset()) -> list[TagInput]:
    """Each input as the inputs it stands for: a folder's audio files (sorted), a local playlist's entries."""
    out: list[TagInput] = []
    for text in inputs:
        if text == "-" or "://" in text:
            out.append(TagInput(text, text))
            continue
        path = Path(text)
        if path.is_dir():
            files = _walk(path, recursive=recursive)
            if not files:
                hint = "" if recursive or not any(p.is_dir() for p in path.iterdir()) else \
                    "; add --recursive to look in its sub-folders"
                out.append(TagInput(text, text, error=f"{text}: no audio files in this folder "
                                                      f"(looked for {', '.join(sorted(AUDIO_EXTENSIONS)[:6])} ...){hint}"))
            out.extend(TagInput(str(p), str(p)) for p in files)
        elif path.suffix.lower() in PLAYLIST_EXTENSIONS and path.is_file():
            key = path.resolve()
            if _depth >= MAX_PLAYLIST_DEPTH or key in _seen:
                out.append(TagInput(text, text, error=f"{text}: playlists nested too deep or in a loop; "
                                                      "list the audio files directly"))
                continue
            try:
                entries = read_playlist(path)
            except SourceError as e:
                out.append(TagInput(text, text, error=str(e)))
                continue
            if entries is None:  # HLS: one stream
                out.append(TagInput(text, text))
            elif not entries:
                out.append(TagInput(text, text, error=f"{text}: the playlist lists no entries"))
            else:
                out.extend(expand_inputs(entries, recursive=recursive, _depth=_depth + 1, _seen=_seen | {key}))
        else:
            out.append(TagInput(text, text))
    return out


# -- decoding in the background ------------------------------------------------------------------------------------
class _Decoder(threading.Thread):
    """Decodes the inputs one after another into a bounded queue of (index, kind, payload) items.

    kinds: "start" (payload None), "block" (float32 samples), "end", "error" (a StreamtagError), and finally
    (None, "done", None). ``stop()`` makes it return at its next block.
    """

    def __init__(self, inputs: list[TagInput], sample_rate: int, *, duration: float | None,
                 opts: dict[str, Any]) -> None:
        super().__init__(name="streamtag-decode", daemon=True)
        self.inputs, self.sample_rate, self.duration, self.opts = inputs, sample_rate, duration, opts
        self.queue: queue.Queue[tuple[int | None, str, Any]] = queue.Queue(maxsize=QUEUE_BLOCKS)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def _put(self, item: tuple[int | None, str, Any]) -> bool:
        while not self._stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _limit(self, inp: TagInput) -> int | None:
        seconds = self.duration
        if seconds is None and _is_url(inp.source):
            seconds = URL_DEFAULT_SECONDS
        return None if seconds is None else int(seconds * self.sample_rate)

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # a bug outside one input's decoding: one line, and the command still ends
            log.error("decoding stopped (%s: %s)", type(e).__name__, e)
            log.debug("decoder failed", exc_info=True)
            self._put((None, "done", None))

    def _run(self) -> None:
        from .sources import open_source

        for i, inp in enumerate(self.inputs):
            if self._stop_event.is_set():
                return
            if inp.error is not None:
                if not self._put((i, "error", SourceError(inp.error))):
                    return
                continue
            limit = self._limit(inp)
            try:
                with open_source(inp.source, self.sample_rate, block_seconds=BLOCK_SECONDS, max_retries=0,
                                 **self.opts) as source:
                    if not self._put((i, "start", None)):
                        return
                    n = 0
                    for block in source:
                        if limit is not None:
                            block = block[: limit - n]
                        if block.size and not self._put((i, "block", block)):
                            return
                        n += block.shape[0]
                        if limit is not None and n >= limit:
                            break
                item: tuple[int | None, str, Any] = (i, "end", None)
            except StreamtagError as e:
                item = (i, "error", e)
            except Exception as e:  # a bug in a decoder: report it for this input, carry on with the next
                log.debug("decoding %s failed", inp.source, exc_info=True)
                item = (i, "error", StreamtagError(f"{inp.label}: decoding failed ({type(e).__name__}: {e})"))
            if not self._put(item):
                return
        self._put((None, "done", None))


# -- progress on stderr ----------------------------------------------------------------------------------------
class _Progress:
    """Files done, audio seconds done, x real time, ETA; a rich Progress on a terminal, nothing otherwise."""

    def __init__(self, console: Any, n_inputs: int) -> None:
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.table import Column
        from rich.text import Text

        class _Audio(ProgressColumn):
            def render(self, task: Any) -> Text:
                total = f"/{task.total:.0f}" if task.total is not None else ""
                return Text(f"{task.completed:.0f}{total} s", no_wrap=True)

        class _Speed(ProgressColumn):
            def render(self, task: Any) -> Text:
                elapsed = task.elapsed or 0.0
                return Text(f"{task.completed / elapsed:.1f}x real time" if task.completed and elapsed else "", no_wrap=True)

        self.n_inputs, self.files_done = n_inputs, 0
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            TextColumn("{task.fields[files]}"),
            BarColumn(bar_width=16),
            _Audio(table_column=Column(min_width=9, no_wrap=True)),
            _Speed(table_column=Column(min_width=15, no_wrap=True)),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # results go to stdout: keep them there unless stdout is the same terminal as the bar
            redirect_stdout=sys.stdout.isatty() and sys.stderr.isatty(),
            redirect_stderr=True,
        )
        self.task = self.progress.add_task("", total=None, files=self._files())

    def _files(self) -> str:
        return f"{self.files_done}/{self.n_inputs} files"

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def set_total(self, seconds: float) -> None:
        self.progress.update(self.task, total=seconds)

    def begin(self, label: str) -> None:
        name = Path(label).name if "://" not in label else label
        self.progress.update(self.task, description=name[:24])

    def advance(self, seconds: float) -> None:
        self.progress.update(self.task, advance=seconds)

    def file_done(self) -> None:
        self.files_done += 1
        self.progress.update(self.task, files=self._files())


def _total_seconds(inputs: list[TagInput], duration: float | None) -> float | None:
    """Audio seconds the run will tag, from the files' headers; None when any input's length is unknown."""
    from .sources import probe_duration

    total = 0.0
    for inp in inputs:
        if inp.error is not None:
            continue
        if _is_url(inp.source):
            seconds: float | None = duration or URL_DEFAULT_SECONDS
        elif inp.source == "-" or "://" in inp.source:
            seconds = duration
        else:
            try:
                seconds = probe_duration(inp.source)
            except StreamtagError:
                continue  # it will fail to decode and be reported then
            if seconds is not None and duration is not None:
                seconds = min(seconds, duration)
        if seconds is None:
            return None
        total += seconds
    return total


# -- output on stdout --------------------------------------------------------------------------------------------
class _Output:
    """Writes tag results as JSON lines (as they come), CSV (one table: the timeline, the segments or the summaries)
    or rich tables (one per input); with ``segments`` the input's segments too, with ``plot`` its taggram."""

    def __init__(self, fmt: str, top: int, *, timeline: bool, segments: bool = False, plot: Path | None = None,
                 labels: list[str] | None = None, family_of: Any = str, n_inputs: int = 1) -> None:
        self.fmt, self.top, self.with_timeline = fmt, top, timeline
        self.with_segments, self.plot, self.n_inputs = segments, plot, n_inputs
        self.labels, self.family_of = labels or [], family_of
        self.console: Any = None
        self.csv: Any = None
        self._pending: list[GenreUpdate] = []
        self._all: list[GenreUpdate] = []  # the input's updates, for its segments and its plot
        if fmt == "table":
            from rich.console import Console

            self.console = Console()
        elif fmt == "csv":
            from .tables import CsvTable

            kind = "timeline" if timeline else "segments" if segments else "summary"
            self.csv = CsvTable(sys.stdout, kind, self.labels, family_of=family_of)

    def updates(self, updates: list[GenreUpdate]) -> None:
        if not updates:
            return
        if self.with_segments or self.plot is not None:
            self._all.extend(updates)
        if not self.with_timeline:
            return
        if self.fmt == "jsonl":
            for u in updates:
                print(u.to_json())
            sys.stdout.flush()
        elif self.fmt == "csv":
            self.csv.updates(updates)
        else:
            self._pending.extend(updates)

    def summary(self, s: Summary) -> None:
        from .segments import segments_of

        segs = segments_of(self._all, family_of=self.family_of) if self.with_segments or self.plot else []
        if self.plot is not None:
            self._draw(s)
        self._all = []
        if self.fmt == "csv":
            if self.csv.kind == "segments":
                self.csv.segments(segs)
            elif self.csv.kind == "summary":
                self.csv.summary(s)
            return
        if self.fmt == "jsonl":
            if self.with_segments:
                for seg in segs:
                    print(seg.to_json())
            print(s.to_json(), flush=True)
            return
        from rich.table import Table

        if self.with_timeline and self._pending:
            self.console.print(f"[bold]{s.stream}[/bold] timeline", highlight=False, soft_wrap=True)
            t = Table(show_edge=False, box=None, padding=(0, 2))
            t.add_column("t (s)", justify="right")
            t.add_column("family")
            shown = min(self.top, 3)
            for k in range(shown):
                t.add_column(f"#{k + 1}")
            for u in self._pending:
                fam = f"{u.family} {u.families.get(u.family, 0.0):.0%}" if u.family else "-"
                t.add_row(f"{u.t:7.2f}", fam, *[f"{lab} {p:.2f}" for lab, p in u.top[:shown]])
            self.console.print(t)
        self._pending = []
        partial = "  [yellow]partial: interrupted[/yellow]" if s.partial else ""
        self.console.print(f"[bold]{s.stream}[/bold]  ({s.duration:.1f} s, {s.windows} windows, {s.model}){partial}",
                           highlight=False, soft_wrap=True)
        if s.extra.get("silence"):
            self.console.print("silence (no genre)\n", highlight=False)
            return
        t = Table(show_edge=False, box=None, padding=(0, 2))
        t.add_column("genre")
        t.add_column("mean p", justify="right")
        t.add_column("")
        for lab, p in s.top:
            t.add_row(lab, f"{p:.3f}", "█" * int(round(p * 30)))
        self.console.print(t)
        if s.families:  # the families' shares over the input, largest first
            fams = sorted(s.families.items(), key=lambda kv: -kv[1])[: max(3, self.top)]
            self.console.print("families: " + " · ".join(f"{k} {v:.0%}" for k, v in fams), highlight=False,
                               soft_wrap=True)
        if self.with_segments:  # the segments under the summary
            from .plot import clock

            self.console.print()

            t = Table(show_edge=False, box=None, padding=(0, 2))
            for col in ("start", "end", "family", "genre", "conf"):
                t.add_column(col, justify="right" if col in ("start", "end", "conf") else "left")
            for seg in segs:
                t.add_row(clock(seg.start), clock(seg.end), seg.family, seg.genre, f"{seg.confidence:.2f}")
            self.console.print(t)
        self.console.print()

    def _draw(self, s: Summary) -> None:
        from .api import result_from_updates
        from .plot import taggram

        assert self.plot is not None
        path = self.plot
        if self.n_inputs > 1:  # one file per input: out-<input>.png
            path = path.with_name(f"{path.stem}-{Path(s.stream).stem or 'input'}{path.suffix}")
        result = result_from_updates(self._all, s.to_dict(), labels=self.labels, family_of=self.family_of,
                                     name=s.stream, model=s.model)
        try:
            taggram(result, path)
            print(f"streamtag: {s.stream}: taggram written to {path}", file=sys.stderr, flush=True)
        except StreamtagError as e:
            print(f"streamtag: error: {e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()

    def drop_pending(self) -> None:
        self._pending = []
        self._all = []


def _error_line(label: str, e: BaseException) -> str:
    msg = str(e)
    if label in msg or (label == "-" and "stdin" in msg):
        return f"streamtag: error: {msg}"
    return f"streamtag: error: {label}: {msg}"


# -- the command -----------------------------------------------------------------------------------------------
def cmd_tag(args: argparse.Namespace) -> int:
    """``streamtag tag``. SIGTERM ends it as Ctrl-C does: the summary of the input in progress marked partial,
    one line saying what was done, then exit 143 (130 for Ctrl-C)."""
    from .app import terminate_as_interrupt

    with terminate_as_interrupt():
        return _tag(args)


def _tag(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .options import load_model, smoothing_config, stdin_opts
    from .pipeline import FileTagger, hop_frames_for
    from .runner import ModelRunner

    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise ConfigError(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    if sum(1 for s in args.inputs if s == "-") > 1:
        raise ConfigError("stdin (-) can be given only once")
    smoothing = smoothing_config(args.smoothing)
    bundle = load_model(args)
    hop_frames_for(bundle, args.hop)  # validate before any decoding
    inputs = expand_inputs(args.inputs, recursive=args.recursive)
    plot = _check_plot(args.plot)
    if args.format == "csv" and args.timeline and args.segments:
        raise ConfigError("--format csv prints one table: give --timeline (one row per hop) or --segments "
                          "(one row per segment), not both")
    runner = ModelRunner(bundle, args.device, precision=args.precision)
    sr = bundle.frontend.sample_rate
    from .segments import family_resolver

    shown = range(len(bundle.labels)) if args.all_tags else bundle.genre_indices()
    out = _Output(args.format, args.top, timeline=args.timeline, segments=args.segments, plot=plot,
                  labels=[bundle.labels[i] for i in shown], family_of=family_resolver(bundle), n_inputs=len(inputs))

    err_console = Console(stderr=True)
    progress = _Progress(err_console, len(inputs)) if err_console.is_terminal else None
    decoder = _Decoder(inputs, sr, duration=args.duration, opts=stdin_opts(args))
    if progress is not None:
        def probe() -> None:
            total = _total_seconds(inputs, args.duration)
            if total is not None:
                progress.set_total(total)

        threading.Thread(target=probe, name="streamtag-probe", daemon=True).start()
        progress.start()
    decoder.start()

    tagger: FileTagger | None = None
    current: TagInput | None = None
    failed = done = 0

    def fail(label: str, e: BaseException) -> None:
        nonlocal failed
        failed += 1
        print(_error_line(label, e), file=sys.stderr, flush=True)

    try:
        while True:
            try:
                index, kind, payload = decoder.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if index is None:
                break
            inp = inputs[index]
            if kind == "start":
                current = inp
                tagger = FileTagger(runner, name=inp.label, hop_seconds=args.hop, all_tags=args.all_tags,
                                    top_k=args.top, smoothing=smoothing)
                if progress is not None:
                    progress.begin(inp.label)
                continue
            if kind == "block":
                assert tagger is not None
                before = tagger.seconds
                try:
                    out.updates(tagger.push(payload))
                except StreamtagError as e:  # the input stays broken: skip the rest of its blocks
                    fail(inp.label, e)
                    tagger = None
                if progress is not None and tagger is not None:
                    progress.advance(tagger.seconds - before)
                continue
            if kind == "end" and tagger is not None:
                try:
                    if tagger.samples == 0:
                        raise SourceError(f"{inp.label}: no audio decoded; check that it is a non-empty audio "
                                          "file or stream")
                    out.updates(tagger.finish())  # warns once itself when samples had to be repaired
                    out.summary(_silence_noted(tagger.summary(), tagger))
                    done += 1
                except StreamtagError as e:
                    out.drop_pending()
                    fail(inp.label, e)
            elif kind == "error":
                out.drop_pending()
                fail(inp.label, payload)
            tagger, current = None, None
            if progress is not None:
                progress.file_done()
    except KeyboardInterrupt as e:
        decoder.stop()
        if progress is not None:
            progress.stop()
        _interrupted(out, tagger, current, done=done, total=len(inputs))
        return e.code if isinstance(e, Terminated) else 130
    finally:
        decoder.stop()
        decoder.join(timeout=5.0)  # it stops at its next block; a decoder left running at exit prints leak notes
        if progress is not None:
            progress.stop()
        out.close()
        sys.stdout.flush()
    if failed:
        print(f"streamtag: {failed} of {len(inputs)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def _silence_noted(summary: Summary, tagger: Any) -> Summary:
    """An input that is silent throughout (all zeros, or only NaN samples, which are zeroed) has no genre: its
    summary says ``"silence": true`` with an empty ``top`` (the model's answer to silence is noise, not rock)."""
    if not tagger.windows or tagger.silent_windows < tagger.windows:
        return summary
    log.warning("%s: silent throughout (every window below -60 dBFS); no genre to report", summary.stream)
    return dataclasses.replace(summary, top=[], extra={**summary.extra, "silence": True})


def _interrupted(out: _Output, tagger: Any, current: TagInput | None, *, done: int, total: int) -> None:
    """Ctrl-C: the summary of the input in progress, marked partial, and one line saying what was done."""
    partial = ""
    if tagger is not None and current is not None and tagger.samples > 0:
        try:
            out.summary(tagger.summary(partial=True))
            partial = f"; the summary of {current.label} is partial ({tagger.seconds:.1f} s tagged)"
        except StreamtagError as e:  # e.g. too little audio for one window
            partial = f"; {current.label} was interrupted before it could be summarised ({e})"
    print(f"streamtag: interrupted: {done} of {total} inputs tagged{partial}", file=sys.stderr, flush=True)


def _check_plot(plot: str | None) -> Path | None:
    """--plot FILE: a known format, and matplotlib present for PNG/SVG, before any tagging."""
    if plot is None:
        return None
    from .plot import PLOT_FORMATS

    path = Path(plot)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(f"--plot {plot}: use a .png, .svg or .html file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {plot}: the folder {path.parent} does not exist")
    if path.suffix.lower() != ".html":
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--plot .png/.svg needs matplotlib: pip install 'streamtag[plot]' "
                              "(or write .html, which needs nothing)")
    return path
