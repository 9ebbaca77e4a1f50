"""The max/min over bands of musicnn's front-end blocks on GEMM outputs (architectures/fastfront.py), compiled
with numba (a dependency of librosa): PyTorch's two reductions, a select and the batch-norm passes cost about
2-3x as much.

The inputs are integer views of float GEMM outputs (int16 for bfloat16, int32 for float32); see fastfront.py for
why integer max/min give musicnn's result. Each kernel keeps a running extreme of one row of channels and folds
the next position (or band) in with two plain loops (max over the first ``n_max`` channels, min over the rest),
which LLVM vectorizes; then it turns the extremes back into floats (``bits``: 16 for bf16, 0 for fp32), applies
ReLU and the batch norm's affine map, and writes each channel to its column of the front end's output
(``dest``: the weights were permuted so the max channels come first). Kernels release the GIL, so the front
end's worker threads run them side by side; they are compiled once per integer type (cached on disk where the
package directory is writable).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["over_positions", "over_rows", "warm_up"]

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
def _emit(acc, bits, scale, shift, dest, out_row, c0, tmp):
    """BN(relu(float(acc))) -> out_row[c0 + dest[c]]; tmp: int32 scratch of len(acc)."""
    n = acc.shape[0]
    for c in range(n):
        tmp[c] = np.int32(acc[c]) << bits
    val = tmp.view(np.float32)
    for c in range(n):
        out_row[c0 + dest[c]] = max(val[c], np.float32(0.0)) * scale[c] + shift[c]


@_jit
def over_positions(y, groups, group, channels, n_pos, n_max, bits, scale, shift, dest, out, c0):
    """y: (streams * n * groups * group * channels,) flat GEMM output; out: (streams, n, C_front) float32. For
    every frame, max over its first ``n_pos`` band positions of channels [0, n_max), min of the others; position
    p of a frame lies in row p // group of the frame's ``groups`` rows, column block p % group."""
    width = group * channels
    n = out.shape[1]
    acc = np.empty(channels, y.dtype)
    tmp = np.empty(channels, np.int32)
    for f in range(out.shape[0] * n):
        o0 = f * groups * width
        acc[:] = y[o0 : o0 + channels]
        for p in range(1, n_pos):
            g = p // group
            o = o0 + g * width + (p - g * group) * channels
            _vmax(acc[:n_max], y[o : o + n_max], n_max)
            _vmin(acc[n_max:], y[o + n_max : o + channels], channels - n_max)
        _emit(acc, bits, scale, shift, dest, out[f // n, f % n], c0, tmp)


@_jit
def over_rows(y, n_rows, block, channels, n_max, n, bits, scale, shift, dest, out, c0):
    """y: (streams * blocks, n_rows * width) GEMM output, width = block * channels laid out as [the max channels
    of frames 0..block-1 | their min channels]; out: (streams, n, C_front) float32. Per row group, max over the
    n_rows bands of the max channels and min of the others; frame t of block k of stream s is out[s, k * block
    + t] (frames at or past n are padding and dropped)."""
    width = block * channels
    n_min = channels - n_max
    split = block * n_max
    blocks = y.shape[0] // out.shape[0]
    acc = np.empty(width, y.dtype)
    row = np.empty(channels, y.dtype)
    tmp = np.empty(channels, np.int32)
    for r in range(y.shape[0]):
        yr = y[r]
        acc[:] = yr[:width]
        for b in range(1, n_rows):
            o = b * width
            _vmax(acc[:split], yr[o : o + split], split)
            _vmin(acc[split:], yr[o + split : o + width], width - split)
        s, k = r // blocks, r % blocks
        for t in range(block):
            frame = k * block + t
            if frame >= n:
                break
            row[:n_max] = acc[t * n_max : (t + 1) * n_max]
            row[n_max:] = acc[split + t * n_min : split + (t + 1) * n_min]
            _emit(row, bits, scale, shift, dest, out[s, frame], c0, tmp)


def warm_up() -> None:
    """Compile (or load from the cache) both kernels for both integer types."""
    f = np.float32
    for dt in (np.int16, np.int32):
        sc, de = np.ones(2, f), np.arange(2)
        for out in (np.zeros((2, 1, 2), f), np.zeros((2, 2, 2), f)[:, :1]):  # contiguous, strided
            over_positions(np.zeros(8, dt), 1, 2, 2, 2, 1, 0, sc, sc, de, out, 0)
            over_rows(np.zeros((2, 4), dt), 2, 1, 2, 1, 1, 0, sc, sc, de, out, 0)
