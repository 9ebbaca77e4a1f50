"""Command line: every subcommand's parser, built from shared helpers, and the dispatch to its body.

A flag means the same in every subcommand: ``--model``, ``--device`` (compute: auto | cpu | cuda[:N]),
``--hop``, ``--top``, ``--smoothing``, ``--format``, ``--all-tags``. The microphone is ``--input`` (``--mic``).
Command bodies live in streamtag.commands_tag (tag), streamtag.commands_live (listen, devices, demo, serve) and
the training package (train, eval, baseline, cache, distill), which also declares their flags
(streamtag.train.cli) and is imported only when one of them is on the command line.

Every error a user can cause ends as one line on stderr (``streamtag: error: ...``) and a non-zero exit code,
never a traceback (``--debug`` shows it). A usage error shows the usage of the subcommand it is about.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, StreamtagError, Terminated
from .options import SMOOTHING_CHOICES, smoothing_config

PRECISIONS = ("auto", "fp32", "bf16")  # runner.PRECISIONS, spelled here so parsing never imports torch (tested)

__all__ = ["main", "build_parser", "apply_old_spellings", "smoothing_config", "TOP_DEFAULT", "SMOOTHING_CHOICES"]

log = logging.getLogger("streamtag")

TOP_DEFAULT = 5  # genres per update / summary / bars per stream, in every subcommand
_COMPUTE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


# -- help formatting -----------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default or there is none to say
    (flags that are off by default, options whose absence is explained in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """An old spelling that still works for one release: stores into ``dest`` and records a warning."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        _deprecations(namespace).append(f"{option_string} is deprecated and will be removed in the next release; "
                                        f"use {self.new}")


def _deprecations(namespace: argparse.Namespace) -> list[str]:
    if getattr(namespace, "deprecations", None) is None:
        namespace.deprecations = []
    found: list[str] = namespace.deprecations
    return found


def _subparser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)
    p.set_defaults(parser=p)  # so that main() can show THIS subcommand's usage on an unknown argument
    return p


# -- shared option helpers ---------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, *, hop: bool = True, all_tags: bool = True) -> None:
    """--model, --hop, --all-tags: which bundle, how often it answers, which labels it shows."""
    p.add_argument("--model", default=None,
                   help="bundle name (see `streamtag models`) or bundle directory (default: musicnn-msd)")
    if hop:
        p.add_argument("--hop", type=float, default=None, metavar="S",
                       help="seconds between updates, at least 0.25 (default: the bundle's)")
    if all_tags:
        p.add_argument("--all-tags", action="store_true", help="show all the model's tags, not only its genres")


def add_device_arg(p: argparse.ArgumentParser, *, default: str = "auto", old_compute: bool = False) -> None:
    """--device: where the model runs. ``old_compute`` also accepts the old spelling --compute (deprecated)."""
    p.add_argument("--device", default=default, metavar="auto|cpu|cuda[:N]",
                   help="compute device for the model; auto picks CUDA when PyTorch sees a GPU")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic of the models that offer bf16 (the distilled students): auto picks bf16 on "
                        "a CPU with hardware bf16 (AMX/AVX512-BF16), fp32 elsewhere")
    if old_compute:
        p.add_argument("--compute", dest="compute", action=_DeprecatedAlias, new="--device",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_top_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=int, default=TOP_DEFAULT, metavar="K",
                   help="genres per update and summary (bars per stream on the dashboard)")


def add_smoothing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoothing", choices=SMOOTHING_CHOICES, default="hmm",
                   help="temporal smoothing: hmm (graded bars, 2 s moving averages, and a headline family from a "
                        "family-change model), ema (6 s moving averages, the largest family share heads), "
                        "none (each hop's raw answer)")


def add_live_format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("auto", "dashboard", "jsonl"), default="auto",
                   help="auto: the dashboard on a terminal, JSON lines otherwise")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until the input ends or Ctrl-C)")


def add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", default=None, metavar="PATH",
                   help="append every closed segment and hourly family shares per stream to the SQLite station "
                        "log PATH (read it with `streamtag report PATH`; default: no log)")
    p.add_argument("--keep", default="30d", metavar="DURATION",
                   help="with --record: delete log records older than this (30d, 12h, ...)")


def add_live_log_args(p: argparse.ArgumentParser) -> None:
    """``--segments`` and ``--record/--keep``: the live commands' segment events and station log."""
    p.add_argument("--segments", action="store_true",
                   help="JSON lines also carry a segment event each time a segment (one headline family) closes")
    add_record_args(p)


