"""The only module that wires the stages together; reading it explains the system.

    source -> repair -> ring buffer -> incremental log-mel -> sliding window / carried state -> model runner
           -> smoother (skipped on silence) -> GenreUpdate -> publishers

:class:`Engine` is the live path: many named streams, each with its own ring buffer, incremental front end,
frame window (or recurrent state) and smoother; ``step()`` runs every hop that is complete in every stream,
with the windows of all streams batched into one forward pass. :class:`FileTagger` is the file path: the
same incremental front end over one input pushed block by block, its windows run in batches as soon as they
are complete (through the model's shared-work ``forward_windows``; a stateful model steps a batch of hops in
one ``step_many`` pass), its summary accumulated online, so its memory does not grow with the file's length.
:func:`tag_audio` is FileTagger on a whole signal. Both paths produce the same raw probabilities for the
same audio (tests/test_pipeline.py).

Bad samples never poison a stream: before the front end, non-finite samples are zeroed and samples beyond
+-``CLIP_LEVEL`` clipped, and counted (``repaired``). A hop whose level is below ``SILENCE_DB`` still gets an
update (``extra["silence"] = True``) but does not feed the smoother, so the genre state does not drift
during silence.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, StreamtagError
from .events import GenreUpdate, Summary, now_iso
from .frontend import IncrementalLogMel, PassMap, push_many
from .registry import Bundle
from .ring_buffer import RingBuffer
from .runner import ModelRunner
from .smoothing import BatchSmoother, Smoother, SmoothingConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "Engine", "StreamState", "Timeline", "FileTagger", "tag_audio", "hop_frames_for", "repair", "window_ends",
    "MIN_HOP_SECONDS", "CLIP_LEVEL", "SILENCE_DB",
]

log = logging.getLogger(__name__)

MIN_HOP_SECONDS = 0.25  # s, the smallest --hop accepted
RING_SECONDS = 10.0  # s of unprocessed audio a stream's ring holds; beyond it the oldest is dropped (bounds latency)
CLIP_LEVEL = 4.0  # full scale = 1.0; samples beyond +-4 (+12 dBFS, far above any decoder's inter-sample overs) are clipped
SILENCE_DB = -60.0  # dBFS RMS over a hop's frames; quieter hops are "silence" and do not move the smoothed genres
FILE_BATCH = 32  # windows (or hops of a stateful model) the file path runs per batch
FILE_BLOCK_SECONDS = 20.0  # s: FileTagger.push splits larger blocks so the front end's temporaries stay bounded


def hop_frames_for(bundle: Bundle, hop_seconds: float | None) -> int:
    """Frames per hop for ``hop_seconds`` (bundle default when None); validates the range."""
    hop = bundle.hop_seconds if hop_seconds is None else float(hop_seconds)
    if not math.isfinite(hop) or hop < MIN_HOP_SECONDS:
        raise ConfigError(f"--hop {hop} is too small; use at least {MIN_HOP_SECONDS} s")
    return bundle.frontend.frames_for(hop)


def repair(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """(N,) float32 samples with non-finite values zeroed and magnitudes clipped to ``CLIP_LEVEL``, and how many
    samples that changed. Returns the input itself (no copy) when nothing needed repair."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    bad = ~np.isfinite(x)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        x = np.where(bad, np.float32(0.0), x)  # a copy: the caller's array is never modified
    loud = np.abs(x) > CLIP_LEVEL
    n_loud = int(np.count_nonzero(loud))
    if n_loud:
        x = np.clip(x, -CLIP_LEVEL, CLIP_LEVEL)
    return x, n_bad + n_loud


def _label_sets(bundle: Bundle, all_tags: bool) -> list[int]:
    return list(range(len(bundle.labels))) if all_tags else bundle.genre_indices()


def _power_db(mean_square: float) -> float:
    """dBFS RMS of a mean square (-200 for digital silence)."""
    return 10.0 * math.log10(mean_square) if mean_square > 1e-20 else -200.0


