"""The one conversion of any PCM into what the model hears: mono float32 at the model's sample rate.

Every input (files, URLs, stdin, the microphone, websocket audio in, the training corpus) goes through the same
three steps as ``librosa.load(path, sr=sr)``:

1. integer PCM is scaled to float32 by ONE rule, ``2**(bits-1)`` (libsndfile's), so int16 32767 -> 0.99997 and
   -32768 -> -1.0; unsigned 8-bit is centred first (128 -> 0.0); float PCM is taken as is;
2. channels are averaged to mono (``librosa.to_mono``), summed in channel order so an interleaved and a planar
   copy of the same samples give bit-identical results;
3. the mono signal is resampled with soxr at quality "HQ" (``librosa.resample(..., res_type="soxr_hq")``) in
   streaming form (``soxr.ResampleStream``, whose output equals the one-shot resample sample for sample); at the
   end of a segment the length is padded to ``ceil(n * target_rate / sample_rate)`` like librosa's ``fix_length``.

    conv = MonoConverter(sample_rate=44100, target_rate=16000, channels=2)   # interleaved int16, say
    for chunk in chunks:
        y = conv.push(chunk)        # (M,) float32, any length, possibly 0
    y = conv.flush()                # the resampler's tail

``to_mono(pcm, sample_rate=..., target_rate=..., channels=...)`` is the one-shot form of the same object.
"""
from __future__ import annotations

import math

import numpy as np
import soxr

from .errors import ConfigError

__all__ = ["int_scale", "to_float32", "downmix", "mean_of_channels", "Resampler", "MonoConverter", "to_mono", "RESAMPLE_QUALITY"]

RESAMPLE_QUALITY = "HQ"  # soxr quality: librosa's res_type="soxr_hq"
# input samples handed to soxr per call: its buffers grow to the largest input it was given and never shrink, so one
# burst (a radio's seconds of burst-on-connect, a file's first read) would hold ~1.4 MB per stream for good.
# The output does not depend on how the input is cut (tests/test_audio.py).
RESAMPLE_CHUNK = 16384


def int_scale(dtype: np.dtype) -> float:
    """The divisor that maps integer samples of ``dtype`` onto [-1, 1): 2**(bits-1)."""
    return float(2 ** (np.dtype(dtype).itemsize * 8 - 1))


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """Samples of any integer or float dtype as float32, integers divided by 2**(bits-1) (same shape)."""
    x = np.asarray(pcm)
    kind = x.dtype.kind
    if kind == "f":
        return x.astype(np.float32, copy=False)
    if kind == "u":  # unsigned PCM (8-bit WAV): centred on 2**(bits-1)
        scale = int_scale(x.dtype)
        return ((x.astype(np.float64) - scale) / scale).astype(np.float32)
    if kind == "i":
        if x.dtype.itemsize <= 4:  # exact in float32 times a power of two: the float64 route's very samples
            y = x.astype(np.float32)
            y *= np.float32(1.0 / int_scale(x.dtype))
            return y
        return (x.astype(np.float64) / int_scale(x.dtype)).astype(np.float32)
    raise ConfigError(f"audio samples must be integer or float PCM, got dtype {x.dtype}")


def downmix(x: np.ndarray, *, channels: int = 1, planar: bool = False) -> np.ndarray:
    """Float32 samples -> mono ``(N,)``: the mean over channels, summed in channel order.

    ``x`` is ``(N,)`` mono, ``(N * channels,)`` interleaved, ``(N, channels)`` interleaved (``planar=False``), or
    ``(channels, N)`` planar (``planar=True``).
    """
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    if x.ndim == 1:
        if channels == 1:
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] % channels:
            raise ConfigError(f"{x.shape[0]} interleaved samples are not a whole number of {channels}-channel frames")
        x = x.reshape(-1, channels)  # (N, C)
        planar = False
    elif x.ndim != 2:
        raise ConfigError(f"audio must be 1-D or 2-D, got shape {x.shape}")
    per_channel = x if planar else x.T  # (C, N)
    if per_channel.shape[0] != channels:
        raise ConfigError(f"audio has {per_channel.shape[0]} channels, expected {channels}")
    if channels == 1:
        return np.ascontiguousarray(per_channel[0], dtype=np.float32)
    return mean_of_channels(list(per_channel))


