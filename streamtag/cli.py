"""Command line: argument parsing only; each command builds a pipeline and runs it.

Every error a user can cause ends as one line on stderr (``streamtag: error: ...``) and a non-zero exit code,
never a traceback (``--debug`` shows it).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import StreamtagError

log = logging.getLogger("streamtag")

# Modules that add their own subcommands through register(subparsers).
_COMMAND_MODULES = ("streamtag.commands_live", "train.cli", "train.distill")


def _add_model_args(p: argparse.ArgumentParser, *, hop: bool = True) -> None:
    p.add_argument("--model", default=None, help="bundle name (see `streamtag models`) or bundle directory")
    if hop:
        p.add_argument("--hop", type=float, default=None, help="seconds between updates (default: the bundle's; >= 0.25)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="how many top genres to show (default 5)")
    p.add_argument("--all-tags", action="store_true", help="show all the model's tags, not only its genres")


def _add_stdin_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("standard input ('-' as the input)")
    g.add_argument("--raw-rate", type=int, default=None, metavar="HZ",
                   help="stdin is raw PCM at this sample rate (default: WAV or any format FFmpeg recognises)")
    g.add_argument("--raw-format", choices=("s16le", "s32le", "f32le"), default="s16le", help="raw PCM sample format")
    g.add_argument("--raw-channels", type=int, default=1, metavar="N", help="raw PCM channels")


def _stdin_opts(args: argparse.Namespace) -> dict:
    if getattr(args, "raw_rate", None) is None:
        return {}
    return {"raw_rate": args.raw_rate, "raw_format": args.raw_format, "raw_channels": args.raw_channels}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamtag", description="Streaming, real-time music genre tagging.")
    parser.add_argument("--version", action="version", version=f"streamtag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the shipped model bundles")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("tag", help="genre summary (and timeline) of files or URLs")
    p.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    _add_model_args(p)
    p.add_argument("--timeline", action="store_true", help="also emit one event per hop")
    p.add_argument("--format", choices=("table", "jsonl"), default="table")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="tag at most S seconds of each input (URLs default to 60 s)")
    _add_stdin_args(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("stream", help="tag internet radio streams live until interrupted")
    p.add_argument("urls", nargs="+", metavar="URL")
    _add_model_args(p)
    p.add_argument("--format", choices=("auto", "jsonl", "dashboard"), default="auto",
                   help="auto: dashboard on a terminal, JSON lines otherwise")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds of wall time")
    p.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="give up a stream after N failed reconnects (default: retry forever)")
    _add_stdin_args(p)
    p.set_defaults(func=cmd_stream)

    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and mod_name.startswith(e.name):
                continue  # optional module not present in this checkout
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="streamtag: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StreamtagError as e:
        if args.debug:
            raise
        print(f"streamtag: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not a user error: one line unless --debug
        if args.debug:
            raise
        print(f"streamtag: internal error: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
        return 3


# -- models ------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_MODEL, available_models, load_bundle

    names = available_models()
    if not names:
        print("no shipped models found (looked in models/ and $STREAMTAG_MODELS)")
        return 1
    for name in names:
        b = load_bundle(name)
        size_mb = sum(f.stat().st_size for f in b.path.iterdir() if f.is_file()) / 1e6
        mark = "*" if name == DEFAULT_MODEL else " "
        print(
            f"{mark} {name:24s} {b.architecture:13s} {len(b.labels):3d} labels ({len(b.genre_labels)} genres)  "
            f"window {b.window_seconds:.2f} s  hop {b.hop_seconds:.2f} s  {b.streaming:8s} {size_mb:5.1f} MB"
            + (f"  {b.description}" if b.description else "")
        )
    print("* default")
    return 0


def _load(args: argparse.Namespace):
    from .registry import DEFAULT_MODEL, load_bundle

    return load_bundle(args.model or DEFAULT_MODEL)


# -- tag ---------------------------------------------------------------------------------------------------
def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _read_input(src: str, sample_rate: int, duration: float | None, opts: dict):
    import numpy as np

    from .sources import open_source, read_audio

    if _is_url(src) or src == "-":
        limit = int((duration or (60.0 if _is_url(src) else 1e9)) * sample_rate)
        blocks, n = [], 0
        with open_source(src, sample_rate, max_retries=0, **opts) as source:
            for b in source:
                blocks.append(b)
                n += b.shape[0]
                if n >= limit:
                    break
        x = np.concatenate(blocks)[:limit] if blocks else np.zeros(0, np.float32)
    else:
        x = read_audio(src, sample_rate)
        if duration is not None:
            x = x[: int(duration * sample_rate)]
    if x.size == 0:
        raise StreamtagError(f"{src}: no audio decoded; check that it is a non-empty audio file or stream")
    return x


def cmd_tag(args: argparse.Namespace) -> int:
    from .pipeline import hop_frames_for, tag_audio
    from .runner import ModelRunner

    bundle = _load(args)
    hop_frames_for(bundle, args.hop)  # validate before any decoding
    runner = ModelRunner(bundle, args.device)
    out = _Output(args.format, args.top)
    failed = 0
    sr = bundle.frontend.sample_rate
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # decode the next input while the model runs on this one
        futures = [pool.submit(_read_input, src, sr, args.duration, _stdin_opts(args)) for src in args.inputs[:1]]
        for i, src in enumerate(args.inputs):
            if i + 1 < len(args.inputs):
                futures.append(pool.submit(_read_input, args.inputs[i + 1], sr, args.duration,
                                           _stdin_opts(args)))
            try:
                samples = futures[i].result()
                tl = tag_audio(samples, runner, name=src, hop_seconds=args.hop, all_tags=args.all_tags,
                               top_k=args.top)
            except StreamtagError as e:
                failed += 1
                msg = str(e) if (src in str(e) or (src == "-" and "stdin" in str(e))) else f"{src}: {e}"
                print(f"streamtag: error: {msg}", file=sys.stderr)
                continue
            out.timeline(tl, args.timeline)
    out.close()
    if failed:
        print(f"streamtag: {failed} of {len(args.inputs)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


class _Output:
    """Writes tag results as JSON lines or rich tables."""

    def __init__(self, fmt: str, top: int) -> None:
        self.fmt, self.top = fmt, top
        self.console = None
        if fmt == "table":
            from rich.console import Console

            self.console = Console()

    def timeline(self, tl, with_updates: bool) -> None:
        if self.fmt == "jsonl":
            if with_updates:
                for u in tl.updates:
                    print(u.to_json())
            print(tl.summary.to_json(), flush=True)
            return
        from rich.table import Table

        s = tl.summary
        if with_updates:
            self.console.print(f"[bold]{s.stream}[/bold] timeline", highlight=False, soft_wrap=True)
            t = Table(show_edge=False, box=None, padding=(0, 2))
            t.add_column("t (s)", justify="right")
            for k in range(min(self.top, 3)):
                t.add_column(f"#{k + 1}")
            for u in tl.updates:
                t.add_row(f"{u.t:7.2f}", *[f"{lab} {p:.2f}" for lab, p in u.top[: min(self.top, 3)]])
            self.console.print(t)
        self.console.print(f"[bold]{s.stream}[/bold]  ({s.duration:.1f} s, {s.windows} windows, {s.model})",
                           highlight=False, soft_wrap=True)
        t = Table(show_edge=False, box=None, padding=(0, 2))
        t.add_column("genre")
        t.add_column("mean p", justify="right")
        t.add_column("")
        for lab, p in s.top:
            t.add_row(lab, f"{p:.3f}", "█" * int(round(p * 30)))
        self.console.print(t)
        self.console.print()

    def close(self) -> None:
        sys.stdout.flush()


# -- stream ------------------------------------------------------------------------------------------------
def cmd_stream(args: argparse.Namespace) -> int:
    from .pipeline import Engine
    from .sources import open_source

    bundle = _load(args)
    engine = Engine(bundle, device=args.device, hop_seconds=args.hop, all_tags=args.all_tags)
    fmt = args.format
    if fmt == "auto":
        fmt = "dashboard" if sys.stdout.isatty() else "jsonl"
    sources = {}
    for url in args.urls:
        name = url if url not in sources else f"{url}#{len(sources)}"
        # a first connection that fails raises here: typos get a one-line error at once
        src = open_source(url, engine.sample_rate, max_retries=args.max_retries, **_stdin_opts(args))
        sources[name] = src
    from .app import run_live

    return run_live(engine, sources, output=fmt, duration=args.duration, top=args.top)


if __name__ == "__main__":
    raise SystemExit(main())
