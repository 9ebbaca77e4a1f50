"""Bounded audio ring buffer with overrun accounting.

The producer (an audio callback, a decoder thread) only copies samples in; the consumer drains them. When the
consumer falls behind and the buffer is full, the OLDEST samples are overwritten and counted as overrun, so a
slow consumer loses stale audio, never the newest. Thread-safe; no I/O.

The buffer holds up to ``capacity`` samples but allocates only what its unread audio needs (at least
:data:`INITIAL_SAMPLES`, doubling up to ``capacity``) and returns to that size once drained: a server with hundreds
of streams keeps ~0.1 MB per stream instead of its full 10 s (0.64 MB), and a start-up burst is not held for good.
"""
from __future__ import annotations

import threading

import numpy as np

from .errors import ConfigError

__all__ = ["RingBuffer", "INITIAL_SAMPLES"]

INITIAL_SAMPLES = 1 << 15  # samples allocated at first (2 s at 16 kHz): a live stream's usual backlog fits


class RingBuffer:
    """Mono float32 ring buffer of at most ``capacity`` samples."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ConfigError(f"ring buffer capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._small = min(self.capacity, INITIAL_SAMPLES)
        self._buf = np.zeros(self._small, dtype=np.float32)
        self._start = 0  # index in _buf of the oldest unread sample
        self._size = 0  # unread samples
        self._lock = threading.Lock()
        self.written = 0  # samples ever written
        self.overrun_samples = 0  # samples lost because the reader was too slow
        self.overruns = 0  # write calls that lost samples
        self.read_end = 0  # written-sample index just past the last read's samples

    def __len__(self) -> int:
        return self._size

    @property
    def allocated(self) -> int:
        """Samples the buffer holds room for now (``capacity`` at most)."""
        return self._buf.shape[0]

    def write(self, samples: np.ndarray) -> int:
        """Copy (N,) samples in; returns how many unread samples were lost to make room."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = x.shape[0]
        if n == 0:
            return 0
        with self._lock:
            self.written += n
            lost = 0
            if n >= self.capacity:  # only the newest `capacity` samples can survive
                lost = self._size + n - self.capacity
                if self._buf.shape[0] < self.capacity:
                    self._buf = np.empty(self.capacity, dtype=np.float32)
                self._buf[:] = x[-self.capacity :]
                self._start, self._size = 0, self.capacity
            else:
                free = self.capacity - self._size
                if n > free:
                    lost = n - free
                    self._start = (self._start + lost) % self._buf.shape[0]
                    self._size -= lost
                if self._size + n > self._buf.shape[0]:
                    self._grow(self._size + n)
                cap = self._buf.shape[0]
                end = (self._start + self._size) % cap
                first = min(n, cap - end)
                self._buf[end : end + first] = x[:first]
                if first < n:
                    self._buf[: n - first] = x[first:]
                self._size += n
            if lost:
                self.overrun_samples += lost
                self.overruns += 1
            return lost

    def _grow(self, need: int) -> None:
        """Room for ``need`` unread samples (``need <= capacity``), the unread ones moved to the front."""
        cap = self._buf.shape[0]
        new = min(self.capacity, max(need, 2 * cap))
        buf = np.empty(new, dtype=np.float32)
        first = min(self._size, cap - self._start)
        buf[:first] = self._buf[self._start : self._start + first]
        buf[first : self._size] = self._buf[: self._size - first]
        self._buf, self._start = buf, 0

    def read(self, max_samples: int | None = None) -> np.ndarray:
        """Remove and return up to ``max_samples`` of the oldest unread samples (all when None)."""
        with self._lock:
            cap = self._buf.shape[0]
            n = self._size if max_samples is None else min(self._size, max_samples)
            first = min(n, cap - self._start)
            out = np.empty(n, dtype=np.float32)
            out[:first] = self._buf[self._start : self._start + first]
            if first < n:
                out[first:] = self._buf[: n - first]
            self._start = (self._start + n) % cap
            self._size -= n
            if self._size == 0 and cap > self._small:  # drained after a backlog: back to the small buffer
                self._buf, self._start = np.zeros(self._small, dtype=np.float32), 0
            self.read_end = self.written - self._size  # the written-sample index just past what this read returned
            return out
