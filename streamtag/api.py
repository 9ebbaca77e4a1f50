"""The Python API: what ``import streamtag`` gives a notebook or a program (docs/api.md).

    streamtag.tag(path_or_array, sr=None, model=...)  -> TagResult (times, families, probabilities, segments)
    streamtag.load_model(name) / available_models()    -> Model (load once, tag many)
    streamtag.stream(url_or_path) / listen() / Live()  -> live updates: an iterator, or callbacks

Results are plain data (numpy arrays, lists of :class:`~streamtag.segments.Segment`, dicts), built on the same
:class:`~streamtag.pipeline.FileTagger` and :class:`~streamtag.live.LiveRunner` + :class:`~streamtag.pipeline.Engine`
the command line runs, so the API and ``streamtag tag``/``stream`` give the same numbers.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, StreamtagError
from .events import GenreUpdate
from .segments import FamilyOf, Segment, SegmentSink, family_resolver, headline, segments_of

__all__ = ["tag", "load_model", "available_models", "Model", "TagResult", "Live", "stream", "listen",
           "DEFAULT_MODEL"]

DEFAULT_MODEL = "musicnn-msd"
BLOCK_SECONDS = 2.0  # s of audio decoded per block when tagging a path
EVENT_QUEUE = 10_000  # events a Live iterator holds before it drops the oldest (a consumer that stopped reading)
POLL_S = 0.1  # s between a waiting iterator's looks at whether any stream is left
SMOOTHINGS = ("hmm", "ema", "none")


# -- models ------------------------------------------------------------------------------------------------------
def available_models() -> list[str]:
    """Names of the shipped model bundles (and those under $STREAMTAG_MODELS)."""
    from .registry import available_models as names

    return names()


@dataclass
class Model:
    """A loaded model bundle and the runner that executes it; pass it as ``model=`` to reuse it."""

    name: str
    labels: list[str]  # every output label
    genre_labels: list[str]  # the labels shown by default
    sample_rate: int  # Hz the model listens at
    window_seconds: float
    hop_seconds: float  # default seconds between updates
    bundle: Any = field(repr=False)
    runner: Any = field(repr=False)

    @property
    def family_of(self) -> FamilyOf:
        """genre label -> its family in the bundle's taxonomy (the genre itself without one)."""
        return family_resolver(self.bundle)


def load_model(name: str | os.PathLike[str] = DEFAULT_MODEL, *, device: str = "auto",
               precision: str = "auto") -> Model:
    """Load a shipped bundle by name (see :func:`available_models`) or a bundle directory.

    ``device``: ``"auto"`` (CUDA when PyTorch sees a GPU), ``"cpu"`` or ``"cuda[:N]"``. An unknown name raises
    :class:`~streamtag.errors.ModelError` listing the valid ones.
    """
    from .registry import load_bundle
    from .runner import ModelRunner

    bundle = load_bundle(name)
    runner = ModelRunner(bundle, device, precision=precision)
    return Model(name=bundle.name, labels=list(bundle.labels), genre_labels=list(bundle.genre_labels),
                 sample_rate=bundle.frontend.sample_rate, window_seconds=bundle.window_seconds,
                 hop_seconds=bundle.hop_seconds, bundle=bundle, runner=runner)


def _model(model: str | os.PathLike[str] | Model | None, device: str) -> Model:
    if isinstance(model, Model):
        return model
    return load_model(model or DEFAULT_MODEL, device=device)


def _smoothing(method: str) -> Any:
    from .smoothing import SmoothingConfig

    if method not in SMOOTHINGS:
        raise ConfigError(f"smoothing={method!r}: use one of {', '.join(SMOOTHINGS)}")
    return SmoothingConfig(method=method)