def _hop_level(power: np.ndarray, power_offset: int, end: int, hop_frames: int) -> float:
    """dBFS RMS of frames [end - hop_frames, end) (absolute indices) of a per-frame mean-square array."""
    a, b = max(0, end - hop_frames) - power_offset, end - power_offset
    seg = power[max(0, a) : max(0, b)]
    return _power_db(float(seg.sum()) / seg.size) if seg.size else -200.0  # == seg.mean(), bit for bit


def _update(
    bundle: Bundle, shown: list[int], smoother: Smoother, raw: np.ndarray, dt: float, *, stream: str, t: float,
    silent: bool, top_k: int | None = None, **fields: object,
) -> GenreUpdate:
    """One hop's update for the shown labels. The smoother folds in ``raw`` (L,) unless the hop is silent (or,
    defensively, non-finite); ``top`` is the smoother's ranking (held top genre first) with the smoothed
    probabilities, so ``top[0]`` is always the smoothed top genre and its smoothed probability."""
    labels = bundle.labels
    feed = not silent and bool(np.all(np.isfinite(raw)))
    if feed:
        smoothed = smoother.update(raw, dt)
    elif smoother.probs is not None:
        smoothed = smoother.probs
    else:  # silence from the very start: nothing smoothed yet, show the raw answer without keeping it
        smoothed = np.nan_to_num(np.asarray(raw, dtype=np.float64))
    if smoother.probs is not None:
        order = smoother.ranking(shown)[:top_k]
    else:
        order = sorted(shown, key=lambda i: -smoothed[i])[:top_k]
    return GenreUpdate(
        stream=stream,
        t=t,
        top=[(labels[i], float(smoothed[i])) for i in order],
        probs={labels[i]: float(smoothed[i]) for i in shown},
        raw={labels[i]: float(raw[i]) for i in shown},
        model=bundle.name,
        **fields,  # type: ignore[arg-type]
    )


@dataclass
class StreamState:
    """One live stream's stages and facts (its smoothing state is row ``row`` of the engine's BatchSmoother)."""

    name: str
    ring: RingBuffer
    mel: IncrementalLogMel
    row: int  # this stream's row of Engine.smoother
    title: str | None = None
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # (F, n_mels) kept
    frames_offset: int = 0  # absolute index of frames[0]
    power: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F',) mean square of each kept frame
    power_offset: int = 0  # absolute index of power[0]
    next_end: int = 0  # absolute frame index (exclusive) at which the next window ends
    latest: GenreUpdate | None = None
    # (samples written so far, wall time) of the blocks not yet answered: push() appends, the engine drops the
    # ones before the hop it answers (bounded: a stream whose engine falls 4096 blocks behind forgets the oldest)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=4096))
    updates: int = 0
    skipped: int = 0  # samples the ring dropped (overruns): added to t so it stays the stream's real time
    repaired: int = 0  # samples repaired before the front end (non-finite zeroed, beyond CLIP_LEVEL clipped)
    unread: list = field(default_factory=list)  # blocks read from the ring that do not complete a hop yet
    unread_samples: int = 0

    @property
    def overruns(self) -> int:
        return self.ring.overruns

    @property
    def level_db(self) -> float:
        """dBFS RMS of the newest frame (-inf before the first)."""
        return _power_db(float(self.power[-1])) if self.power.size else -math.inf

    @property
    def t(self) -> float:
        """Seconds of audio received so far."""
        return self.ring.written / self.mel.spec.sample_rate


