"""Incremental log-mel cost per hop vs recomputing the whole window's mel with librosa.

A live tagger that recomputed a 5 s window's mel spectrogram at every 0.5 s hop would redo 90% of the work each
time. streamtag's IncrementalLogMel computes only the frames the new 0.5 s completes. Both are timed here in the
same run on the same audio, and the ratio is printed (absolute times drift on shared machines; ratios do not).

    python bench/bench_frontend.py [--window 5] [--hop 0.5] [--repeats 200]
"""
from __future__ import annotations

import argparse
import time

import librosa
import numpy as np

from streamtag.frontend import FrontendSpec, IncrementalLogMel
from streamtag.registry import DEFAULT_MODEL, load_bundle


def _time(fn, repeats: int) -> float:
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best.append((time.perf_counter() - t0) / repeats)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=5.0, help="window length, s")
    ap.add_argument("--hop", type=float, default=0.5, help="hop, s")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
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

    t_inc = _time(incremental, args.repeats)
    t_lib = _time(recompute, max(10, args.repeats // 4))
    print(f"front end: sr {sr} Hz, n_fft {spec.n_fft}, hop_length {spec.hop_length}, n_mels {spec.n_mels}")
    print(f"window {args.window:.2f} s, hop {args.hop:.2f} s")
    print(f"incremental push of one hop          {t_inc * 1e3:8.3f} ms")
    print(f"librosa mel of the whole window      {t_lib * 1e3:8.3f} ms")
    print(f"ratio librosa-recompute / incremental  {t_lib / t_inc:6.1f}x")
    print(f"incremental real-time factor          {args.hop / t_inc:8.0f}x faster than real time")


if __name__ == "__main__":
    main()
