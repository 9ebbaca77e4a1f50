"""The only module that wires the stages together; reading it explains the system.

    source -> ring buffer -> incremental log-mel -> sliding window / carried state -> model runner
           -> smoother -> GenreUpdate -> publishers

:class:`Engine` is the live path: many named streams, each with its own ring buffer, incremental front end,
frame window (or recurrent state) and smoother; ``step()`` runs every hop that is complete in every stream,
with the windows of all streams batched into one forward pass. :func:`tag_audio` is the file path: the whole
signal's log-mel at once, every window batched. Both produce the same raw probabilities for the same audio
(tests/test_pipeline.py).
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, StreamtagError
from .events import GenreUpdate, Summary
from .frontend import IncrementalLogMel, logmel
from .registry import Bundle
from .ring_buffer import RingBuffer
from .runner import ModelRunner
from .smoothing import Smoother, SmoothingConfig

__all__ = ["Engine", "StreamState", "Timeline", "FileTagger", "tag_audio", "hop_frames_for", "MIN_HOP_SECONDS"]

log = logging.getLogger(__name__)

MIN_HOP_SECONDS = 0.25  # s, the smallest --hop accepted
RING_SECONDS = 10.0  # s of unprocessed audio a stream's ring holds; beyond it the oldest is dropped (bounds latency)
HISTORY_LEN = 120  # top-genre history entries kept per stream (for dashboards)


def hop_frames_for(bundle: Bundle, hop_seconds: float | None) -> int:
    """Frames per hop for ``hop_seconds`` (bundle default when None); validates the range."""
    hop = bundle.hop_seconds if hop_seconds is None else float(hop_seconds)
    if not math.isfinite(hop) or hop < MIN_HOP_SECONDS:
        raise ConfigError(f"--hop {hop} is too small; use at least {MIN_HOP_SECONDS} s")
    return bundle.frontend.frames_for(hop)


def _label_sets(bundle: Bundle, all_tags: bool) -> list[int]:
    return list(range(len(bundle.labels))) if all_tags else bundle.genre_indices()


def _level_db(x: np.ndarray) -> float:
    if x.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 1e-10 else -200.0


def _smoothed_update(
    bundle: Bundle, shown: list[int], smoother: Smoother, raw: np.ndarray, dt: float, *, stream: str, t: float,
    top_k: int | None = None, **fields: object,
) -> GenreUpdate:
    """Fold one hop's raw probabilities (L,) into ``smoother`` and build the update for the shown labels."""
    labels = bundle.labels
    smoothed = smoother.update(raw, dt)
    order = smoother.ranking(shown)[:top_k]
    return GenreUpdate(
        stream=stream,
        t=t,
        top=[(labels[i], float(smoothed[i])) for i in order],
        probs={labels[i]: float(smoothed[i]) for i in shown},
        raw={labels[i]: float(raw[i]) for i in shown},
        model=bundle.name,
        **fields,
    )


@dataclass
class StreamState:
    """One live stream's stages and facts."""

    name: str
    ring: RingBuffer
    mel: IncrementalLogMel
    smoother: Smoother
    title: str | None = None
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # (F, n_mels) kept
    frames_offset: int = 0  # absolute index of frames[0]
    next_end: int = 0  # absolute frame index (exclusive) at which the next window ends
    level_db: float = -math.inf
    latest: GenreUpdate | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))  # (t, top_label, p)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=4096))  # (samples written so far, wall time)
    updates: int = 0
    skipped: int = 0  # samples the ring dropped (overruns): added to t so it stays the stream's real time

    @property
    def overruns(self) -> int:
        return self.ring.overruns

    @property
    def t(self) -> float:
        """Seconds of audio received so far."""
        return self.ring.written / self.mel.spec.sample_rate