class Engine:
    """Live tagging of many named streams with one model; see module docstring.

    ``step`` does each stage once for all the streams that have new audio, not once per stream: one log-mel
    pass over every stream's new frames (:func:`~streamtag.frontend.push_many`), one model batch per round of
    hops, one smoother step over the rows of the streams that completed a hop, and the updates' label dicts
    built from whole arrays. What is left per stream is reading its ring and its frame bookkeeping.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        hop_seconds: float | None = None,
        all_tags: bool = False,
        smoothing: SmoothingConfig | None = None,
        runner: ModelRunner | None = None,
        ring_seconds: float = RING_SECONDS,
        precision: str = "auto",
    ) -> None:
        self.bundle = bundle
        self.runner = runner or ModelRunner(bundle, device, precision=precision)
        self.spec = bundle.frontend
        self.sample_rate = self.spec.sample_rate
        self.hop_frames = hop_frames_for(bundle, hop_seconds)
        self.hop_seconds = self.hop_frames * self.spec.frame_seconds
        self.window_frames = bundle.window_frames
        self.smoothing = smoothing or SmoothingConfig()
        self.shown = _label_sets(bundle, all_tags)
        self.labels_shown = [bundle.labels[i] for i in self.shown]
        self.ring_samples = int(ring_seconds * self.sample_rate)
        self.streams: dict[str, StreamState] = {}
        # the smoothing state of every stream, one row each; rows of removed streams are reused (reset)
        self.smoother = BatchSmoother(self.smoothing, candidates=self.shown, genres=bundle.genre_indices(), streams=0)
        self._free_rows: list[int] = []
        self._shown_idx = np.asarray(self.shown, dtype=np.int64)
        self._labels_arr = np.asarray(self.labels_shown, dtype=object)  # (K,) for gathering ranked labels
        self._shown_pos = np.full(len(bundle.labels), -1, dtype=np.int64)  # label index -> position in shown
        self._shown_pos[self._shown_idx] = np.arange(len(self.shown))
        # guards self.streams membership and the smoother's rows (not the ring buffers: they lock)
        self._lock = threading.Lock()
        self.last_step_ms = 0.0
        # how the front end's passes run: a step's new frames in at least `front_end_passes` passes through
        # `front_end_map` (map, or the live runner's worker threads; see frontend.push_many)
        self.front_end_passes = 1
        self.front_end_map: PassMap = map

    def use_front_end_pool(self, pool: Executor | None, passes: int = 1) -> None:
        """Run a step's log-mel in ``passes`` passes at once: one on the stepping thread, the others on ``pool``
        (the caller's threads; numpy's FFT and matmul release the GIL). None: every pass on the stepping thread."""
        if pool is None or passes <= 1:
            self.front_end_map, self.front_end_passes = map, 1
        else:
            self.front_end_map, self.front_end_passes = partial(_map_on, pool), int(passes)

    def backlog(self, name: str) -> float:
        """Seconds of stream ``name``'s audio waiting for :meth:`step` (0.0 for a stream not in the engine)."""
        st = self.streams.get(name)
        return len(st.ring) / self.sample_rate if st is not None else 0.0

    # -- stream membership ---------------------------------------------------------------------------
    def add_stream(self, name: str, title: str | None = None) -> StreamState:
        with self._lock:
            if name in self.streams:
                raise ConfigError(f"stream {name!r} already exists; pick another name")
            row = self._free_rows.pop() if self._free_rows else self.smoother.add_stream()
            self.smoother.reset([row])
            st = StreamState(
                name=name,
                ring=RingBuffer(self.ring_samples),
                mel=IncrementalLogMel(self.spec),
                row=row,
                title=title,
                frames=np.zeros((0, self.spec.n_mels), dtype=np.float32),
                next_end=self.window_frames if not self.runner.stateful else self.hop_frames,
            )
            self.streams[name] = st
            return st

    def remove_stream(self, name: str) -> None:
        with self._lock:
            st = self.streams.pop(name, None)
            if st is None:
                raise ConfigError(f"unknown stream {name!r}; streams: {', '.join(self.streams) or '(none)'}")
            self._free_rows.append(st.row)
        self.runner.reset_state(name)

    def set_title(self, name: str, title: str | None) -> None:
        self.streams[name].title = title

    # -- producer side -------------------------------------------------------------------------------
    def push(self, name: str, samples: np.ndarray) -> None:
        """Copy mono float32 samples at ``sample_rate`` into the stream's ring buffer (thread-safe)."""
        st = self.streams.get(name)
        if st is None:
            raise ConfigError(f"unknown stream {name!r}; add it first")
        st.ring.write(samples)
        st.arrivals.append((st.ring.written, time.monotonic()))

    # -- consumer side -------------------------------------------------------------------------------
    @staticmethod
    def _arrival_of(st: StreamState, sample_index: int) -> float | None:
        # Wall time at which the block holding ``sample_index`` arrived. The hops of a stream are answered in
        # order, so the blocks before this one are not needed again: drop them (push() appends from other
        # threads; appends and popleft are atomic, and only this thread pops).
        arrivals = st.arrivals
        while arrivals:
            written, at = arrivals[0]
            if written >= sample_index:
                return float(at)
            arrivals.popleft()
        return None

    def _ingest(self, streams: list[StreamState]) -> list[StreamState]:
        """Read every stream's new audio (its ring is drained every step, as before); once a stream's unread audio
        completes its next hop, repair it and run it through the log-mel, all such streams in one batch. Returns
        those streams. The front end's per-stream bookkeeping so runs once per hop, not once per pushed block, and
        a hop is answered in the step that completed it, as when every block went through the front end at once."""
        got: list[StreamState] = []
        blocks: list[np.ndarray] = []
        for st in streams:
            if len(st.ring):
                st.skipped = st.ring.overrun_samples  # the audio lost before what we read now
                x = st.ring.read()
                st.unread.append(x)
                st.unread_samples += x.shape[0]
                if st.unread_samples >= self.spec.samples_for_frames(st.next_end) - st.mel.samples_seen:
                    got.append(st)
                    blocks.append(np.concatenate(st.unread) if len(st.unread) > 1 else st.unread[0])
                    st.unread, st.unread_samples = [], 0
        if not got:
            return got
        flat = np.concatenate(blocks)  # (N,) the audio of every stream with a hop to run
        if not (flat.min() >= -CLIP_LEVEL and flat.max() <= CLIP_LEVEL):  # NaN fails both: repair the streams hit
            for i, st in enumerate(got):
                x, n = repair(blocks[i])
                if n:
                    if not st.repaired:
                        log.warning("%s: repaired %d bad samples (non-finite or beyond +-%g)", st.name, n, CLIP_LEVEL)
                    st.repaired += n
                blocks[i] = x
        mels = [st.mel for st in got]
        new = push_many(mels, blocks, passes=self.front_end_passes, map_fn=self.front_end_map)
        for st, (frames, power) in zip(got, new):
            if frames.shape[0]:
                st.frames = np.concatenate([st.frames, frames]) if st.frames.size else frames.copy()
                st.power = np.concatenate([st.power, power]) if st.power.size else power.copy()
        return got

    def _ready_ends(self, st: StreamState) -> list[int]:
        total = st.frames_offset + st.frames.shape[0]
        return list(range(st.next_end, total + 1, self.hop_frames))

    def step(self) -> list[GenreUpdate]:
        """Run every complete hop of every stream; returns the updates in time order per stream."""
        t0 = time.perf_counter()
        with self._lock:
            streams = list(self.streams.values())
        streams = self._ingest(streams)  # only a stream with new frames can have a hop to run
        jobs: list[tuple[StreamState, int]] = []  # (stream, window end frame), a stream's hops in order
        for st in streams:
            jobs.extend((st, e) for e in self._ready_ends(st))
        if not jobs:
            return []
        if self.runner.stateful:
            probs = self._run_stateful(jobs)
        else:
            windows = np.stack(
                [st.frames[e - self.window_frames - st.frames_offset : e - st.frames_offset] for st, e in jobs]
            )  # (B, window_frames, n_mels)
            probs = self.runner.predict(windows)
        self.last_step_ms = (time.perf_counter() - t0) * 1000.0
        keep = []
        for j, (st, end) in enumerate(jobs):
            if end <= self.runner.lag_frames:  # the model has not seen any of the stream's music yet
                st.next_end = end + self.hop_frames
            else:
                keep.append(j)
        updates = self._emit([jobs[j] for j in keep], probs[keep])
        for st in streams:
            self._trim(st)
        return updates

    def _run_stateful(self, jobs: list[tuple[StreamState, int]]) -> np.ndarray:
        # Hops of one stream must run in order; round r batches the r-th pending hop of every stream.
        probs = np.zeros((len(jobs), len(self.bundle.labels)), dtype=np.float32)
        for idx in _rounds(jobs):
            names = [jobs[j][0].name for j in idx]
            chunks = []
            for j in idx:
                st, end = jobs[j]
                start = end - self.hop_frames
                chunks.append(st.frames[start - st.frames_offset : end - st.frames_offset])
            probs[idx] = self.runner.step(names, np.stack(chunks))  # (b, hop_frames, n_mels)
        return probs

    def _emit(self, jobs: list[tuple[StreamState, int]], raw: np.ndarray) -> list[GenreUpdate]:
        """The updates of ``jobs`` (a stream's hops in order) with their raw outputs ``raw`` (B, L): one smoother
        step per round of hops over the rows of the streams in it, the rankings and label dicts from arrays."""
        if not jobs:
            return []
        spec, lag = self.spec, self.runner.lag_frames
        n = len(jobs)
        now, wall = time.monotonic(), now_iso()
        t = np.zeros(n)
        silent = np.zeros(n, dtype=bool)
        latency: list[float | None] = []
        levels: list[float] = []
        for j, (st, end) in enumerate(jobs):
            end_sample = spec.samples_for_frames(end) + st.skipped  # position in the stream as received
            # the time the answer describes: a lagging model's answer is about the music lag_frames back
            t[j] = (end_sample - lag * spec.hop_length) / spec.sample_rate
            arrival = self._arrival_of(st, end_sample)
            latency.append(round((now - arrival) * 1000.0, 1) if arrival is not None else None)
            level = _hop_level(st.power, st.power_offset, end - lag, self.hop_frames)  # the hop the answer describes
            levels.append(round(level, 1))
            silent[j] = level < SILENCE_DB
        feed = ~silent & np.all(np.isfinite(raw), axis=1)  # silent (or, defensively, non-finite) hops are not fed
        smoothed = np.zeros(raw.shape)  # (B, L) float64
        started = np.zeros(n, dtype=bool)
        top = np.full(n, -1, dtype=np.int64)
        with self._lock:  # rows are stable while we hold it (add/remove_stream wait)
            sm = self.smoother
            for idx in _rounds(jobs):
                live = [j for j in idx if self.streams.get(jobs[j][0].name) is jobs[j][0]]  # not removed meanwhile
                rows = np.array([jobs[j][0].row for j in live], dtype=np.int64)
                if live:
                    sm.update(raw[live], self.hop_seconds, feed[live], rows=rows)
                    started[live] = sm.started[rows]
                    top[live] = sm.top[rows]
                    smoothed[live] = sm.probs[rows]
        # before the first fed hop (silence from the very start) show the raw answer without keeping it
        smoothed = np.where(started[:, None], smoothed, np.nan_to_num(raw.astype(np.float64)))
        ranked = _rankings(smoothed[:, self._shown_idx], np.where(started, self._shown_pos[np.maximum(top, 0)], -1))
        shown_vals = smoothed[:, self._shown_idx].tolist()
        shown_raw = raw[:, self._shown_idx].tolist()
        ranked_labels = self._labels_arr[ranked].tolist()
        ranked_vals = smoothed[np.arange(n)[:, None], self._shown_idx[ranked]].tolist()
        labels, model = self.labels_shown, self.bundle.name
        updates = []
        for j, (st, end) in enumerate(jobs):
            upd = GenreUpdate(
                stream=st.name,
                t=float(t[j]),
                top=list(zip(ranked_labels[j], ranked_vals[j])),
                probs=dict(zip(labels, shown_vals[j])),
                raw=dict(zip(labels, shown_raw[j])),
                model=model,
                wall=wall,
                title=st.title,
                extra={
                    "latency_ms": latency[j],
                    "overruns": st.overruns,
                    "level_db": levels[j],
                    "silence": bool(silent[j]),
                    "repaired": st.repaired,
                },
            )
            st.next_end = end + self.hop_frames
            st.latest = upd
            st.updates += 1
            updates.append(upd)
        return updates

    def _trim(self, st: StreamState) -> None:
        # Keep only the frames the next window needs, and the levels of the hop its answer describes.
        need_from = st.next_end - (self.hop_frames if self.runner.stateful else self.window_frames)
        drop = need_from - st.frames_offset
        if drop > 0:
            st.frames = st.frames[drop:].copy()  # a copy: a view would keep the whole old array alive
            st.frames_offset += drop
        # (before a window model's first window, fewer frames than that may have arrived: drop only those, or the
        # offset would run ahead of the frames and every later hop's level would be read from the wrong frames)
        drop = min(st.next_end - self.runner.lag_frames - self.hop_frames - st.power_offset, st.power.shape[0])
        if drop > 0:
            st.power = st.power[drop:].copy()
            st.power_offset += drop