# -- files and arrays --------------------------------------------------------------------------------------------
@dataclass
class TagResult:
    """The genre timeline of one input. Row ``i`` of every array is hop ``i``; columns follow ``labels``."""

    name: str
    model: str
    labels: list[str]  # the shown labels: the columns of probs and raw
    times: np.ndarray  # (T,) float64: seconds at the end of the music each hop describes
    family: np.ndarray  # (T,) str: the headline family of each hop
    genre: np.ndarray  # (T,) str: the top (held) genre of each hop
    confidence: np.ndarray  # (T,) float64: the headline's probability
    probs: np.ndarray  # (T, K) float32: smoothed probabilities
    raw: np.ndarray  # (T, K) float32: the model's raw outputs
    level_db: np.ndarray  # (T,) float64: each hop's RMS level, dBFS
    label_families: list[str]  # the family of each label (the taxonomy's; the label itself without one)
    families: list[str]  # the family names: the columns of family_probs
    family_probs: np.ndarray  # (T, F) float32: smoothed family probabilities
    segments: list[Segment]
    summary: dict[str, Any]  # the Summary's JSON form: duration, windows, mean (raw, every label), top

    @property
    def hop_seconds(self) -> float:
        return float(self.times[1] - self.times[0]) if len(self.times) > 1 else 0.0

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` labels with the highest mean raw probability over the input (the summary's ranking)."""
        mean = self.summary.get("mean", {})
        return sorted(((label, float(mean.get(label, 0.0))) for label in self.labels), key=lambda x: -x[1])[:k]

    def headline_shares(self) -> dict[str, float]:
        """Fraction of the input's time each family was the headline (from the segments), largest first."""
        total = sum(s.duration for s in self.segments) or 1.0
        shares: dict[str, float] = {}
        for s in self.segments:
            shares[s.family] = shares.get(s.family, 0.0) + s.duration / total
        return dict(sorted(shares.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists instead of arrays)."""
        return {"name": self.name, "model": self.model, "labels": self.labels, "times": self.times.tolist(),
                "family": self.family.tolist(), "genre": self.genre.tolist(),
                "confidence": self.confidence.tolist(), "probs": self.probs.tolist(), "raw": self.raw.tolist(),
                "level_db": self.level_db.tolist(), "label_families": self.label_families,
                "families": self.families,
                "family_probs": self.family_probs.tolist(), "segments": [s.to_dict() for s in self.segments],
                "summary": self.summary}


def result_from_updates(updates: Sequence[GenreUpdate], summary: dict[str, Any], *, labels: Sequence[str],
                        family_of: FamilyOf = str, name: str = "", model: str = "") -> TagResult:
    """A :class:`TagResult` from one input's updates (what ``streamtag tag`` collects) and its summary."""
    labels = list(labels)
    n = len(updates)
    heads = [headline(u, family_of) for u in updates]
    names: list[str] = []
    for u in updates:  # the families the updates carry, else each label's family, in first-seen order
        for f in (getattr(u, "families", None) or {f2: 0.0 for f2 in map(family_of, labels)}):
            if f not in names:
                names.append(f)
    if not names:
        names = list(dict.fromkeys(map(family_of, labels)))
    fp = np.zeros((n, len(names)), np.float32)
    col = {f: j for j, f in enumerate(names)}
    probs = np.array([[u.probs.get(label, 0.0) for label in labels] for u in updates], np.float32).reshape(n, -1)
    for i, u in enumerate(updates):
        fams = getattr(u, "families", None)
        if fams:
            for f, p in fams.items():
                fp[i, col[f]] = p
        else:  # without the smoother's family probabilities: the genres' smoothed probabilities summed per family
            for k, label in enumerate(labels):
                fp[i, col[family_of(label)]] += probs[i, k]
    return TagResult(
        name=name, model=model, labels=labels,
        times=np.array([u.t for u in updates], np.float64),
        family=np.array([h[0] for h in heads], dtype=str),
        genre=np.array([u.top[0][0] if u.top else "" for u in updates], dtype=str),
        confidence=np.array([h[1] for h in heads], np.float64),
        probs=probs,
        raw=np.array([[u.raw.get(label, 0.0) for label in labels] for u in updates], np.float32).reshape(n, -1),
        level_db=np.array([float(u.extra.get("level_db", math.nan)) for u in updates], np.float64),
        label_families=[family_of(label) for label in labels], families=names, family_probs=fp,
        segments=segments_of(updates, family_of=family_of), summary=summary,
    )


def _as_mono(samples: Any, sr: int | None, target: int) -> np.ndarray:
    from .audio import to_mono

    if sr is None:
        raise ConfigError("tag(array): give its sample rate, e.g. tag(y, sr=22050)")
    if not (isinstance(sr, int | np.integer) and sr > 0):
        raise ConfigError(f"sr={sr!r}: the sample rate must be a positive whole number of Hz")
    x = np.asarray(samples)
    if x.ndim == 2:  # librosa's layout: (channels, N)
        x = x.astype(np.float32).mean(axis=0)
    if x.ndim != 1:
        raise ConfigError(f"audio of shape {x.shape}: give (N,) mono or (channels, N) samples")
    if x.dtype.kind not in "fiu":
        raise ConfigError(f"audio of dtype {x.dtype}: give float or integer samples")
    return to_mono(x, sample_rate=int(sr), target_rate=target)


def tag(
    path_or_array: str | os.PathLike[str] | np.ndarray,
    sr: int | None = None,
    *,
    model: str | os.PathLike[str] | Model | None = None,
    hop: float | None = None,
    smoothing: str = "hmm",
    all_tags: bool = False,
    top: int = 5,
    duration: float | None = None,
    device: str = "auto",
    name: str | None = None,
) -> TagResult:
    """Tag a whole input: an audio file, URL or local playlist (``path``), or samples (``array`` + ``sr``).

    ``path_or_array``: a path/URL, or (N,) mono / (channels, N) samples, float in [-1, 1] or integer PCM, at
    ``sr`` Hz (resampled to the model's rate). ``model``: a name, a bundle directory or a :class:`Model`
    (default musicnn-msd). ``hop``: seconds between updates (default: the model's). ``smoothing``: "hmm", "ema" or
    "none". ``duration``: tag at most this many seconds (URLs: 60 s unless given). Returns a :class:`TagResult`.
    """
    from .pipeline import FileTagger, hop_frames_for

    m = _model(model, device)
    if top < 1:
        raise ConfigError(f"top={top}: give at least 1")
    cfg = _smoothing(smoothing)
    hop_frames_for(m.bundle, hop)
    is_array = not isinstance(path_or_array, str | os.PathLike)
    label = name or ("array" if is_array else os.fspath(path_or_array))  # type: ignore[arg-type]
    tagger = FileTagger(m.runner, name=label, hop_seconds=hop, all_tags=all_tags, top_k=top, smoothing=cfg)
    updates: list[GenreUpdate] = []
    limit = None if duration is None else int(duration * m.sample_rate)
    if is_array:
        x = _as_mono(path_or_array, sr, m.sample_rate)
        updates += tagger.push(x[:limit] if limit is not None else x)
    else:
        from .sources import open_source

        path = os.fspath(path_or_array)  # type: ignore[arg-type]
        if limit is None and path.split("://", 1)[0].lower() in ("http", "https"):
            limit = int(60.0 * m.sample_rate)
        n = 0
        with open_source(path, m.sample_rate, block_seconds=BLOCK_SECONDS, max_retries=0) as source:
            for block in source:
                if limit is not None:
                    block = block[: limit - n]
                n += block.shape[0]
                updates += tagger.push(block)
                if limit is not None and n >= limit:
                    break
    if tagger.samples == 0:
        raise StreamtagError(f"{label}: no audio; give a non-empty file or array")
    updates += tagger.finish()
    shown = [m.bundle.labels[i] for i in tagger.shown]
    return result_from_updates(updates, tagger.summary().to_dict(), labels=shown, family_of=m.family_of,
                               name=label, model=m.name)


# -- live --------------------------------------------------------------------------------------------------------
Event = GenreUpdate | Segment
_END = object()


class _QueueSink:
    """Feeds the Live iterator and callbacks; never blocks the runner (a full queue drops its oldest event)."""

    def __init__(self, live: Live) -> None:
        self.live = live

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        pass

    def on_update(self, updates: list[GenreUpdate]) -> None:
        for u in updates:
            self.live._deliver(u)

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        self.live._ended(name, error)


class Live:
    """Live tagging of URLs, files played in real time, the microphone, or pushed arrays, with one model.

    Read it as an iterator (``for event in live:`` yields :class:`~streamtag.events.GenreUpdate` per hop and
    :class:`~streamtag.segments.Segment` when a segment closes, and ends when every stream has ended), or pass
    callbacks (``on_update``, ``on_segment``, ``on_end(name, error)``, called from the runner's threads: keep
    them quick). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | Model | None = None,
        hop: float | None = None,
        smoothing: str = "hmm",
        all_tags: bool = False,
        device: str = "auto",
        on_update: Callable[[GenreUpdate], None] | None = None,
        on_segment: Callable[[Segment], None] | None = None,
        on_end: Callable[[str, StreamtagError | None], None] | None = None,
    ) -> None:
        from .live import LiveRunner
        from .pipeline import Engine

        self.model = _model(model, device)
        self.engine = Engine(self.model.bundle, runner=self.model.runner, hop_seconds=hop, all_tags=all_tags,
                             smoothing=_smoothing(smoothing))
        self._on_update, self._on_segment, self._on_end = on_update, on_segment, on_end
        self._events: queue.Queue[Any] = queue.Queue(maxsize=EVENT_QUEUE)
        self.dropped = 0  # events the iterator dropped because nobody read them
        self._resamplers: dict[str, Any] = {}
        self._errors: dict[str, StreamtagError] = {}
        self._live: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        # the segment sink first: a stream's last segment reaches the iterator before the stream's end does
        self.runner = LiveRunner(self.engine, [SegmentSink(self._segment, family_of=self.model.family_of),
                                               _QueueSink(self)])
        self.runner.start()

    # -- inputs ----------------------------------------------------------------------------------------------
    def _name(self, name: str | None, default: str) -> str:
        name = name or default
        with self._lock:
            if name in self._live:
                raise ConfigError(f"a stream named {name!r} is running; pass name=")
            self._live.add(name)
        return name

    def add_url(self, url: str, *, name: str | None = None, max_retries: int | None = None) -> str:
        """Tag an http(s) radio stream (Icecast/Shoutcast, HLS, PLS/M3U); reconnects on drops. Returns its name."""
        from .sources import open_source

        name = self._name(name, url)
        try:
            self.runner.add_source(name, open_source(url, self.model.sample_rate, max_retries=max_retries))
        except BaseException:
            self._forget(name)
            raise
        return name

    def add_file(self, path: str | os.PathLike[str], *, speed: float = 1.0, name: str | None = None) -> str:
        """Play an audio file as a live stream at ``speed`` x real time. Returns its name."""
        from .sources.file import FileSource

        name = self._name(name, Path(path).name)
        try:
            self.runner.add_source(name, FileSource(path, self.model.sample_rate), speed=speed)
        except BaseException:
            self._forget(name)
            raise
        return name

    def add_microphone(self, device: int | str | None = None, *, name: str = "mic") -> str:
        """Tag an audio input device (None: the system's default; see ``streamtag devices``)."""
        from .sources.microphone import MicrophoneSource

        name = self._name(name, "mic")
        try:
            self.runner.add_source(name, MicrophoneSource(device, sample_rate=self.model.sample_rate))
        except BaseException:
            self._forget(name)
            raise
        return name

    def add_stream(self, name: str, *, sr: int) -> str:
        """A stream fed by :meth:`push` with samples at ``sr`` Hz; :meth:`end` it when done."""
        from .audio import Resampler

        name = self._name(name, name)
        self._resamplers[name] = Resampler(sample_rate=sr, target_rate=self.model.sample_rate)
        self.runner.add_stream(name, display="pushed")
        return name

    def push(self, name: str, samples: np.ndarray) -> None:
        """Hand (N,) mono samples of a pushed stream to the engine (never blocks)."""
        rs = self._resamplers.get(name)
        if rs is None:
            raise ConfigError(f"{name!r} is not a pushed stream; add_stream({name!r}, sr=...) first")
        self.runner.push(name, rs.push(np.asarray(samples, dtype=np.float32).reshape(-1)))

    def end(self, name: str) -> None:
        """End a stream (a pushed one after its last samples are tagged)."""
        rs = self._resamplers.pop(name, None)
        if rs is not None:
            tail = rs.flush()
            if tail.size:
                self.runner.push(name, tail)
            self.runner.flush()
        self.runner.remove(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._live.discard(name)

    # -- outputs ---------------------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        while True:
            try:
                self._events.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._events.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _deliver(self, u: GenreUpdate) -> None:
        if self._on_update is not None:
            self._on_update(u)
        self._put(u)

    def _segment(self, s: Segment) -> None:
        if self._on_segment is not None:
            self._on_segment(s)
        self._put(s)

    def _ended(self, name: str, error: StreamtagError | None) -> None:
        if error is not None:
            self._errors[name] = error
        if self._on_end is not None:
            self._on_end(name, error)
        with self._lock:
            self._live.discard(name)
            done = not self._live
        if done:
            self._put(_END)

    def errors(self) -> dict[str, StreamtagError]:
        """The error each failed stream ended with."""
        return dict(self._errors)

    def streams(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Updates and closed segments as they come, until every stream has ended (at once when none was added),
        or ``timeout`` s pass with nothing new, or :meth:`close`."""
        import time

        idle_since = time.monotonic()
        while True:
            try:
                item = self._events.get(timeout=POLL_S)
            except queue.Empty:
                with self._lock:
                    done = not self._live or self._closed
                if done and self._events.empty():
                    return
                if timeout is not None and time.monotonic() - idle_since >= timeout:
                    return
                continue
            if item is _END:
                with self._lock:
                    if not self._live or self._closed:
                        return
                continue
            idle_since = time.monotonic()
            yield item

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every stream has ended (True) or ``timeout`` s passed (False), discarding the iterator's
        events (use it with callbacks)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._live:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            try:
                self._events.get(timeout=0.05)
            except queue.Empty:
                pass

    def close(self) -> None:
        """Stop every stream (their open segments close) and the runner."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.runner.stop()
        self._put(_END)

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(url_or_path: str | os.PathLike[str], *, speed: float | None = None, name: str | None = None,
           **options: Any) -> Live:
    """Tag one radio URL (``http(s)://``) live, or play a file at ``speed`` x real time (default 1.0).

    ``options`` go to :class:`Live` (model, hop, smoothing, on_update, on_segment, ...)."""
    live = Live(**options)
    try:
        text = os.fspath(url_or_path)
        if "://" in text and not text.startswith("file://"):
            if speed is not None:
                raise ConfigError("speed= applies to files; a radio stream plays at its own pace")
            live.add_url(text, name=name)
        else:
            live.add_file(text.removeprefix("file://"), speed=1.0 if speed is None else speed, name=name)
    except BaseException:
        live.close()
        raise
    return live


def listen(device: int | str | None = None, **options: Any) -> Live:
    """Tag the microphone (or another input device) live; ``options`` go to :class:`Live`."""
    live = Live(**options)
    try:
        live.add_microphone(device)
    except BaseException:
        live.close()
        raise
    return live
