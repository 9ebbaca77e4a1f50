"""musicnn forward cost per window: the original per-window forward vs the optimized ones and the fast path.

Runs the default musicnn bundle over the first seconds of a real clip (../shared/audio, or random log-mel
when absent) at several hops, and prints milliseconds per window of each variant, median of ``--repeats`` (>= 3), with
ratios measured in the same run (the machine may be busy: compare ratios, not absolute times), and the max abs
difference of the sigmoid outputs of each variant against the original. Variants: "original" (the front-end
blocks' amax + amin + where inference path), "per-window" (the current forward: one conv with sign-flipped
weights, one amax), each with 1 and 8 windows per pass, and ``Musicnn.forward_windows`` (shared front end), also
with the 8 windows per unshared-block pass it used before (the wide temporal convs' output then overflows the cache)
and with its window groups on torch's intra-op threads instead of its own worker threads.

    python bench/bench_musicnn.py [--seconds 30] [--repeats 3] [--hops 1.0 0.5] [--threads 1 2]
    python bench/bench_musicnn.py --breakdown     # CPU seconds by stage and layer group, all shared clips
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamtag.architectures import musicnn
from streamtag.frontend import logmel
from streamtag.pipeline import hop_frames_for, window_ends
from streamtag.registry import DEFAULT_MODEL, load_bundle
from streamtag.sources import read_audio

REPO = Path(__file__).resolve().parents[1]


def _frames(bundle, seconds: float) -> tuple[torch.Tensor, str]:
    d = next((p / "shared" / "audio" for p in REPO.parents[:2] if (p / "shared" / "audio").is_dir()), REPO / "none")
    files = sorted(p for p in d.glob("*") if p.suffix in {".ogg", ".mp3", ".wav", ".flac"}) if d.is_dir() else []
    sr = bundle.frontend.sample_rate
    if files:
        x = read_audio(str(files[0]), sr)[: int(seconds * sr)]
        return torch.from_numpy(logmel(x, bundle.frontend)), files[0].name
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.uniform(0, 3, (bundle.frontend.frames_for(seconds), 96)).astype(np.float32)), "random"


def _original_valid(self, x: torch.Tensor) -> torch.Tensor:
    """FrontendBlock's eval path before the fast-path work: amax and amin over bands, then where, then BN."""
    z = self.conv(x)  # (B, C, T, F)
    zmax, zmin = z.amax(dim=3), z.amin(dim=3)
    extreme = torch.where((self.bn.weight >= 0).view(1, -1, 1), zmax, zmin)  # (B, C, T)
    return self.bn(F.relu(extreme).unsqueeze(3)).squeeze(3)


