"""Training throughput (clips/s) reading log-mel crops from the feature cache vs decoding audio on the fly.

Runs on an FMA copy (``--fma-metadata``/``--audio``) or, without them, on the mini FMA of the tests
(generated in a temporary folder). Both variants feed the same model the same number of batches in the
same run (interleaved, median of ``--repeats`` runs, >= 3); the ratio is what to read, the absolute numbers
depend on the machine. The train step is the training loop's own (``loop.make_optimizer`` + ``loop.frame_loss``).

    python bench/bench_training.py [--fma-metadata DIR --audio DIR] [--batches 8] [--workers 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from streamtag.architectures import build_model
from streamtag.train.cache import build_cache
from streamtag.train.config import TrainConfig
from streamtag.train.fma import load_fma
from streamtag.train.loop import frame_loss, make_optimizer
from streamtag.train.train import DEFAULT_FRONTEND, CachedCrops, DecodedCrops


def _run(loader: DataLoader, model: torch.nn.Module, batches: int, train_step: bool) -> tuple[int, float]:
    opt = make_optimizer(model, TrainConfig())
    n, it = 0, iter(loader)
    t = time.perf_counter()
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if train_step:
            loss = frame_loss(model(x), y.float(), multilabel=False)
            opt.zero_grad()
            loss.backward()
            opt.step()
        n += x.shape[0]
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fma-metadata", type=Path)
    ap.add_argument("--audio", type=Path)
    ap.add_argument("--subset", default="small")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for both variants")
    ap.add_argument("--arch", default="transformer")
    ap.add_argument("--cache", type=Path, help="cache folder (default: a temporary one)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported (>= 3)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.fma_metadata is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fma_fixture import make_mini_fma, shared_or_none

        mini = make_mini_fma(Path(tmp.name) / "fma", shared_or_none())
        args.fma_metadata, args.audio = mini.metadata, mini.audio
    ds = load_fma(args.fma_metadata, args.audio, subset=args.subset, labels="top")
    spec = DEFAULT_FRONTEND
    cache_root = args.cache or Path(tmp.name) / "cache"
    t = time.perf_counter()
    rep = build_cache(ds.split("train"), cache_root, spec, workers=args.workers, progress=False)
    print(f"cache: {rep.done} clips ({rep.new} new) in {time.perf_counter() - t:.1f} s, {len(rep.skipped)} skipped")
    items = [it for it in ds.split("train") if it.key not in rep.skipped]
    y = np.eye(len(ds.labels), dtype=np.float32)[ds.targets(items)]
    crop = spec.frames_for(5.0)
    model = build_model(args.arch, {"n_mels": spec.n_mels, "n_labels": len(ds.labels)})
    print(f"{len(items)} training clips, batch {args.batch_size}, {args.batches} batches, {args.workers} workers, "
          f"{torch.get_num_threads()} torch threads")
    if args.repeats < 3:
        ap.error("--repeats must be at least 3 (the median of fewer runs is not a measurement)")
    for train_step in (False, True):
        rates: dict[str, list[float]] = {"cache": [], "decode": []}
        for _ in range(args.repeats):  # interleaved, so both variants see the same load
            for name, d in (("cache", CachedCrops(cache_root, items, y, crop)),
                            ("decode", DecodedCrops(spec, items, y, crop))):
                loader = DataLoader(d, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                    drop_last=True)
                n, sec = _run(loader, model, args.batches, train_step)  # includes worker start-up, as an epoch does
                rates[name].append(n / sec)
        med = {k: float(np.median(v)) for k, v in rates.items()}
        what = "train step" if train_step else "data only"
        for name in ("cache", "decode"):
            print(f"{what:10s} {name:7s} {med[name]:9.1f} clips/s (median of {args.repeats})")
        print(f"{'':10s} cache / decode = {med['cache'] / med['decode']:.1f}x (baseline: decoding, same run)")


if __name__ == "__main__":
    main()
