"""Log-mel front end, offline and incremental, defined once for the engine and for training.

The settings live in a :class:`FrontendSpec` that is stored inside every model bundle, so the features
can never drift from the weights: no CLI flag sets ``n_mels`` or the sample rate.

Pure numpy (no torch): the front end is cheap to import and runs where decoding runs.

Framing is "valid" (``center=False``): frame ``i`` covers samples ``[i * hop_length, i * hop_length +
n_fft)``. That makes the streaming computation exact: pushing a signal in chunks of any size yields the
same frames as one offline call on the whole signal (see ``tests/test_frontend.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, cast

import numpy as np

from .errors import ConfigError

__all__ = ["FrontendSpec", "IncrementalLogMel", "push_many", "logmel", "frame_power", "SCALINGS", "FP16_MAX"]

# Supported amplitude scalings applied to the mel power spectrogram (x >= 0):
#   "log10p"  log10(1 + 10000 * x)          musicnn's "logC"
#   "db"      10 * log10(max(x, 1e-10))     decibels re 1.0, no top_db (top_db needs the whole clip)
#   "log"     ln(x + 1e-6)
SCALINGS = ("log10p", "db", "log")
FP16_MAX = 65504.0  # largest finite float16: ``fp16_mel`` saturates here instead of overflowing to inf


@dataclass(frozen=True)
class FrontendSpec:
    """Every setting of the log-mel front end. Stored in each bundle's ``config.json``."""

    sample_rate: int = 16000  # Hz: audio is resampled to this before framing
    n_fft: int = 512  # samples per STFT frame
    hop_length: int = 256  # samples between successive frames
    win_length: int | None = None  # samples of the Hann window (None: n_fft)
    n_mels: int = 96  # mel bands
    fmin: float = 0.0  # Hz, lowest mel band edge
    fmax: float | None = None  # Hz, highest mel band edge (None: sample_rate / 2)
    power: float = 2.0  # 2: power spectrogram, 1: magnitude
    htk: bool = False  # HTK mel formula instead of Slaney's
    norm: str | None = "slaney"  # mel filter normalisation, as librosa.filters.mel
    scaling: str = "log10p"  # one of SCALINGS
    fp16_mel: bool = False  # round the mel power to float16 before scaling (musicnn did)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ConfigError(f"invalid front-end spec {self}: sizes must be positive")
        if self.win_length is not None and not 0 < self.win_length <= self.n_fft:
            raise ConfigError(f"invalid front-end spec: win_length {self.win_length} must be in (0, n_fft]")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"invalid front-end spec: scaling {self.scaling!r} not one of {SCALINGS}")

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames."""
        return self.hop_length / self.sample_rate

    def frames_for(self, seconds: float) -> int:
        """Number of frames whose starts fall within ``seconds`` of audio (at least 1)."""
        return max(1, int(round(seconds * self.sample_rate / self.hop_length)))

    def samples_for_frames(self, n_frames: int) -> int:
        """Samples needed to produce ``n_frames`` valid frames."""
        return (n_frames - 1) * self.hop_length + self.n_fft if n_frames > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontendSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown front-end settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@lru_cache(maxsize=16)
def _mel_basis_t(spec: FrontendSpec) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64: the transposed librosa mel filterbank."""
    from .melfilters import mel_filterbank  # == librosa.filters.mel, without importing librosa (scipy, numba)

    fb = mel_filterbank(
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
        htk=spec.htk,
        norm=cast(Any, spec.norm),  # "slaney", None or a p-norm order: librosa's own validation
    )  # (n_mels, n_fft // 2 + 1)
    return np.ascontiguousarray(fb.T, dtype=np.float64)


@lru_cache(maxsize=16)
def _window(spec: FrontendSpec) -> np.ndarray:
    """(n_fft,) float64 periodic Hann window (== scipy get_window("hann", fftbins=True)), centred if shorter."""
    win = spec.win_length or spec.n_fft
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
    left = (spec.n_fft - win) // 2
    return np.pad(w, (left, spec.n_fft - win - left))