def add_stdin_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("standard input ('-' as the input)")
    g.add_argument("--raw-rate", type=int, default=None, metavar="HZ",
                   help="stdin is raw PCM at this sample rate (default: WAV or any format FFmpeg recognises)")
    g.add_argument("--raw-format", choices=("s16le", "s32le", "f32le"), default="s16le", help="raw PCM sample format")
    g.add_argument("--raw-channels", type=int, default=1, metavar="N", help="raw PCM channels")


# -- the parser ----------------------------------------------------------------------------------------------------
def build_parser(*, serve_security: bool = True, training: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``serve_security=False`` leaves out the server's security flags, whose module
    imports torch: main() asks for them only when the command line mentions serve, so --version stays instant.
    ``training=False`` leaves out the training commands, whose flags live in streamtag.train.cli: main() asks
    for them only when a training command (or no command, e.g. --help) is on the command line."""
    parser = argparse.ArgumentParser(prog="streamtag", description="Streaming, real-time music genre tagging.",
                                     formatter_class=_HelpFormatter, epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"streamtag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _subparser(sub, "models", help="list the shipped model bundles",
                   description="List the model bundles found (shipped ones and $STREAMTAG_MODELS).")
    p.set_defaults(func=cmd_models)

    p = _subparser(sub, "doctor", help="versions, FFmpeg/PortAudio/CUDA availability, shipped models",
                   description="What this installation has: versions, FFmpeg, PortAudio, torch threads, CUDA, models.")
    p.set_defaults(func=cmd_doctor)

    p = _subparser(sub, "report", help="family shares per hour/day and the segments from a station log",
                   description="Report what a station log (serve/stream --record PATH) holds: each station's "
                               "family shares per hour or day, and its segments. Times are UTC unless --tz local.")
    p.add_argument("path", metavar="PATH", help="the station log (an SQLite file)")
    p.add_argument("--station", default=None, help="only this station (stream name; default: all)")
    p.add_argument("--since", default="24h", metavar="DURATION", help="how far back: 90m, 24h, 7d ...")
    p.add_argument("--by", choices=("hour", "day"), default=None,
                   help="shares per hour or per day (default: hour up to 2 days back, else day)")
    p.add_argument("--tz", choices=("utc", "local"), default="utc",
                   help="times and periods in UTC or in this machine's local time zone (TZ; default: utc)")
    p.add_argument("--what", choices=("shares", "segments", "both"), default=None,
                   help="what to print (default: both; with --format csv: shares)")
    p.add_argument("--format", choices=("table", "csv", "html"), default="table",
                   help="a table, csv, or one self-contained html page with a chart")
    p.set_defaults(func=_lazy("store.report", "cmd_report"))

    p = _subparser(sub, "tag", help="genre summary (and timeline) of files, folders, playlists or URLs",
                   description="Tag whole inputs: audio files, folders of them, local .pls/.m3u/.m3u8 playlists, "
                               "http(s) URLs, or - for stdin. Prints one summary per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder, playlist, URL, or -")
    add_model_args(p)
    add_device_arg(p)
    add_top_arg(p)
    add_smoothing_arg(p)
    p.add_argument("--timeline", action="store_true", help="also emit one event per hop")
    p.add_argument("--segments", action="store_true",
                   help="also list the segments: stretches with one headline family (start, end, family, genre)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="draw each input's taggram with its family strip to FILE (default: no plot; .png/.svg need matplotlib; "
                        ".html is one self-contained file)")
    p.add_argument("--format", choices=("table", "jsonl", "csv"), default="table",
                   help="output on stdout (csv: the timeline with --timeline, the segments with --segments, "
                        "else the summaries)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="tag at most S seconds of each input (default: files whole, URLs 60 s)")
    p.add_argument("-r", "--recursive", action="store_true", help="walk folders given as inputs recursively")
    add_stdin_args(p)
    p.set_defaults(func=_lazy("commands_tag", "cmd_tag"))

    p = _subparser(sub, "stream", help="tag internet radio streams live until interrupted",
                   description="Tag http(s) radio (Icecast/Shoutcast, HLS, PLS/M3U) live; reconnects on drops.")
    p.add_argument("urls", nargs="*", metavar="URL", help="stream URL (or - for stdin)")
    p.add_argument("--sources", metavar="FILE", default=None,
                   help="station list: NAME=URL lines, an M3U or a PLS; stations that are down keep retrying; SIGHUP "
                        "re-reads it and applies what changed (default: none)")
    add_model_args(p)
    add_device_arg(p)
    add_top_arg(p)
    add_smoothing_arg(p)
    add_live_format_args(p)
    p.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="give up a stream after N failed reconnects (default: retry forever)")
    p.add_argument("--health-every", type=float, default=30.0, metavar="S",
                   help="with JSON lines: log serve's health summary on stderr every S seconds, and a warning when "
                        "behind (0: never; default: 30)")
    add_live_log_args(p)
    add_stdin_args(p)
    p.set_defaults(func=_lazy("commands_live", "cmd_stream"))

    p = _subparser(sub, "listen", help="tag the microphone (or any input device) live",
                   description="Tag an audio input device live (see `streamtag devices`).")
    p.add_argument("--input", "--mic", dest="input", default=None, metavar="ID|NAME",
                   help="input device index or name (default: the system's default input)")
    add_model_args(p)
    # --device here used to mean the microphone: values other than auto|cpu|cuda[:N] still do (deprecated)
    add_device_arg(p, old_compute=True)
    add_top_arg(p)
    add_smoothing_arg(p)
    add_live_format_args(p)
    add_live_log_args(p)
    p.set_defaults(func=_lazy("commands_live", "cmd_listen"))

    p = _subparser(sub, "devices", help="list audio input devices",
                   description="List the audio input devices PortAudio sees (give one to listen --input).")
    p.set_defaults(func=_lazy("commands_live", "cmd_devices"))

    p = _subparser(sub, "demo", help="tag audio files live, paced at real time, on the dashboard",
                   description="Tag audio files as if they were live streams, on the dashboard.")
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files (default: the three shipped example clips)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="play X times faster than real time")
    p.add_argument("--parallel", action="store_true",
                   help="one stream per file, all at once (default: one after another)")
    add_model_args(p)
    add_device_arg(p, old_compute=True)
    add_top_arg(p)
    add_smoothing_arg(p)
    add_live_format_args(p)
    add_live_log_args(p)
    p.set_defaults(func=_lazy("commands_live", "cmd_demo"))

    p = _subparser(sub, "serve", help="websocket server: live updates, audio in, and a web page",
                   description="Serve live updates over websockets (and a web page); clients may send audio.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=URI",
                   help="tag URI (file, http(s) radio, HLS) as stream NAME; repeatable (default: none)")
    p.add_argument("--sources", metavar="FILE", default=None,
                   help="station list: NAME=URL lines, an M3U or a PLS; stations that are down keep retrying; SIGHUP "
                        "re-reads it and applies what changed (default: none)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="pace file sources at X times real time")
    p.add_argument("--health-every", type=float, default=30.0, metavar="S",
                   help="log a health summary every S seconds, and a warning when behind (0: never; default: 30)")
    if serve_security:
        _add_serve_security_args(p)
    add_model_args(p)
    add_device_arg(p, old_compute=True)
    add_top_arg(p)
    add_smoothing_arg(p)
    add_record_args(p)
    from .cluster import add_cluster_args  # --cluster ADDRESS and its capacity flags (no Ray import)

    add_cluster_args(p)
    p.set_defaults(func=_lazy("commands_live", "cmd_serve"))

    if training:
        add_training_commands(sub)
    return parser


def _add_serve_security_args(p: argparse.ArgumentParser) -> None:
    """The server's security flags (token, origins, limits, source policy): defined beside the server's config."""
    from .publishers.websocket import add_serve_security_args

    add_serve_security_args(p)


def apply_old_spellings(args: argparse.Namespace) -> None:
    """Map the deprecated spellings onto today's: ``--compute DEV`` is ``--device DEV``; in listen,
    ``--device NAME|ID`` (anything but auto|cpu|cuda[:N]) is the microphone, ``--input NAME|ID``."""
    if getattr(args, "command", None) == "listen":
        _fix_listen_device(args)
    compute = getattr(args, "compute", None)
    if compute is not None:
        args.device = compute


def _fix_listen_device(args: argparse.Namespace) -> None:
    if args.device is not None and not _COMPUTE_RE.match(str(args.device)):
        if args.input is not None:
            raise ConfigError(f"--device {args.device!r} is not a compute device (auto, cpu, cuda[:N]) and --input "
                              "is given too; pass the microphone with --input only")
        args.input, args.device = args.device, "auto"
        _deprecations(args).append("--device NAME|ID for the microphone is deprecated and will be removed in the "
                                   "next release; use --input NAME|ID (--device is the compute device)")


def _lazy(module: str, func: str) -> Any:
    """A handler that imports ``streamtag.<module>`` only when its subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"{__package__}.{module}")
        return int(getattr(mod, func)(args) or 0)

    handler.__name__ = f"{module}.{func}"
    return handler


