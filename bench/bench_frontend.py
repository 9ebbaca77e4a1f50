"""Incremental log-mel cost per hop vs recomputing the whole window's mel with librosa.

A live tagger that recomputed a 5 s window's mel spectrogram at every 0.5 s hop would redo 90% of the work each
time. streamtag's IncrementalLogMel computes only the frames the new 0.5 s completes. Both are timed here in the
same run on the same audio, and the ratio is printed (absolute times drift on shared machines; ratios do not).

    python bench/bench_frontend.py [--window 5] [--hop 0.5] [--repeats 200] [--runs 5]

Prints the median of ``--runs`` interleaved runs of each and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import time

import librosa
import numpy as np

from streamtag.frontend import FrontendSpec, IncrementalLogMel
from streamtag.registry import DEFAULT_MODEL, load_bundle


def _run(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=5.0, help="window length, s")
    ap.add_argument("--hop", type=float, default=0.5, help="hop, s")
    ap.add_argument("--repeats", type=int, default=200, help="hops timed per run")
    ap.add_argument("--runs", type=int, default=5, help="runs of each variant; medians reported (>= 3)")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3 (the median of fewer runs is not a measurement)")
    try:
        spec = load_bundle(DEFAULT_MODEL).frontend
    except Exception:  # no shipped model: musicnn's settings
        spec = FrontendSpec(fp16_mel=True)
    sr = spec.sample_rate
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(sr * (args.window + args.hop * (args.repeats + 10))))).astype(np.float32)
    hop_n, win_n = int(args.hop * sr), int(args.window * sr)

    inc = IncrementalLogMel(spec)
    inc.push(audio[:win_n])
    pos = [win_n]

    def incremental() -> None:
        inc.push(audio[pos[0] : pos[0] + hop_n])
        pos[0] += hop_n
        if pos[0] + hop_n > audio.shape[0]:
            pos[0] = win_n

    def recompute() -> None:
        w = audio[:win_n]
        mel = librosa.feature.melspectrogram(y=w, sr=sr, n_fft=spec.n_fft, hop_length=spec.hop_length,
                                             n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax, center=False)
        np.log10(1 + 10000 * mel)

    for _ in range(3):  # warm-up: librosa's first call builds its filters and caches
        incremental()
        recompute()
    inc_runs, lib_runs = [], []
    for _ in range(args.runs):  # interleaved, so both see the same load
        inc_runs.append(_run(incremental, args.repeats))
        lib_runs.append(_run(recompute, max(10, args.repeats // 4)))
    t_inc, t_lib = float(np.median(inc_runs)), float(np.median(lib_runs))
    print(f"median of {args.runs} interleaved runs (per-run ratios "
          f"{', '.join(f'{b / a:.1f}' for a, b in zip(inc_runs, lib_runs))})")
    print(f"front end: sr {sr} Hz, n_fft {spec.n_fft}, hop_length {spec.hop_length}, n_mels {spec.n_mels}")
    print(f"window {args.window:.2f} s, hop {args.hop:.2f} s")
    print(f"incremental push of one hop          {t_inc * 1e3:8.3f} ms")
    print(f"librosa mel of the whole window      {t_lib * 1e3:8.3f} ms")
    print(f"ratio librosa-recompute / incremental  {t_lib / t_inc:6.1f}x")
    print(f"incremental real-time factor          {args.hop / t_inc:8.0f}x faster than real time")


if __name__ == "__main__":
    main()
