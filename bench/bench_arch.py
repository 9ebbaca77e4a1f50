"""Cost per hop of each architecture at 1, 64 and 512 concurrent streams, and how it grows with the window.

Window models run a whole window (default 5 s) per hop; the stateful GRU runs only the new hop's frames
with its carried state, so its per-hop cost does not depend on the window length. Default configs
(n_mels 128, 163 labels), front end 16 kHz / hop_length 256 (62.5 frames/s), hop 0.5 s = 31 frames.
``musicnn_student/HEAD`` rows are the shipped students' layout (musicnn-msd's frozen front end run
incrementally on the hop's new frames, 96 mels, 50 tags, then the GRU or the transformer over 5 s of features).
``lite`` is the cheap-front-end student's layout (not shipped, docs/distill.md section 5; its default config: a causal dilated-conv front end over 96 mels, then the same
GRU head as ``musicnn_student/stateful_gru``, 50 tags).

The shipped student bundles (``--bundles``, real weights) run in three modes: ``fp32/all`` (every front-end
channel through musicnn's own convolutions: how they ran before this round), ``fp32/live`` (only the front-end
channels that fire on music, as GEMMs: architectures/fastfront.py, research/liveness.py) and ``bf16/live`` (the
same in bfloat16: ``--precision auto`` on a CPU with hardware bf16); on a GPU, which computes every channel with
convolutions, ``fp32/all`` and ``bf16/all``. The window length does not apply to them.

    python bench/bench_arch.py [--device cpu|cuda] [--streams 1 64 512] [--windows 5 10 20] [--repeats 5]
    python bench/bench_arch.py --archs --bundles st-gru-msd --streams 1 64 512     # the shipped students only

Prints the median ms per hop over the repeats (all streams together) and ms per stream-hop, and the ratio to the baseline measured in
the same run (the transformer, 1 stream, 5 s window).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from streamtag.architectures import build_model
from streamtag.registry import load_bundle

FPS = 16000 / 256  # frames per second
ARCHS = ("transformer", "bigru", "crnn", "vit", "stateful_gru", "musicnn_student/stateful_gru",
         "musicnn_student/transformer", "lite")


def _build(arch: str) -> tuple[torch.nn.Module, int]:
    """(model, input mel bands). ``musicnn_student/HEAD``: the distilled students' layout (musicnn-msd's
    frozen front end, 96 mels, 50 tags) with the head sizes train/distill/run.py uses."""
    if arch.startswith("musicnn_student/"):
        from streamtag.train.config import DEFAULT_ARCH_CONFIGS

        head = arch.split("/", 1)[1]
        return build_model("musicnn_student", {"n_mels": 96, "n_labels": 50, "head": head,
                                               "head_config": DEFAULT_ARCH_CONFIGS[head]}), 96
    if arch == "lite":
        return build_model("lite", {"n_mels": 96, "n_labels": 50}), 96
    return build_model(arch, {"n_mels": 128, "n_labels": 163}), 128


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over at least ``repeats`` (>= 3) runs, after one warm-up run; cheap calls are
    repeated until they add up to a second, so the median is of enough samples."""
    fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < 1.0 and len(times) < 200):  # cheap calls: more samples
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 64, 512])
    ap.add_argument("--windows", type=float, nargs="+", default=[5.0, 10.0, 20.0], help="window seconds")
    ap.add_argument("--hop", type=float, default=0.5, help="hop seconds")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cell, median reported (>= 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--bundles", nargs="*", default=["st-gru-msd", "st-transformer-msd"],
                    help="shipped student bundles, each in fp32/all, fp32/live and bf16/live")
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats must be at least 3 (the median of >= 3 runs is reported)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    hop_frames = int(round(args.hop * FPS))
    print(f"device {dev}, {torch.get_num_threads()} threads, hop {args.hop} s = {hop_frames} frames")
    print(f"{'arch':13s} {'params':>7s} {'window':>7s} {'streams':>7s} {'ms/hop':>9s} {'ms/stream':>10s} {'ratio':>7s}")
    baseline = None
    with torch.inference_mode():
        for arch in args.archs:
            model, n_mels = _build(arch)
            model = model.to(dev).eval()
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            for window_s in args.windows:
                T = int(round(window_s * FPS))
                for B in args.streams:
                    if model.stateful:  # the window length only sets how long the state has run: no cost
                        state = model.init_state(B, dev)
                        x = torch.randn(B, T, n_mels, device=dev)
                        _, state = model.step(x, state)  # a stream already T frames in
                        hop = torch.randn(B, hop_frames, n_mels, device=dev)
                        sec = _time(lambda: model.step(hop, state), args.repeats, dev)
                    else:
                        x = torch.randn(B, T, n_mels, device=dev)
                        sec = _time(lambda: model(x), args.repeats, dev)
                    if baseline is None:
                        baseline = sec
                    print(f"{arch:13s} {n_params:6.2f}M {window_s:6.1f}s {B:7d} {sec * 1e3:9.2f} "
                          f"{sec * 1e3 / B:10.3f} {sec / baseline:7.2f}", flush=True)
        for name in args.bundles:
            bundle = load_bundle(name)
            live = bundle.arch_config.get("live_channels") or None
            modes = ("fp32/all", "fp32/live", "bf16/live") if dev.type == "cpu" else ("fp32/all", "bf16/all")
            for mode in modes:
                precision, channels = mode.split("/")
                if channels == "live" and live is None:
                    print(f"{name}: no live set in its config (research/liveness.py); {mode} skipped")
                    continue
                model = bundle.build_model(dev).eval()
                model.frames.set_live_channels(live if channels == "live" else None)
                model.set_precision(precision)
                n_params = sum(p.numel() for p in model.parameters()) / 1e6
                for B in args.streams:
                    state = model.init_state(B, dev)
                    x = torch.randn(B, 5 * int(FPS), 96, device=dev) * 0.8 + 1.5  # log-mel in musicnn's range
                    _, state = model.step(x, state)  # streams already 5 s in (past the look-ahead)
                    hop = torch.randn(B, hop_frames, 96, device=dev) * 0.8 + 1.5
                    sec = _time(lambda: model.step(hop, state), args.repeats, dev)
                    base = baseline if baseline is not None else sec
                    baseline = base
                    label = f"{name}[{mode}]"
                    print(f"{label:13s} {n_params:6.2f}M {'-':>7s} {B:7d} {sec * 1e3:9.2f} "
                          f"{sec * 1e3 / B:10.3f} {sec / base:7.2f}", flush=True)


if __name__ == "__main__":
    main()