class Engine:
    """Live tagging of many named streams with one model; see module docstring."""

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
    ) -> None:
        self.bundle = bundle
        self.runner = runner or ModelRunner(bundle, device)
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
        self._lock = threading.Lock()  # guards self.streams membership, not the ring buffers (they lock)
        self.last_step_ms = 0.0

    # -- stream membership ---------------------------------------------------------------------------
    def add_stream(self, name: str, title: str | None = None) -> StreamState:
        with self._lock:
            if name in self.streams:
                raise ConfigError(f"stream {name!r} already exists; pick another name")
            st = StreamState(
                name=name,
                ring=RingBuffer(self.ring_samples),
                mel=IncrementalLogMel(self.spec),
                smoother=Smoother(self.smoothing, candidates=self.shown, genres=self.bundle.genre_indices()),
                title=title,
                frames=np.zeros((0, self.spec.n_mels), dtype=np.float32),
                next_end=self.window_frames if not self.runner.stateful else self.hop_frames,
            )
            self.streams[name] = st
            return st

    def remove_stream(self, name: str) -> None:
        with self._lock:
            if self.streams.pop(name, None) is None:
                raise ConfigError(f"unknown stream {name!r}; streams: {', '.join(self.streams) or '(none)'}")
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
    def _arrival_of(self, st: StreamState, sample_index: int) -> float | None:
        # Wall time at which the block holding ``sample_index`` arrived. push() appends from other threads:
        # list() copies the deque in one C call (no Python code runs in between), then search the snapshot.
        arrivals = list(st.arrivals)
        i = bisect.bisect_left(arrivals, (sample_index, -math.inf))
        return arrivals[i][1] if i < len(arrivals) else None

    def _ingest(self, st: StreamState) -> None:
        st.skipped = st.ring.overrun_samples  # the audio lost before what we read now
        x = st.ring.read()
        if x.size == 0:
            return
        st.level_db = _level_db(x)
        new = st.mel.push(x)  # (T_new, n_mels)
        if new.shape[0]:
            st.frames = np.concatenate([st.frames, new]) if st.frames.size else new

    def _ready_ends(self, st: StreamState) -> list[int]:
        total = st.frames_offset + st.frames.shape[0]
        ends = []
        end = st.next_end
        while end <= total:
            ends.append(end)
            end += self.hop_frames
        return ends

    def step(self) -> list[GenreUpdate]:
        """Run every complete hop of every stream; returns the updates in time order per stream."""
        t0 = time.perf_counter()
        with self._lock:
            streams = list(self.streams.values())
        jobs: list[tuple[StreamState, int]] = []  # (stream, window end frame)
        for st in streams:
            self._ingest(st)
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
        updates = []
        for (st, end), p in zip(jobs, probs):
            if end <= self.runner.lag_frames:  # the model has not seen any of the stream's music yet
                st.next_end = end + self.hop_frames
                continue
            updates.append(self._emit(st, end, p))
        for st in streams:
            self._trim(st)
        return updates

    def _run_stateful(self, jobs: list[tuple[StreamState, int]]) -> np.ndarray:
        # Hops of one stream must run in order; round r batches the r-th pending hop of every stream.
        probs = np.zeros((len(jobs), len(self.bundle.labels)), dtype=np.float32)
        by_stream: dict[str, list[int]] = {}
        for j, (st, _) in enumerate(jobs):
            by_stream.setdefault(st.name, []).append(j)
        rounds = max(len(v) for v in by_stream.values())
        for r in range(rounds):
            idx = [v[r] for v in by_stream.values() if r < len(v)]
            names = [jobs[j][0].name for j in idx]
            chunks = []
            for j in idx:
                st, end = jobs[j]
                start = end - self.hop_frames
                chunks.append(st.frames[start - st.frames_offset : end - st.frames_offset])
            probs[idx] = self.runner.step(names, np.stack(chunks))  # (b, hop_frames, n_mels)
        return probs

    def _emit(self, st: StreamState, end: int, raw: np.ndarray) -> GenreUpdate:
        spec = self.spec
        end_sample = spec.samples_for_frames(end) + st.skipped  # position in the stream as received
        # the time the answer describes: a lagging model's answer is about the music lag_frames back
        t = (end_sample - self.runner.lag_frames * spec.hop_length) / spec.sample_rate
        arrival = self._arrival_of(st, end_sample)
        latency_ms = (time.monotonic() - arrival) * 1000.0 if arrival is not None else None
        upd = _smoothed_update(
            self.bundle, self.shown, st.smoother, raw, self.hop_seconds, stream=st.name, t=t, title=st.title,
            extra={
                "latency_ms": round(latency_ms, 1) if latency_ms is not None else None,
                "overruns": st.overruns,
                "level_db": round(st.level_db, 1) if math.isfinite(st.level_db) else None,
            },
        )
        st.next_end = end + self.hop_frames
        st.latest = upd
        st.updates += 1
        top_label, top_p = upd.top[0]
        st.history.append((t, top_label, top_p))
        return upd

    def _trim(self, st: StreamState) -> None:
        # Keep only the frames the next window needs.
        need_from = st.next_end - (self.hop_frames if self.runner.stateful else self.window_frames)
        drop = need_from - st.frames_offset
        if drop > 0:
            st.frames = st.frames[drop:]
            st.frames_offset += drop


