"""Feature cache: log-mel frames of every item precomputed once into one memory-mapped float16 array.

Layout of a cache folder::

    frames.npy   float16 (rows, n_mels), a valid .npy (np.load(..., mmap_mode="r") works); items are
                 concatenated along rows
    index.json   {"frontend": FrontendSpec, "rows": int, "items": {key: [row offset, n_frames]},
                  "skipped": {key: reason}}

Building is parallel (``workers`` spawned processes decode and compute ``streamtag.frontend.logmel``; the
parent appends to ``frames.npy``), resumable (re-running skips every key already in the index, done or
skipped; rows past the last saved index are truncated away after a crash), and never stops on a bad file:
unreadable audio (FMA ships some broken MP3s) is skipped and reported with its reason.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import struct
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamtag.errors import ConfigError, StreamtagError
from streamtag.frontend import FrontendSpec, logmel

from .data import Item, decode_audio

__all__ = ["FeatureCache", "CacheReport", "build_cache", "open_cache", "extract"]

log = logging.getLogger(__name__)

FRAMES_NAME = "frames.npy"
INDEX_NAME = "index.json"
_HEADER_BYTES = 128  # fixed .npy header size so the shape can be rewritten in place as rows are appended
_FLUSH_SECONDS = 10.0


def _npy_header(rows: int, n_mels: int) -> bytes:
    """A version 1.0 .npy header of exactly _HEADER_BYTES for a C-order float16 (rows, n_mels) array."""
    d = "{'descr': '<f2', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, n_mels)  # noqa: UP031 (numpy's own header format)
    pad = _HEADER_BYTES - 10 - len(d) - 1
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _HEADER_BYTES - 10) + (d + " " * pad + "\n").encode("latin1")


def extract(path: str | Path, spec: FrontendSpec) -> np.ndarray:
    """Decode ``path`` and return its log-mel frames (T, n_mels) float32 (raises StreamtagError)."""
    samples = decode_audio(path, spec.sample_rate)
    frames = logmel(samples, spec)
    if frames.shape[0] == 0:
        raise ConfigError(f"{path} is shorter than one frame")
    if not np.isfinite(frames).all():
        raise ConfigError(f"{path} gave non-finite features")
    return frames


def _strip_path(reason: str, path: str) -> str:
    """The reason without the file name the key already identifies."""
    for p in (f"{path}: ", f"cannot decode {path}: "):
        if reason.startswith(p):
            return reason[len(p):]
    return reason.replace(path, "<file>")


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _extract_job(job: tuple[str, str, dict]) -> tuple[str, np.ndarray | None, str]:
    key, path, spec_d = job
    try:
        frames = extract(path, FrontendSpec.from_dict(spec_d))
    except StreamtagError as e:
        return key, None, _strip_path(str(e), path)
    except Exception as e:  # noqa: BLE001 - a worker must report every failure, never die on one file
        return key, None, f"{type(e).__name__}: {e}"
    return key, frames.astype(np.float16), ""


@dataclass
class CacheReport:
    done: int = 0  # items in the cache after this run
    new: int = 0  # items computed in this run
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason, all runs
    seconds: float = 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(_reason_kind(r) for r in self.skipped.values()))


def _reason_kind(reason: str) -> str:
    """A short class of a skip reason, for counting: its first clause."""
    return reason.split(";")[0].split(" (")[0].strip()[:60]


class FeatureCache:
    """Read side: ``cache[key]`` -> (T, n_mels) float16 view into the memory map."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            meta = json.loads((self.root / INDEX_NAME).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"{self.root} is not a feature cache (no {INDEX_NAME}); build it with `streamtag cache`") from e
        self.spec = FrontendSpec.from_dict(meta["frontend"])
        self.items: dict[str, tuple[int, int]] = {k: (int(o), int(n)) for k, (o, n) in meta["items"].items()}
        self.skipped: dict[str, str] = dict(meta.get("skipped", {}))
        rows = int(meta["rows"])
        self.frames = (
            np.memmap(self.root / FRAMES_NAME, dtype=np.float16, mode="r", offset=_HEADER_BYTES,
                      shape=(rows, self.spec.n_mels))
            if rows else np.zeros((0, self.spec.n_mels), np.float16)
        )  # (rows, n_mels)

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: str) -> np.ndarray:
        o, n = self.items[key]
        return self.frames[o : o + n]  # (T, n_mels) float16


