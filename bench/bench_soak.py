"""Memory over time: RSS of a long Engine soak, and peak RSS of tagging a 30 s file vs a 2 h file.

Each measurement runs in a fresh child process (so one cannot inherit another's heap) and reads its own
VmRSS / VmHWM from /proc/self/status:

- **soak**: the Engine API, one stream, ``--soak-seconds`` (default 3600) of looped real audio pushed unpaced
  in 0.5 s blocks with a ``step()`` after each; RSS sampled every 5 % of the audio. Prints the series of one
  run and, over ``--runs`` runs, the median of final RSS / RSS after warm-up (the first 10 % of the audio)
  and of the largest sample / warm-up.
- **files**: a 30 s and a ``--long-seconds`` (default 7200) file made with FFmpeg from a looped example clip
  in a temp dir, each decoded block by block (open_source) and tagged by ``pipeline.FileTagger`` as
  ``streamtag tag`` does; prints the median peak RSS (VmHWM) of each and their ratio.

    python bench/bench_soak.py [--model musicnn-msd] [--runs 3] [--soak-seconds 3600] [--long-seconds 7200]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
SHORT_SECONDS = 30.0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise RuntimeError(f"no {field} in /proc/self/status")


# -- children ---------------------------------------------------------------------------------------------
def child_soak(model: str, seconds: float) -> dict:
    import numpy as np

    from streamtag.pipeline import Engine
    from streamtag.registry import load_bundle
    from streamtag.sources import read_audio

    bundle = load_bundle(model)
    engine = Engine(bundle, device="cpu")
    sr = engine.sample_rate
    loop = read_audio(str(CLIP), sr)
    engine.add_stream("soak")
    block, total = sr // 2, int(seconds * sr)
    every = max(block, total // 20)
    samples: list[tuple[float, float]] = []  # (audio seconds, RSS MiB)
    pos, updates, t0 = 0, 0, time.perf_counter()
    while pos < total:
        i = pos % loop.shape[0]
        x = loop[i : i + block]
        if x.shape[0] < block:
            x = np.concatenate([x, loop[: block - x.shape[0]]])
        engine.push("soak", x)
        updates += len(engine.step())
        pos += block
        if pos % every < block:
            samples.append((pos / sr, _status_mb("VmRSS")))
    return {"samples": samples, "updates": updates, "wall": time.perf_counter() - t0}


def child_file(model: str, path: str) -> dict:
    from streamtag.pipeline import FileTagger
    from streamtag.registry import load_bundle
    from streamtag.runner import ModelRunner
    from streamtag.sources import open_source

    runner = ModelRunner(load_bundle(model), "cpu")
    tagger = FileTagger(runner, name=Path(path).name)
    t0 = time.perf_counter()
    with open_source(path, runner.bundle.frontend.sample_rate, block_seconds=10.0) as source:
        for block in source:
            tagger.push(block)
    tagger.finish()
    s = tagger.summary()
    return {"peak_mb": _status_mb("VmHWM"), "seconds": tagger.seconds, "windows": s.windows,
            "wall": time.perf_counter() - t0}


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _make_file(path: Path, seconds: float) -> None:
    """A ``seconds`` long FLAC of the example clip looped (decoded to WAV first: looping a WAV keeps clean
    timestamps, looping the Ogg makes FFmpeg drop frames)."""
    base = path.with_suffix(".loop.wav")
    ff = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    subprocess.run([*ff, "-i", str(CLIP), "-ac", "1", "-ar", "16000", str(base)], check=True)
    subprocess.run([*ff, "-stream_loop", "-1", "-i", str(base), "-t", f"{seconds:.3f}", "-c:a", "flac", str(path)],
                   check=True)
    base.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="musicnn-msd")
    ap.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians reported (>= 3)")
    ap.add_argument("--soak-seconds", type=float, default=3600.0, help="audio seconds of the soak (default 1 h)")
    ap.add_argument("--long-seconds", type=float, default=7200.0, help="length of the long file (default 2 h)")
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--skip-files", action="store_true")
    ap.add_argument("--child-soak", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_soak is not None:
        print(json.dumps(child_soak(args.model, args.child_soak)))
        return
    if args.child_file is not None:
        print(json.dumps(child_file(args.model, args.child_file)))
        return
    if args.runs < 3:
        ap.error("--runs must be at least 3 (medians of >= 3 runs are reported)")
    print(f"model {args.model}, {args.runs} runs per measurement, each in a fresh process")

    if not args.skip_soak:
        finals, peaks = [], []
        for r in range(args.runs):
            res = _run_child("--model", args.model, "--child-soak", str(args.soak_seconds))
            series = res["samples"]
            warm = next(mb for s, mb in series if s >= 0.1 * args.soak_seconds)
            finals.append(series[-1][1] / warm)
            peaks.append(max(mb for s, mb in series if s >= 0.1 * args.soak_seconds) / warm)
            if r == 0:
                print(f"soak: {args.soak_seconds:.0f} s of audio unpaced, {res['updates']} updates, "
                      f"{res['wall']:.0f} s wall; RSS (MiB) by audio time:")
                print("  " + "  ".join(f"{s:.0f}s:{mb:.0f}" for s, mb in series))
        print(f"soak: final / after warm-up  = {statistics.median(finals):.3f}  (runs {', '.join(f'{f:.3f}' for f in finals)})")
        print(f"soak: largest / after warm-up = {statistics.median(peaks):.3f}")

    if not args.skip_files:
        if shutil.which("ffmpeg") is None:
            print("files: skipped (ffmpeg not on PATH)")
            return
        with tempfile.TemporaryDirectory(prefix="streamtag-soak-") as tmp:
            short, long_ = Path(tmp) / "short.flac", Path(tmp) / "long.flac"
            _make_file(short, SHORT_SECONDS)
            _make_file(long_, args.long_seconds)
            res: dict[str, list[dict]] = {"short": [], "long": []}
            for _ in range(args.runs):
                res["short"].append(_run_child("--model", args.model, "--child-file", str(short)))
                res["long"].append(_run_child("--model", args.model, "--child-file", str(long_)))
        med = {k: statistics.median(r["peak_mb"] for r in v) for k, v in res.items()}
        for k in ("short", "long"):
            r0 = res[k][0]
            print(f"file {k:<5}: {r0['seconds']:7.0f} s of audio, {r0['windows']} windows, "
                  f"peak RSS {med[k]:.0f} MiB (median), {r0['seconds'] / r0['wall']:.0f}x real time")
        print(f"files: peak RSS long / short = {med['long'] / med['short']:.3f}")


if __name__ == "__main__":
    main()
