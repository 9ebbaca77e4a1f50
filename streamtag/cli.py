"""Command line: every subcommand's parser, built from shared helpers, and the dispatch to its body.

A flag means the same in every subcommand: ``--model``, ``--device`` (compute: auto | cpu | cuda[:N]),
``--hop``, ``--top``, ``--smoothing``, ``--format``, ``--all-tags``. The microphone is ``--input`` (``--mic``).
Command bodies live in streamtag.commands_tag (tag), streamtag.commands_live (listen, devices, demo, serve) and
the training package (train, eval, baseline, cache, distill: imported only when one of them runs).

Every error a user can cause ends as one line on stderr (``streamtag: error: ...``) and a non-zero exit code,
never a traceback (``--debug`` shows it). A usage error shows the usage of the subcommand it is about.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, StreamtagError

PRECISIONS = ("auto", "fp32", "bf16")  # runner.PRECISIONS, spelled here so parsing never imports torch (tested)

__all__ = ["main", "build_parser", "apply_old_spellings", "smoothing_config", "TOP_DEFAULT", "SMOOTHING_CHOICES"]

log = logging.getLogger("streamtag")

TOP_DEFAULT = 5  # genres per update / summary / bars per stream, in every subcommand
SMOOTHING_CHOICES = ("ema", "hmm", "none")
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
                   help="temporal smoothing of the probabilities: hmm (a genre-change model whose posterior is "
                        "both the bars and the headline), ema (moving average of every label), "
                        "none (each hop's raw answer)")


def add_live_format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("auto", "dashboard", "jsonl"), default="auto",
                   help="auto: the dashboard on a terminal, JSON lines otherwise")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until the input ends or Ctrl-C)")


def add_stdin_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("standard input ('-' as the input)")
    g.add_argument("--raw-rate", type=int, default=None, metavar="HZ",
                   help="stdin is raw PCM at this sample rate (default: WAV or any format FFmpeg recognises)")
    g.add_argument("--raw-format", choices=("s16le", "s32le", "f32le"), default="s16le", help="raw PCM sample format")
    g.add_argument("--raw-channels", type=int, default=1, metavar="N", help="raw PCM channels")


def stdin_opts(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "raw_rate", None) is None:
        return {}
    return {"raw_rate": args.raw_rate, "raw_format": args.raw_format, "raw_channels": args.raw_channels}


def smoothing_config(method: str) -> Any:
    """The SmoothingConfig for ``--smoothing METHOD`` (the method's defaults: docs/smoothing.md)."""
    from .smoothing import SmoothingConfig

    if method not in SMOOTHING_CHOICES:
        raise ConfigError(f"--smoothing {method!r}: use one of {', '.join(SMOOTHING_CHOICES)}")
    return SmoothingConfig(method=method)


# -- the parser ----------------------------------------------------------------------------------------------------
def build_parser(*, serve_security: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``serve_security=False`` leaves out the server's security flags, whose module
    imports torch: main() asks for them only when the command line mentions serve, so --version stays instant."""
    parser = argparse.ArgumentParser(prog="streamtag", description="Streaming, real-time music genre tagging.",
                                     formatter_class=_HelpFormatter)
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

    p = _subparser(sub, "tag", help="genre summary (and timeline) of files, folders, playlists or URLs",
                   description="Tag whole inputs: audio files, folders of them, local .pls/.m3u/.m3u8 playlists, "
                               "http(s) URLs, or - for stdin. Prints one summary per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder, playlist, URL, or -")
    add_model_args(p)
    add_device_arg(p)
    add_top_arg(p)
    add_smoothing_arg(p)
    p.add_argument("--timeline", action="store_true", help="also emit one event per hop")
    p.add_argument("--format", choices=("table", "jsonl"), default="table", help="output on stdout")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="tag at most S seconds of each input (default: files whole, URLs 60 s)")
    p.add_argument("-r", "--recursive", action="store_true", help="walk folders given as inputs recursively")
    add_stdin_args(p)
    p.set_defaults(func=_lazy("commands_tag", "cmd_tag"))

    p = _subparser(sub, "stream", help="tag internet radio streams live until interrupted",
                   description="Tag http(s) radio (Icecast/Shoutcast, HLS, PLS/M3U) live; reconnects on drops.")
    p.add_argument("urls", nargs="*", metavar="URL", help="stream URL (or - for stdin)")
    p.add_argument("--sources", metavar="FILE", default=None,
                   help="station list: NAME=URL lines, an M3U or a PLS; stations that are down keep retrying (default: none)")
    add_model_args(p)
    add_device_arg(p)
    add_top_arg(p)
    add_smoothing_arg(p)
    add_live_format_args(p)
    p.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="give up a stream after N failed reconnects (default: retry forever)")
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
    p.set_defaults(func=_lazy("commands_live", "cmd_demo"))

    p = _subparser(sub, "serve", help="websocket server: live updates, audio in, and a web page",
                   description="Serve live updates over websockets (and a web page); clients may send audio.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=URI",
                   help="tag URI (file, http(s) radio, HLS) as stream NAME; repeatable (default: none)")
    p.add_argument("--sources", metavar="FILE", default=None,
                   help="station list: NAME=URL lines, an M3U or a PLS; stations that are down keep retrying (default: none)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="pace file sources at X times real time")
    if serve_security:
        _add_serve_security_args(p)
    add_model_args(p)
    add_device_arg(p, old_compute=True)
    add_smoothing_arg(p)
    p.set_defaults(func=_lazy("commands_live", "cmd_serve"))

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


# ==== training commands (parsers only; bodies in streamtag.train, imported when one runs) ==========================
# This section is the only place in the runtime package that knows the training flags. Handlers called:
# streamtag.train.cli.cmd_train/cmd_eval/cmd_baseline/cmd_cache/cmd_distill(args), each with the argparse Namespace
# built below (same dest names as before; eval's --device arrives resolved, "auto" -> "cpu" or "cuda", as evaluate_bundle wants a torch device).
# trainable by `train`: every registered architecture but musicnn (tests/test_cli.py checks it against the registry)
_ARCHITECTURES = ("bigru", "crnn", "lite", "musicnn_student", "stateful_gru", "transformer", "vit")
_STUDENT_ARCHITECTURES = ("stateful_gru", "transformer")  # distill --arch (train.distill.DEFAULT_ARCH_CONFIGS)


def _training_handler(module: str, func: str, *, resolve_device: bool = False) -> Any:
    """``resolve_device``: the body takes a concrete torch device, so "auto" is resolved here."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        if resolve_device:
            from .runner import resolve_device as resolve

            args.device = str(resolve(args.device))

        try:
            mod = importlib.import_module(f"{__package__}.train.{module}")
        except ModuleNotFoundError as e:  # an optional training dependency (scikit-learn, matplotlib, tqdm)
            raise ConfigError(f"`streamtag {args.command}` needs the training extras ({e}); "
                              "pip install 'streamtag[train]'") from e
        return int(getattr(mod, func)(args) or 0)

    return handler


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("fma", "folders"), required=True, help="data set kind (required)")
    g.add_argument("--fma-metadata", type=Path, help="FMA: the unzipped fma_metadata folder, tracks.csv and genres.csv (no default; needed with --data fma)")
    g.add_argument("--audio", type=Path, help="FMA: the fma_<subset> audio folder or its parent (no default; needed with --data fma)")
    g.add_argument("--subset", default="small", choices=("small", "medium", "large", "full"), help="FMA subset")
    g.add_argument("--labels", default="top", choices=("top", "all"),
                   help="FMA: top = single-label genre_top; all = multi-label genres_all")
    g.add_argument("--root", type=Path, help="folders: ROOT/<genre>/<audio files> (no default; needed with --data folders)")
    g.add_argument("--splits", type=Path,
                   help="folders: folder of train/valid/test list files, GTZAN format (default: a hash split)")
    g.add_argument("--cache", type=Path, help="feature cache folder (default: inside --out)")
    g.add_argument("--cache-workers", type=int, default=2, help="processes decoding audio for the cache")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_training_commands(sub: Any) -> None:
    """train, eval, baseline, cache, distill."""
    p = _subparser(sub, "train", help="train a tagger and write a model bundle",
                   description="Train a genre tagger on FMA or genre folders; writes OUT/bundle.")
    _add_data_args(p)
    p.add_argument("--arch", default="transformer", choices=_ARCHITECTURES, help="architecture")
    p.add_argument("--arch-config", help="JSON overrides of the architecture config, e.g. '{\"d_model\": 64}' "
                                         "(default: the architecture's defaults)")
    p.add_argument("--frontend", help="JSON overrides of the front end "
                                      "(default: 16 kHz, n_fft 1024, hop 256, 128 mels, dB)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log.csv, bundle/ (required)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=32, help="crops per optimizer step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: no limit)")
    p.add_argument("--crop-seconds", type=float, default=5.0, help="training crop = window length, seconds")
    p.add_argument("--hop-seconds", type=float, default=0.5, help="default hop written into the bundle, seconds")
    p.add_argument("--no-specaug", action="store_true", help="turn SpecAugment off")
    p.add_argument("--mixup", type=float, default=0.2, help="mixup Beta alpha (0: off)")
    p.add_argument("--patience", type=int, default=5, help="early stopping patience, epochs")
    p.add_argument("--val-crops", type=int, default=3, help="crops averaged per validation clip")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="mixed precision")
    p.add_argument("--loader-workers", type=int, default=2, help="data loader processes")
    p.add_argument("--no-cache", action="store_true",
                   help="decode audio on the fly instead of caching features (slow; a broken file stops the run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_device_arg(p)
    p.set_defaults(func=_training_handler("cli", "cmd_train"), log_level=logging.INFO)

    p = _subparser(sub, "eval", help="evaluate a model bundle on a labelled split",
                   description="PR-AUC / ROC-AUC (multi-label) or accuracy / F1 (single-label), "
                               "with and without test-time crop averaging; writes report.json + plots.")
    _add_data_args(p)
    p.add_argument("--model", required=True, help="bundle folder or shipped model name (required)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split to evaluate")
    p.add_argument("--crops", type=int, default=5, help="windows averaged per clip")
    p.add_argument("--out", type=Path, required=True, help="report folder (required)")
    add_device_arg(p)
    p.set_defaults(func=_training_handler("cli", "cmd_eval", resolve_device=True), log_level=logging.INFO)

    p = _subparser(sub, "baseline", help="summary features + scikit-learn classifiers",
                   description="Classical ML baselines (LogReg, SVM, kNN, random forest).")
    _add_data_args(p)
    p.add_argument("--classifiers", default="logreg,svm,knn,forest", help="comma-separated classifiers")
    p.add_argument("--out", type=Path, required=True, help="report folder; features are cached there (required)")
    p.set_defaults(func=_training_handler("cli", "cmd_baseline"), log_level=logging.INFO)

    p = _subparser(sub, "cache", help="precompute the log-mel feature cache",
                   description="Decode and cache log-mel frames (parallel, resumable, skips bad files).")
    _add_data_args(p)
    p.add_argument("--out", type=Path, help="cache folder (default: --cache)")
    p.add_argument("--frontend", help="JSON overrides of the front end (default: the training default)")
    p.add_argument("--retry-skipped", action="store_true", help="try files skipped before again")
    p.set_defaults(func=_training_handler("cli", "cmd_cache"), log_level=logging.INFO)

    p = _subparser(sub, "distill", help="distil a teacher bundle into a streaming student",
                   description="Distil a teacher bundle into a streaming student (docs/distill.md).")
    p.add_argument("--arch", choices=_STUDENT_ARCHITECTURES, default="transformer", help="student architecture")
    p.add_argument("--teacher", default="musicnn-msd", help="teacher bundle name or directory")
    p.add_argument("--corpus", required=True, help="corpus directory made by streamtag.train.build_corpus (required)")
    p.add_argument("--out", help="bundle directory to write, e.g. models/st-transformer-msd (required unless "
                                 "--label-only or --features-only; no default)")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget, wall-clock minutes")
    p.add_argument("--max-steps", type=int, default=100_000, help="stop after this many steps at most")
    p.add_argument("--batch", type=int, default=32, help="windows (transformer) or sequences (GRU) per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--seq-seconds", type=float, nargs=2, default=(20.0, 90.0), metavar=("MIN", "MAX"),
                   help="stateful GRU: range of the random training sequence lengths, seconds")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--mixup", type=float, default=0.0, help="window models: mixup Beta alpha (0: off)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--mix-linear", action="store_true", help="mixup in the mel-power domain (like mixing audio)")
    p.add_argument("--gain-db", type=float, default=0.0, help="random gain per window, +-N dB (0: off)")
    p.add_argument("--spec-masks", type=int, default=1, help="SpecAugment band masks and time masks per window")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="training tracks set aside per source for validation / best-checkpoint choice (0: none)")
    p.add_argument("--val-every", type=int, default=500, help="steps between validation runs")
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--grid-frames", type=int, default=64, help="frames between teacher windows (64 x 16 ms = 1.024 s)")
    p.add_argument("--arch-config", help="JSON overrides of the student's architecture config "
                                         "(default: the architecture's defaults)")
    p.add_argument("--timing-repeats", type=int, default=30, help="runs per cost-per-hop measurement")
    p.add_argument("--log", help="append training progress to this file (default: no file)")
    p.add_argument("--label-only", action="store_true", help="only build the label cache")
    p.add_argument("--frontend", choices=("mel", "musicnn"), default="mel",
                   help="student input: log-mel frames (mel), or the teacher's frozen front end + mid end "
                        "(musicnn: a musicnn_student bundle; the head trains on cached features)")
    p.add_argument("--features-only", action="store_true", help="--frontend musicnn: only build the feature cache")
    p.add_argument("--shard", type=int, default=0, help="feature cache: this process's share (0..shards-1)")
    p.add_argument("--shards", type=int, default=1, help="feature cache: processes sharing the work")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the bundle at --out and rewrite its card")
    p.add_argument("--command-line", help=argparse.SUPPRESS)
    p.set_defaults(func=_training_handler("cli", "cmd_distill"), log_level=logging.INFO)
