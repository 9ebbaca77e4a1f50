"""`streamtag tag` throughput: seconds of audio tagged per second of wall time, decoding included.

Runs the same code path as the CLI (decode with PyAV + soxr, log-mel, every window batched through the model)
over the clips in ../shared/audio (or examples/audio), and prints the throughput for the default model at its
default hop, plus two ratios measured in the same run: decoding alone vs the whole job, and batched windows vs
one window per forward pass (what a naive loop would do).

    python bench/bench_tag.py [--model musicnn-msd] [--hop S] [--dir DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from streamtag.frontend import logmel
from streamtag.pipeline import hop_frames_for, tag_audio, window_ends
from streamtag.registry import DEFAULT_MODEL, load_bundle
from streamtag.runner import ModelRunner
from streamtag.sources import read_audio

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--hop", type=float, default=None)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    d = args.dir or (REPO.parent / "shared" / "audio")
    if not d.is_dir():
        d = REPO / "examples" / "audio"
    files = sorted(p for p in d.iterdir() if p.suffix in {".ogg", ".mp3", ".wav", ".flac"})
    bundle = load_bundle(args.model)
    runner = ModelRunner(bundle, "cpu")
    sr = bundle.frontend.sample_rate
    print(f"{len(files)} files from {d}, model {bundle.name}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    audio = {f: read_audio(str(f), sr) for f in files}
    t_decode = time.perf_counter() - t0
    seconds = sum(x.shape[0] for x in audio.values()) / sr

    t0 = time.perf_counter()
    for f in files:
        tag_audio(read_audio(str(f), sr), runner, name=str(f), hop_seconds=args.hop)
    t_total = time.perf_counter() - t0

    # the same windows, one forward pass each
    hop_frames = hop_frames_for(bundle, args.hop)
    t0 = time.perf_counter()
    n_windows = 0
    for x in audio.values():
        fr = logmel(x, bundle.frontend)
        for e in window_ends(fr.shape[0], bundle.window_frames, hop_frames):
            runner.predict(fr[None, max(0, e - bundle.window_frames) : e])
            n_windows += 1
    t_single = time.perf_counter() - t0 + t_decode

    print(f"audio: {seconds:.1f} s in {n_windows} windows (hop {hop_frames * bundle.frontend.frame_seconds:.2f} s)")
    print(f"tag (decode + mel + batched model): {t_total:6.2f} s  -> {seconds / t_total:7.1f} s of audio per s")
    print(f"decode alone:                       {t_decode:6.2f} s  ({100 * t_decode / t_total:.0f}% of the job)")
    print(f"one window per forward pass:        {t_single:6.2f} s  -> the tag path is {t_single / t_total:.2f}x faster")


if __name__ == "__main__":
    main()