def open_cache(root: str | Path, spec: FrontendSpec | None = None) -> FeatureCache:
    cache = FeatureCache(root)
    if spec is not None and cache.spec != spec:
        raise ConfigError(f"feature cache {root} was built with another front end; give a new --cache folder")
    return cache


class _Writer:
    def __init__(self, root: Path, spec: FrontendSpec) -> None:
        self.root, self.spec = root, spec
        root.mkdir(parents=True, exist_ok=True)
        index_path = root / INDEX_NAME
        if index_path.is_file():
            meta = json.loads(index_path.read_text())
            if FrontendSpec.from_dict(meta["frontend"]) != spec:
                raise ConfigError(f"feature cache {root} was built with another front end; give a new --cache folder")
            self.items = {k: tuple(v) for k, v in meta["items"].items()}
            self.skipped = dict(meta.get("skipped", {}))
            self.rows = int(meta["rows"])
        else:
            self.items, self.skipped, self.rows = {}, {}, 0
        path = root / FRAMES_NAME
        mode = "r+b" if path.is_file() else "w+b"
        self.f = open(path, mode)  # noqa: SIM115 - closed in close()
        self.f.truncate(_HEADER_BYTES + self.rows * spec.n_mels * 2)  # drop rows written after the last index save
        self.f.seek(0)
        self.f.write(_npy_header(self.rows, spec.n_mels))
        self.f.seek(0, os.SEEK_END)
        self.last_flush = time.monotonic()

    def add(self, key: str, frames: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(frames, dtype="<f2").tobytes())
        self.items[key] = (self.rows, int(frames.shape[0]))
        self.rows += int(frames.shape[0])
        if time.monotonic() - self.last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.f.flush()
        pos = self.f.tell()
        self.f.seek(0)
        self.f.write(_npy_header(self.rows, self.spec.n_mels))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.seek(pos)
        meta = {"frontend": self.spec.to_dict(), "rows": self.rows,
                "items": {k: list(v) for k, v in self.items.items()}, "skipped": self.skipped}
        tmp = self.root / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.root / INDEX_NAME)
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.f.close()


def build_cache(
    items: Iterable[Item],
    root: str | Path,
    spec: FrontendSpec,
    *,
    workers: int = 0,
    progress: bool = True,
    retry_skipped: bool = False,
) -> CacheReport:
    """Compute and append the log-mel frames of every item not yet in the cache at ``root``.

    Args:
        items: the files to cache (keys must be unique).
        root: cache folder (created if missing).
        spec: front end; must equal the spec of an existing cache.
        workers: decoding processes (0: in this process).
        progress: show a tqdm progress bar.
        retry_skipped: try again the files skipped by an earlier run.
    """
    t0 = time.monotonic()
    root = Path(root)
    w = _Writer(root, spec)
    if retry_skipped:
        w.skipped.clear()
    todo = [it for it in items if it.key not in w.items and it.key not in w.skipped]
    report = CacheReport()
    jobs = [(it.key, str(it.path), spec.to_dict()) for it in todo]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"features -> {root}", unit="file", disable=not progress or not jobs,
               dynamic_ncols=True)
    try:
        if workers > 0 and len(jobs) > 1:
            ctx = mp.get_context("spawn")  # fork after torch/OpenMP initialisation can deadlock
            with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
                for key, frames, reason in pool.imap_unordered(_extract_job, jobs, chunksize=1):
                    _collect(w, report, key, frames, reason)
                    bar.update(1)
        else:
            for job in jobs:
                _collect(w, report, *_extract_job(job))
                bar.update(1)
    finally:
        bar.close()
        w.close()
    report.done = len(w.items)
    report.skipped = dict(w.skipped)
    report.seconds = time.monotonic() - t0
    if report.skipped:
        log.warning("feature cache %s: skipped %d files %s", root, len(report.skipped), report.skipped_by_reason())
    log.info("feature cache %s: %d items (%d new) in %.1f s", root, report.done, report.new, report.seconds)
    return report


def _collect(w: _Writer, report: CacheReport, key: str, frames: np.ndarray | None, reason: str) -> None:
    if frames is None:
        w.skipped[key] = reason
        log.debug("skipped %s: %s", key, reason)
    else:
        w.add(key, frames)
        report.new += 1
