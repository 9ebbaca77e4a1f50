"""The training commands: ``train``, ``eval``, ``baseline``, ``cache`` and ``distill``; every flag declared here.

This module is the one place that knows the training flags. ``streamtag train ...`` (streamtag/cli.py, which
imports this module only when a training command is on its command line) and ``python -m streamtag.train ...``
both build their parsers with :func:`add_commands`, so the two accept the same flags with the same defaults
(tests/test_cli.py checks). Defaults are read from ``config.TrainConfig`` / ``config.DISTILL_DEFAULTS``, so a
default is written once and every ``--help`` shows it. Parsing imports nothing heavier than ``config.py``; each
command's body (:func:`cmd_train`, :func:`cmd_eval`, :func:`cmd_baseline`, :func:`cmd_cache`,
:func:`cmd_distill`) imports its modules when it runs. Every data-reading command takes the same data options::

    --data fma --fma-metadata DIR --audio DIR [--subset small|medium|large|full] [--labels top|all]
    --data folders --root DIR [--splits DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamtag.errors import ConfigError, StreamtagError

from .config import DEFAULT_ARCH_CONFIGS, DISTILL_DEFAULTS, GRID_FRAMES, STATEFUL_TIME_MASK_FRAMES, TrainConfig

__all__ = ["COMMANDS", "ARCHITECTURES", "add_commands", "add_train_args", "build_parser", "cmd_train", "cmd_eval",
           "cmd_baseline", "cmd_cache", "cmd_distill", "register", "main", "load_dataset", "train_config"]

log = logging.getLogger(__name__)

COMMANDS = ("train", "eval", "baseline", "cache", "distill")
# what `train --arch` trains: every registered architecture but the converted musicnn and the distilled
# musicnn_student (a frozen musicnn front end: `distill --frontend musicnn` makes it); tests/test_cli.py checks
# this against streamtag.architectures, which parsing does not import (it imports torch)
ARCHITECTURES = ("bigru", "crnn", "lite", "stateful_gru", "transformer", "vit")
EVAL_CROPS = 5  # windows averaged per clip by `eval`
_T = TrainConfig()
_D = DISTILL_DEFAULTS


def _d(text: str, default: object = ...) -> str:
    """Help text that ends with the default, the way every flag of these commands states it (None: no limit)."""
    if default is None:
        return text + " (default: no limit)"
    return text + " (default: %(default)s)"


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help=_d("compute device; auto picks CUDA when PyTorch sees a GPU"))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("fma", "folders"), required=True, help="data set kind (required)")
    g.add_argument("--fma-metadata", type=Path, help="FMA: the unzipped fma_metadata folder, tracks.csv and genres.csv (no default; needed with --data fma)")
    g.add_argument("--audio", type=Path, help="FMA: the fma_<subset> audio folder or its parent (no default; needed with --data fma)")
    g.add_argument("--subset", default="small", choices=("small", "medium", "large", "full"), help=_d("FMA subset"))
    g.add_argument("--labels", default="top", choices=("top", "all"),
                   help=_d("FMA: top = single-label genre_top; all = multi-label genres_all"))
    g.add_argument("--root", type=Path, help="folders: ROOT/<genre>/<audio files> (no default; needed with --data folders)")
    g.add_argument("--splits", type=Path,
                   help="folders: folder of train/valid/test list files (GTZAN format); default: a stratified "
                        "80/10/10 split by a stable hash, at least one clip per genre in each split")
    g.add_argument("--cache", type=Path, help="feature cache folder (default: OUT/cache)")
    g.add_argument("--cache-workers", type=int, default=2, help=_d("processes decoding audio for the cache"))
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_fit_args(p: argparse.ArgumentParser, d: TrainConfig) -> argparse._ArgumentGroup:
    """The loop's flags shared by train and distill, defaults from ``d``."""
    g = p.add_argument_group("training loop")
    g.add_argument("--max-steps", type=int, default=d.max_steps,
                   help=_d("stop after this many optimizer steps", d.max_steps))
    g.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=d.batch_size,
                   help=_d("examples per optimizer step (per process under torchrun)"))
    g.add_argument("--lr", type=float, default=d.lr, help=_d("peak AdamW learning rate"))
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help=_d("AdamW weight decay (matrices only)"))
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=_d("linear warm-up steps (at most 10%% of the run), then cosine decay to 2%% of --lr"))
    g.add_argument("--mixup", type=float, default=d.mixup, help=_d("mixup Beta(alpha, alpha); 0 disables it"))
    g.add_argument("--val-every", type=int, default=d.val_every,
                   help=_d("optimizer steps between validations (0: after every epoch)"))
    g.add_argument("--seed", type=int, default=d.seed, help=_d("random seed"))
    return g


