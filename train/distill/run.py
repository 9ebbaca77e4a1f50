"""Distil a window tagger (musicnn-msd by default) into small streaming students, and evaluate them.

Three stages, all run by one command (each skipped when its output exists):

1. **targets** (``teacher.py``): for every corpus track (``corpus.py``), the teacher's sigmoid outputs
   on its own window (3 s for musicnn) every ``grid_frames`` frames, cached with the students' log-mel frames.
   With ``--frontend musicnn`` the teacher's frozen front end + mid end features are cached too (``features.py``).
2. **train** (``loop.fit``, the loop ``streamtag train`` uses, fed by ``tracks.TrackFeed``): the student learns
   the teacher's probabilities (binary cross-entropy with soft targets, all labels).

   *Targets.* A student window of ``window_frames`` (5 s) is placed so that the ``n_inside`` teacher windows
   of the grid that fit inside it are centred in it; its target is the mean of those teacher outputs (for
   musicnn with a 64-frame grid: the two 3 s windows starting 30 and 94 frames into the 5 s window).
   Training crops are jittered by up to that margin, so the student never sees the exact grid.

   *Stateful GRU.* Trained on long sequences (``--seq-seconds``, random length) made of 1 to 3 random segments
   of different tracks joined end to end (a radio stream changing tracks), with the per-frame read-out
   supervised at the last frame of every 5 s window that lies inside one segment, toward that window's
   target. The state is thus asked to describe the last seconds of music at any time of a long stream.
3. **evaluate** (``agreement.py``): agreement with the teacher on the held-out tracks, cost per hop; the bundle
   gets ``card.json`` (the run's figures the bundle does not hold) and ``model_card.md`` rendered from it
   (``cards.py``).

Usage::

    python -m streamtag.train.distill --arch transformer --teacher musicnn-msd --corpus /work/corpus \\
        --out models/st-transformer-msd --minutes 30
    python -m streamtag.train.distill --arch stateful_gru --teacher musicnn-msd --corpus /work/corpus \\
        --out models/st-gru-msd --minutes 30
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamtag.architectures import build_model, config_class
from streamtag.errors import ConfigError
from streamtag.frontend import FrontendSpec
from streamtag.registry import Bundle, load_bundle, save_bundle

from ..config import (
    DEFAULT_ARCH_CONFIGS,
    DISTILL_DEFAULTS,
    STATEFUL_TIME_MASK_FRAMES,
    STREAMING,
    TrainConfig,
)
from ..loop import Score, fit
from .agreement import cost_per_hop_ms, distill_extra, evaluate, evaluate_with_gap, majority_baseline
from .cards import CARD_JSON, DEFAULT_CORPUS_NOTE, render_distill_card
from .corpus import read_manifest, summary
from .features import feature_corpus, musicnn_frames, student_frontend
from .teacher import Geometry, label_corpus
from .tracks import TrackData, TrackFeed, carve_validation, load_split

__all__ = ["WINDOW_SECONDS", "HOP_SECONDS", "distill_config", "check_args", "train_student", "assemble_student",
           "distill"]

log = logging.getLogger(__name__)

WINDOW_SECONDS = 5.0  # s, the window student's input (and the span each per-step target describes)
HOP_SECONDS = 0.5  # s, default hop between updates stored in the bundles


def distill_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the distill options (defaults: ``config.DISTILL_DEFAULTS``)."""
    stateful = STREAMING[args.arch] == "stateful"
    masks = 1 if stateful else args.spec_masks  # sequences get one band mask and one time mask
    return DISTILL_DEFAULTS.replace(
        arch=args.arch, arch_config=json.loads(args.arch_config or "{}"), minutes=args.minutes,
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, seed=args.seed, mixup=args.mixup, mix_linear=args.mix_linear,
        gain_db=args.gain_db, time_masks=masks, freq_masks=masks,
        time_mask_frames=args.time_mask_frames or (STATEFUL_TIME_MASK_FRAMES if stateful
                                                   else DISTILL_DEFAULTS.time_mask_frames),
        seq_seconds=(float(args.seq_seconds[0]), float(args.seq_seconds[1])), val_every=args.val_every,
        log_every=args.log_every,
    )


