"""The max/min over bands of musicnn's front-end blocks on GEMM outputs (architectures/fastfront.py), compiled
with numba (a dependency of librosa): two passes of PyTorch's reductions plus a select cost about 2x as much.

The inputs are integer views of float GEMM outputs (int16 for bfloat16, int32 for float32); see fastfront.py for
why integer max/min give musicnn's result. Each kernel keeps a running extreme of one row of channels and folds
the next position (or band) in with two plain loops (max over the first ``n_max`` channels, min over the rest),
which LLVM vectorizes. Kernels release the GIL, so the front end's worker threads run them side by side, and
are compiled once per integer type (cached on disk where the package directory is writable).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["over_positions", "over_rows"]

_jit = njit(nogil=True, boundscheck=False, cache=True)


@_jit
def _vmax(acc, row, n):
    for c in range(n):
        acc[c] = max(acc[c], row[c])


@_jit
def _vmin(acc, row, n):
    for c in range(n):
        acc[c] = min(acc[c], row[c])


@_jit
def over_positions(y, groups, group, channels, n_pos, n_max, out):
    """y: (frames * groups * group * channels,) flat; out: (frames, channels). For every frame, the max over its
    first ``n_pos`` positions of channels [0, n_max) and the min of the others; position p of a frame lies in
    row p // group of the frame's ``groups`` rows, column block p % group."""
    width = group * channels
    for f in range(out.shape[0]):
        acc = out[f]
        o0 = f * groups * width
        acc[:] = y[o0 : o0 + channels]
        for p in range(1, n_pos):
            g = p // group
            o = o0 + g * width + (p - g * group) * channels
            _vmax(acc[:n_max], y[o : o + n_max], n_max)
            _vmin(acc[n_max:], y[o + n_max : o + channels], channels - n_max)


@_jit
def over_rows(y, n_rows, width, n_max, out):
    """y: (B, n_rows * width); out: (B, width). Per b, the max over the n_rows rows of columns [0, n_max) and the
    min of the others."""
    for b in range(out.shape[0]):
        acc = out[b]
        yb = y[b]
        acc[:] = yb[:width]
        for r in range(1, n_rows):
            o = r * width
            _vmax(acc[:n_max], yb[o : o + n_max], n_max)
            _vmin(acc[n_max:], yb[o + n_max : o + width], width - n_max)


def warm_up() -> None:
    """Compile (or load from the cache) both kernels for both integer types."""
    for dt in (np.int16, np.int32):
        y = np.zeros(8, dt)
        over_positions(y, 1, 2, 2, 2, 1, np.zeros((2, 2), dt))
        over_rows(y.reshape(2, 4), 2, 2, 1, np.zeros((2, 2), dt))
