"""`streamtag tag` throughput of every shipped model, decoding included, as ratios against musicnn-msd.

Runs the CLI's file path (decode with PyAV + soxr, then pipeline.FileTagger: incremental log-mel, windows
batched through the model's shared-work path, stateful students stepped a batch of hops per pass) over the
same clips of ../shared/audio ($STREAMTAG_SHARED/audio; else examples/audio) for every shipped model, in one run, interleaving the
models run by run so load on the machine hits them alike. Prints, per model, the median wall time of
``--runs`` runs (>= 3), seconds of audio tagged per second, and the speed ratio against musicnn-msd measured
in the same run (> 1: faster than musicnn-msd).

    python bench/bench_tag.py [--runs 3] [--files 4] [--dir DIR] [--models a,b] [--threads N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from streamtag.pipeline import FileTagger
from streamtag.registry import available_models, load_bundle
from streamtag.runner import ModelRunner
from streamtag.sources import read_audio

REPO = Path(__file__).resolve().parents[1]
BASELINE = "musicnn-msd"
AUDIO_EXT = {".ogg", ".mp3", ".wav", ".flac"}


def tag_files(runner: ModelRunner, files: list[Path]) -> float:
    """Decode and tag every file as `streamtag tag` does; returns the seconds of audio tagged."""
    sr = runner.bundle.frontend.sample_rate
    seconds = 0.0
    for f in files:
        x = read_audio(str(f), sr)
        tagger = FileTagger(runner, name=f.name)
        block = sr * 10  # the decoder's blocks: 10 s
        for i in range(0, x.shape[0], block):
            tagger.push(x[i : i + block])
        tagger.finish()
        tagger.summary()
        seconds += tagger.seconds
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per model; the median is reported (default 3)")
    ap.add_argument("--files", type=int, default=4, help="clips to tag, sorted by name (0: all; default 4)")
    ap.add_argument("--dir", type=Path, default=None, help="folder of clips (default ../shared/audio)")
    ap.add_argument("--models", default=None, help="comma-separated bundles (default: every shipped one)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="compute device: cpu | cuda | auto (default cpu)")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3 (the median of >= 3 runs is reported)")
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(os.environ["STREAMTAG_SHARED"]) if os.environ.get("STREAMTAG_SHARED") else REPO.parent / "shared"
    d = args.dir or (shared / "audio")
    if not d.is_dir():
        d = REPO / "examples" / "audio"
    files = sorted(p for p in d.iterdir() if p.suffix in AUDIO_EXT)
    files = files[: args.files] if args.files else files
    models = args.models.split(",") if args.models else available_models()
    if BASELINE not in models:
        models = [BASELINE, *models]
    runners = {m: ModelRunner(load_bundle(m), args.device) for m in models}
    device = runners[BASELINE].device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{len(files)} files from {d}; models {', '.join(models)}; device {name}; "
          f"torch threads {torch.get_num_threads()}")
    tag_files(runners[BASELINE], files[:1])  # warm-up: imports, allocator, first-call costs
    times: dict[str, list[float]] = {m: [] for m in models}
    audio_s = 0.0
    for _ in range(args.runs):
        for m in models:
            t0 = time.perf_counter()
            audio_s = tag_files(runners[m], files)
            times[m].append(time.perf_counter() - t0)
    base = statistics.median(times[BASELINE])
    print(f"audio: {audio_s:.1f} s per run; median of {args.runs} runs, decode included")
    print(f"{'model':<22} {'wall s':>8} {'x real time':>12} {'speed vs ' + BASELINE:>22}")
    for m in models:
        t = statistics.median(times[m])
        spread = f"(runs {min(times[m]):.2f}-{max(times[m]):.2f})"
        print(f"{m:<22} {t:8.2f} {audio_s / t:12.1f} {base / t:21.2f}x  {spread}")


if __name__ == "__main__":
    main()