def train_student(
    model: nn.Module, data: list[TrackData], geometry: Geometry, cfg: TrainConfig, *, spec: FrontendSpec | None,
    log_path: Path | None = None, val_data: list[TrackData] | None = None, teacher: Bundle | None = None,
) -> dict[str, Any]:
    """Distil into ``model`` in place (``loop.fit``); returns the training summary stored in the bundle.

    With ``val_data`` (tracks carved from the training sources, never the held-out set) the weights with the
    best validation clip-level genre agreement (ties: window agreement) are kept. ``spec``: the student's
    front end, for gain and power-domain mixup (None for feature inputs, where they do not apply)."""
    stateful = bool(getattr(model, "stateful", False))
    feed = TrackFeed(data, geometry, cfg, stateful=stateful, spec=spec or FrontendSpec())
    validate = None
    if val_data and teacher is not None:
        def validate(m: nn.Module) -> Score:
            ev = evaluate(m, val_data, geometry, teacher)
            return Score((ev["clip_genre_top1_agreement"], ev["window_genre_top1_agreement"]), ev,
                         "validation clip genre agreement")
    torch.manual_seed(cfg.seed)
    res = fit(model, cfg, feed, multilabel=True, validate=validate, spec=spec, log_file=log_path)
    info: dict[str, Any] = {
        "steps": res.steps, "seconds": res.seconds, "final_loss": res.final_loss, "batch": cfg.batch_size,
        "lr": cfg.lr, "weight_decay": cfg.weight_decay, "threads": torch.get_num_threads(), "mixup": cfg.mixup,
        "mix_linear": cfg.mix_linear, "gain_db": cfg.gain_db, "spec_masks": cfg.freq_masks,
    }
    if res.best_score is not None:
        info["validation"] = {"tracks": len(val_data or []), "best_step": res.best_step,
                              "best_clip_genre_top1_agreement": res.best_score[0],
                              "best_window_genre_top1_agreement": res.best_score[1],
                              "history": [[h["step"], *h["score"]] for h in res.history]}
    if stateful:
        info["seq_seconds"] = list(cfg.seq_seconds)
    info["train_config"] = cfg.to_dict()
    return info


def assemble_student(teacher: Bundle, head: nn.Module, arch: str, head_cfg: dict[str, Any],
                     geometry: Geometry) -> tuple[nn.Module, dict[str, Any]]:
    """The shipped ``musicnn_student``: the teacher's front end and mid end (weights copied) + the trained head."""
    cfg = {"n_mels": teacher.arch_config.get("n_mels", 96), "n_labels": len(teacher.labels), "head": arch,
           "head_config": {k: v for k, v in head_cfg.items() if k not in ("n_mels", "n_labels")},
           "window_frames": geometry.window_frames,
           "musicnn": {k: v for k, v in teacher.arch_config.items() if k not in ("n_mels", "n_labels")}}
    model: Any = build_model("musicnn_student", cfg)
    model.frames.load_state_dict(musicnn_frames(teacher).state_dict())
    model.head.load_state_dict(head.state_dict())
    cfg = {f.name: getattr(model.config, f.name) for f in fields(config_class("musicnn_student"))}
    return model.eval(), cfg


