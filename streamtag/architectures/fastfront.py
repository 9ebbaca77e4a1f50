"""musicnn's front end as matrix products, for bfloat16 (AMX) or float32 GEMMs on the CPU.

Each front-end block of musicnn is ``conv -> ReLU -> batch norm -> max over mel bands`` (architectures/musicnn.py).
A one-input-channel convolution runs far below a CPU's matrix-multiply speed (oneDNN's conv2d reached
~130 GFLOP/s fp32 and ~200 GFLOP/s bf16 on this project's 2-core build machine, where a bf16 GEMM on AMX tiles
runs at ~1 TFLOP/s per core), so this module writes every block as ONE GEMM with a small input:

- **timbral** blocks (kernel 7 frames x KF bands, max over the 96 - KF + 1 band positions): the output positions
  are grouped ``G`` at a time. One row of the input matrix holds the 7 frames x (G + KF - 1) bands a group reads
  (a banded im2col, ``G``x smaller than one row per position), and the weight matrix is banded Toeplitz: column
  (g, c) holds filter c shifted by g bands. ``X (frames * groups, 7 * span + 1) @ M (7 * span + 1, G * C)``.
- **temporal** blocks (kernel KT frames x 1 band, max over the 96 bands): a Toeplitz matrix in time. One row holds
  ``nb + KT - 1`` consecutive frames of one band, the weights give ``nb`` output frames per row:
  ``X (streams * bands * blocks, nb + KT) @ M (nb + KT, nb * C)``; the input rows are the frames themselves.

The last input column is 1 and the last weight row the conv bias, so the GEMM yields ``z + b`` directly.

The max over bands then needs, per channel with batch-norm scale a >= 0, ``relu(max z)`` and, with a < 0,
``relu(min z)`` (``bn(relu(.))`` is monotone; :meth:`FrontendBlock.valid` uses the same identity). Both are
taken on the raw bits: an IEEE float (bf16 or fp32) whose sign bit is clear orders like its bits read as a
signed integer, and every negative float reads as a negative integer. So ``relu(max)`` and ``relu(min)`` of the
integer view equal those of the floats (a negative result, whichever, becomes 0), and integer max/min run
several times faster than the float reductions on bf16. Results equal :meth:`FrontendBlock.valid` up to the
GEMM's rounding (float32: summation order, ~1e-6 relative; bfloat16: bf16 inputs and outputs, ~1e-2 relative).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .musicnn import FrontendBlock

__all__ = ["FastFront", "MidGemm", "bf16_native"]

_local = threading.local()  # per-thread workspaces: a fresh multi-MB GEMM output per call costs page faults
_INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reusable (never shrunk) per-thread buffer viewed as ``shape``; contents undefined."""
    store = getattr(_local, "store", None)
    if store is None:
        store = _local.store = {}
    n = 1
    for s in shape:
        n *= s
    buf = store.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = store[name] = torch.empty(max(n, 1), dtype=dtype)
    return buf[:n].view(shape)


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), as oneDNN reports."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _bn_affine(blk: FrontendBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as scale * v + shift, and the channel order that puts the channels with
    scale >= 0 (max over bands) before those with scale < 0 (min over bands)."""
    bn = blk.bn
    assert bn.running_mean is not None and bn.running_var is not None
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().float()
    shift = (bn.bias.detach() - bn.running_mean * scale).float()
    positive = bn.weight.detach() >= 0
    order = torch.cat([torch.nonzero(positive)[:, 0], torch.nonzero(~positive)[:, 0]])
    return scale, shift, order


# -- the max/min over bands: numba kernels (bandmax.py), or PyTorch's reductions where numba cannot be imported
_bandmax: object | None = None
_bandmax_lock = threading.Lock()


def _kernels() -> object | None:
    global _bandmax
    with _bandmax_lock:
        if _bandmax is None:
            try:
                from . import bandmax

                _bandmax = bandmax
            except ImportError:  # pragma: no cover - numba comes with librosa
                _bandmax = False
        return _bandmax or None


def _finish(ext: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor, shift: torch.Tensor, inverse: torch.Tensor,
            out: torch.Tensor) -> None:
    """Integer-view extremes (..., C) in permuted channel order -> out = BN(relu(.)) in musicnn's order."""
    v = ext.view(dtype).float().clamp_min_(0.0)
    torch.addcmul(shift, v, scale, out=v)
    out.copy_(v[..., inverse])