# -- files: the whole signal at once ---------------------------------------------------------------------
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
    """Tag a whole mono signal at the bundle's sample rate: every window batched through the model."""
    bundle = runner.bundle
    spec = bundle.frontend
    hop_frames = hop_frames_for(bundle, hop_seconds)
    frames = logmel(samples, spec)  # (T, n_mels)
    if frames.shape[0] == 0:
        raise StreamtagError(f"{name}: too short to tag ({samples.shape[0] / spec.sample_rate:.3f} s of audio)")
    if runner.stateful:
        ends = list(range(hop_frames, frames.shape[0] + 1, hop_frames)) or [frames.shape[0]]
        raw_list, start = [], 0
        for e in ends:
            raw_list.append(runner.step([name], frames[None, start:e])[0])
            start = e
        runner.reset_state(name)
        raw = np.stack(raw_list)
        lag = runner.lag_frames
        keep = [i for i, e in enumerate(ends) if e > lag] or [len(ends) - 1]  # as the Engine emits
        raw, ends = raw[keep], [ends[i] - lag if ends[i] > lag else ends[i] for i in keep]  # described times
    else:
        ends = window_ends(frames.shape[0], bundle.window_frames, hop_frames)
        raw = runner.predict_windows(frames, ends, bundle.window_frames)  # (n_windows, L)
    shown = _label_sets(bundle, all_tags)
    labels = bundle.labels
    smoother = Smoother(smoothing or SmoothingConfig(), candidates=shown, genres=bundle.genre_indices())
    hop_s = hop_frames * spec.frame_seconds
    updates = [
        _smoothed_update(bundle, shown, smoother, r, hop_s, stream=name,
                         t=spec.samples_for_frames(e) / spec.sample_rate, top_k=top_k)
        for e, r in zip(ends, raw)
    ]
    mean = raw.mean(axis=0)
    ranked = sorted(shown, key=lambda i: -mean[i])
    summary = Summary(
        stream=name,
        duration=samples.shape[0] / spec.sample_rate,
        mean={labels[i]: float(mean[i]) for i in range(len(labels))},
        top=[(labels[i], float(mean[i])) for i in ranked[:top_k]],
        model=bundle.name,
        windows=len(ends),
    )
    return Timeline(summary=summary, updates=updates, raw=raw)


class FileTagger:
    """One input tagged block by block: ``push`` audio as it decodes, ``finish`` at its end, ``summary`` any time.

    ``summary(partial=True)`` describes what was tagged so far (Ctrl-C during a long file). Updates come back
    from ``push``/``finish`` as their windows complete; ``seconds`` is the audio consumed so far.
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
        self.runner, self.name = runner, name
        self._opts = {"hop_seconds": hop_seconds, "all_tags": all_tags, "top_k": top_k, "smoothing": smoothing}
        hop_frames_for(runner.bundle, hop_seconds)  # validate now
        self._blocks: list[np.ndarray] = []
        self.samples = 0
        self.repaired = 0  # samples that had to be repaired (non-finite zeroed, out of range clipped)
        self._timeline: Timeline | None = None

    @property
    def seconds(self) -> float:
        return self.samples / self.runner.bundle.frontend.sample_rate

    def push(self, samples: np.ndarray) -> list[GenreUpdate]:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._blocks.append(x)
        self.samples += x.shape[0]
        return []

    def finish(self) -> list[GenreUpdate]:
        x = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)
        self._timeline = tag_audio(x, self.runner, name=self.name, **self._opts)  # type: ignore[arg-type]
        return self._timeline.updates

    def summary(self, *, partial: bool = False) -> Summary:
        if self._timeline is None:
            self.finish()
        assert self._timeline is not None
        s = self._timeline.summary
        s.partial = partial
        return s