def distill(args: argparse.Namespace) -> int:
    """The whole command: targets, (features), training, evaluation, bundle + card.json + model card."""
    torch.set_num_threads(args.threads)
    teacher = load_bundle(args.teacher)
    corpus = Path(args.corpus)
    label_corpus(corpus, teacher, grid_frames=args.grid_frames)
    if args.label_only:
        return 0
    on_features = args.frontend == "musicnn"
    if on_features:
        feature_corpus(corpus, teacher, shard=args.shard, shards=args.shards)
        if args.features_only:
            return 0
        if args.gain_db or args.mix_linear:
            raise ConfigError("--gain-db and --mix-linear act on the mel power; they do not apply to --frontend musicnn")
    spec = student_frontend(teacher)
    geometry = Geometry(args.grid_frames, teacher.window_frames, spec.frames_for(WINDOW_SECONDS))
    train_data = load_split(corpus, teacher, geometry, "train", features=on_features)
    eval_data = load_split(corpus, teacher, geometry, "eval", features=on_features)
    if not train_data or not eval_data:
        raise ConfigError(f"the corpus {corpus} needs training and held-out tracks of at least "
                          f"{WINDOW_SECONDS:g} s (has {len(train_data)} / {len(eval_data)})")
    val_data: list[TrackData] = []
    if args.val_fraction > 0:  # the same carving in --eval-only, so the training-track figures match
        train_data, val_data = carve_validation(train_data, args.val_fraction)
        log.info("validation: %d training tracks set aside", len(val_data))
    log.info("%d train / %d eval tracks; %d train windows", len(train_data), len(eval_data),
             sum(len(t.starts) for t in train_data))
    out = Path(args.out)
    arch = args.arch
    streaming = "stateful" if on_features else STREAMING[arch]
    bundle_arch = "musicnn_student" if on_features else arch
    model: Any
    head: nn.Module
    if args.eval_only:
        bundle = load_bundle(out)
        model = bundle.build_model("cpu")
        cfg = bundle.arch_config
        head = model.head if on_features else model  # what was trained, evaluated on cached features
        head_cfg = cfg["head_config"] if on_features else cfg
        train_info = bundle.extra["training"]
    else:
        n_in = train_data[0].mel.shape[1]  # mel bands, or the teacher's feature channels
        tc = distill_config(args)
        head = build_model(arch, {**DEFAULT_ARCH_CONFIGS[arch], **tc.arch_config,
                                  "n_mels": n_in, "n_labels": len(teacher.labels)})
        head_cfg = {f.name: getattr(head.config, f.name) for f in fields(config_class(arch))}
        train_info = train_student(head, train_data, geometry, tc, spec=None if on_features else spec,
                                   log_path=Path(args.log) if args.log else None, val_data=val_data,
                                   teacher=teacher)
        model, cfg = (assemble_student(teacher, head, arch, head_cfg, geometry) if on_features
                      else (head, head_cfg))
        save_bundle(out, model, architecture=bundle_arch, arch_config=cfg, frontend=spec, labels=teacher.labels,
                    genre_labels=teacher.genre_labels, window_frames=geometry.window_frames, hop_seconds=HOP_SECONDS,
                    streaming=streaming, extra={"training": train_info})  # kept if evaluation fails
    ev = evaluate_with_gap(head, eval_data, train_data, geometry, teacher)
    base = majority_baseline(train_data, eval_data, teacher)
    teacher_model = teacher.build_model("cpu")
    hop_frames = spec.frames_for(HOP_SECONDS)
    cost = cost_per_hop_ms(model, teacher_model, streaming, geometry.window_frames, teacher.window_frames,
                           spec.n_mels, hop_frames, repeats=args.timing_repeats)
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in head.parameters())
    command = args.command_line or (f"python -m streamtag.train.distill --arch {arch} --teacher {args.teacher} "
                                    f"--corpus {args.corpus} --out {args.out} --minutes {args.minutes:g}"
                                    + (" --frontend musicnn" if on_features else ""))
    note = corpus / "corpus_note.txt"
    run = {  # what the card needs beyond the bundle's config.json
        "command": command, "corpus_table": summary(read_manifest(corpus)),
        "corpus_note": note.read_text().strip() if note.is_file() else DEFAULT_CORPUS_NOTE,
        "train_hours": round(sum(t.track.seconds for t in train_data + val_data) / 3600, 4),
        "n_params": n_params, "n_trained": n_trained, "size_mb": round(n_params * 4 / 1e6, 4),
    }
    extra = distill_extra(teacher, geometry, train_info, ev, base, cost)
    bundle = save_bundle(
        out, model, architecture=bundle_arch, arch_config=cfg, frontend=spec, labels=teacher.labels,
        genre_labels=teacher.genre_labels, activation="sigmoid", window_frames=geometry.window_frames,
        hop_seconds=HOP_SECONDS, streaming=streaming,
        description=(f"musicnn-msd distilled into a streaming {arch} ({n_trained / 1e6:.2f} M trained parameters) "
                     "on the teacher's frozen front end" if on_features else
                     f"musicnn-msd distilled into a {n_params / 1e6:.2f} M-parameter streaming {arch}"),
        extra=extra,
    )
    (out / CARD_JSON).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    (out / "model_card.md").write_text(render_distill_card(bundle.config_dict(), run))
    size_mb = (bundle.path / "model.safetensors").stat().st_size / 1e6
    log.info("wrote %s (%.2f MB): clip genre agreement %.3f, window %.3f, AUC %.3f / %.3f, %s", bundle.path,
             size_mb, ev["clip_genre_top1_agreement"], ev["window_genre_top1_agreement"],
             ev["tag_auc_teacher_p05"], ev["tag_auc_teacher_top3"], cost)
    log.info("%s", json.dumps({k: v for k, v in extra.items() if k != "per_clip"}))
    return 0


def check_args(args: argparse.Namespace) -> None:
    if not (args.label_only or args.features_only) and not args.out:
        raise ConfigError("give --out DIR, the bundle directory to write")
    if args.arch not in DEFAULT_ARCH_CONFIGS:
        raise ConfigError(f"unknown student architecture {args.arch!r}; choose one of {sorted(DEFAULT_ARCH_CONFIGS)}")
    lo, hi = args.seq_seconds
    if not 0 < lo <= hi:
        raise ConfigError(f"--seq-seconds MIN MAX needs 0 < MIN <= MAX, not {lo:g} {hi:g}")
