"""Live commands: ``listen`` (microphone), ``devices``, ``serve`` (websocket server + web page), ``demo``.

Argument parsing only; the work happens in streamtag.app (the live and server loops).
``streamtag/cli.py`` calls :func:`register`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .errors import ConfigError, SourceError

__all__ = ["register", "DEMO_CLIPS"]

log = logging.getLogger(__name__)

EXAMPLES_AUDIO = Path(__file__).resolve().parent.parent / "examples" / "audio"
DEMO_CLIPS = ("karissa-hobbs-lets-go-fishin.ogg", "kevin-macleod-vibe-ace.ogg", "brahms-hungarian-dance-5.ogg")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="bundle name (see `streamtag models`) or bundle directory")
    p.add_argument("--hop", type=float, default=None, metavar="S",
                   help="seconds between updates (default: the bundle's; >= 0.25)")
    p.add_argument("--compute", default="auto", metavar="DEV", help="model device: auto | cpu | cuda[:N]")
    p.add_argument("--all-tags", action="store_true", help="show all the model's tags, not only its genres")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("auto", "dashboard", "jsonl"), default="auto",
                   help="auto: dashboard on a terminal, JSON lines otherwise")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--top", type=int, default=None, metavar="K", help="genres per update / bars per stream")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="tag the microphone (or any input device) live")
    p.add_argument("--device", default=None, metavar="ID|NAME",
                   help="input device index or name (see `streamtag devices`; default: the system's default input)")
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("devices", help="list audio input devices")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("demo", help="tag audio files live, paced at real time, on the dashboard")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help=f"audio files (default: examples/audio/{{{','.join(DEMO_CLIPS)}}})")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="play X times faster than real time")
    p.add_argument("--parallel", action="store_true",
                   help="one stream per file, all at once (default: one after another)")
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="websocket server: live updates, audio in, and a web page")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--source", action="append", default=[], metavar="NAME=URI",
                   help="tag URI (file, http(s) radio, HLS) as stream NAME; repeatable")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="pace file sources at X times real time")
    from .publishers.websocket import add_serve_security_args

    add_serve_security_args(p)
    _model_args(p)
    p.set_defaults(func=cmd_serve)


def _engine(args: argparse.Namespace):
    from .pipeline import Engine
    from .registry import DEFAULT_MODEL, load_bundle

    bundle = load_bundle(args.model or DEFAULT_MODEL)
    return Engine(bundle, device=args.compute, hop_seconds=args.hop, all_tags=args.all_tags)


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
    engine = _engine(args)
    mic = MicrophoneSource(args.device, sample_rate=engine.sample_rate)
    desc = f"input device {mic.device['index']} {mic.name!r} ({mic.device['hostapi']}), {mic.device_rate} Hz"
    return run_live(engine, {"mic": mic}, output=args.format, describe={"mic": desc}, duration=args.duration,
                    top=args.top)


# -- demo ------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .app import run_live
    from .sources.file import FileSource
    from .sources.playlist import Playlist

    _positive(args.speed, "--speed")
    _positive(args.duration, "--duration")
    files = [Path(f) for f in args.files] or [EXAMPLES_AUDIO / c for c in DEMO_CLIPS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"demo file(s) not found: {', '.join(missing)}; give audio files: streamtag demo FILE...")
    engine = _engine(args)
    if args.parallel:
        sources = {}
        for f in files:
            name = f.stem if f.stem not in sources else f"{f.stem}#{len(sources)}"
            sources[name] = FileSource(f, engine.sample_rate)
        describe = {n: str(s.path) for n, s in sources.items()}
    else:
        sources = {"demo": Playlist([(f.name, lambda f=f: FileSource(f, engine.sample_rate)) for f in files])}
        describe = {"demo": f"{len(files)} file(s) at {args.speed:g}x real time"}
    return run_live(engine, sources, output=args.format, speed=args.speed, describe=describe,
                    duration=args.duration, top=args.top)


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

    _positive(args.speed, "--speed")
    # validates host/token/limits before the model loads
    config = config_from_args(args, host=args.host, port=args.port, file_speed=args.speed)
    sources = _parse_sources(args.source)
    engine = _engine(args)
    from .app import run_serve

    return run_serve(engine, config, sources)
