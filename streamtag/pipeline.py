"""The only module that wires the stages together; reading it explains the system.

    source -> repair -> ring buffer -> incremental log-mel -> sliding window / carried state -> model runner
           -> smoother (skipped on silence) -> GenreUpdate -> publishers

:class:`Engine` is the live path: many named streams, each with its own ring buffer, incremental front end,
frame window (or recurrent state) and smoother; ``step()`` runs every hop that is complete in every stream,
with the windows of all streams batched into one forward pass. :class:`FileTagger` is the file path: the
same incremental front end over one input pushed block by block, its windows run in batches as soon as they
are complete (through the model's shared-work ``forward_windows``; a stateful model steps a batch of hops in
one ``step_many`` pass), its summary accumulated online, so its memory does not grow with the file's length.
:func:`tag_audio` is FileTagger on a whole signal. Both paths keep a stream's frames in one
:class:`FrameTrack` (frames and levels kept, the next hop's end, the model's lag, trimming) and make their
updates with one :class:`UpdateMaker` (smoothing, ranking, label dicts), so they produce the same raw
probabilities and updates for the same audio (tests/test_pipeline.py, tests/test_live.py).

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
from .frontend import FrontendSpec, IncrementalLogMel, PassMap, push_many
from .registry import Bundle
from .ring_buffer import RingBuffer
from .runner import ModelRunner
from .smoothing import BatchSmoother, SmoothingConfig, family_shares
from .taxonomy import bundle_taxonomy

if TYPE_CHECKING:
    import torch

__all__ = [
    "Engine", "StreamState", "FrameTrack", "UpdateMaker", "Timeline", "FileTagger", "tag_audio", "hop_frames_for",
    "repair", "window_ends",
    "MIN_HOP_SECONDS", "CLIP_LEVEL", "SILENCE_DB", "CATCH_UP_S",
]

log = logging.getLogger(__name__)

MIN_HOP_SECONDS = 0.25  # s, the smallest --hop accepted
RING_SECONDS = 10.0  # s of unprocessed audio a stream's ring holds; beyond it the oldest is dropped (bounds latency)
CLIP_LEVEL = 4.0  # full scale = 1.0; samples beyond +-4 (+12 dBFS, far above any decoder's inter-sample overs) are clipped
SILENCE_DB = -60.0  # dBFS RMS over a hop's frames; quieter hops are "silence" and do not move the smoothed genres
FILE_BATCH = 32  # windows (or hops of a stateful model) the file path runs per batch
# windows a live step runs per model call when its caller may stop it (Engine.step's ``stop``): musicnn-msd's 3 s
# windows cost ~2.8 GFLOP each, so 32 of them are ~0.5 s of this project's 2-core machine (128 were 3.7 s of SIGTERM)
STOP_BATCH = 32
FILE_BLOCK_SECONDS = 20.0  # s: FileTagger.push splits larger blocks so the front end's temporaries stay bounded
# a live stream's start-up (Engine.catch_up): for this long after the engine first reads its audio, a step that finds
# more than CATCH_UP_BEHIND_HOPS hops of it waiting runs only the newest hop. A process that starts hundreds of
# stations at once pays their connections, decoders and first model calls in its first seconds; near capacity the
# engine then drains that backlog with the few percent of the CPU it has spare (tens of seconds of late updates)
CATCH_UP_S = 15.0
CATCH_UP_BEHIND_HOPS = 2
CATCH_UP_LATE_S = 1.0  # s: ... and when its next answer's audio arrived this long ago (a burst that just came is not late)
CATCH_UP_HOLD_S = 5.0  # s: a stream that had to skip keeps catching up at least this much longer (its start-up goes on)


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


@dataclass
class FrameTrack:
    """One stream's frames on their way to the model: the per-stream bookkeeping, the same for :class:`Engine`
    (one per :class:`StreamState`) and :class:`FileTagger`.

    ``frames`` (F, n_mels) and ``power`` (F',) (each frame's mean square) are the frames still needed, from
    absolute frame indices ``frames_offset`` and ``power_offset``. ``next_end`` is the end frame (exclusive) of
    the next hop's window (window models) or chunk (stateful ones); :meth:`ready` lists every hop end the kept
    frames complete. An answer at ``end`` describes the music up to ``end - lag`` (a model whose front end looks
    ahead): its time and its level (:meth:`level_db`, the hop before that) are read there, and a hop with
    ``end <= lag`` is no answer yet (:meth:`heard`). :meth:`trim` drops what the next hop no longer needs.
    """

    spec: FrontendSpec
    hop: int  # frames per hop
    window: int  # frames per window (window models)
    stateful: bool
    lag: int  # frames between the newest input and the music an answer describes
    frames: np.ndarray
    power: np.ndarray
    frames_offset: int = 0
    power_offset: int = 0
    next_end: int = 0

    @classmethod
    def start(cls, spec: FrontendSpec, *, hop: int, window: int, stateful: bool, lag: int) -> FrameTrack:
        return cls(spec, hop, window, stateful, lag, frames=np.zeros((0, spec.n_mels), dtype=np.float32),
                   power=np.zeros(0), next_end=hop if stateful else window)

    @property
    def total(self) -> int:
        """Frames received so far."""
        return self.frames_offset + self.frames.shape[0]

    def add(self, frames: np.ndarray, power: np.ndarray) -> None:
        """Append new frames (n, n_mels) and their power (n,)."""
        if frames.shape[0]:
            # a copy when starting over: the caller's array may be a view of a larger one (push_many's batch)
            self.frames = np.concatenate([self.frames, frames]) if self.frames.size else frames.copy()
            self.power = np.concatenate([self.power, power]) if self.power.size else power.copy()

    def ready(self) -> list[int]:
        """End frames of the hops the kept frames complete, from ``next_end`` on."""
        return list(range(self.next_end, self.total + 1, self.hop))

    def span(self, start: int, end: int) -> np.ndarray:
        """Frames [start, end) (absolute indices) -> (end - start, n_mels)."""
        return self.frames[start - self.frames_offset : end - self.frames_offset]

    def heard(self, end: int) -> bool:
        """Whether an answer at ``end`` describes any of the stream's music (it passed the lag)."""
        return end > self.lag

    def level_db(self, described: int) -> float:
        """dBFS RMS of the hop whose music ends at frame ``described`` (an answer's ``end - lag``)."""
        return _hop_level(self.power, self.power_offset, described, self.hop)

    def seconds_at(self, described: int, skipped: int = 0) -> float:
        """The stream time of frame ``described``'s end, ``skipped`` samples (lost to overruns) included."""
        return (self.spec.samples_for_frames(described) + skipped) / self.spec.sample_rate

    def advance(self, end: int) -> None:
        """The hop ending at ``end`` ran: the next one ends a hop later."""
        self.next_end = end + self.hop

    def trim(self) -> None:
        """Keep only the frames the next hop reads (its window, or its chunk), and the power of the hop its
        answer describes."""
        need_from = self.next_end - (self.hop if self.stateful else self.window)
        drop = need_from - self.frames_offset
        if drop > 0:
            self.frames = self.frames[drop:].copy()  # a copy: a view would keep the whole old array alive
            self.frames_offset += drop
        # (before a window model's first window, fewer frames than that may have arrived: drop only those, or the
        # offset would run ahead of the frames and every later hop's level would be read from the wrong frames)
        drop = min(self.next_end - self.lag - self.hop - self.power_offset, self.power.shape[0])
        if drop > 0:
            self.power = self.power[drop:].copy()
            self.power_offset += drop


