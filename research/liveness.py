"""Which of musicnn's front-end channels ever fire on music: measured once, stored in the student bundles.

Research tool (not in the wheel; run from a checkout). It produced the shipped students' ``live_channels`` (163
of 561) and their cards' CPU-path paragraph. Run it again with ``--write`` after distilling a new
musicnn_student bundle, before shipping it (the bundle runs the full front end until then).

Every front-end block of musicnn ends in ``ReLU -> batch norm -> max over mel bands``, and for most channels the
ReLU output is 0 on every frame of real music (the extreme over bands never leaves the negative side), so their
feature is a constant: the batch norm's shift. A student's CPU path (architectures/musicnn.py:
``MusicnnFrames.set_live_channels``) computes only the channels that do fire and takes the others as that
constant, which equals the full front end wherever they are indeed silent, at a fraction of the cost.

This tool counts, per channel, the frames whose ReLU output is above 0, with musicnn's own (float32) convolutions:

- on the corpus's **training** tracks, which decide the live set (a channel is live if it fires on any frame);
- on the **held-out** tracks and on synthetic probes (silence, white noise at -60 and -6 dBFS, a sine sweep,
  tones at 50 Hz, 1 kHz and 7.9 kHz, a clipped square wave at +12 dBFS, clicks, gated and burst noise), which
  only check the set: a channel outside it that fires there is reported.

    python -m research.liveness --corpus /work/corpus --bundle models/st-gru-msd \\
        --bundle models/st-transformer-msd --write

``--write`` stores the live set in each bundle's ``arch_config.live_channels`` and the counts in
``extra.liveness``, measures the clip-level agreement through ``tag_audio`` in fp32 and bf16 with the new
config (``extra.inference``), and re-renders the model card. The weights do not change.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from streamtag.architectures.musicnn import MusicnnFrames
from streamtag.frontend import logmel
from streamtag.registry import Bundle, load_bundle
from streamtag.train.distill.cards import CARD_JSON, render_distill_card
from streamtag.train.distill.corpus import SAMPLE_RATE, read_manifest
from streamtag.train.distill.features import musicnn_frames, student_frontend
from streamtag.train.distill.teacher import labels_dir

from .product_check import product_agreement

__all__ = ["channel_activity", "PROBES", "measure", "write_bundle", "main"]

log = logging.getLogger(__name__)


@torch.no_grad()
def channel_activity(frames: MusicnnFrames, mel: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Frames (of ``mel`` (T, n_mels), musicnn's units) on which each front-end channel's ReLU output is above 0,
    with musicnn's "same" padding in time -> (C_front,) int64 counts."""
    x = frames.normalize(torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]).unsqueeze(1)
    counts = []
    for blk in frames.front_blocks:
        pl, pr = blk.pad
        kt = blk.conv.kernel_size[0]
        xp = F.pad(x, (0, 0, pl, pr))  # (1, 1, T + kt - 1, n_mels)
        sign = torch.where(blk.bn.weight >= 0, 1.0, -1.0)
        bias = blk.conv.bias
        assert bias is not None
        n = torch.zeros(blk.conv.out_channels, dtype=torch.int64)
        for s in range(0, x.shape[2], chunk):
            seg = xp[:, :, s : s + chunk + kt - 1]
            z = F.conv2d(seg, blk.conv.weight * sign.view(-1, 1, 1, 1), bias * sign)  # (1, C, t, positions)
            extreme = z.amax(dim=3)[0] * sign[:, None]  # (C, t): max over bands, or min where the BN scale is < 0
            n += (extreme > 0).sum(dim=1)
        counts.append(n)
    return torch.cat(counts).numpy()


def _tone(hz: float) -> Callable[[int, float], np.ndarray]:
    return lambda sr, s: np.sin(2 * np.pi * hz * np.arange(int(sr * s)) / sr)


def _noise(level: float) -> Callable[[int, float], np.ndarray]:
    return lambda sr, s: np.random.default_rng(0).normal(0.0, level, int(sr * s))


def _sweep(sr: int, s: float) -> np.ndarray:
    t = np.arange(int(sr * s)) / sr
    return 0.8 * np.sin(2 * np.pi * (20 * t + (sr / 2 - 40) / (2 * s) * t ** 2))