def mean_of_channels(rows: list[np.ndarray]) -> np.ndarray:
    """The float32 mean of equal-length channels ``rows`` (each (N,)), summed in order then divided: the one
    definition of a downmix's samples (:func:`downmix`, and decoded frames read plane by plane)."""
    acc = rows[0].astype(np.float32, copy=True)  # (N,)
    for row in rows[1:]:
        acc += row
    acc /= np.float32(len(rows))
    return acc


class Resampler:
    """Streaming soxr HQ resampler of mono float32, state carried between blocks.

    ``push`` returns what is ready now; ``flush`` ends the segment (the filter's tail plus librosa's
    ``fix_length`` padding) and makes the object ready for a new segment at the same rates.
    """

    def __init__(self, *, sample_rate: int, target_rate: int) -> None:
        if int(sample_rate) <= 0 or int(target_rate) <= 0:
            raise ConfigError(f"sample rates must be positive, got {sample_rate} -> {target_rate} Hz")
        self.sample_rate = int(sample_rate)
        self.target_rate = int(target_rate)
        self._stream: soxr.ResampleStream | None = None
        self._n_in = 0  # samples pushed in this segment
        self._n_out = 0  # samples returned in this segment

    def push(self, mono: np.ndarray) -> np.ndarray:
        """(N,) float32 at ``sample_rate`` -> (M,) float32 at ``target_rate`` (M may be 0)."""
        x = np.ascontiguousarray(mono, dtype=np.float32)
        self._n_in += x.shape[0]
        if self.sample_rate == self.target_rate:
            self._n_out += x.shape[0]
            return x
        if self._stream is None:
            self._stream = soxr.ResampleStream(
                self.sample_rate, self.target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        parts = [self._stream.resample_chunk(x[i : i + RESAMPLE_CHUNK]) for i in range(0, max(1, x.shape[0]), RESAMPLE_CHUNK)]
        y = np.asarray(parts[0] if len(parts) == 1 else np.concatenate(parts), dtype=np.float32)
        self._n_out += y.shape[0]
        return y

    def flush(self) -> np.ndarray:
        """End of a segment: the remaining samples, padded to ``ceil(n_in * target_rate / sample_rate)``."""
        tail = np.zeros(0, np.float32)
        if self._stream is not None:
            tail = np.asarray(self._stream.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)
            target = math.ceil(self._n_in * self.target_rate / self.sample_rate)  # librosa fix_length
            n = self._n_out + tail.shape[0]
            if n < target:
                tail = np.concatenate([tail, np.zeros(target - n, np.float32)])
            elif n > target:
                tail = tail[: max(0, tail.shape[0] - (n - target))]
        self._stream = None
        self._n_in = self._n_out = 0
        return tail


class MonoConverter:
    """Any PCM (int or float, ``channels`` interleaved or planar, at ``sample_rate``) -> mono float32 at
    ``target_rate``, incrementally: ``push(pcm) -> (M,)``, ``flush() -> (K,)``."""

    def __init__(self, *, sample_rate: int, target_rate: int, channels: int = 1, planar: bool = False) -> None:
        if int(channels) < 1:
            raise ConfigError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.planar = planar
        self.resampler = Resampler(sample_rate=sample_rate, target_rate=target_rate)

    @property
    def sample_rate(self) -> int:
        return self.resampler.sample_rate

    @property
    def target_rate(self) -> int:
        return self.resampler.target_rate

    def push(self, pcm: np.ndarray) -> np.ndarray:
        mono = downmix(to_float32(pcm), channels=self.channels, planar=self.planar)  # (N,)
        return self.resampler.push(mono)

    def flush(self) -> np.ndarray:
        return self.resampler.flush()


def to_mono(
    pcm: np.ndarray, *, sample_rate: int, target_rate: int, channels: int = 1, planar: bool = False
) -> np.ndarray:
    """One-shot :class:`MonoConverter`: the whole signal as mono float32 ``(ceil(N * target/sr),)``."""
    conv = MonoConverter(sample_rate=sample_rate, target_rate=target_rate, channels=channels, planar=planar)
    head = conv.push(pcm)
    tail = conv.flush()
    return np.concatenate([head, tail]) if tail.shape[0] else head
