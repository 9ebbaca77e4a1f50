"""Bodies of the live commands: ``listen`` (microphone), ``devices``, ``serve`` (websocket server + web page),
``demo``. Their parsers are in streamtag/cli.py; the work happens in streamtag.app (the live and
server loops).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, SourceError

if TYPE_CHECKING:
    from .pipeline import Engine

__all__ = ["cmd_listen", "cmd_devices", "cmd_demo", "cmd_serve", "cmd_stream", "DEMO_CLIPS", "examples_audio_dir"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
# the wheel ships the example clips as streamtag/examples/ (pyproject package-dir); a checkout has examples/audio/
EXAMPLES_AUDIO_DIRS = (_HERE / "examples", _HERE.parent / "examples" / "audio")
DEMO_CLIPS = ("karissa-hobbs-lets-go-fishin.ogg", "kevin-macleod-vibe-ace.ogg", "brahms-hungarian-dance-5.ogg")


def examples_audio_dir() -> Path:
    """Where the shipped example clips are (installed package first, then the source checkout)."""
    for d in EXAMPLES_AUDIO_DIRS:
        if all((d / c).is_file() for c in DEMO_CLIPS):
            return d
    return EXAMPLES_AUDIO_DIRS[-1]


def _engine(args: argparse.Namespace) -> Engine:
    from .options import load_model, smoothing_config
    from .pipeline import Engine

    return Engine(load_model(args), device=args.device, hop_seconds=args.hop, all_tags=args.all_tags,
                  smoothing=smoothing_config(args.smoothing), precision=args.precision)


def _positive(value: float | None, flag: str) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{flag} must be positive, got {value}")


# -- listen / devices ----------------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    from .sources.microphone import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found (is PulseAudio/PipeWire running, or a microphone connected?)")
        return 1
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:3d}  {d['name']}  ({d['hostapi']}, {d['channels']} ch, {d['samplerate']} Hz)")
    print("* default input")
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from .app import run_live
    from .sources.microphone import MicrophoneSource

    _positive(args.duration, "--duration")
    _check_record(args)
    engine = _engine(args)
    mic = MicrophoneSource(args.input, sample_rate=engine.sample_rate)
    desc = f"input device {mic.device['index']} {mic.name!r} ({mic.device['hostapi']}), {mic.device_rate} Hz"
    return run_live(engine, {"mic": mic}, output=args.format, describe={"mic": desc}, duration=args.duration,
                    top=args.top, segments=args.segments, record=args.record, keep=args.keep)


def _check_record(args: argparse.Namespace) -> None:
    """A bad ``--record``/``--keep`` fails in one line before the model loads (or the microphone opens)."""
    if args.record is not None:
        from .store import check_record_args

        check_record_args(args.record, args.keep)


# -- demo ------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .app import run_live
    from .sources.file import FileSource
    from .sources.playlist import Playlist

    _positive(args.speed, "--speed")
    _positive(args.duration, "--duration")
    _check_record(args)
    files = [Path(f) for f in args.files] or [examples_audio_dir() / c for c in DEMO_CLIPS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"demo file(s) not found: {', '.join(missing)}; give audio files: streamtag demo FILE...")
    engine = _engine(args)
    sources: dict[str, Any]
    pool = None
    if args.parallel:
        from .app import terminate_as_interrupt
        from .sources.pool import SourcePool

        pool = SourcePool(engine.sample_rate)
        sources, describe = {}, {}
        try:
            with terminate_as_interrupt():  # SIGTERM while hundreds of files open: the same clean-up as Ctrl-C
                for f in files:
                    name = f.stem if f.stem not in sources else f"{f.stem}#{len(sources)}"
                    sources[name] = pool.open(str(f), engine.sample_rate)
                    describe[name] = str(f)
        except BaseException:
            pool.close()
            raise
    else:
        def opener(f: Path) -> Callable[[], FileSource]:
            return lambda: FileSource(f, engine.sample_rate)

        sources = {"demo": Playlist([(f.name, opener(f)) for f in files])}
        describe = {"demo": f"{len(files)} file(s) at {args.speed:g}x real time"}
    return run_live(engine, sources, output=args.format, speed=args.speed, describe=describe,
                    duration=args.duration, top=args.top, pool=pool, segments=args.segments, record=args.record,
                    keep=args.keep)


# -- stream ----------------------------------------------------------------------------------------------------
def cmd_stream(args: argparse.Namespace) -> int:
    """``stream URL... [--sources FILE]``: radio, HLS, files and playlists are read by the source pool's decoder
    processes; stdin (``-``) in this process."""
    from .app import StationListReload, open_concurrently, run_live, terminate_as_interrupt
    from .options import stdin_opts
    from .sources import open_source
    from .sources.pool import SourcePool
    from .sources.stations import read_station_list

    _positive(args.duration, "--duration")
    health_every = _health_every(args)
    stations = read_station_list(args.sources) if getattr(args, "sources", None) else []
    if not args.urls and not stations:
        raise ConfigError("stream: give at least one URL, or a station list with --sources FILE")
    _check_record(args)
    engine = _engine(args)
    fmt = args.format
    if fmt == "auto":
        fmt = "dashboard" if sys.stdout.isatty() else "jsonl"
    pool = SourcePool(engine.sample_rate)
    sources: dict[str, Any] = {}
    opens: list[tuple[str, Callable[[], Any]]] = []
    stdin_name = None
    for url in args.urls:
        name = url if url not in sources and url not in dict(opens) else f"{url}#{len(sources) + len(opens)}"
        # a first connection that fails raises: typos get a one-line error at once
        if url == "-":
            stdin_name = name  # opened below, in this process
            sources[name] = None
        else:
            opens.append((name, partial(pool.open, url, engine.sample_rate, max_retries=args.max_retries)))
    given = set(sources) | {n for n, _ in opens}  # the command line's streams: a reload never takes their names
    for name, uri in stations:  # a station that is down keeps retrying; the others play meanwhile
        if name in sources or name in dict(opens):
            raise ConfigError(f"--sources: stream name {name!r} is also a URL given on the command line")
        opens.append((name, partial(pool.open, uri, engine.sample_rate, retry_open=True,
                                    max_retries=args.max_retries)))
    # SIGHUP re-reads the station list (from the start on: one during the opens is applied once the run goes)
    reload = None if not getattr(args, "sources", None) else StationListReload(
        args.sources, stations, partial(pool.open, sample_rate=engine.sample_rate, retry_open=True,
                                        max_retries=args.max_retries), taken=given, err=sys.stderr)
    try:
        # SIGTERM while hundreds of stations open: the same cleanup as Ctrl-C
        with terminate_as_interrupt(hangup=reload.request if reload is not None else None):
            if stdin_name is not None:
                sources[stdin_name] = open_source("-", engine.sample_rate, max_retries=args.max_retries, **stdin_opts(args))
            sources.update(open_concurrently(opens))
    except BaseException:
        for src in sources.values():
            if src is not None:
                src.close()
        pool.close()  # ends the opens still running too
        raise
    return run_live(engine, sources, output=fmt, duration=args.duration, top=args.top, pool=pool,
                    segments=args.segments, record=args.record, keep=args.keep, reload=reload,
                    health_every=health_every)


def _health_every(args: argparse.Namespace) -> float:
    health_every = float(getattr(args, "health_every", 30.0))
    if not (health_every >= 0 and math.isfinite(health_every)):
        raise ConfigError(f"--health-every must be 0 (never) or a number of seconds, got {health_every:g}")
    return health_every


# -- serve -----------------------------------------------------------------------------------------------------
def _parse_sources(specs: list[str]) -> list[tuple[str, str]]:
    from .protocol import valid_stream_name

    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep or not uri:
            raise ConfigError(f"--source {spec!r}: use NAME=URI, e.g. --source jazz=https://example.org/jazz.mp3")
        if not valid_stream_name(name):
            raise ConfigError(f"--source {spec!r}: stream name {name!r} must be letters, digits and _.:-")
        if name in dict(out):
            raise ConfigError(f"--source: stream name {name!r} given twice")
        out.append((name, uri))
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    from .publishers.websocket import config_from_args
    from .sources.stations import read_station_list

    _positive(args.speed, "--speed")
    health_every = _health_every(args)
    # validates host/token/limits before the model loads
    config = config_from_args(args, host=args.host, port=args.port, file_speed=args.speed, top=args.top)
    sources = _parse_sources(args.source)
    stations = read_station_list(args.sources) if getattr(args, "sources", None) else []
    clash = {n for n, _ in sources} & {n for n, _ in stations}
    if clash:
        raise ConfigError(f"--sources: stream name {sorted(clash)[0]!r} is also given by --source")
    _check_record(args)
    from .app import run_serve

    if getattr(args, "cluster", None):  # the stations run on a Ray cluster; this process is the gateway
        from .cluster.serve import start_gateway

        return run_serve(None, config, sources, stations=stations, runner=start_gateway(args), record=args.record,
                         keep=args.keep, health_every=health_every, stations_file=getattr(args, "sources", None))
    return run_serve(_engine(args), config, sources, stations=stations, record=args.record, keep=args.keep,
                     health_every=health_every, stations_file=getattr(args, "sources", None))