# ==== end of training commands =====================================================================================


# -- entry point ---------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(serve_security="serve" in argv)
    args, extras = parser.parse_known_args(argv)
    sub_parser: argparse.ArgumentParser = getattr(args, "parser", None) or parser
    if extras:
        sub_parser.error(f"unrecognized arguments: {' '.join(extras)}")  # exits 2 with the subcommand's usage
    default_level = getattr(args, "log_level", logging.WARNING)
    level = default_level - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="streamtag: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        apply_old_spellings(args)
        for message in getattr(args, "deprecations", None) or []:
            log.warning("warning: %s", message)
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
    from .registry import DEFAULT_MODEL, available_models, load_bundle, models_dirs

    names = available_models()
    if not names:
        looked = ", ".join(str(d) for d in models_dirs()) or "(no models folder exists)"
        print(f"no shipped models found (looked in: {looked}; set STREAMTAG_MODELS=DIR to add bundles)")
        return 1
    for name in names:
        b = load_bundle(name)
        size_mb = sum(f.stat().st_size for f in b.path.iterdir() if f.is_file()) / 1e6
        mark = "*" if name == DEFAULT_MODEL else " "
        print(
            f"{mark} {name:24s} {b.architecture:15s} {len(b.labels):3d} labels ({len(b.genre_labels)} genres)  "
            f"window {b.window_seconds:.2f} s  hop {b.hop_seconds:.2f} s  {b.streaming:8s} {size_mb:5.1f} MB"
            + (f"  {b.description}" if b.description else "")
        )
    print("* default")
    return 0


def load_model(args: argparse.Namespace) -> Any:
    from .registry import DEFAULT_MODEL, load_bundle

    return load_bundle(args.model or DEFAULT_MODEL)


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