# ==== training commands: declared once, in streamtag.train.cli, which is imported only when one of them is asked for
TRAINING_COMMANDS = ("train", "eval", "baseline", "cache", "distill")  # streamtag.train.cli.COMMANDS (tested)


def add_training_commands(sub: Any) -> None:
    """train, eval, baseline, cache, distill: their parsers and bodies come from streamtag.train.cli."""
    from .train.cli import add_commands

    add_commands(sub, formatter_class=_HelpFormatter)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line (None: none, e.g. ``streamtag --help``)."""
    return next((a for a in argv if not a.startswith("-")), None)


# -- entry point ---------------------------------------------------------------------------------------------------
# exit codes (README "Exit codes", and `streamtag --help`)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 74, 130
EXIT_CODES_HELP = ("exit codes: 0 done; 1 an input, option or model failed (one line each on stderr); 2 usage "
                   "error; 3 internal error (a bug: rerun with --debug); 74 the output could not be written "
                   "(e.g. disk full); 130 interrupted (Ctrl-C, after printing what was done); 143 the same after SIGTERM; 129 the same after "
                   "SIGHUP (a closed terminal)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if argv is None:  # the console script: the interpreter's shutdown is next
            _quiet_ctrl_c_at_exit()


def _main(argv: Sequence[str] | None) -> int:
    from .errors import output_failure

    output_failure(take=True)  # (a previous main() in this process)
    code = _run(argv)
    failure = output_failure(take=True)  # a sink thread could not write the results: that ended the command
    if failure is None or code == EXIT_OUTPUT:
        return code
    _stdout_to_devnull()
    if failure.errno == errno.EPIPE:  # the reader left (`| head`): not an error
        return EXIT_OK
    print(f"streamtag: error: cannot write output: {_reason(failure)}; free some space or write the output "
          "elsewhere", file=sys.stderr)
    return EXIT_OUTPUT


def _reason(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser(serve_security="serve" in argv, training=command is None or command in TRAINING_COMMANDS)
    args, extras = parser.parse_known_args(argv)
    sub_parser: argparse.ArgumentParser = getattr(args, "parser", None) or parser
    if extras:
        sub_parser.error(f"unrecognized arguments: {' '.join(extras)}")  # exits 2 with the subcommand's usage
    default_level = getattr(args, "log_level", logging.WARNING)
    level = default_level - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="streamtag: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "sources", None):  # a station list reloads on SIGHUP: one during the start must not kill it
        from .hangups import count_early

        count_early()
    try:
        apply_old_spellings(args)
        for message in getattr(args, "deprecations", None) or []:
            log.warning("warning: %s", message)
        return int(args.func(args) or 0)
    except StreamtagError as e:
        if args.debug:
            raise
        print(f"streamtag: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated as e:  # SIGTERM/SIGHUP while a command starts (streamtag.app.terminate_as_interrupt)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader left (`| head`): not an error
        _stdout_to_devnull()
        return EXIT_OK
    except OSError as e:
        if not _output_failed(e):
            return _internal_error(args, e)
        _stdout_to_devnull()
        print(f"streamtag: error: cannot write output: {_reason(e)}; free some space or write the output elsewhere",
              file=sys.stderr)
        return EXIT_OUTPUT
    except Exception as e:  # a bug, not a user error: one line unless --debug
        return _internal_error(args, e)


def _internal_error(args: argparse.Namespace, e: Exception) -> int:
    if args.debug:
        raise e
    print(f"streamtag: internal error: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
    return EXIT_INTERNAL


def _output_failed(e: OSError) -> bool:
    """Whether ``e`` is the results failing to be written: a full disk or quota, or a stdout that takes no more."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of unwritable output does not print
    "Exception ignored ... OSError" after the one-line error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured): nothing will be flushed to it
        pass