def _scale(mel: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    if spec.fp16_mel:
        # saturate first: a mel power above 65504 (float input of magnitude ~5 or more) would round to inf,
        # and log(inf) poisons every window it is in. Values below it round exactly as before.
        mel = np.minimum(mel, FP16_MAX).astype(np.float16).astype(np.float64)
    if spec.scaling == "log10p":
        return np.log10(1.0 + 10000.0 * mel)
    if spec.scaling == "db":
        return 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.log(mel + 1e-6)


_CHUNK_FRAMES = 2048  # frames per FFT batch: bounds the temporary memory for long files
# OpenBLAS runs a matmul on all its threads once m * n * k exceeds 4 * 65536; on a shared 2-core machine its
# spinning workers cost 5-8x the CPU of one thread (measured on the mel projection, 600 frames at once). The mel
# projection therefore goes through BLAS in stacks of rows below that size, which numpy's stacked matmul loops
# over in C: one thread, and each frame's value the same whatever it was batched with.
_BLAS_ONE_THREAD_MNK = 4 * 65536


def _mel_project(power: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """``power @ fb`` for (T, n_bins) float64 power and the (n_bins, n_mels) filterbank, on one BLAS thread."""
    t, k = power.shape
    rows = max(1, _BLAS_ONE_THREAD_MNK // (k * fb.shape[1]))  # frames per BLAS call
    pad = -t % rows
    if pad:
        power = np.concatenate([power, np.zeros((pad, k))])
    return np.matmul(power.reshape(-1, rows, k), fb).reshape(-1, fb.shape[1])[:t]  # (T, n_mels)


def _logmel_of_frames(frames: np.ndarray, spec: FrontendSpec, *, scratch: bool = False) -> np.ndarray:
    """Log-mel of framed samples: (T, n_fft) float64 (a view is fine) -> (T, n_mels) float32. ``scratch``: the
    frames are the caller's own copy and may be overwritten (windowed in place: no copy of every frame).

    Computed in float64 so that a frame's value does not depend on how many frames are computed with it
    (BLAS batching changes float32 rounding, and ``fp16_mel`` would amplify that to 1e-3 jumps): the frames of
    one stream, of a whole file and of many streams batched together (:func:`push_many`) come out the same.
    """
    win, fb = _window(spec), _mel_basis_t(spec)
    n_frames = frames.shape[0]
    out = np.empty((n_frames, spec.n_mels), dtype=np.float32)
    for i in range(0, n_frames, _CHUNK_FRAMES):
        chunk = frames[i : i + _CHUNK_FRAMES]
        if scratch:
            chunk *= win
        else:
            chunk = chunk * win
        mag = np.abs(np.fft.rfft(chunk, axis=1))  # (t, n_fft // 2 + 1)
        power = mag**spec.power if spec.power != 1.0 else mag
        out[i : i + _CHUNK_FRAMES] = _scale(_mel_project(power, fb), spec)  # (t, n_mels)
    return out


def _power_of_frames(frames: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    """Mean square of each frame's samples: (T, n_fft) float64 -> (T,) float64 (a frame-local sum, so the
    value does not depend on what else was framed with it)."""
    return np.square(frames).sum(axis=1) / spec.n_fft


def _framed(samples: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    """(N,) samples -> (T, n_fft) float64 view of every complete frame (valid framing)."""
    n_frames = 1 + (samples.shape[0] - spec.n_fft) // spec.hop_length
    x = np.asarray(samples, dtype=np.float64)
    return np.lib.stride_tricks.sliding_window_view(x, spec.n_fft)[:: spec.hop_length][:n_frames]  # (T, n_fft)


def _frames(samples: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    """Log-mel of every complete frame in ``samples`` (valid framing). Returns (T, n_mels) float32.

    numpy's FFT is used rather than torch.stft: for the few frames of a live hop its call overhead is ~100x lower.
    """
    if samples.shape[0] < spec.n_fft:
        return np.zeros((0, spec.n_mels), dtype=np.float32)
    return _logmel_of_frames(_framed(samples, spec), spec)


def frame_power(samples: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    """Mean square of each complete frame's samples (valid framing, no window). (N,) -> (T,) float64.

    The level a hop is judged by (silence detection): ``10 * log10(mean)`` over a hop's frames is its dBFS RMS.
    """
    if samples.shape[0] < spec.n_fft:
        return np.zeros(0, dtype=np.float64)
    return _power_of_frames(_framed(samples, spec), spec)


def logmel(samples: np.ndarray, spec: FrontendSpec) -> np.ndarray:
    """Offline log-mel of a whole mono signal.

    Args:
        samples: (N,) float mono audio at ``spec.sample_rate``.
        spec: the front-end settings.

    Returns:
        (T, n_mels) float32 with T = 1 + (N - n_fft) // hop_length (0 if N < n_fft).
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ConfigError(f"logmel expects mono audio of shape (N,), got {samples.shape}")
    return _frames(samples, spec)


class IncrementalLogMel:
    """Streaming log-mel: each :meth:`push` computes only the frames completed by the new samples.

    Keeps at most ``n_fft - hop_length`` (+ < hop) samples of history between pushes. :func:`push_many` pushes
    many streams' samples at once (one FFT over all their new frames) with the same result.
    """

    def __init__(self, spec: FrontendSpec) -> None:
        self.spec = spec
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet consumed by a frame start
        self.frames_emitted = 0  # frames returned so far
        self.samples_seen = 0  # samples pushed so far

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0
        self.samples_seen = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed (N,) mono samples; returns the (T_new, n_mels) frames they complete (T_new may be 0)."""
        return self._push(samples, with_power=False)[0]

    def push_with_power(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`push`, plus each new frame's mean square (T_new,) float64 (see :func:`frame_power`)."""
        frames, power = self._push(samples, with_power=True)
        assert power is not None
        return frames, power

    def _take(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        """Append ``samples`` to the pending ones: (buffer to frame, number of new frames it completes). The
        caller frames ``buffer[: samples_for_frames(n_new)]`` and then calls :meth:`_keep`."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ConfigError(f"push expects mono audio of shape (N,), got {samples.shape}")
        self.samples_seen += samples.shape[0]
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        spec = self.spec
        n_new = 1 + (buf.shape[0] - spec.n_fft) // spec.hop_length if buf.shape[0] >= spec.n_fft else 0
        return buf, n_new

    def _keep(self, buf: np.ndarray, n_new: int) -> None:
        """Keep what the next frames need of ``buf`` (everything from the first frame start not yet used)."""
        self._pending = buf[n_new * self.spec.hop_length :].copy()
        self.frames_emitted += n_new

    def _push(self, samples: np.ndarray, *, with_power: bool) -> tuple[np.ndarray, np.ndarray | None]:
        buf, n_new = self._take(samples)
        spec = self.spec
        if n_new == 0:
            self._keep(buf, 0)
            return np.zeros((0, spec.n_mels), dtype=np.float32), np.zeros(0) if with_power else None
        framed = _framed(buf[: spec.samples_for_frames(n_new)], spec)  # (n_new, n_fft)
        frames = _logmel_of_frames(framed, spec)
        power = _power_of_frames(framed, spec) if with_power else None
        self._keep(buf, n_new)
        return frames, power


PassMap = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]  # map(fn, items) -> results in order


def push_many(
    mels: Sequence[IncrementalLogMel], blocks: Sequence[np.ndarray], *, passes: int = 1, map_fn: PassMap = map,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[m.push_with_power(b) for m, b in zip(mels, blocks)]`` with one FFT and one mel matmul over many streams'
    new frames at a time (the live engine's streams): the same frames and powers, without a numpy call chain per
    stream. All ``mels`` share one spec. The frames go in at least ``passes`` passes of at most ``_CHUNK_FRAMES``
    frames (temporaries stay bounded when the streams bring seconds of backlog), run through ``map_fn`` (``map``,
    or a caller's thread pool: numpy's FFT and BLAS release the GIL, and a frame's value does not depend on what it
    is batched with). Returns per stream ((T_new, n_mels) float32, (T_new,) float64), views into arrays shared by the
    streams of its pass."""
    if len(mels) != len(blocks):
        raise ConfigError(f"push_many: {len(mels)} front ends but {len(blocks)} blocks")
    if not mels:
        return []
    spec = mels[0].spec
    if any(m.spec is not spec and m.spec != spec for m in mels):
        raise ConfigError("push_many: every front end must share one FrontendSpec")
    arrays = [np.asarray(b, dtype=np.float32) for b in blocks]
    if any(a.ndim != 1 for a in arrays):
        raise ConfigError(f"push_many expects mono audio of shape (N,), got {[a.shape for a in arrays if a.ndim != 1][0]}")
    taken = [m._take(a) for m, a in zip(mels, arrays)]  # [(buffer, n_new)]
    per_pass = min(_CHUNK_FRAMES, -(-sum(n for _, n in taken) // max(1, passes)))  # frames per pass, at least one
    groups: list[Sequence[tuple[np.ndarray, int]]] = []
    start, n_frames = 0, 0
    for i, (_, n_new) in enumerate(taken):
        n_frames += n_new
        if n_frames >= per_pass or i == len(taken) - 1:
            groups.append(taken[start : i + 1])
            start, n_frames = i + 1, 0
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for frames_of_group in map_fn(lambda group: _frames_of(group, spec), groups):
        out.extend(frames_of_group)
    for m, (buf, n_new) in zip(mels, taken):
        m._keep(buf, n_new)
    return out


def _frames_of(taken: Sequence[tuple[np.ndarray, int]], spec: FrontendSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Log-mel and power of the first ``n_new`` frames of each (buffer, n_new), in one pass over all of them."""
    counts = np.array([n for _, n in taken], dtype=np.int64)  # (S,) new frames per stream
    total = int(counts.sum())
    if total == 0:
        empty = (np.zeros((0, spec.n_mels), dtype=np.float32), np.zeros(0))
        return [empty] * len(taken)
    lengths = np.array([b.shape[0] for b, _ in taken], dtype=np.int64)
    seg = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (S,) where each stream's buffer starts
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (S,) each stream's first row in the pass
    starts = np.repeat(seg - first * spec.hop_length, counts) + spec.hop_length * np.arange(total)  # (F,)
    flat = np.concatenate([b for b, _ in taken], dtype=np.float64)  # (sum N,)
    framed = np.lib.stride_tricks.sliding_window_view(flat, spec.n_fft)[starts]  # (F, n_fft): a copy of the frames
    power = _power_of_frames(framed, spec)  # (F,)
    frames = _logmel_of_frames(framed, spec, scratch=True)  # (F, n_mels); windows `framed` in place
    return [(frames[a : a + n], power[a : a + n]) for a, n in zip(first.tolist(), counts.tolist())]