def _bursts(sr: int, s: float) -> np.ndarray:
    n = int(sr * s)
    gate = (np.arange(n) // (sr // 10)) % 2  # 100 ms on, 100 ms off
    return np.random.default_rng(1).normal(0.0, 1.0, n) * gate


PROBES: dict[str, Callable[[int, float], np.ndarray]] = {
    "silence": lambda sr, s: np.zeros(int(sr * s)),
    "white noise -60 dBFS": _noise(1e-3),
    "white noise -6 dBFS": _noise(0.5),
    "sine sweep 20 Hz - Nyquist": _sweep,
    "tone 50 Hz": _tone(50.0),
    "tone 1 kHz": _tone(1000.0),
    "tone 7.9 kHz": _tone(7900.0),
    "square 220 Hz clipped at +12 dBFS": lambda sr, s: 4.0 * np.sign(_tone(220.0)(sr, s)),
    "clicks": lambda sr, s: 4.0 * (np.arange(int(sr * s)) % (sr // 4) == 0),
    "gated noise (100 ms on/off)": _bursts,
    "noise bursts at -20 dBFS and 0 dBFS": lambda sr, s: _bursts(sr, s) * np.where(
        np.arange(int(sr * s)) < sr * s / 2, 0.1, 1.0),
}


def measure(corpus: Path, teacher: Bundle, *, probe_seconds: float = 20.0) -> dict[str, Any]:
    """Activity counts of every front-end channel on the training tracks (which decide), the held-out tracks
    and the probes (which check); see the module docstring."""
    frames = cast(MusicnnFrames, musicnn_frames(teacher))
    spec = student_frontend(teacher)
    counts = {"train": np.zeros(frames.config.frontend_channels, np.int64)}
    counts["eval"] = counts["train"].copy()
    n_frames = {"train": 0, "eval": 0}
    t0 = time.time()
    for tr in read_manifest(corpus):
        mel = np.load(labels_dir(corpus, teacher) / (Path(tr.file).stem + ".npz"))["mel"]
        counts[tr.split] += channel_activity(frames, mel.astype(np.float32))
        n_frames[tr.split] += mel.shape[0]
    log.info("activity of %d channels on %d training and %d held-out frames (%.0f s)", len(counts["train"]),
             n_frames["train"], n_frames["eval"], time.time() - t0)
    live = counts["train"] > 0
    probes = {}
    for name, make in PROBES.items():
        x = np.asarray(make(SAMPLE_RATE, probe_seconds), np.float32)
        c = channel_activity(frames, logmel(x, spec))
        probes[name] = int(((c > 0) & ~live).sum())
    blocks, o = [], 0
    for blk in frames.front_blocks:
        C = blk.conv.out_channels
        kt, kf = blk.conv.kernel_size
        blocks.append({"kernel": f"{kt}x{kf}", "channels": C, "live": int(live[o : o + C].sum())})
        o += C
    return {
        "live_channels": [int(i) for i in np.nonzero(live)[0]],
        "train_frames": n_frames["train"], "heldout_frames": n_frames["eval"],
        "blocks": blocks,
        "heldout_frames_with_an_inactive_channel_firing": int(counts["eval"][~live].sum()),
        "inactive_channels_firing_on_heldout": int(((counts["eval"] > 0) & ~live).sum()),
        "least_active_live_channel_fraction": float((counts["train"][live] / max(1, n_frames["train"])).min())
        if live.any() else 0.0,
        "probes": probes,
        "probe_seconds": probe_seconds,
    }


def write_bundle(bundle_dir: Path, report: dict[str, Any], corpus: Path) -> dict[str, Any]:
    """Store the live set in a student bundle's config.json, measure its agreement through ``tag_audio`` in fp32
    and bf16, and re-render its model card."""
    path = bundle_dir / "config.json"
    config = json.loads(path.read_text())
    if config.get("architecture") != "musicnn_student":
        raise SystemExit(f"{bundle_dir}: only musicnn_student bundles have musicnn's front end")
    config["arch_config"]["live_channels"] = report["live_channels"]
    config.setdefault("extra", {})["liveness"] = {k: v for k, v in report.items() if k != "live_channels"}
    path.write_text(json.dumps(config, indent=2) + "\n")
    inference = {}
    for precision in ("fp32", "bf16"):
        hits, n, misses = product_agreement(corpus, str(bundle_dir), precision=precision)
        inference[precision] = {"clips": n, "agree": hits, "misses": misses}
        log.info("%s %s: %d/%d", bundle_dir.name, precision, hits, n)
    config["extra"]["inference"] = inference
    path.write_text(json.dumps(config, indent=2) + "\n")
    card = bundle_dir / "model_card.md"
    run = json.loads((bundle_dir / CARD_JSON).read_text())
    card.write_text(render_distill_card(config, run))
    return inference


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="python -m research.liveness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus with the teacher's label cache (train/eval)")
    ap.add_argument("--teacher", default="musicnn-msd", help="the musicnn bundle whose front end the students keep")
    ap.add_argument("--bundle", type=Path, action="append", default=[], help="student bundle to update (repeatable)")
    ap.add_argument("--write", action="store_true", help="write the live set, agreement and card into the bundles")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = measure(args.corpus, load_bundle(args.teacher))
    print(json.dumps({k: v for k, v in report.items() if k != "live_channels"}, indent=2))
    print(f"live channels: {len(report['live_channels'])} of {sum(b['channels'] for b in report['blocks'])}")
    if args.write:
        for b in args.bundle:
            print(b, json.dumps(write_bundle(b, report, args.corpus)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
