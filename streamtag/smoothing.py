"""Temporal smoothing of genre probabilities: an exponential moving average plus hysteresis on the top genre.

The EMA's time constant is in seconds, so smoothing behaves the same at any hop. The top genre only changes
when a challenger's smoothed probability beats the current top by ``margin`` for ``hold_seconds`` in a row:
steady music does not flicker, a real change is followed within roughly ``tau + hold_seconds``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["SmoothingConfig", "Smoother"]


@dataclass(frozen=True)
class SmoothingConfig:
    tau_seconds: float = 3.0  # EMA time constant, s (0: no smoothing)
    margin: float = 0.05  # a challenger must exceed the current top by this much
    hold_seconds: float = 1.0  # ... for this long before the top changes

    def __post_init__(self) -> None:
        if self.tau_seconds < 0 or self.margin < 0 or self.hold_seconds < 0:
            raise ConfigError(f"smoothing settings must be non-negative, got {self}")


class Smoother:
    """Per-stream state: call :meth:`update` with each hop's raw probabilities (L,) and the hop length in s."""

    def __init__(self, config: SmoothingConfig | None = None, candidates: list[int] | None = None) -> None:
        self.config = config or SmoothingConfig()
        self.candidates = candidates  # label indices eligible as top genre (None: all)
        self.probs: np.ndarray | None = None  # (L,) smoothed
        self.top: int | None = None  # index of the held top label
        self._challenger: int | None = None
        self._challenge_time = 0.0

    def reset(self) -> None:
        self.probs, self.top, self._challenger, self._challenge_time = None, None, None, 0.0

    def update(self, raw: np.ndarray, dt: float) -> np.ndarray:
        """Fold in one hop's raw probabilities; returns the smoothed (L,) probabilities."""
        raw = np.asarray(raw, dtype=np.float64)
        cfg = self.config
        if self.probs is None or cfg.tau_seconds == 0:
            self.probs = raw.copy()
        else:
            alpha = 1.0 - math.exp(-max(dt, 0.0) / cfg.tau_seconds)
            self.probs = self.probs + alpha * (raw - self.probs)
        self._update_top(dt)
        return self.probs

    def _update_top(self, dt: float) -> None:
        assert self.probs is not None
        idx = self.candidates if self.candidates is not None else range(self.probs.shape[0])
        best = max(idx, key=lambda i: self.probs[i])
        if self.top is None:
            self.top = best
            return
        if best != self.top and self.probs[best] > self.probs[self.top] + self.config.margin:
            if self._challenger == best:
                self._challenge_time += dt
            else:
                self._challenger, self._challenge_time = best, dt
            if self._challenge_time >= self.config.hold_seconds:
                self.top, self._challenger, self._challenge_time = best, None, 0.0
        else:
            self._challenger, self._challenge_time = None, 0.0

    def ranking(self, indices: list[int]) -> list[int]:
        """``indices`` ordered by smoothed probability, the held top genre first."""
        assert self.probs is not None
        order = sorted(indices, key=lambda i: -self.probs[i])
        if self.top is not None and self.top in order:
            order.remove(self.top)
            order.insert(0, self.top)
        return order
