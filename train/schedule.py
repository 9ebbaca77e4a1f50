"""The learning-rate schedule: linear warm-up, then cosine decay to ``FLOOR`` times the peak.

A pure function of the step, so a resumed run (which restores the step) continues the same curve.
"""
from __future__ import annotations

import math

__all__ = ["FLOOR", "lr_factor", "warmup_for"]

FLOOR = 0.02  # the schedule ends at 2 % of the peak learning rate


def warmup_for(total: int, warmup_steps: int) -> int:
    """Warm-up steps of a ``total``-step run: ``warmup_steps``, at most 10 % of the run, at least 1."""
    return max(1, min(warmup_steps, total // 10))


def lr_factor(step: int, *, warmup: int, total: int, floor: float = FLOOR) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): ``(step + 1) / warmup`` while warming up, then cosine
    from 1 down to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