def _quiet_ctrl_c_at_exit() -> None:
    """After main(): a Ctrl-C while the interpreter shuts down (joining threads, atexit callbacks) ends the
    process at once with 130, instead of a KeyboardInterrupt inside an atexit callback and its traceback."""
    def stop_now(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_INTERRUPTED)

    try:
        signal.signal(signal.SIGINT, stop_now)
    except ValueError:  # not the main thread
        pass


# -- models ------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_MODEL, available_models, load_bundle, models_dirs

    names = available_models()
    if not names:
        looked = ", ".join(str(d) for d in models_dirs()) or "(no models folder exists)"
        print(f"no shipped models found (looked in: {looked}; set STREAMTAG_MODELS=DIR to add bundles)")
        return 1
    broken = 0
    for name in names:
        try:  # one broken bundle (a bad config.json in STREAMTAG_MODELS) is marked, the others still listed
            b = load_bundle(name)
            size_mb = sum(f.stat().st_size for f in b.path.iterdir() if f.is_file()) / 1e6
        except (StreamtagError, OSError) as e:
            broken += 1
            print(f"! {name:24s} cannot be loaded: {e}")
            continue
        mark = "*" if name == DEFAULT_MODEL else " "
        print(
            f"{mark} {name:24s} {b.architecture:15s} {len(b.labels):3d} labels ({len(b.genre_labels)} genres)  "
            f"window {b.window_seconds:.2f} s  hop {b.hop_seconds:.2f} s  {b.streaming:8s} {size_mb:5.1f} MB"
            + (f"  {b.description}" if b.description else "")
        )
        print(_families_text(b))
    print("* default")
    if broken:
        print("! cannot be loaded: fix the bundle or remove it")
    return 0