def _original(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with the original front-end block inference path."""
    orig = copy.deepcopy(model)
    for blk in orig.front_blocks:  # type: ignore[union-attr]
        blk.valid = types.MethodType(_original_valid, blk)
    return orig


def _best(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), torch.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _with_sub_batch(n: int, model, frames: torch.Tensor, ends: list[int], w: int) -> torch.Tensor:
    """forward_windows with ``n`` windows per pass through the blocks it cannot share (the old default: 8)."""
    saved, musicnn._SUB_BATCH = musicnn._SUB_BATCH, n
    try:
        return model.forward_windows(frames, ends, w)
    finally:
        musicnn._SUB_BATCH = saved


def _intra_op_only(model, frames: torch.Tensor, ends: list[int], w: int) -> torch.Tensor:
    """forward_windows with its window groups run one after another on torch's intra-op threads (as before)."""
    saved = musicnn._map_threads
    musicnn._map_threads = lambda fn, items, workers: [fn(i) for i in items]
    try:
        return model.forward_windows(frames, ends, w)
    finally:
        musicnn._map_threads = saved


def breakdown(bundle, model, repeats: int) -> None:
    """CPU seconds (one thread) of decode, log-mel and forward_windows by layer group over every shared clip."""
    from streamtag.architectures.musicnn import FrontendBlock, Musicnn

    d = next((p / "shared" / "audio" for p in REPO.parents[:2] if (p / "shared" / "audio").is_dir()), None)
    if d is None:
        raise SystemExit("--breakdown needs ../shared/audio")
    files = sorted(p for p in d.iterdir() if p.suffix in {".ogg", ".mp3", ".wav", ".flac"})
    torch.set_num_threads(1)
    sr, w = bundle.frontend.sample_rate, bundle.window_frames
    acc: dict[str, list[float]] = {}
    stage = {"decode": 0.0, "log-mel": 0.0}
    valid, head = FrontendBlock.valid, Musicnn._head

    def timed(key: Callable[[torch.nn.Module], str], fn: Callable) -> Callable:
        def wrapper(self, *a):
            t = time.process_time()
            y = fn(self, *a)
            acc.setdefault(key(self), [0.0])[-1] += time.process_time() - t
            return y
        return wrapper

    FrontendBlock.valid = timed(lambda b: f"front end conv {tuple(b.conv.kernel_size)}", valid)  # type: ignore
    Musicnn._head = timed(lambda m: "mid end + back end", head)  # type: ignore
    frames, seconds = [], 0.0
    for f in files:
        t = time.process_time()
        x = read_audio(str(f), sr)
        stage["decode"] += time.process_time() - t
        seconds += x.shape[0] / sr
        t = time.process_time()
        frames.append(torch.from_numpy(logmel(x, bundle.frontend)))
        stage["log-mel"] += time.process_time() - t
    totals = []
    with torch.inference_mode():
        for _ in range(max(3, repeats)):
            for v in acc.values():
                v.append(0.0)
            t = time.process_time()
            for fr in frames:
                model.forward_windows(fr, window_ends(fr.shape[0], w, hop_frames_for(bundle, None)), w)
            totals.append(time.process_time() - t)
    FrontendBlock.valid, Musicnn._head = valid, head  # type: ignore
    forward = statistics.median(totals)
    print(f"{len(files)} files, {seconds:.0f} s of audio, one thread, CPU seconds (forward: median of {len(totals)})")
    for k, cpu in stage.items():
        print(f"  {k:32s} {cpu:6.2f} s")
    total = forward
    print(f"  {'forward_windows':32s} {total:6.2f} s  = 100%  ({seconds / total:.0f}x real time per core)")
    for k, v in sorted(acc.items(), key=lambda kv: -statistics.median(kv[1][1:])):
        m = statistics.median(v[1:])
        print(f"    {k:30s} {m:6.2f} s  {100 * m / total:5.1f}%")
    rest = total - sum(statistics.median(v[1:]) for v in acc.values())
    print(f"    {'other (indexing, cat, Python)':30s} {rest:6.2f} s  {100 * rest / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hops", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--breakdown", action="store_true",
                    help="instead: CPU seconds by stage and layer group over every clip of ../shared/audio")
    args = ap.parse_args()
    bundle = load_bundle(args.model)
    model: Any = bundle.build_model().eval()
    if args.breakdown:
        breakdown(bundle, model, args.repeats)
        return
    if not hasattr(model, "forward_windows"):
        raise SystemExit(f"{bundle.name} has no forward_windows fast path")
    original = _original(model)
    frames, source = _frames(bundle, args.seconds)
    w = bundle.window_frames
    print(f"model {bundle.name}, {frames.shape[0]} frames of {source}, window {w} frames, median of {max(3, args.repeats)}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for hop_s in args.hops:
            ends = window_ends(frames.shape[0], w, hop_frames_for(bundle, hop_s))
            wins = torch.stack([frames[e - w : e] for e in ends])  # (n, w, n_mels)
            variants: dict[str, Callable[[], torch.Tensor]] = {
                "original (B=1)": lambda: torch.cat([original(wins[i : i + 1]) for i in range(len(ends))]),
                "original (B=8)": lambda: torch.cat([original(wins[i : i + 8]) for i in range(0, len(ends), 8)]),
                "per-window (B=1)": lambda: torch.cat([model(wins[i : i + 1]) for i in range(len(ends))]),
                "per-window (B=8)": lambda: torch.cat([model(wins[i : i + 8]) for i in range(0, len(ends), 8)]),
                "forward_windows (sub-batch 8)": lambda: _with_sub_batch(8, model, frames, ends, w),
                "forward_windows (intra-op)": lambda: _intra_op_only(model, frames, ends, w),
                "forward_windows": lambda: model.forward_windows(frames, ends, w),
            }
            runs: dict[str, list[float]] = {name: [] for name in variants}
            outs = {}
            with torch.inference_mode():
                for _ in range(max(3, args.repeats)):  # interleave variants so load changes hit them alike
                    for name, fn in variants.items():
                        t, o = _best(fn, 1)
                        runs[name].append(t)
                        outs[name] = torch.sigmoid(o)
            times = {name: statistics.median(ts) for name, ts in runs.items()}
            ref_name = next(iter(variants))
            print(f"threads {threads}, hop {hop_s} s, {len(ends)} windows")
            for name in variants:
                diff = (outs[name] - outs[ref_name]).abs().max().item()
                lo, hi = (1e3 * f(runs[name]) / len(ends) for f in (min, max))
                print(f"  {name:30s} {1e3 * times[name] / len(ends):8.1f} ms/window ({lo:.1f}-{hi:.1f})  "
                      f"x{times[ref_name] / times[name]:5.2f} vs {ref_name}   max |dp| {diff:.1e}")


if __name__ == "__main__":
    main()
