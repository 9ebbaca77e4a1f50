"""Subcommands of the training module: ``train``, ``eval``, ``baseline``, ``cache``.

``streamtag.cli`` calls :func:`register`; ``python -m streamtag.train.cli ...`` runs them on their own. Every
subcommand takes the same data options::

    --data fma --fma-metadata DIR --audio DIR [--subset small|medium|large|full] [--labels top|all]
    --data folders --root DIR [--splits DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamtag.errors import ConfigError, StreamtagError

__all__ = ["register", "main", "load_dataset"]

log = logging.getLogger(__name__)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("fma", "folders"), required=True, help="data set kind")
    g.add_argument("--fma-metadata", type=Path, help="FMA: the unzipped fma_metadata folder (tracks.csv, genres.csv)")
    g.add_argument("--audio", type=Path, help="FMA: the fma_<subset> audio folder (or its parent)")
    g.add_argument("--subset", default="small", choices=("small", "medium", "large", "full"), help="FMA subset")
    g.add_argument("--labels", default="top", choices=("top", "all"),
                   help="FMA: top = single-label genre_top; all = multi-label genres_all")
    g.add_argument("--root", type=Path, help="folders: ROOT/<genre>/<audio files>")
    g.add_argument("--splits", type=Path, help="folders: folder of train/valid/test list files (GTZAN format)")
    g.add_argument("--cache", type=Path, help="feature cache folder (default: inside --out)")
    g.add_argument("--cache-workers", type=int, default=2, help="processes decoding audio for the cache")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


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


def _cmd_train(args: argparse.Namespace) -> int:
    from streamtag.frontend import FrontendSpec

    from .train import DEFAULT_FRONTEND, TrainConfig, train

    ds = load_dataset(args)
    frontend = DEFAULT_FRONTEND
    overrides = _json_arg(args.frontend, "--frontend")
    if overrides:
        frontend = FrontendSpec.from_dict({**DEFAULT_FRONTEND.to_dict(), **overrides})
    cfg = TrainConfig(
        arch=args.arch, arch_config=_json_arg(args.arch_config, "--arch-config"), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, crop_seconds=args.crop_seconds, hop_seconds=args.hop_seconds,
        specaug=not args.no_specaug, mixup=args.mixup, patience=args.patience, val_crops=args.val_crops,
        amp=args.amp, loader_workers=args.loader_workers, seed=args.seed,
    )
    summary = train(cfg, ds, args.out, frontend=frontend, cache_dir=args.cache, use_cache=not args.no_cache,
                    cache_workers=args.cache_workers, resume=args.resume, device=args.device,
                    progress=not args.quiet)
    if summary:
        print(f"bundle written to {summary['bundle']} (best epoch {summary['best_epoch']}, "
              f"validation {summary['best_metric']:.4f}; {len(summary['skipped'])} files skipped)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_bundle

    ds = load_dataset(args)
    res = evaluate_bundle(args.model, ds, split=args.split, crops=args.crops, out_dir=args.out,
                          cache_dir=args.cache, workers=args.cache_workers, device=args.device,
                          progress=not args.quiet)
    for name, m in res["metrics"].items():
        shown = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
        print(f"{name}: {shown}")
    print(f"report: {Path(args.out) / 'report.json'} ({res['n_items']} items, {res['n_skipped']} skipped)")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
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


def _cmd_cache(args: argparse.Namespace) -> int:
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


def register(subparsers: Any) -> None:
    """Add ``train``, ``eval``, ``baseline`` and ``cache`` to an argparse subparsers object."""
    from streamtag.architectures import available_architectures

    p = subparsers.add_parser("train", help="train a tagger and write a model bundle",
                              description="Train a genre tagger on FMA or genre folders; writes OUT/bundle.")
    _add_data_args(p)
    p.add_argument("--arch", default="transformer", choices=[a for a in available_architectures() if a != "musicnn"])
    p.add_argument("--arch-config", help="JSON overrides of the architecture config, e.g. '{\"d_model\": 64}'")
    p.add_argument("--frontend", help="JSON overrides of the front end (default 16 kHz, n_fft 1024, hop 256, 128 mels, dB)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log.csv, bundle/)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--crop-seconds", type=float, default=5.0, help="training crop = window length")
    p.add_argument("--hop-seconds", type=float, default=0.5, help="default hop written into the bundle")
    p.add_argument("--no-specaug", action="store_true")
    p.add_argument("--mixup", type=float, default=0.2, help="mixup Beta alpha (0: off)")
    p.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs")
    p.add_argument("--val-crops", type=int, default=3)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--no-cache", action="store_true",
                   help="decode audio on the fly instead of caching features (slow; a broken file stops the run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a model bundle on a labelled split",
                              description="PR-AUC / ROC-AUC (multi-label) or accuracy / F1 (single-label), "
                                          "with and without test-time crop averaging; writes report.json + plots.")
    _add_data_args(p)
    p.add_argument("--model", required=True, help="bundle folder or shipped model name")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--crops", type=int, default=5, help="windows averaged per clip")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("baseline", help="summary features + scikit-learn classifiers",
                              description="Classical ML baselines (LogReg, SVM, kNN, random forest).")
    _add_data_args(p)
    p.add_argument("--classifiers", default="logreg,svm,knn,forest")
    p.add_argument("--out", type=Path, required=True, help="report folder (features are cached there)")
    p.set_defaults(func=_cmd_baseline)

    p = subparsers.add_parser("cache", help="precompute the log-mel feature cache",
                              description="Decode and cache log-mel frames (parallel, resumable, skips bad files).")
    _add_data_args(p)
    p.add_argument("--out", type=Path, help="cache folder (same as --cache)")
    p.add_argument("--frontend", help="JSON overrides of the front end")
    p.add_argument("--retry-skipped", action="store_true", help="try files skipped before again")
    p.set_defaults(func=_cmd_cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamtag.train.cli", description="streamtag training commands")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
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