def _families(bundle: Bundle) -> tuple[list[str], list[list[int]]]:
    """The bundle's family names and each family's genre label indices (streamtag.taxonomy)."""
    return bundle_taxonomy(bundle).resolve(bundle.labels, bundle.genre_indices())


@dataclass
class Smoothed:
    """What :meth:`UpdateMaker.smooth` gives for a batch of B hops: the smoothed probabilities (B, L) float64,
    whether each row had started (B,), its headline genre (B,) and family (B,) (label / family indices, -1 before
    the first fed hop), and the families' shares (B, F)."""

    probs: np.ndarray
    started: np.ndarray
    top: np.ndarray
    family: np.ndarray
    shares: np.ndarray


class UpdateMaker:
    """How raw outputs become GenreUpdates, the same for :class:`Engine` and :class:`FileTagger`.

    ``smoother`` holds the smoothing state of every stream, one row each. :meth:`smooth` folds in a batch of
    hops, one smoother step per round of hops over the rows in it (a silent or non-finite hop is not fed: the
    state holds still); :meth:`build` makes the updates, ``top`` being the smoother's ranking (its held top
    genre first, with the smoothed probabilities) and the label dicts built from whole arrays. Before a row's
    first fed hop (silence from the very start) an update shows the raw answer without keeping it.
    """

    def __init__(self, bundle: Bundle, *, all_tags: bool, smoothing: SmoothingConfig, hop_seconds: float,
                 streams: int = 0) -> None:
        self.model = bundle.name
        self.hop_seconds = hop_seconds
        self.shown = _label_sets(bundle, all_tags)
        self.labels_shown = [bundle.labels[i] for i in self.shown]
        self.family_names, self.groups = _families(bundle)
        self.smoother = BatchSmoother(smoothing, candidates=self.shown, genres=bundle.genre_indices(),
                                      families=self.groups, streams=streams)
        self._shown_idx = np.asarray(self.shown, dtype=np.int64)
        self._labels_arr = np.asarray(self.labels_shown, dtype=object)  # (K,) for gathering ranked labels
        self._shown_pos = np.full(len(bundle.labels), -1, dtype=np.int64)  # label index -> position in shown
        self._shown_pos[self._shown_idx] = np.arange(len(self.shown))

    def smooth(self, raw: np.ndarray, silent: np.ndarray, rows: np.ndarray, rounds: list[list[int]],
               level_db: np.ndarray) -> Smoothed:
        """Fold in ``raw`` (B, L): hop j on smoother row ``rows[j]`` (-1: none, e.g. a stream removed meanwhile),
        round by round (``rounds``: hop indices, a row at most once per round), each hop weighed by its level
        ``level_db`` (B,) dBFS."""
        n = raw.shape[0]
        feed = ~silent & np.all(np.isfinite(raw), axis=1)
        out = Smoothed(probs=np.zeros(raw.shape), started=np.zeros(n, dtype=bool), top=np.full(n, -1, dtype=np.int64),
                       family=np.full(n, -1, dtype=np.int64), shares=np.zeros((n, len(self.family_names))))
        sm = self.smoother
        for idx in rounds:
            live = [j for j in idx if rows[j] >= 0]
            if live:
                r = rows[live]
                sm.update(raw[live], self.hop_seconds, feed[live], rows=r, level_db=level_db[live])
                out.started[live] = sm.started[r]
                out.top[live] = sm.top[r]
                out.family[live] = sm.family[r]
                out.shares[live] = sm.family_probs[r]
                out.probs[live] = sm.probs[r]
        return out

    def build(self, raw: np.ndarray, sm: Smoothed, *, streams: list[str], t: list[float], wall: str,
              titles: list[str | None], extras: list[dict], top_k: int | None = None) -> list[GenreUpdate]:
        """The updates of the hops :meth:`smooth` returned ``sm`` for."""
        n = raw.shape[0]
        smoothed, started, top = sm.probs, sm.started, sm.top
        smoothed = np.where(started[:, None], smoothed, np.nan_to_num(raw.astype(np.float64)))
        ranked = _rankings(smoothed[:, self._shown_idx], np.where(started, self._shown_pos[np.maximum(top, 0)], -1))
        ranked = ranked[:, :top_k]
        shown_vals = smoothed[:, self._shown_idx].tolist()
        shown_raw = raw[:, self._shown_idx].tolist()
        ranked_labels = self._labels_arr[ranked].tolist()
        ranked_vals = smoothed[np.arange(n)[:, None], self._shown_idx[ranked]].tolist()
        share_vals = sm.shares.tolist()
        labels, model, fam_names = self.labels_shown, self.model, self.family_names
        return [
            GenreUpdate(
                stream=streams[j],
                t=t[j],
                top=list(zip(ranked_labels[j], ranked_vals[j])),
                probs=dict(zip(labels, shown_vals[j])),
                raw=dict(zip(labels, shown_raw[j])),
                model=model,
                wall=wall,
                title=titles[j],
                family=fam_names[sm.family[j]] if started[j] else None,
                families=dict(zip(fam_names, share_vals[j])) if started[j] else {},
                extra=extras[j],
            )
            for j in range(n)
        ]