def _families_text(bundle: Any) -> str:
    """A bundle's taxonomy for `streamtag models`: "    families: rock = rock, alternative, ... | metal = ..."."""
    import textwrap

    from .taxonomy import bundle_taxonomy

    fams = " | ".join(f"{name} = {', '.join(genres)}" for name, genres in bundle_taxonomy(bundle).families)
    return textwrap.fill(f"families: {fams}", width=118, initial_indent="    ", subsequent_indent="      ")


# -- doctor ------------------------------------------------------------------------------------------------
def _version_of(module: str) -> str:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return f"missing ({e})"
    except OSError as e:  # a shared library the module needs cannot be loaded
        return f"broken ({e})"
    version = getattr(mod, "__version__", None)
    if version is None:  # e.g. rich: only its distribution metadata knows
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version(module)
        except PackageNotFoundError:
            version = "?"
    return str(version)


def doctor_report() -> list[tuple[str, str]]:
    """(item, finding) rows describing this installation; never raises for a missing optional part."""
    import platform
    import shutil

    rows: list[tuple[str, str]] = [("streamtag", f"{__version__} ({Path(__file__).resolve().parent})"),
                                   ("python", f"{platform.python_version()} ({sys.executable})")]
    for mod in ("torch", "numpy", "librosa", "av", "websockets", "rich", "safetensors"):
        rows.append((mod, _version_of(mod)))
    try:
        import av

        libs = getattr(av, "library_versions", {}) or {}
        lavc = libs.get("libavcodec")
        rows.append(("FFmpeg (PyAV)", "libavcodec " + ".".join(map(str, lavc)) if lavc else "available"))
    except ImportError as e:
        rows.append(("FFmpeg (PyAV)", f"missing ({e}); pip install av"))
    ffmpeg = shutil.which("ffmpeg")
    rows.append(("ffmpeg binary", ffmpeg or "not on PATH (optional: decoding uses PyAV's own FFmpeg)"))
    try:
        import sounddevice

        rows.append(("PortAudio", f"{sounddevice.get_portaudio_version()[1]} (sounddevice {sounddevice.__version__})"))
    except OSError as e:
        rows.append(("PortAudio", f"not found ({e}); listen/devices need it: apt install libportaudio2"))
    except ImportError as e:
        rows.append(("PortAudio", f"sounddevice missing ({e}); pip install sounddevice"))
    try:
        import torch

        rows.append(("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"))
        from .architectures.fastfront import bf16_native

        rows.append(("CPU bf16", "hardware (AMX / AVX512-BF16): --precision auto runs the students in bf16"
                     if bf16_native() else "not in hardware: --precision auto runs everything in fp32"))
        if torch.cuda.is_available():
            gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            rows.append(("CUDA", f"available: {gpus} (CUDA {torch.version.cuda})"))
        else:
            built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "for the CPU only"
            rows.append(("CUDA", f"not available (this torch is built {built}); --device auto uses the CPU"))
    except ImportError as e:
        rows.append(("torch threads", f"torch missing ({e})"))
    from .registry import available_models, load_bundle, models_dirs

    rows.append(("models folders", ", ".join(str(d) for d in models_dirs()) or "none found"))
    names = available_models()
    if not names:
        rows.append(("models", "none found; set STREAMTAG_MODELS=DIR or reinstall streamtag"))
    for name in names:
        try:
            rows.append((f"model {name}", str(load_bundle(name).path)))
        except StreamtagError as e:
            rows.append((f"model {name}", f"broken: {e}"))
    return rows


def cmd_doctor(args: argparse.Namespace) -> int:
    rows = doctor_report()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:{width}s}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