def _map_on(pool: Executor, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(i) for i in items]``: the first on this thread, the others on ``pool`` meanwhile (in order)."""
    if len(items) < 2:
        return [fn(i) for i in items]
    try:
        futures = [pool.submit(fn, i) for i in items[1:]]
    except RuntimeError:  # the pool was shut down (a stop that gave up waiting for a slow step): run them here
        return [fn(i) for i in items]
    return [fn(items[0]), *(f.result() for f in futures)]


def _rounds(jobs: list[tuple[StreamState, int]]) -> list[list[int]]:
    """Job indices by round: round r holds the r-th job of every stream that has one (a stream's hops in order)."""
    by_stream: dict[str, list[int]] = {}
    for j, (st, _) in enumerate(jobs):
        by_stream.setdefault(st.name, []).append(j)
    rounds = max(len(v) for v in by_stream.values())
    return [[v[r] for v in by_stream.values() if r < len(v)] for r in range(rounds)]


def _rankings(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(B, K) positions ranking each row of ``values`` (B, K) highest first (ties: lower position first, as a
    stable sort by -value), with position ``first[b]`` (B,) moved to the front where it is >= 0: the smoother's
    held top, which leads the ranking even when another bar is higher (``BatchSmoother.ranking``)."""
    order = np.argsort(-values, axis=1, kind="stable")  # (B, K)
    rows = np.flatnonzero(first >= 0)
    if rows.size:
        sub = order[rows]  # (b, K)
        is_first = sub == first[rows, None]
        # the held top first, then the others in their order
        moved = np.argsort(~is_first, axis=1, kind="stable")  # (b, K): True (the top) sorts first
        order[rows] = np.take_along_axis(sub, moved, axis=1)
    return order


# -- files: streamed block by block ---------------------------------------------------------------------
@dataclass
class Timeline:
    """Result of tagging one whole input."""

    summary: Summary
    updates: list[GenreUpdate]
    raw: np.ndarray  # (n_windows, L) raw probabilities of all labels


def window_ends(n_frames: int, window_frames: int, hop_frames: int) -> list[int]:
    """End frames (exclusive) of the sliding windows over ``n_frames`` frames.

    Inputs shorter than one window get one window of everything they have.
    """
    if n_frames <= 0:
        return []
    if n_frames < window_frames:
        return [n_frames]
    return list(range(window_frames, n_frames + 1, hop_frames))


class FileTagger:
    """One input tagged block by block: ``push`` audio as it decodes, ``finish`` at its end, ``summary`` any time.

    The front end is incremental (equal to the offline log-mel); windows run ``FILE_BATCH`` at a time through
    the model's shared-work ``forward_windows`` as soon as they are complete, a stateful model's hops
    ``FILE_BATCH`` at a time in one ``step_many`` pass; the summary is a running sum. Memory is bounded by the
    batch, not by the input's length. Updates come back from ``push``/``finish`` as their windows complete;
    ``summary(partial=True)`` describes what was tagged so far (Ctrl-C during a long file); ``seconds`` is the
    audio consumed so far and ``repaired`` the samples that had to be repaired. Inputs shorter than one window
    get one window of all they have.
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        name: str,
        hop_seconds: float | None = None,
        all_tags: bool = False,
        top_k: int = 5,
        smoothing: SmoothingConfig | None = None,
    ) -> None:
        self.runner, self.name, self.top_k = runner, name, top_k
        self.bundle = bundle = runner.bundle
        self.spec = spec = bundle.frontend
        self.hop_frames = hop_frames_for(bundle, hop_seconds)  # validates now
        self.hop_seconds = self.hop_frames * spec.frame_seconds
        self.window = bundle.window_frames
        self.lag = runner.lag_frames
        self.shown = _label_sets(bundle, all_tags)
        self._smoother = Smoother(smoothing or SmoothingConfig(), candidates=self.shown, genres=bundle.genre_indices())
        self._mel = IncrementalLogMel(spec)
        self._frames = np.zeros((0, spec.n_mels), dtype=np.float32)  # (F, n_mels) kept, from _offset
        self._offset = 0
        self._power = np.zeros(0)  # (F',) mean square per frame, from _power_offset
        self._power_offset = 0
        self._next_end = self.hop_frames if runner.stateful else self.window
        self._state = runner.init_state(1) if runner.stateful else None
        self._consumed = 0  # stateful: frames the state has seen
        self._held: tuple[int, np.ndarray] | None = None  # stateful: last hop answered before the lag was passed
        self._sum = np.zeros(len(bundle.labels))  # running sums of raw probabilities: non-silent windows
        self._sum_all = np.zeros(len(bundle.labels))  # ... and all windows
        self.windows = 0
        self.silent_windows = 0
        self.samples = 0
        self.repaired = 0  # samples that had to be repaired (non-finite zeroed, out of range clipped)
        self._finished = False
        self._raw: list[np.ndarray] | None = None  # tag_audio collects every window's raw output here

    @property
    def seconds(self) -> float:
        return self.samples / self.spec.sample_rate

    # -- input -----------------------------------------------------------------------------------------
    def push(self, samples: np.ndarray) -> list[GenreUpdate]:
        """Feed the next (N,) mono float32 samples at the bundle's rate; returns the updates they complete."""
        if self._finished:
            raise StreamtagError(f"{self.name}: push after finish")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        block = max(1, int(FILE_BLOCK_SECONDS * self.spec.sample_rate))
        updates: list[GenreUpdate] = []
        for i in range(0, x.shape[0], block):
            part, n = repair(x[i : i + block])
            self.repaired += n
            self.samples += part.shape[0]
            frames, power = self._mel.push_with_power(part)
            if frames.shape[0]:
                self._frames = np.concatenate([self._frames, frames]) if self._frames.size else frames
                self._power = np.concatenate([self._power, power]) if self._power.size else power
            updates.extend(self._run(final=False))
        return updates

    def finish(self) -> list[GenreUpdate]:
        """The input ended: run what is left (one window of all for inputs shorter than one window)."""
        if self._finished:
            return []
        total = self._offset + self._frames.shape[0]
        if total == 0:
            raise StreamtagError(f"{self.name}: too short to tag ({self.seconds:.3f} s of audio)")
        updates = self._run(final=True)
        if not self.runner.stateful and self.windows == 0:  # shorter than one window: one window of all
            raw = self.runner.predict_windows(self._frames, [total], self.window)
            updates.append(self._emit(total, raw[0]))
        elif self.runner.stateful and self.windows == 0:
            if self._consumed < total and self._consumed == 0:  # shorter than one hop: one step of all
                probs, self._state = self.runner.step_many(self._frames[None], self._state_(), [total])
                self._held = (total, probs[0, 0])
            assert self._held is not None
            end, raw = self._held  # nothing passed the lag: the last answer, at its own end (or lag_frames back)
            updates.append(self._emit(end - self.lag if end > self.lag else end, raw))
        self._finished = True
        if self.repaired:
            log.warning("%s: repaired %d bad samples (non-finite or beyond +-%g)", self.name, self.repaired,
                        CLIP_LEVEL)
        return updates

    # -- batches ----------------------------------------------------------------------------------------
    def _state_(self) -> torch.Tensor:
        assert self._state is not None
        return self._state

    def _ready(self) -> list[int]:
        total = self._offset + self._frames.shape[0]
        return list(range(self._next_end, total + 1, self.hop_frames))

    def _run(self, *, final: bool) -> list[GenreUpdate]:
        updates: list[GenreUpdate] = []
        ends = self._ready()
        while ends and (len(ends) >= FILE_BATCH or final):
            batch, ends = ends[:FILE_BATCH], ends[FILE_BATCH:]
            if self.runner.stateful:
                a = self._consumed - self._offset
                rel = [e - self._consumed for e in batch]
                probs, self._state = self.runner.step_many(
                    self._frames[None, a : batch[-1] - self._offset], self._state_(), rel)  # (1, n, L)
                raws = probs[0]
                self._consumed = batch[-1]
            else:
                a = batch[0] - self.window - self._offset
                rel = [e - batch[0] + self.window for e in batch]
                raws = self.runner.predict_windows(
                    self._frames[a : batch[-1] - self._offset], rel, self.window)  # (n, L)
            for e, raw in zip(batch, raws):
                if e <= self.lag:  # the model has not heard any of the music yet (as the Engine does)
                    self._held = (e, raw)
                    continue
                updates.append(self._emit(e - self.lag, raw))
            self._next_end = batch[-1] + self.hop_frames
            self._trim()
        return updates

    def _trim(self) -> None:
        keep_from = self._consumed if self.runner.stateful else self._next_end - self.window
        drop = keep_from - self._offset
        if drop > 0:
            self._frames = self._frames[drop:].copy()
            self._offset += drop
        drop = self._next_end - self.lag - self.hop_frames - self._power_offset
        if drop > 0:
            self._power = self._power[drop:].copy()
            self._power_offset += drop

    def _emit(self, end: int, raw: np.ndarray) -> GenreUpdate:
        """The update of the window (or hop) whose described music ends at frame ``end``."""
        level = _hop_level(self._power, self._power_offset, end, self.hop_frames)
        silent = level < SILENCE_DB
        self.windows += 1
        self._sum_all += raw
        if silent:
            self.silent_windows += 1
        else:
            self._sum += raw
        if self._raw is not None:
            self._raw.append(np.asarray(raw, dtype=np.float32))
        return _update(
            self.bundle, self.shown, self._smoother, raw, self.hop_seconds, stream=self.name,
            t=self.spec.samples_for_frames(end) / self.spec.sample_rate, silent=silent, top_k=self.top_k,
            extra={"level_db": round(level, 1), "silence": silent},
        )

    # -- result -----------------------------------------------------------------------------------------
    def summary(self, *, partial: bool = False) -> Summary:
        """Mean raw probability of every label over the windows so far (silent windows left out unless all
        are silent). ``partial=False`` finishes the input first."""
        if not partial and not self._finished:
            self.finish()
        labels = self.bundle.labels
        counted = self.windows - self.silent_windows
        if counted:
            mean = self._sum / counted
        else:
            mean = self._sum_all / max(1, self.windows)
        ranked = sorted(self.shown, key=lambda i: -mean[i])
        return Summary(
            stream=self.name,
            duration=self.seconds,
            mean={labels[i]: float(mean[i]) for i in range(len(labels))},
            top=[(labels[i], float(mean[i])) for i in ranked[: self.top_k]],
            model=self.bundle.name,
            windows=self.windows,
            partial=partial,
            extra={"repaired_samples": self.repaired, "silent_windows": self.silent_windows},
        )


def tag_audio(
    samples: np.ndarray,
    runner: ModelRunner,
    *,
    name: str,
    hop_seconds: float | None = None,
    all_tags: bool = False,
    top_k: int = 5,
    smoothing: SmoothingConfig | None = None,
) -> Timeline:
    """Tag a whole mono signal at the bundle's sample rate: a :class:`FileTagger` pushed everything at once."""
    tagger = FileTagger(runner, name=name, hop_seconds=hop_seconds, all_tags=all_tags, top_k=top_k,
                        smoothing=smoothing)
    tagger._raw = []
    updates = tagger.push(samples)
    updates += tagger.finish()
    raw = np.stack(tagger._raw) if tagger._raw else np.zeros((0, len(runner.bundle.labels)), np.float32)
    return Timeline(summary=tagger.summary(), updates=updates, raw=raw)