class _Timbral:
    """One timbral block: conv (KT x KF) over (time, band) -> ReLU -> BN -> max over band positions."""

    def __init__(self, blk: FrontendBlock, n_mels: int, group: int, dtype: torch.dtype) -> None:
        scale, shift, order = _bn_affine(blk)
        w = blk.conv.weight.detach().float()[order]  # (C, 1, KT, KF), max channels first
        assert blk.conv.bias is not None
        C, _, KT, KF = w.shape
        self.C, self.KT, self.KF, self.G, self.dtype = C, KT, KF, group, dtype
        self.P = n_mels - KF + 1  # band positions musicnn maxes over
        self.groups = -(-self.P // group)
        self.span = group + KF - 1  # bands one group reads
        self.pad = self.groups * group + KF - 1 - n_mels  # zero bands appended so the last group is whole
        m = torch.zeros(KT, self.span, group, C)
        for g in range(group):
            m[:, g : g + KF, g, :] = w[:, 0].permute(1, 2, 0)  # (KT, KF, C) at band offset g
        bias = blk.conv.bias.detach().float()[order].repeat(group)[None]  # (1, G * C)
        self.M = torch.cat([m.reshape(KT * self.span, group * C), bias]).to(dtype)  # (K + 1, G * C)
        self.n_max = int((blk.bn.weight >= 0).sum())
        self.scale, self.shift, self.inverse = scale[order], shift[order], torch.argsort(order)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """x (B, n + KT - 1, n_mels) in ``dtype`` -> out (B, n, C) float32 (may be a strided view)."""
        B, n = x.shape[0], x.shape[1] - self.KT + 1
        if self.pad:
            x = F.pad(x, (0, self.pad))
        patches = x.unfold(1, self.KT, 1).unfold(2, self.span, self.G)  # (B, n, groups, KT, span), a view
        K = self.KT * self.span
        rows = B * n * self.groups
        X = _buffer(f"tX{self.KF}", (rows, K + 1), self.dtype)
        X[:, :K].view(B, n, self.groups, self.KT, self.span).copy_(patches)
        X[:, K] = 1.0
        Y = torch.matmul(X, self.M, out=_buffer(f"tY{self.KF}", (rows, self.M.shape[1]), self.dtype))
        y = Y.view(_INT[self.dtype])
        kernels: Any = _kernels()
        if kernels is not None:
            ext = _buffer(f"tE{self.KF}", (B * n, self.C), _INT[self.dtype])
            kernels.over_positions(y.view(-1).numpy(), self.groups, self.G, self.C, self.P, self.n_max, ext.numpy())
        else:
            yv = y.view(B * n, self.groups * self.G, self.C)[:, : self.P]
            ext = torch.cat([yv[..., : self.n_max].amax(1), yv[..., self.n_max :].amin(1)], dim=1)
        _finish(ext.view(B, n, self.C), self.dtype, self.scale, self.shift, self.inverse, out)


class _Temporal:
    """One temporal block: conv (KT x 1) over time in every band -> ReLU -> BN -> max over bands."""

    def __init__(self, blk: FrontendBlock, block: int, dtype: torch.dtype) -> None:
        scale, shift, order = _bn_affine(blk)
        w = blk.conv.weight.detach().float()[order][:, 0, :, 0]  # (C, KT), max channels first
        assert blk.conv.bias is not None
        C, KT = w.shape
        self.C, self.KT, self.nb, self.dtype = C, KT, block, dtype
        self.n_max = int((blk.bn.weight >= 0).sum())
        self.K = block + KT - 1  # input frames of one row
        m = torch.zeros(self.K, block, C)
        for t in range(block):
            m[t : t + KT, t, :] = w.T  # output frame t of the row reads input frames t .. t + KT - 1
        # columns: the max channels of every output frame, then the min channels of every output frame
        m = torch.cat([m[:, :, : self.n_max].reshape(self.K, -1), m[:, :, self.n_max :].reshape(self.K, -1)], dim=1)
        b = blk.conv.bias.detach().float()[order]
        bias = torch.cat([b[: self.n_max].repeat(block), b[self.n_max :].repeat(block)])[None]
        self.M = torch.cat([m, bias]).to(dtype)  # (K + 1, nb * C)
        self.scale, self.shift, self.inverse = scale[order], shift[order], torch.argsort(order)

    def __call__(self, xt: torch.Tensor, out: torch.Tensor) -> None:
        """xt (B, n_mels, n + KT - 1) in ``dtype``, time last -> out (B, n, C) float32 (may be a strided view)."""
        B, NM, L = xt.shape
        n = L - self.KT + 1
        blocks = -(-n // self.nb)
        need = blocks * self.nb + self.KT - 1
        if need > L:  # the last block's missing frames: zeros, whose outputs are cut off below
            xt = F.pad(xt, (0, need - L))
        X = _buffer(f"pX{self.KT}", (B, blocks, NM, self.K + 1), self.dtype)  # rows (stream, block, band)
        X[..., : self.K].copy_(xt.unfold(2, self.K, self.nb).transpose(1, 2))  # (B, blocks, NM, K)
        X[..., self.K] = 1.0
        width = self.nb * self.C
        Y = torch.matmul(X.view(-1, self.K + 1), self.M,
                         out=_buffer(f"pY{self.KT}", (B * blocks * NM, width), self.dtype))
        y = Y.view(_INT[self.dtype])
        kernels: Any = _kernels()
        n_max = self.nb * self.n_max
        if kernels is not None:
            ext = _buffer(f"pE{self.KT}", (B * blocks, width), _INT[self.dtype])
            kernels.over_rows(y.view(B * blocks, NM * width).numpy(), NM, width, n_max, ext.numpy())
        else:
            yv = y.view(B * blocks, NM, width)
            ext = torch.cat([yv[..., :n_max].amax(1), yv[..., n_max:].amin(1)], dim=1)
        # (B * blocks, [nb x max channels | nb x min channels]) -> (B, blocks * nb, C) permuted channel order
        e = ext.view(B, blocks, width)
        e = torch.cat([e[..., :n_max].reshape(B, blocks, self.nb, self.n_max),
                       e[..., n_max:].reshape(B, blocks, self.nb, self.C - self.n_max)], dim=3)
        _finish(e.reshape(B, blocks * self.nb, self.C)[:, :n], self.dtype, self.scale, self.shift, self.inverse,
                out)


class FastFront:
    """The front-end blocks of a :class:`~.musicnn.MusicnnFrames` (timbral then temporal) as GEMMs in ``dtype``.

    ``front(z, n)`` has the contract of ``MusicnnFrames._front``: z (B, 1, left + n + right, n_mels), the
    normalized input with its history, -> (B, C_front, n) float32 features of the n newest frames. The weights
    are copied at construction (the blocks are frozen)."""

    def __init__(self, timbral: list[FrontendBlock], temporal: list[FrontendBlock], *, n_mels: int, left: int,
                 dtype: torch.dtype = torch.bfloat16, temporal_block: int = 16) -> None:
        if dtype not in _INT:
            raise ValueError(f"FastFront computes in bfloat16 or float32, not {dtype}")
        self.dtype, self.left = dtype, left
        self.timbral = [(blk.pad, _Timbral(blk, n_mels, 4 if blk.conv.kernel_size[1] <= 48 else 3, dtype))
                        for blk in timbral]
        self.temporal = [(blk.pad, _Temporal(blk, temporal_block, dtype)) for blk in temporal]

        self.channels = sum(t.C for _, t in self.timbral) + sum(t.C for _, t in self.temporal)

    def front(self, z: torch.Tensor, n: int) -> torch.Tensor:
        return self.frames_first(z[:, 0], n).transpose(1, 2)  # (B, C_front, n)

    def frames_first(self, z: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, left + n + right, n_mels) normalized input with history -> (B, n, C_front) float32 (into
        ``out`` when given)."""
        B = z.shape[0]
        if out is None:
            out = torch.empty(B, n, self.channels)
        x = z.to(self.dtype)  # (B, L, n_mels)
        c0 = 0
        for (pl, pr), t in self.timbral:
            t(x[:, self.left - pl : self.left + n + pr], out[:, :, c0 : c0 + t.C])
            c0 += t.C
        xt = x.transpose(1, 2).contiguous()  # (B, n_mels, L): each band's frames contiguous for the Toeplitz rows
        for (pl, pr), tp in self.temporal:
            tp(xt[:, :, self.left - pl : self.left + n + pr], out[:, :, c0 : c0 + tp.C])
            c0 += tp.C
        return out


class MidGemm:
    """A mid-end conv (C_in -> C, kernel k over time) -> ReLU -> BN as an im2col GEMM in ``dtype``, frames first."""

    def __init__(self, conv: torch.nn.Conv1d, bn: torch.nn.BatchNorm1d, dtype: torch.dtype) -> None:
        w = conv.weight.detach().float()  # (C, C_in, k)
        assert conv.bias is not None and bn.running_mean is not None and bn.running_var is not None
        self.k, self.dtype = w.shape[2], dtype
        self.W = w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous().to(dtype)  # (k * C_in, C): rows (tap, c_in)
        self.bias = conv.bias.detach().float()
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().float()
        self.scale, self.shift = scale, (bn.bias.detach() - bn.running_mean * scale).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n + k - 1, C_in) float32 -> (B, n, C) float32."""
        B, L, C_in = x.shape
        n = L - self.k + 1
        X = _buffer(f"mX{C_in}", (B, n, self.k, C_in), self.dtype)
        for d in range(self.k):  # tap-major rows: k contiguous copies instead of a transposing gather
            X[:, :, d].copy_(x[:, d : d + n])
        y = torch.matmul(X.view(B * n, self.k * C_in), self.W).float()  # (Bn, C)
        y = (y + self.bias).clamp_min_(0.0)
        return torch.addcmul(self.shift, y, self.scale).view(B, n, -1)
