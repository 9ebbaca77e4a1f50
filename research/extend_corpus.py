"""Extend a distillation corpus with more training audio while keeping its held-out tracks unchanged.

Research tool (not in the wheel; run from a checkout). It produced ``/work/corpus2`` (about 5.8 hours of training
audio), the corpus the shipped students st-gru-msd and st-transformer-msd were distilled on. Run it again after
research/build_corpus.py, to grow a corpus without changing the held-out tracks its figures are measured on.

Phase ``plan`` writes ``OUT/corpus.jsonl``: the held-out ("eval") tracks of ``SRC`` exactly as they were (same
audio, same labels, linked), the training tracks of ``SRC`` at up to ``--max-track-seconds`` (instead of the
original 150 s), and tracks of the same packages that the original per-package cap left out, in the same hash
order. A new track whose SHA-1 is below the largest SHA-1 of its source's held-out tracks would have been held out
under the original rule; it is left out altogether, so that no evaluation track changes and the new training audio
is split by the same rule.

Phase ``label`` (run ``--shards N`` processes with ``--shard i``) decodes the new audio and labels it with the
teacher: for a lengthened track, the teacher outputs of the windows already in ``SRC``'s cache are reused and only
the windows past them are computed.

Usage::

    python -m research.extend_corpus plan --src /work/corpus --out /work/corpus2
    python -m research.extend_corpus label --src /work/corpus --out /work/corpus2 --shard 0 --shards 2 &
    python -m research.extend_corpus label --src /work/corpus --out /work/corpus2 --shard 1 --shards 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from streamtag.frontend import logmel
from streamtag.registry import load_bundle
from streamtag.train.config import GRID_FRAMES
from streamtag.train.distill.corpus import Track, read_manifest, summary, track_hash, write_manifest
from streamtag.train.distill.features import student_frontend
from streamtag.train.distill.teacher import teacher_probs, teacher_windows

from .build_corpus import DEFAULT_PACKAGES, _probe_duration, _shared_dir, decode, licence_for, package_files

log = logging.getLogger(__name__)


def plan(src: Path, out: Path, *, max_track_seconds: float, max_new_minutes: float, min_track_seconds: float) -> list[Track]:
    old = read_manifest(src)
    known = {t.id for t in old}
    (out / "audio").mkdir(parents=True, exist_ok=True)
    max_eval_hash: dict[str, str] = {}
    for t in old:
        if t.split == "eval" and not t.eval_only:
            max_eval_hash[t.source] = max(max_eval_hash.get(t.source, ""), track_hash(t.id))
    tracks: list[Track] = []
    for t in old:
        if t.split == "eval":
            tracks.append(t)
            link = out / t.file
            if not link.exists():
                os.symlink(src / t.file, link)
        else:
            seconds = min(t.duration, max_track_seconds)
            tracks.append(Track(**{**asdict(t), "seconds": round(seconds, 3), "file": f"audio/{track_hash(t.id)[:12]}-x.npy"}))
    new_seconds = 0.0
    cands = []
    for pkg in DEFAULT_PACKAGES:
        root = src / "pkgs" / pkg
        cfile = root / "usr/share/doc" / pkg / "copyright"
        ctext = cfile.read_text(errors="replace") if cfile.is_file() else ""
        for rel, p in package_files(root, src, pkg):
            tid = f"{pkg}/{rel.lstrip('/')}"
            if tid in known:
                continue
            cands.append((track_hash(tid), pkg, rel, p, licence_for(ctext, rel), f"/usr/share/doc/{pkg}/copyright", tid))
    cands.sort()  # interleaves packages in a fixed hash order
    skipped_ids = {json.loads(s)["id"] for s in (src / "skipped.jsonl").read_text().splitlines() if s.strip()}
    for h, pkg, rel, p, licence, lfile, tid in cands:
        if tid in skipped_ids or h < max_eval_hash.get(pkg, ""):
            continue  # unreadable, or would have been held out under the original rule
        dur = _probe_duration(p)
        if not np.isfinite(dur) or dur < min_track_seconds:
            continue
        seconds = min(dur, max_track_seconds)
        if new_seconds + seconds > max_new_minutes * 60:
            continue
        new_seconds += seconds
        tracks.append(Track(tid, pkg, rel, licence, lfile, round(dur, 3), round(seconds, 3),
                            f"audio/{h[:12]}-x.npy", "train", False))
    write_manifest(out, tracks)
    shutil.copy(src / "skipped.jsonl", out / "skipped.jsonl")
    return tracks


def _source_file(src: Path, t: Track) -> Path:
    if t.source == "shared":
        return _shared_dir() / "audio" / t.path
    root = src / "pkgs" / t.source
    if "!" in t.path:
        pk3, member = t.path.split("!", 1)
        return src / "pk3" / t.source / Path(pk3).name / member
    return root / t.path.lstrip("/")


def label(src: Path, out: Path, *, teacher_name: str, shard: int, shards: int) -> None:
    torch.set_num_threads(1)
    teacher = load_bundle(teacher_name)
    spec = student_frontend(teacher)
    tf = teacher.frontend
    model = teacher.build_model("cpu")
    old_dir = src / "labels" / teacher.name
    new_dir = out / "labels" / teacher.name
    new_dir.mkdir(parents=True, exist_ok=True)
    if not (new_dir / "meta.json").exists():
        shutil.copy(old_dir / "meta.json", new_dir / "meta.json")
    old_ids = {t.id: t for t in read_manifest(src)}
    t0 = time.time()
    todo = [t for t in read_manifest(out) if t.split == "train"]
    for i, t in enumerate(todo):
        if i % shards != shard:
            continue
        dest = new_dir / (Path(t.file).stem + ".npz")
        if dest.is_file():
            continue
        x, _ = decode(_source_file(src, t), max_seconds=t.seconds)
        np.save(out / t.file, x)
        mel = logmel(x, spec)
        tmel = logmel(x, tf)
        win = teacher_windows(tmel, teacher.window_frames, GRID_FRAMES)  # (K, frames, n_mels)
        reused = 0
        parts = []
        if t.id in old_ids:
            z = np.load(old_dir / (Path(old_ids[t.id].file).stem + ".npz"))
            reused = min(int(z["teacher"].shape[0]), int(win.shape[0]))
            parts.append(z["teacher"][:reused])
        if win.shape[0] > reused:
            parts.append(teacher_probs(model, win[reused:], derived=teacher.derived))
        probs = np.concatenate(parts) if parts else np.zeros((0, len(teacher.labels)), np.float32)
        tmp = dest.with_suffix(".tmp.npz")
        np.savez(tmp, mel=mel.astype(np.float16), teacher=probs.astype(np.float32))
        tmp.rename(dest)
        log.info("labelled %d/%d %s (%d windows, %d reused, %.0f s)", i + 1, len(todo), t.id, len(probs), reused,
                 time.time() - t0)
    for t in read_manifest(out):
        if t.split == "eval":
            link = new_dir / (Path(t.file).stem + ".npz")
            if not link.exists():
                try:
                    os.symlink(old_dir / link.name, link)
                except FileExistsError:
                    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.extend_corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=("plan", "label"))
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher", default="musicnn-msd")
    ap.add_argument("--max-track-seconds", type=float, default=600.0)
    ap.add_argument("--max-new-minutes", type=float, default=120.0, help="minutes of tracks new to the corpus")
    ap.add_argument("--min-track-seconds", type=float, default=20.0)
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.phase == "plan":
        tracks = plan(args.src, args.out, max_track_seconds=args.max_track_seconds,
                      max_new_minutes=args.max_new_minutes, min_track_seconds=args.min_track_seconds)
        print(summary(tracks))
    else:
        label(args.src, args.out, teacher_name=args.teacher, shard=args.shard, shards=args.shards)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