def add_train_args(p: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of ``command`` (one of :data:`COMMANDS`) to ``p``."""
    if command == "train":
        _add_data_args(p)
        p.add_argument("--arch", default=_T.arch, choices=ARCHITECTURES, help=_d("architecture"))
        p.add_argument("--arch-config", help="JSON overrides of the architecture config, e.g. '{\"d_model\": 64}' "
                                             "(default: the architecture's defaults)")
        p.add_argument("--frontend", help="JSON overrides of the front end "
                                          "(default: 16 kHz, n_fft 1024, hop 256, 128 mels, dB)")
        p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log.csv, summary.json, bundle/)")
        p.add_argument("--epochs", type=int, default=_T.epochs, help=_d("passes over the training set"))
        g = _add_fit_args(p, _T)
        g.add_argument("--minutes", type=float, default=_T.minutes,
                       help=_d("wall-clock budget in minutes; the schedule is fitted to it after 20 steps", _T.minutes))
        g.add_argument("--crop-seconds", type=float, default=_T.crop_seconds, help=_d("training crop = window length, s"))
        g.add_argument("--hop-seconds", type=float, default=_T.hop_seconds, help=_d("default hop written into the bundle, s"))
        g.add_argument("--no-specaug", action="store_true", help="no SpecAugment (default: 2 time + 2 band masks)")
        g.add_argument("--patience", type=int, default=_T.patience,
                       help=_d("validations without improvement before stopping early (0: never)"))
        g.add_argument("--val-crops", type=int, default=_T.val_crops, help=_d("windows averaged per validation clip"))
        g.add_argument("--amp", default=_T.amp, choices=("auto", "bf16", "fp16", "off"), help=_d("mixed precision on CUDA"))
        g.add_argument("--loader-workers", type=int, default=_T.loader_workers, help=_d("DataLoader worker processes"))
        p.add_argument("--no-cache", action="store_true",
                       help="decode audio on the fly instead of caching features (slow; a broken file stops the run)")
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint, with its saved settings and schedule")
        _add_device_arg(p)
    elif command == "eval":
        _add_data_args(p)
        p.add_argument("--model", required=True, help="bundle folder or shipped model name")
        p.add_argument("--split", default="test", choices=("train", "valid", "test"), help=_d("split to score"))
        p.add_argument("--crops", type=int, default=EVAL_CROPS, help=_d("windows averaged per clip"))
        p.add_argument("--out", type=Path, required=True, help="report folder")
        _add_device_arg(p)
    elif command == "baseline":
        _add_data_args(p)
        p.add_argument("--classifiers", default="logreg,svm,knn,forest", help=_d("comma-separated classifiers"))
        p.add_argument("--out", type=Path, required=True, help="report folder (features are cached there)")
    elif command == "cache":
        _add_data_args(p)
        p.add_argument("--out", type=Path, help="cache folder (same as --cache; no default)")
        p.add_argument("--frontend", help="JSON overrides of the front end (default: the training default)")
        p.add_argument("--retry-skipped", action="store_true", help="try files skipped before again")
    elif command == "distill":
        p.add_argument("--arch", choices=sorted(DEFAULT_ARCH_CONFIGS), default="transformer",
                       help=_d("student architecture"))
        p.add_argument("--teacher", default="musicnn-msd", help=_d("teacher bundle name or directory"))
        p.add_argument("--corpus", required=True, help="corpus directory (train/distill/corpus.py describes it)")
        p.add_argument("--out", help="bundle directory to write, e.g. models/st-transformer-msd (required unless "
                                     "--label-only or --features-only; no default)")
        p.add_argument("--minutes", type=float, default=_D.minutes, help=_d("training budget, wall-clock minutes"))
        g = _add_fit_args(p, _D)
        g.add_argument("--seq-seconds", type=float, nargs=2, default=_D.seq_seconds, metavar=("MIN", "MAX"),
                       help=_d("stateful GRU: range of the random training sequence lengths, s"))
        g.add_argument("--mix-linear", action="store_true", help="mixup in the mel-power domain (like mixing audio)")
        g.add_argument("--gain-db", type=float, default=_D.gain_db, help=_d("random gain per window, +-N dB (0: off)"))
        g.add_argument("--spec-masks", type=int, default=_D.freq_masks,
                       help=_d("window students: SpecAugment band masks and time masks per window, each p=0.5"))
        g.add_argument("--time-mask-frames", type=int, default=None,
                       help=f"widest time mask, frames (default: {_D.time_mask_frames}; "
                            f"{STATEFUL_TIME_MASK_FRAMES} for stateful students)")
        g.add_argument("--val-fraction", type=float, default=0.0,
                       help=_d("training tracks set aside per source for validation / best-checkpoint choice (0: none)"))
        g.add_argument("--log-every", type=int, default=_D.log_every, help=_d("steps between progress lines"))
        p.add_argument("--threads", type=int, default=1, help=_d("torch CPU threads"))
        p.add_argument("--grid-frames", type=int, default=GRID_FRAMES, help=_d("frames between teacher windows"))
        p.add_argument("--arch-config", help="JSON overrides of the student's architecture config "
                                             "(default: the architecture's defaults)")
        p.add_argument("--timing-repeats", type=int, default=30, help=_d("runs per cost-per-hop measurement"))
        p.add_argument("--log", help="append training progress to this file (default: no file)")
        p.add_argument("--label-only", action="store_true", help="only build the label cache")
        p.add_argument("--frontend", choices=("mel", "musicnn"), default="mel",
                       help=_d("student input: log-mel frames (mel), or the teacher's frozen front end + mid end "
                               "(musicnn: a musicnn_student bundle; the head trains on cached features)"))
        p.add_argument("--features-only", action="store_true", help="--frontend musicnn: only build the feature cache")
        p.add_argument("--shard", type=int, default=0, help=_d("feature cache: this process's share (0..shards-1)"))
        p.add_argument("--shards", type=int, default=1, help=_d("feature cache: processes sharing the work"))
        p.add_argument("--eval-only", action="store_true", help="re-evaluate the bundle at --out and rewrite its card")
        p.add_argument("--command-line", help=argparse.SUPPRESS)
    else:
        raise ValueError(f"unknown training command {command!r}; known: {COMMANDS}")


def load_dataset(args: argparse.Namespace) -> Any:
    """The LabelledSet described by the data options."""
    if args.data == "fma":
        from .fma import load_fma

        if args.fma_metadata is None or args.audio is None:
            raise ConfigError("--data fma needs --fma-metadata DIR and --audio DIR")
        return load_fma(args.fma_metadata, args.audio, subset=args.subset, labels=args.labels)
    from .folders import load_folders

    if args.root is None:
        raise ConfigError("--data folders needs --root DIR (one sub-folder per genre)")
    return load_folders(args.root, args.splits)


def _json_arg(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} must be a JSON object, e.g. '{{\"d_model\": 64}}' ({e})") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    return value


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a ``train`` command line."""
    return _T.replace(
        arch=args.arch, arch_config=_json_arg(args.arch_config, "--arch-config"), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, minutes=args.minutes, crop_seconds=args.crop_seconds, hop_seconds=args.hop_seconds,
        specaug=not args.no_specaug, mixup=args.mixup, patience=args.patience, val_every=args.val_every,
        val_crops=args.val_crops, amp=args.amp, loader_workers=args.loader_workers, seed=args.seed,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from streamtag.frontend import FrontendSpec

    from .train import DEFAULT_FRONTEND, train

    cfg = train_config(args)  # bad flags fail before the data set is read
    overrides = _json_arg(args.frontend, "--frontend")
    ds = load_dataset(args)
    frontend = FrontendSpec.from_dict({**DEFAULT_FRONTEND.to_dict(), **overrides}) if overrides else DEFAULT_FRONTEND
    summary = train(cfg, ds, args.out, frontend=frontend, cache_dir=args.cache, use_cache=not args.no_cache,
                    cache_workers=args.cache_workers, resume=args.resume, device=args.device,
                    progress=not args.quiet)
    if summary:
        best = summary["best_metric"]
        print(f"bundle written to {summary['bundle']} (best epoch {summary['best_epoch']}, "
              f"{summary['metric']} {'n/a' if best is None else f'{best:.4f}'}; {summary['stop_reason']}; "
              f"{len(summary['skipped'])} files skipped)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from streamtag.runner import resolve_device

    from .evaluate import evaluate_bundle

    ds = load_dataset(args)
    res = evaluate_bundle(args.model, ds, split=args.split, crops=args.crops, out_dir=args.out,
                          cache_dir=args.cache, workers=args.cache_workers, device=str(resolve_device(args.device)),
                          progress=not args.quiet)
    for name, m in res["metrics"].items():
        shown = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
        print(f"{name}: {shown}")
    print(f"report: {Path(args.out) / 'report.json'} ({res['n_items']} items, {res['n_skipped']} skipped)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from .baseline import run_baselines

    ds = load_dataset(args)
    rep = run_baselines(ds, args.out, classifiers=tuple(args.classifiers.split(",")), workers=args.cache_workers,
                        progress=not args.quiet)
    for name, res in rep["results"].items():
        test = res.get("test", {})
        print(f"{name:7s} test accuracy {test.get('accuracy', float('nan')):.3f}  "
              f"macro F1 {test.get('macro_f1', float('nan')):.3f}")
    print(f"report: {Path(args.out) / 'baseline.json'}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from streamtag.frontend import FrontendSpec

    from .cache import build_cache
    from .train import DEFAULT_FRONTEND

    ds = load_dataset(args)
    spec = FrontendSpec.from_dict({**DEFAULT_FRONTEND.to_dict(), **_json_arg(args.frontend, "--frontend")})
    out = args.cache or args.out
    if out is None:
        raise ConfigError("give the cache folder with --out DIR")
    rep = build_cache(ds.items, out, spec, workers=args.cache_workers, progress=not args.quiet,
                      retry_skipped=args.retry_skipped)
    print(f"{rep.done} items cached in {out} ({rep.new} new, {rep.seconds:.1f} s); "
          f"skipped {len(rep.skipped)}: {rep.skipped_by_reason()}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .distill.run import check_args, distill

    check_args(args)
    _json_arg(args.arch_config, "--arch-config")
    return distill(args)


_HELP = {
    "train": ("train a tagger and write a model bundle",
              "Train a genre tagger on FMA or genre folders; writes OUT/bundle and OUT/summary.json."),
    "eval": ("evaluate a model bundle on a labelled split",
             "PR-AUC / ROC-AUC (multi-label) or accuracy / F1 (single-label), with and without test-time crop "
             "averaging; writes report.json + plots."),
    "baseline": ("summary features + scikit-learn classifiers",
                 "Classical ML baselines (LogReg, SVM, kNN, random forest) on 206 summary features per clip."),
    "cache": ("precompute the log-mel feature cache",
              "Decode and cache log-mel frames (parallel, resumable, skips bad files)."),
    "distill": ("distil a teacher bundle into a streaming student",
                "Distil a window tagger (musicnn-msd by default) into a small streaming student, and evaluate it "
                "(docs/distill.md)."),
}
_FUNCS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "eval": cmd_eval, "baseline": cmd_baseline, "cache": cmd_cache, "distill": cmd_distill}
_EXTRAS = ("sklearn", "matplotlib", "tqdm")  # pip install 'streamtag[train]'


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The command's body; a missing optional training dependency becomes a one-line ConfigError."""
    func = _FUNCS[command]

    def handler(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in _EXTRAS:
                raise
            raise ConfigError(f"`{command}` needs the training extras ({e}); pip install 'streamtag[train]'") from e

    handler.__name__ = func.__name__
    return handler


def add_commands(subparsers: Any, *, commands: tuple[str, ...] = COMMANDS,
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> None:
    """Add the training ``commands`` to an argparse subparsers object: each parser knows its flags, its body
    (``func``), its log level (INFO: training reports progress) and itself (``parser``, for usage errors)."""
    for command in commands:
        short, long = _HELP[command]
        p = subparsers.add_parser(command, help=short, description=long, formatter_class=formatter_class)
        add_train_args(p, command)
        p.set_defaults(func=_handler(command), log_level=logging.INFO, parser=p)


def register(subparsers: Any) -> None:
    """Add every training command to an argparse subparsers object (:func:`add_commands` with its defaults)."""
    add_commands(subparsers)


def build_parser(prog: str = "python -m streamtag.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="streamtag training commands")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None, *, prog: str = "python -m streamtag.train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    if args.command == "distill" and not args.command_line:
        args.command_line = "python -m streamtag.train.distill " + shlex.join(argv[argv.index("distill") + 1:])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except StreamtagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