@dataclass
class StreamState:
    """One live stream's stages and facts (its smoothing state is row ``row`` of the engine's BatchSmoother)."""

    name: str
    ring: RingBuffer
    mel: IncrementalLogMel
    row: int  # this stream's row of Engine.smoother
    track: FrameTrack  # its frames and hop bookkeeping
    title: str | None = None
    latest: GenreUpdate | None = None
    # (samples written so far, wall time) of the blocks not yet answered: push() appends, the engine drops the
    # ones before the hop it answers (bounded: a stream whose engine falls 4096 blocks behind forgets the oldest)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=4096))
    updates: int = 0
    skipped: int = 0  # samples lost before what the engine reads (overruns, catch-up): added to t (real time)
    caught_up: int = 0  # samples skipped by the start-up catch-up (Engine.catch_up)
    # Engine.catch_up: its window's length (None: not asked; 0.0: over) and end (0.0: not started: the engine's
    # first read of its audio starts it)
    catch_up_s: float | None = None
    catch_up_until: float = 0.0
    repaired: int = 0  # samples repaired before the front end (non-finite zeroed, beyond CLIP_LEVEL clipped)
    unread: list = field(default_factory=list)  # blocks read from the ring that do not complete a hop yet
    unread_samples: int = 0

    @property
    def overruns(self) -> int:
        return self.ring.overruns

    @property
    def level_db(self) -> float:
        """dBFS RMS of the newest frame (-inf before the first)."""
        power = self.track.power
        return _power_db(float(power[-1])) if power.size else -math.inf

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
        self._updates = UpdateMaker(bundle, all_tags=all_tags, smoothing=self.smoothing, hop_seconds=self.hop_seconds)
        self.shown = self._updates.shown
        self.labels_shown = self._updates.labels_shown
        self.ring_samples = int(ring_seconds * self.sample_rate)
        self.streams: dict[str, StreamState] = {}
        # the smoothing state of every stream, one row each; rows of removed streams are reused (reset)
        self.smoother = self._updates.smoother
        self._free_rows: list[int] = []
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

    @property
    def first_answer_seconds(self) -> float:
        """Seconds of a new stream's audio before its first update: its first window (window models) or hop
        (stateful ones), plus the model's lag."""
        first = self.hop_frames if self.runner.stateful else self.window_frames
        return (first + self.runner.lag_frames) * self.spec.frame_seconds

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
                track=FrameTrack.start(self.spec, hop=self.hop_frames, window=self.window_frames,
                                       stateful=self.runner.stateful, lag=self.runner.lag_frames),
                title=title,
            )
            self.streams[name] = st
            return st

    def catch_up(self, name: str, seconds: float = CATCH_UP_S) -> None:
        """Stream ``name`` is live: in its first ``seconds`` (from the first step that reads its audio), audio the
        engine could not reach in time is skipped rather than answered late. A step that finds more than
        CATCH_UP_BEHIND_HOPS hops of it waiting, the next of them CATCH_UP_LATE_S late already, runs only the
        newest, and the stream's start-up lasts at least CATCH_UP_HOLD_S more (a machine still short of CPU keeps
        it current instead of letting it fall behind as soon as the window closes); the skipped samples count in
        ``t`` (as overruns' do) and in ``caught_up``. The live runner asks it
        for live sources only (radio, live HLS, microphones): a file's or a client's pushed audio is never
        skipped."""
        st = self.streams.get(name)
        if st is not None and seconds > 0 and st.catch_up_s is None:  # once per stream
            st.catch_up_s = float(seconds)

    def caught_up_seconds(self, name: str) -> float:
        """Seconds of stream ``name``'s audio skipped by its start-up catch-up (0.0 for an unknown stream)."""
        st = self.streams.get(name)
        return st.caught_up / self.sample_rate if st is not None else 0.0

    def warm_up(self) -> None:
        """Pay the first call's one-time costs now (:meth:`ModelRunner.warm_up`, and the log-mel's on a second of
        silence), touching no stream: the live runner does this before its first step."""
        push_many([IncrementalLogMel(self.spec)], [np.zeros(self.sample_rate, np.float32)],
                  passes=self.front_end_passes, map_fn=self.front_end_map)
        self.runner.warm_up(self.hop_frames if self.runner.stateful else self.window_frames)

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
    def push(self, name: str, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None:
        """Copy mono float32 samples at ``sample_rate`` into the stream's ring buffer (thread-safe).

        ``arrived``: when the audio reached the machine (``time.monotonic()``; default now), or ``(first, last)``:
        its bytes came in steadily between those times (a socket read once per pass). An update's ``latency_ms``
        counts from the arrival of the newest sample it used. Times later than now are taken as now.
        """
        st = self.streams.get(name)
        if st is None:
            raise ConfigError(f"unknown stream {name!r}; add it first")
        st.ring.write(samples)
        now = time.monotonic()
        if arrived is None:
            first = last = now
        elif isinstance(arrived, tuple):
            first, last = min(now, float(arrived[0])), min(now, float(arrived[1]))
        else:
            first = last = min(now, float(arrived))
        st.arrivals.append((st.ring.written, first, last, max(1, len(samples))))

    # -- consumer side -------------------------------------------------------------------------------
    @staticmethod
    def _arrival_of(st: StreamState, sample_index: int) -> float | None:
        # Wall time at which ``sample_index`` arrived: within its block, interpolated between the block's first
        # and last arrival. The hops of a stream are answered in order, so the blocks before this one are not
        # needed again: drop them (push() appends from other threads; appends and popleft are atomic, and only
        # this thread pops).
        arrivals = st.arrivals
        while arrivals:
            if arrivals[0][0] >= sample_index:
                return _arrival_within(arrivals[0], sample_index)
            arrivals.popleft()
        return None

    def _catch_up(self, st: StreamState, x: np.ndarray) -> np.ndarray:
        """A live stream in its start-up (:meth:`catch_up`): ``x`` (just read), or, when more than
        CATCH_UP_BEHIND_HOPS hops of its audio wait and its next answer would be CATCH_UP_LATE_S late already, only
        the newest samples that complete one answer (the unread blocks before ``x`` go too). A burst that has just
        arrived (a server's burst-on-connect) is not late: it is answered in full."""
        now = time.monotonic()
        if not st.catch_up_until:  # the first read of its audio starts the window
            st.catch_up_until = now + (st.catch_up_s or 0.0)
        if now >= st.catch_up_until:
            st.catch_up_s = 0.0
            return x
        hop = self.hop_frames * self.spec.hop_length
        needed = max(1, self.spec.samples_for_frames(st.track.next_end) - st.mel.samples_seen)  # its next answer
        waiting = st.unread_samples + x.shape[0]
        if waiting - needed < CATCH_UP_BEHIND_HOPS * hop:
            return x
        # the written-sample index that completes its next answer, and when that sample arrived
        arrived = self._arrival_at(st, st.ring.read_end - waiting + needed)
        if arrived is None or now - arrived < CATCH_UP_LATE_S:
            return x
        if needed > x.shape[0]:  # part of the next answer was read before
            x = np.concatenate([*st.unread, x])
        st.caught_up += waiting - needed
        st.catch_up_until = max(st.catch_up_until, now + CATCH_UP_HOLD_S)
        st.unread, st.unread_samples = [], 0
        log.debug("%s: %.2f s behind in its start-up; skipping %.2f s to its newest audio", st.name,
                  waiting / self.sample_rate, (waiting - needed) / self.sample_rate)
        return x[x.shape[0] - needed:]

    @staticmethod
    def _arrival_at(st: StreamState, sample_index: int) -> float | None:
        """:meth:`_arrival_of` without forgetting the blocks before ``sample_index``."""
        block = next((b for b in list(st.arrivals) if b[0] >= sample_index), None)  # a copy: push() appends meanwhile
        return None if block is None else _arrival_within(block, sample_index)

    def _ingest(self, streams: list[StreamState]) -> list[StreamState]:
        """Drain every stream's ring. A stream whose unread audio completes its next hop has that audio repaired
        and run through the log-mel, all such streams in one batch; returns those streams. So the front end runs
        once per hop, not once per pushed block, and a hop is answered in the step that completes it."""
        got: list[StreamState] = []
        blocks: list[np.ndarray] = []
        for st in streams:
            if len(st.ring):
                x = st.ring.read()
                if st.catch_up_s:
                    x = self._catch_up(st, x)
                st.skipped = st.ring.overrun_samples + st.caught_up  # the audio lost before what we read now
                st.unread.append(x)
                st.unread_samples += x.shape[0]
                if st.unread_samples >= self.spec.samples_for_frames(st.track.next_end) - st.mel.samples_seen:
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
            st.track.add(frames, power)
        return got

    def step(self, stop: threading.Event | None = None) -> list[GenreUpdate]:
        """Run every complete hop of every stream; returns the updates in time order per stream.

        ``stop``: the caller is stopping. It is looked at between the model calls of a step (a stateful model's
        rounds, a windowed model's batches of at most :data:`STOP_BATCH` windows), so that a step over a large backlog
        (an overloaded engine) ends within one such call once it is set; such a step returns no updates, and the
        hops it had read are lost (the engine is not meant to be stepped again)."""
        t0 = time.perf_counter()
        with self._lock:
            streams = list(self.streams.values())
        streams = self._ingest(streams)  # only a stream with new frames can have a hop to run
        jobs: list[tuple[StreamState, int]] = []  # (stream, window end frame), a stream's hops in order
        for st in streams:
            jobs.extend((st, e) for e in st.track.ready())
        if not jobs:
            return []
        if self.runner.stateful:
            got = self._run_stateful(jobs, stop)
        else:
            got = self._run_windows(jobs, stop)
        if got is None:  # stopped within the step
            return []
        probs = got
        self.last_step_ms = (time.perf_counter() - t0) * 1000.0
        keep = []
        for j, (st, end) in enumerate(jobs):
            if st.track.heard(end):
                keep.append(j)
            else:  # the model has not seen any of the stream's music yet
                st.track.advance(end)
        updates = self._emit([jobs[j] for j in keep], probs[keep])
        for st in streams:
            st.track.trim()
        return updates

    def _run_windows(self, jobs: list[tuple[StreamState, int]], stop: threading.Event | None) -> np.ndarray | None:
        batch = min(STOP_BATCH, self.runner.max_batch)  # a backlog only: a step at the stream rate has fewer windows
        if stop is None or len(jobs) <= batch:
            windows = np.stack([st.track.span(e - self.window_frames, e) for st, e in jobs])  # (B, window, n_mels)
            return self.runner.predict(windows)
        parts = []
        for i in range(0, len(jobs), batch):  # a backlog: batches, with a look at ``stop`` between them
            if stop.is_set():
                return None
            windows = np.stack([st.track.span(e - self.window_frames, e) for st, e in jobs[i : i + batch]])
            parts.append(self.runner.predict(windows))
        return np.concatenate(parts)

    def _run_stateful(self, jobs: list[tuple[StreamState, int]], stop: threading.Event | None = None) -> np.ndarray | None:
        # Hops of one stream must run in order; round r batches the r-th pending hop of every stream.
        probs = np.zeros((len(jobs), len(self.bundle.labels)), dtype=np.float32)
        for idx in _rounds(jobs):
            if stop is not None and stop.is_set():
                return None
            names = [jobs[j][0].name for j in idx]
            chunks = []
            for j in idx:
                st, end = jobs[j]
                chunks.append(st.track.span(end - self.hop_frames, end))
            probs[idx] = self.runner.step(names, np.stack(chunks))  # (b, hop_frames, n_mels)
        return probs

    def _emit(self, jobs: list[tuple[StreamState, int]], raw: np.ndarray) -> list[GenreUpdate]:
        """The updates of ``jobs`` (a stream's hops in order) with their raw outputs ``raw`` (B, L)."""
        if not jobs:
            return []
        n = len(jobs)
        now, wall = time.monotonic(), now_iso()
        t: list[float] = []
        silent = np.zeros(n, dtype=bool)
        extras: list[dict] = []
        for j, (st, end) in enumerate(jobs):
            described = end - st.track.lag  # a lagging model's answer is about the music lag frames back
            t.append(st.track.seconds_at(described, st.skipped))
            arrival = self._arrival_of(st, self.spec.samples_for_frames(end) + st.skipped)  # newest audio used
            level = st.track.level_db(described)
            silent[j] = level < SILENCE_DB
            extras.append({
                "latency_ms": round((now - arrival) * 1000.0, 1) if arrival is not None else None,
                "overruns": st.overruns,
                "level_db": round(level, 1),
                "silence": bool(silent[j]),
                "repaired": st.repaired,
            })
        with self._lock:  # rows are stable while we hold it (add/remove_stream wait)
            rows = np.array([st.row if self.streams.get(st.name) is st else -1 for st, _ in jobs],  # not removed
                            dtype=np.int64)
            levels = np.array([x["level_db"] for x in extras])
            smoothed = self._updates.smooth(raw, silent, rows, _rounds(jobs), levels)
        updates = self._updates.build(raw, smoothed, streams=[st.name for st, _ in jobs], t=t,
                                      wall=wall, titles=[st.title for st, _ in jobs], extras=extras)
        for (st, end), upd in zip(jobs, updates):
            st.track.advance(end)
            st.latest = upd
            st.updates += 1
        return updates


def _arrival_within(block: tuple[int, float, float, int], sample_index: int) -> float:
    """When ``sample_index`` arrived, within an ``arrivals`` entry (samples written after the block, its first and
    last arrival, its length): interpolated between the block's first and last arrival."""
    written, first, last, n = block
    if last == first:
        return float(last)
    frac = min(1.0, max(0.0, 1.0 - (written - sample_index) / n))
    return float(first + frac * (last - first))


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
        self._updates = UpdateMaker(bundle, all_tags=all_tags, smoothing=smoothing or SmoothingConfig(),
                                    hop_seconds=self.hop_seconds, streams=1)
        self.shown = self._updates.shown
        self._mel = IncrementalLogMel(spec)
        self._track = FrameTrack.start(spec, hop=self.hop_frames, window=self.window, stateful=runner.stateful,
                                       lag=self.lag)
        self._state = runner.init_state(1) if runner.stateful else None
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
            self._track.add(*self._mel.push_with_power(part))
            updates.extend(self._run(final=False))
        return updates

    def finish(self) -> list[GenreUpdate]:
        """The input ended: run what is left (one window of all for inputs shorter than one window)."""
        if self._finished:
            return []
        track = self._track
        total = track.total
        if total == 0:
            raise StreamtagError(f"{self.name}: too short to tag ({self.seconds:.3f} s of audio)")
        updates = self._run(final=True)
        if not self.runner.stateful and self.windows == 0:  # shorter than one window: one window of all
            raw = self.runner.predict_windows(track.frames, [total], self.window)
            updates.extend(self._emit([total], raw[:1]))
        elif self.runner.stateful and self.windows == 0:
            if self._consumed() == 0 < total:  # shorter than one hop: one step of all
                probs, self._state = self.runner.step_many(track.frames[None], self._state_(), [total])
                self._held = (total, probs[0, 0])
            assert self._held is not None
            end, raw = self._held  # nothing passed the lag: the last answer, at its own end (or lag_frames back)
            updates.extend(self._emit([end - self.lag if track.heard(end) else end], raw[None]))
        self._finished = True
        if self.repaired:
            log.warning("%s: repaired %d bad samples (non-finite or beyond +-%g)", self.name, self.repaired,
                        CLIP_LEVEL)
        return updates

    # -- batches ----------------------------------------------------------------------------------------
    def _state_(self) -> torch.Tensor:
        assert self._state is not None
        return self._state

    def _consumed(self) -> int:
        """Stateful models: the frames the state has seen (the end of the last hop run)."""
        return self._track.next_end - self.hop_frames

    def _run(self, *, final: bool) -> list[GenreUpdate]:
        updates: list[GenreUpdate] = []
        track = self._track
        ends = track.ready()
        while ends and (len(ends) >= FILE_BATCH or final):
            batch, ends = ends[:FILE_BATCH], ends[FILE_BATCH:]
            if self.runner.stateful:
                done = self._consumed()
                rel = [e - done for e in batch]
                probs, self._state = self.runner.step_many(
                    track.span(done, batch[-1])[None], self._state_(), rel)  # (1, n, L)
                raws = probs[0]
            else:
                rel = [e - batch[0] + self.window for e in batch]
                raws = self.runner.predict_windows(
                    track.span(batch[0] - self.window, batch[-1]), rel, self.window)  # (n, L)
            heard = [j for j, e in enumerate(batch) if track.heard(e)]
            if len(heard) < len(batch):  # the model has not heard any of the music yet (as the Engine does)
                self._held = (batch[len(batch) - len(heard) - 1], raws[len(batch) - len(heard) - 1])
            if heard:
                updates.extend(self._emit([batch[j] - self.lag for j in heard], raws[heard]))
            track.advance(batch[-1])
            track.trim()
        return updates

    def _emit(self, ends: list[int], raws: np.ndarray) -> list[GenreUpdate]:
        """The updates of the windows (or hops) whose described music ends at frames ``ends``, one stream's hops
        in order, with their raw outputs ``raws`` (n, L)."""
        levels = [self._track.level_db(e) for e in ends]
        silent = np.array([level < SILENCE_DB for level in levels], dtype=bool)
        for raw, quiet in zip(raws, silent):
            self.windows += 1
            self._sum_all += raw
            if quiet:
                self.silent_windows += 1
            else:
                self._sum += raw
            if self._raw is not None:
                self._raw.append(np.asarray(raw, dtype=np.float32))
        n = len(ends)
        maker = self._updates
        rounded = [round(level, 1) for level in levels]
        smoothed = maker.smooth(raws, silent, np.zeros(n, dtype=np.int64), [[j] for j in range(n)],
                                np.array(rounded))
        return maker.build(
            raws, smoothed, streams=[self.name] * n, t=[self._track.seconds_at(e) for e in ends],
            wall=now_iso(), titles=[None] * n, top_k=self.top_k,
            extras=[{"level_db": level, "silence": bool(quiet)} for level, quiet in zip(rounded, silent)],
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
        shares = family_shares(mean, self._updates.groups)  # (F,)
        return Summary(
            stream=self.name,
            duration=self.seconds,
            mean={labels[i]: float(mean[i]) for i in range(len(labels))},
            top=[(labels[i], float(mean[i])) for i in ranked[: self.top_k]],
            model=self.bundle.name,
            windows=self.windows,
            partial=partial,
            extra={"repaired_samples": self.repaired, "silent_windows": self.silent_windows},
            families=dict(zip(self._updates.family_names, shares.tolist())),
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
