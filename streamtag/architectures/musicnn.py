"""musicnn (Pons & Serra, 2019): a musically motivated CNN tagger, ported from the TensorFlow original.

The network reads a log-mel patch (B, T, n_mels) in musicnn's units, log10(1 + 10000 * mel), and returns
one logit per tag; ``sigmoid(logits)`` is musicnn's output. It is fully convolutional in time followed by
global pooling, so any window length T >= 1 frame works (the published models were trained on 187 frames,
3 s at 16 kHz with hop 256).

Layout, as in ``musicnn/models.py`` of the musicnn 0.1.0 wheel (ISC license, MTG-UPF):

- input batch norm (one channel) over the whole spectrogram;
- front end: two *timbral* convs, kernels (7 frames x 38 / 67 mel bands), time padded by 3 on each side,
  and three *temporal* convs, kernels (128 / 64 / 32 frames x 1 band) with TensorFlow "same" padding in
  time; each conv is followed by ReLU, then batch norm, then a max over all remaining mel bands;
- mid end: three 1-D convs of kernel 7 over time (zero padding 3/3), ReLU then batch norm, the 2nd and 3rd
  with residual connections; front-end and mid-end features are concatenated ("dense" connection);
- back end: max and mean over time, interleaved per channel as TensorFlow's concat + flatten lays them out,
  batch norm, dropout, dense + ReLU, batch norm, dropout, output dense.

Offline tagging of a whole signal goes through :meth:`Musicnn.forward_windows`, which computes the front end once
over the sequence instead of once per overlapping window (about 2x fewer FLOPs at 1 s hops, same outputs).

Batch norm uses TensorFlow's epsilon (1e-3) and, in eval mode, the moving statistics. TensorFlow's "same"
padding puts the odd extra element at the end, which :func:`same_padding` reproduces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import WindowModel
from .fastfront import FastFront, MidGemm
from .threads import map_threads as _map_threads
from .threads import workers as _workers
from .threads import workspace

__all__ = ["MusicnnConfig", "Musicnn", "MusicnnFrames", "same_padding"]

@dataclass(frozen=True)
class MusicnnConfig:
    n_mels: int = 96  # mel bands of the input
    n_labels: int = 50  # output tags
    timbral_filters: int = 204  # filters per timbral conv: int(1.6 * 128)
    timbral_frames: int = 7  # time extent of the timbral kernels (frames)
    timbral_bands: tuple[int, ...] = (38, 67)  # mel extent of each timbral kernel: int(0.4 / 0.7 * n_mels)
    temporal_filters: int = 51  # filters per temporal conv: int(1.6 * 32)
    temporal_frames: tuple[int, ...] = (128, 64, 32)  # time extent of each temporal kernel (frames, 1 band)
    midend_filters: int = 64  # channels of the mid-end convs
    midend_frames: int = 7  # time extent of the mid-end kernels (frames)
    midend_layers: int = 3  # mid-end convs (all but the first residual)
    backend_units: int = 200  # units of the penultimate dense layer
    dropout: float = 0.5  # back-end dropout (training only)
    bn_eps: float = 1e-3  # TensorFlow's batch-norm epsilon

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; store tuples so configs compare equal after a bundle round trip
        object.__setattr__(self, "timbral_bands", tuple(int(b) for b in self.timbral_bands))
        object.__setattr__(self, "temporal_frames", tuple(int(k) for k in self.temporal_frames))
        if any(not 0 < b <= self.n_mels for b in self.timbral_bands):
            raise ConfigError(f"musicnn: timbral_bands {self.timbral_bands} must lie in [1, n_mels={self.n_mels}]")
        sizes = (self.n_mels, self.n_labels, self.timbral_filters, self.timbral_frames, self.temporal_filters,
                 self.midend_filters, self.midend_frames, self.midend_layers, self.backend_units,
                 *self.temporal_frames)
        if min(sizes) <= 0:
            raise ConfigError(f"musicnn: sizes must be positive, got {self}")

    @property
    def frontend_channels(self) -> int:
        return self.timbral_filters * len(self.timbral_bands) + self.temporal_filters * len(self.temporal_frames)

    @property
    def midend_channels(self) -> int:
        """Channels pooled by the back end: front end + every mid-end layer (dense connection)."""
        return self.frontend_channels + self.midend_filters * self.midend_layers


# windows per pass through a front-end block that forward_windows cannot share (the wide temporal convs at 1 s
# hops): its (n, C, window, n_mels) conv output stays cache-sized (docs/performance.md, "Tuning constants")
_SUB_BATCH = 2
_FRAMES_PER_PASS = 64  # MusicnnFrames.step: fewest new frames worth a worker thread of their own (one stream)
_STREAMS_PER_PASS = 4  # MusicnnFrames.step: streams per front-end pass (a 0.5 s hop's conv output is ~2 MB a stream)
# MusicnnFrames' GEMM path: about this many streams per group, each run whole on a worker thread; fewer, larger
# groups, because per-op overhead and GIL hand-overs fall faster than the cache misses grow (docs/performance.md)
_FAST_STREAMS = 64
_MIN_GROUP = 4  # fewest windows per group worth a thread of its own (a group re-runs its span's edges)


def group_size(streams: int, workers: int) -> int:
    """Streams per group when a live step's ``streams`` run as whole groups on ``workers`` threads: about
    ``_FAST_STREAMS`` each, as many groups as a multiple of the workers."""
    groups = min(streams, workers * max(1, round(streams / (_FAST_STREAMS * workers))))
    return -(-streams // max(1, groups))


def _inside(t: torch.Tensor, total: int | None) -> torch.Tensor:
    """Whether stream frames ``t`` lie in the stream (t >= 0, and before ``total`` when the length is known);
    outside it musicnn sees zero padding."""
    return (t >= 0) if total is None else (t >= 0) & (t < total)


def same_padding(kernel: int) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow's "same" for stride 1: the odd element goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class FrontendBlock(nn.Module):
    """Conv2d over (time, mel) -> ReLU -> batch norm -> max over mel. (B, 1, T, n_mels) -> (B, C, T)."""

    def __init__(self, filters: int, frames: int, bands: int, eps: float) -> None:
        super().__init__()
        self.pad = same_padding(frames)  # time only: the max over all bands follows
        self.conv = nn.Conv2d(1, filters, kernel_size=(frames, bands))
        self.bn = nn.BatchNorm2d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.valid(F.pad(x, (0, 0, *self.pad)))  # (B, C, T)

    def valid(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The block on input already padded in time: (B, 1, T + frames - 1, n_mels) -> (B, C, T). ``dtype``
        (inference only): run the convolution in it, e.g. bf16 on CUDA; the output stays in the weights' dtype."""
        if self.training:
            z = self.conv(x)  # (B, C, T, n_mels - bands + 1)
            return self.bn(F.relu(z)).amax(dim=3)  # (B, C, T)
        # Inference: batch norm is a fixed per-channel affine map a * v + b and ReLU is monotone, so the max
        # over bands of bn(relu(z)) is bn(relu(max z)) where a >= 0 and bn(relu(min z)) where a < 0. Same
        # result (monotone maps commute with max), without three passes over the large (B, C, T, F) tensor.
        # min z = -max(-z), and -z is the conv with negated weights and bias (bit for bit: negation is exact),
        # so one conv and one max over bands give every channel's extreme.
        wdt = self.conv.weight.dtype
        dt = wdt if dtype is None else dtype
        sign = torch.where(self.bn.weight >= 0, 1.0, -1.0).to(wdt)  # (C,) sign of a
        bias = self.conv.bias
        assert bias is not None  # built with a bias
        z = F.conv2d(x.to(dt), (self.conv.weight * sign.view(-1, 1, 1, 1)).to(dt), (bias * sign).to(dt))  # (B, C, T, F)
        extreme = z.amax(dim=3).to(wdt) * sign.view(1, -1, 1)  # (B, C, T)
        bn = self.bn
        return F.batch_norm(F.relu(extreme), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)  # (B, C, T)


class MidendBlock(nn.Module):
    """1-D conv over time -> ReLU -> batch norm. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, filters: int, frames: int, eps: float) -> None:
        super().__init__()
        self.pad = same_padding(frames)
        self.conv = nn.Conv1d(in_channels, filters, kernel_size=frames)
        self.bn = nn.BatchNorm1d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad)  # (B, C_in, T + frames - 1)
        return self.bn(F.relu(self.conv(x)))  # (B, C_out, T)


class _FeatureLayers(nn.Module):
    """The layers :func:`_add_feature_layers` adds, typed (for the classes that have them)."""

    input_bn: nn.BatchNorm2d
    timbral: nn.ModuleList
    temporal: nn.ModuleList
    midend: nn.ModuleList

    @property
    def timbral_blocks(self) -> tuple[FrontendBlock, ...]:
        return tuple(cast(FrontendBlock, blk) for blk in self.timbral)

    @property
    def temporal_blocks(self) -> tuple[FrontendBlock, ...]:
        return tuple(cast(FrontendBlock, blk) for blk in self.temporal)

    @property
    def front_blocks(self) -> tuple[FrontendBlock, ...]:
        """The timbral then the temporal front-end blocks, in the order their features are concatenated."""
        return tuple(cast(FrontendBlock, blk) for blk in (*self.timbral, *self.temporal))

    @property
    def mid_blocks(self) -> tuple[MidendBlock, ...]:
        return tuple(cast(MidendBlock, blk) for blk in self.midend)


def _add_feature_layers(module: nn.Module, c: MusicnnConfig) -> None:
    """musicnn's input batch norm, front end and mid end, under the parameter names the checkpoints use
    (shared by the tagger and the streaming feature extractor, so teacher weights load by name)."""
    module.input_bn = nn.BatchNorm2d(1, eps=c.bn_eps)
    module.timbral = nn.ModuleList(
        FrontendBlock(c.timbral_filters, c.timbral_frames, bands, c.bn_eps) for bands in c.timbral_bands
    )
    module.temporal = nn.ModuleList(
        FrontendBlock(c.temporal_filters, frames, 1, c.bn_eps) for frames in c.temporal_frames
    )
    module.midend = nn.ModuleList(
        MidendBlock(c.frontend_channels if i == 0 else c.midend_filters, c.midend_filters, c.midend_frames, c.bn_eps)
        for i in range(c.midend_layers)
    )


class Musicnn(_FeatureLayers, WindowModel):
    """musicnn tagger. forward: (B, T, n_mels) log10(1 + 10000 mel) -> (B, n_labels) logits."""

    stateful = False

    def __init__(self, config: MusicnnConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        _add_feature_layers(self, c)
        self.pool_bn = nn.BatchNorm1d(2 * c.midend_channels, eps=c.bn_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.dense = nn.Linear(2 * c.midend_channels, c.backend_units)
        self.dense_bn = nn.BatchNorm1d(c.backend_units, eps=c.bn_eps)
        self.out = nn.Linear(c.backend_units, c.n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.config.n_mels or x.shape[1] < 1:
            raise ValueError(f"musicnn expects (B, T >= 1, {self.config.n_mels}) log-mel, got {tuple(x.shape)}")
        if self.training or x.shape[0] <= _SUB_BATCH or x.device.type != "cpu":
            return self._forward(x)
        # inference on many windows (the live engine's streams): cache-sized passes, spread over worker threads;
        # every window's output is computed on its own, so the split changes nothing
        parts = list(torch.split(x, _SUB_BATCH))
        return torch.cat(_map_threads(self._forward, parts, _workers()))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(x.unsqueeze(1))  # (B, 1, T, n_mels)
        front = torch.cat([blk(x) for blk in self.front_blocks], dim=1)  # (B, C_front, T)
        return self._head(front)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame features the back end pools (front end + mid end). (B, T, n_mels) -> (B, C_mid, T)."""
        x = self.input_bn(x.unsqueeze(1))  # (B, 1, T, n_mels)
        return self._midend(torch.cat([blk(x) for blk in self.front_blocks], dim=1))

    def _midend(self, front: torch.Tensor) -> torch.Tensor:
        """Front-end features (B, C_front, T) -> dense mid-end features (B, C_mid, T)."""
        features = [front]
        h = front
        for i, blk in enumerate(self.mid_blocks):
            h = blk(h) if i == 0 else blk(h) + h  # (B, midend_filters, T), residual after the first
            features.append(h)
        return torch.cat(features, dim=1)  # (B, C_mid, T)

    def _head(self, front: torch.Tensor) -> torch.Tensor:
        """Mid end + back end: front-end features (B, C_front, T) -> logits (B, n_labels)."""
        feats = self._midend(front)  # (B, C_mid, T)
        # TF: concat([max, mean], axis=2) on (B, C_mid, 1) then flatten -> max_0, mean_0, max_1, mean_1, ...
        pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2)  # (B, C_mid, 2)
        pooled = self.pool_bn(pooled.flatten(1))  # (B, 2 * C_mid)
        h = self.dense_bn(F.relu(self.dense(self.dropout(pooled))))  # (B, backend_units)
        return self.out(self.dropout(h))  # (B, n_labels)

    def forward_windows(
        self, frames: torch.Tensor, ends: list[int], window: int, batch_size: int = 32, chunk_frames: int = 256
    ) -> torch.Tensor:
        """Logits (n, n_labels) of the windows ``frames[max(0, e - window) : e]`` for ``e`` in ``ends``.

        Equals stacking those windows through :meth:`forward` (to float rounding), but shares the front end
        between overlapping windows. Every front-end block is frame-local in eval mode (conv over a few frames,
        then per-frame ReLU, batch norm and max over bands), so a window's output frame equals the output of
        the same block run over the whole sequence, except the ``pad`` frames at each window edge whose
        kernels reach into the window's zero padding: those are recomputed per window from short edge slabs.
        A block is shared only where that costs fewer frames than running it per window (the wide temporal
        kernels with 1 s hops are not). Mid and back ends run per window. On the CPU, groups of windows run on
        ``torch.get_num_threads()`` threads of one intra-op thread each (see :func:`.threads.map_threads`); the result
        does not depend on the grouping. frames: (T, n_mels).
        """
        c = self.config
        if frames.dim() != 2 or frames.shape[1] != c.n_mels or frames.shape[0] < 1:
            raise ValueError(f"musicnn expects frames (T >= 1, {c.n_mels}), got {tuple(frames.shape)}")
        n_frames = frames.shape[0]
        ends = [int(e) for e in ends]
        if any(not 0 < e <= n_frames for e in ends) or window < 1:
            raise ValueError(f"window ends must lie in [1, {n_frames}] and window >= 1, got {ends[:4]}, {window}")
        if not ends:
            return frames.new_zeros((0, c.n_labels))
        starts = [max(0, e - window) for e in ends]
        if self.training or len({e - s for s, e in zip(starts, ends)}) > 1:
            # batch statistics are not frame-local; windows of unequal length do not stack
            return torch.cat([self(frames[None, s:e]) for s, e in zip(starts, ends)])
        length = ends[0] - starts[0]
        x = self.input_bn(frames[None, None])  # (1, 1, T, n_mels), an elementwise affine map in eval mode
        workers = _workers() if frames.device.type == "cpu" else 1
        # groups of windows are independent: spread them evenly over the workers (each group shares its span)
        n_groups = max(1, math.ceil(len(ends) / batch_size))
        if workers > 1 and len(ends) >= 2 * _MIN_GROUP:
            n_groups = workers * math.ceil(n_groups / workers)
        size = math.ceil(len(ends) / n_groups)
        groups = [starts[g : g + size] for g in range(0, len(starts), size)]
        out = _map_threads(lambda g: self._window_group(x, g, length, chunk_frames), groups, workers, transient=True)
        return torch.cat(out)

    def _window_group(self, x: torch.Tensor, starts: list[int], length: int, chunk_frames: int) -> torch.Tensor:
        """forward_windows for windows ``x[s : s + length]`` of one group. x (1, 1, T, n_mels) normalized."""
        g_starts = torch.tensor(starts, device=x.device)
        n = g_starts.shape[0]
        a, b = int(g_starts.min()), int(g_starts.max()) + length  # frames spanned by this group
        idx = g_starts[:, None] + torch.arange(length, device=x.device)  # (n, length)
        wins = x[0, 0][idx].unsqueeze(1)  # (n, 1, length, n_mels)
        feats = []
        for blk in self.front_blocks:
            k = blk.conv.kernel_size[0]
            pl, pr = blk.pad
            shared = length > pl + pr and (b - a) + n * (pl + pr) < n * length
            if not shared:  # a few windows at a time: the (n, C, length, bands) conv output is large
                feats.append(torch.cat([blk(wins[i : i + _SUB_BATCH]) for i in range(0, n, _SUB_BATCH)]))
                continue
            xs = F.pad(x[:, :, a:b], (0, 0, pl, pr))  # (1, 1, span + k - 1, n_mels)
            span = torch.cat(
                [blk.valid(xs[:, :, c0 : min(c0 + chunk_frames, b - a) + k - 1])
                 for c0 in range(0, b - a, chunk_frames)],
                dim=2,
            )  # (1, C, span)
            f = span[0][:, idx - a].permute(1, 0, 2).contiguous()  # (n, C, length)
            if pl:  # first pl frames: kernels reach into the zero padding before the window
                f[:, :, :pl] = blk.valid(F.pad(wins[:, :, : k - 1], (0, 0, pl, 0)))  # (n, C, pl)
            if pr:  # last pr frames: kernels reach into the zero padding after the window
                f[:, :, length - pr :] = blk.valid(F.pad(wins[:, :, length - k + 1 :], (0, 0, 0, pr)))
            feats.append(f)
        return self._head(torch.cat(feats, dim=1))  # (n, n_labels)


class MusicnnFrames(_FeatureLayers):
    """musicnn's front end and mid end as a causal, streaming per-frame feature extractor.

    ``step(x, state)`` takes the log-mel frames that arrived since the last call, (B, n, n_mels) in musicnn's
    units, and returns one feature vector per new frame, (B, n, midend_channels): the dense concatenation
    [front end | mid-end layer 1 | 2 | 3] that musicnn's back end pools. Output ``j`` is musicnn's
    "same"-padded feature of stream frame ``j - delay`` (``delay`` = 64 + 3 x 3 = 73 frames, 1.17 s: the
    widest temporal kernel and the mid-end kernels look that far ahead), and zeros for ``j < delay``.

    So the feature of every stream frame ``t`` that is at least ``delay`` frames from the end equals what
    :meth:`Musicnn.frame_features` computes offline over the whole stream, exactly as musicnn pads it (zeros
    before the stream's first frame), whatever the chunking: a chunked run equals a full run.

    State: one (B, state_size) tensor, ``[input history | per-level histories | frames seen]``; the histories
    hold the last frames each level's kernels need, so a hop costs only its new frames.
    Parameter names equal :class:`Musicnn`'s, so a teacher's weights load by prefix.
    """

    def __init__(self, config: MusicnnConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        _add_feature_layers(self, c)
        blocks = self.front_blocks
        self.left = max(b.pad[0] for b in blocks)  # input frames before a front-end frame its kernels read
        self.right = max(b.pad[1] for b in blocks)  # ... and after it
        self.mid_left, self.mid_right = same_padding(c.midend_frames)
        n_mid = c.midend_layers
        self.delay = self.right + n_mid * self.mid_right
        # level j (0: front end, 1..n_mid: mid-end layers) keeps H_j frames: its kernel's reach (levels that
        # feed a conv) and the delay that aligns it with the last level in the concatenation
        self.level_channels = [c.frontend_channels] + [c.midend_filters] * n_mid
        self.level_hist = [
            max(self.mid_left + self.mid_right if j < n_mid else 0, (n_mid - j) * self.mid_right) for j in range(n_mid + 1)
        ]
        self.in_hist = self.left + self.right
        self.compute_dtype = torch.float32  # set_precision: bfloat16 runs the convolutions as bf16 GEMMs
        self.gemm_front = True  # the CPU runs bf16 or live channels as GEMMs (False: the convolutions, as CUDA; tests)
        self.live: torch.Tensor | None = None  # set_live_channels: the front-end channels computed (bool)
        self._live_idx = torch.zeros(0, dtype=torch.long)
        self._fast: FastFront | None = None
        self._fast_mid: list[MidGemm] = []
        self.requires_grad_(False)  # frozen teacher layers: always inference statistics
        super().train(False)

    def set_precision(self, precision: str) -> None:
        """"fp32" (musicnn's own float32 convolutions, the reference) or "bf16": the front end as bfloat16
        GEMMs on the CPU (architectures/fastfront.py; bf16 convolutions on CUDA) and the mid end in bfloat16.
        Features then differ from float32 by about 1e-2 relative; every state and output stays float32."""
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
        self.compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._fast = None  # rebuilt from the (frozen) weights on first use

    def set_live_channels(self, channels: list[int] | tuple[int, ...] | None) -> None:
        """Compute only these front-end channels (indices into the C_front = timbral + temporal outputs) on the
        CPU; every other channel is taken to be inactive, i.e. its ReLU output is 0 on every frame, so its feature
        is its batch norm's shift. Most of musicnn's channels are like that on real music (its ReLU follows the
        max or min over bands, which for most filters never leaves the negative side): research/liveness.py
        measures which, and the student bundles store the list. The answers then equal the full front end's
        wherever those channels are indeed inactive. None: all channels (the default; CUDA always computes all)."""
        if channels is None:
            self.live = None
        else:
            live = torch.zeros(self.config.frontend_channels, dtype=torch.bool)
            idx = torch.as_tensor(list(channels), dtype=torch.long)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= live.numel()):
                raise ConfigError(f"live channels must lie in [0, {live.numel()}), got {list(channels)[:4]}...")
            live[idx] = True
            self.live = live
            self._live_idx = torch.nonzero(live)[:, 0]
        self._fast = None

    def inactive_features(self) -> torch.Tensor:
        """(C_front,) each front-end channel's feature when its ReLU output is 0: its batch norm's shift."""
        return self._fast_parts()[0].inactive

    @property
    def n_live(self) -> int:
        """Front-end channels computed on the CPU's GEMM path (all of them without set_live_channels)."""
        return self.config.frontend_channels if self.live is None else int(self.live.sum())

    @property
    def compact_channels(self) -> int:
        """Width of :meth:`step_compact`'s values: the live front-end channels, then the mid end's."""
        return self.n_live + self.config.midend_filters * self.config.midend_layers

    def expand(self, values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """Compact features (B, n, compact_channels) and their frames' inside flags (B, n) -> all the features
        (B, n, channels): an inactive channel's feature is its batch-norm shift inside the stream, 0 outside."""
        if self.live is None:
            return values
        fast, _ = self._fast_parts()
        B, n, _ = values.shape
        C0 = self.config.frontend_channels
        out = values.new_empty((B, n, self.channels))
        out[:, :, :C0] = inside[:, :, None] * fast.inactive
        out[:, :, :C0][:, :, self.live] = values[:, :, : self.n_live]
        out[:, :, C0:] = values[:, :, self.n_live :]
        return out

    def train(self, mode: bool = True) -> MusicnnFrames:
        return super().train(False)

    @property
    def channels(self) -> int:
        return self.config.midend_channels

    @property
    def state_size(self) -> int:
        return self.in_hist * self.config.n_mels + sum(h * c for h, c in zip(self.level_hist, self.level_channels)) + 1

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.zeros(batch_size, self.state_size, device=device)

    def _unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        B = state.shape[0]
        o = self.in_hist * self.config.n_mels
        xh = state[:, :o].view(B, self.in_hist, self.config.n_mels)
        hs = []
        for h, c in zip(self.level_hist, self.level_channels):
            hs.append(state[:, o : o + h * c].view(B, c, h))  # channels first, as the convs want
            o += h * c
        return xh, hs, state[:, -1]

    @staticmethod
    def _pack(xh: torch.Tensor, hs: list[torch.Tensor], n: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        B = xh.shape[0]
        return torch.cat([xh.reshape(B, -1), *(h.reshape(B, -1) for h in hs), n[:, None]], dim=1, out=out)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The input batch norm (an affine map in eval mode). x (B, n, n_mels) -> (B, n, n_mels)."""
        return self.input_bn(x.unsqueeze(1)).squeeze(1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New log-mel frames (B, n, n_mels) -> (features (B, n, channels), new state)."""
        return self.step_normalized(self.normalize(x), state)

    @torch.no_grad()
    def step_normalized(
        self, x: torch.Tensor, state: torch.Tensor, total: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` on frames already through the input batch norm (zeros are musicnn's padding).
        ``total``: the stream's length in frames when it is known (offline), so frames past it are padding."""
        B, n, _ = x.shape
        if self._gemm_path(x):
            values, inside, state = self._step_fast(x, state, total)
            return self.expand(values, inside), state
        xh, hs, count = self._unpack(state.to(x.dtype))
        if n == 0:
            return x.new_zeros((B, 0, self.channels)), state
        z = torch.cat([xh, x], dim=1).unsqueeze(1)  # (B, 1, in_hist + n, n_mels)
        workers = _workers()
        if B > _STREAMS_PER_PASS and x.device.type == "cpu":  # many streams: cache-sized passes on worker threads
            parts = list(torch.split(z, _STREAMS_PER_PASS))
            new = torch.cat(_map_threads(lambda zb: self._front(zb, n), parts, workers))
        elif n >= 2 * _FRAMES_PER_PASS and workers > 1 and x.device.type == "cpu":
            # few streams, many new frames (a file's span): split time across worker threads; output frame t
            # reads only z[t : t + in_hist + 1], so the parts are the same convolutions as one pass
            cuts = [round(i * n / workers) for i in range(workers + 1)]
            spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
            new = torch.cat(_map_threads(lambda ab: self._front(z[:, :, ab[0]:], ab[1] - ab[0]), spans, workers,
                                         transient=True), dim=2)
        else:
            new = self._front(z, n)  # (B, C0, n): stream frames count - right + k
        ar = torch.arange(n, device=x.device, dtype=count.dtype)
        levels, new_hs = [], []
        for j, h in enumerate(hs):
            delay = self.right + j * self.mid_right
            t = count[:, None] - delay + ar  # (B, n) stream frame of each new output of this level
            inside = _inside(t, total)
            new = new * inside.to(new.dtype)[:, None, :]  # musicnn's zero padding outside the stream
            zj = torch.cat([h, new], dim=2)  # (B, C_j, H_j + n)
            H = h.shape[2]
            lag = (len(hs) - 1 - j) * self.mid_right  # frames level j is behind the last level
            levels.append(zj[:, :, H - lag : H - lag + n])
            new_hs.append(zj[:, :, zj.shape[2] - H :] if H else h)
            if j + 1 < len(hs):
                out = self._mid(j, zj[:, :, H - self.mid_left - self.mid_right :])  # (B, C, n)
                new = out if j == 0 else out + zj[:, :, H - self.mid_right : H - self.mid_right + n]
        feats = torch.cat(levels, dim=1).transpose(1, 2)  # (B, n, channels)
        xh = z[:, 0, z.shape[2] - self.in_hist :]
        return feats, self._pack(xh, new_hs, count + n)

    # -- the CPU's GEMM path (bf16, or live channels only): frames first, every stage a GEMM (fastfront.py) ----
    def _gemm_path(self, x: torch.Tensor) -> bool:
        return bool(x.shape[1]) and x.device.type == "cpu" and self.gemm_front and (
            self.compute_dtype != torch.float32 or self.live is not None)

    @torch.no_grad()
    def step_compact(self, x: torch.Tensor, state: torch.Tensor, out: torch.Tensor | None = None, *,
                     split: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """:meth:`step` without writing out the inactive channels: (values (B, n, compact_channels), inside
        (B, n), state) on the CPU's GEMM path (see :meth:`expand`), else (features (B, n, channels), None, state).
        ``out``: where to write the new state (B, state_size), e.g. a slice of the caller's own state. ``split``
        False: the GEMM path runs the streams as one group on this thread (the caller spreads the work itself)."""
        x = self.normalize(x)
        if self._gemm_path(x):
            return self._step_fast(x, state, None, out, split=split)
        feats, state = self.step_normalized(x, state)
        if out is not None:
            state = out.copy_(state)
        return feats, None, state

    def _fast_parts(self) -> tuple[FastFront, list[MidGemm]]:
        if self._fast is None or self._fast.dtype != self.compute_dtype:
            dt = self.compute_dtype
            fast = FastFront(list(self.timbral_blocks), list(self.temporal_blocks), n_mels=self.config.n_mels,
                             left=self.left, dtype=dt, live=self.live, compact=self.live is not None)
            mids = [MidGemm(b.conv, b.bn, dt) for b in self.mid_blocks]
            if self.live is not None:
                # the first mid-end conv reads the live channels, plus one more: the inactive channels' constant
                # features summed into one weight per tap, times a 0/1 column that says whether the frame is in
                # the stream (outside it every feature is musicnn's zero padding)
                w = self.mid_blocks[0].conv.weight.detach().float()  # (C, C_front, k)
                dead = torch.einsum("cik,i->ck", w[:, ~self.live], fast.inactive[~self.live])
                mids[0] = MidGemm(self.mid_blocks[0].conv, self.mid_blocks[0].bn, dt,
                                  torch.cat([w[:, self.live], dead[:, None]], dim=1))
            self._fast, self._fast_mid = fast, mids
        return self._fast, self._fast_mid

    def _step_fast(self, x: torch.Tensor, state: torch.Tensor, total: int | None,
                   out: torch.Tensor | None = None, *, split: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """step_normalized on the CPU's GEMM path -> (compact values, inside flags, state); see step_compact.
        Streams are independent, so groups of ``_FAST_STREAMS`` run whole (front end, masks, mid end) on worker
        threads; a few streams with many new frames (a file's span) split the front end in time instead. Same
        outputs either way."""
        B, n, _ = x.shape
        fast, _ = self._fast_parts()
        workers = _workers() if split else 1
        if B > 1 or workers <= 1 or n < 2 * _FRAMES_PER_PASS:
            # each group writes its rows of these (no concatenation of the groups' results afterwards)
            values = x.new_empty((B, n, self.compact_channels))
            inside = x.new_empty((B, n))
            new_state = state.new_empty((B, self.state_size)) if out is None else out
            S = group_size(B, workers)
            _map_threads(lambda a: self._fast_group(x[a : a + S], state[a : a + S], total, None,
                                                    (values[a : a + S], inside[a : a + S], new_state[a : a + S])),
                         list(range(0, B, S)), workers)
            return values, inside, new_state
        xh = self._unpack(state.to(x.dtype))[0]
        z = torch.cat([xh, x], dim=1)  # (B, in_hist + n, n_mels)
        cuts = [round(i * n / workers) for i in range(workers + 1)]
        spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        parts = _map_threads(lambda ab: fast.frames_first(z[:, ab[0] :], ab[1] - ab[0]), spans, workers, transient=True)
        front = torch.cat(parts, dim=1)  # (B, n, width)
        return self._fast_group(x, state, total, front, None if out is None else (None, None, out))

    def _fast_group(self, x: torch.Tensor, state: torch.Tensor, total: int | None, front: torch.Tensor | None,
                    out: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames-first step of a group of streams: x (b, n, n_mels) normalized, front (b, n, n_live) when known
        -> (compact values, inside flags, state). Level j's history and new frames share one per-thread buffer
        (b, H_j + n, C_j), written in place; with live channels, level 0 holds only those plus a 0/1 column that
        says whether the frame is in the stream (see _fast_parts)."""
        fast, mids = self._fast_parts()
        b, n, n_mels = x.shape
        xh, hs, count = self._unpack(state.to(x.dtype))
        z = workspace("fz", (b, self.in_hist + n, n_mels), x.dtype)  # the input with its history
        z[:, : self.in_hist] = xh
        z[:, self.in_hist :] = x
        pruned = self.live is not None
        ar = torch.arange(n, device=x.device, dtype=count.dtype)
        levels = []
        for j, (h, c) in enumerate(zip(hs, self.level_channels)):
            H = h.shape[2]
            if j == 0 and pruned:
                zj = workspace("fz0", (b, H + n, self.n_live + 1), x.dtype)
                t = count[:, None] - self.right - H + torch.arange(H + n, dtype=count.dtype)  # (b, H + n) frames
                zj[:, :, -1] = _inside(t, total).to(zj.dtype)
                if H:
                    zj[:, :H, :-1] = h[:, self._live_idx].transpose(1, 2)
            else:
                zj = workspace(f"fz{j}", (b, H + n, c), x.dtype)
                if H:
                    zj[:, :H] = h.transpose(1, 2)
            levels.append(zj)
        z0_new = levels[0][:, levels[0].shape[1] - n :, : fast.width]
        if front is None:
            fast.frames_first(z, n, z0_new)
        else:
            z0_new.copy_(front)
        first, last = float(count.min()), float(count.max()) + n  # stream frames this call covers (CPU: cheap)
        for j, zj in enumerate(levels):
            H = zj.shape[1] - n
            delay = self.right + j * self.mid_right
            if first - delay < 0 or (total is not None and last - delay > total):
                t = count[:, None] - delay + ar  # (b, n) stream frame of each new output
                inside = _inside(t, total)
                zj[:, H:] *= inside.to(zj.dtype)[:, :, None]  # musicnn's zero padding outside the stream
            if j + 1 < len(levels):
                nxt = levels[j + 1]
                residual = zj[:, H - self.mid_right : H - self.mid_right + n] if j else None
                mids[j](zj[:, H - self.mid_left - self.mid_right :], nxt[:, nxt.shape[1] - n :], residual)
        values = torch.empty(b, n, self.compact_channels, dtype=x.dtype) if out is None or out[0] is None else out[0]
        c0 = 0
        new_hs = []
        for j, zj in enumerate(levels):
            H = zj.shape[1] - n
            lag = (len(levels) - 1 - j) * self.mid_right  # frames level j is behind the last level
            width = fast.width if j == 0 else zj.shape[2]
            values[:, :, c0 : c0 + width] = zj[:, H - lag : H - lag + n, :width]
            c0 += width
            if j == 0 and pruned:  # the state keeps every channel's history, channels first
                ind = zj[:, n:, -1]  # (b, H) inside flags of the kept frames
                full = ind[:, None, :] * fast.inactive[:, None]  # (b, C_front, H)
                full[:, self._live_idx] = zj[:, n:, :-1].transpose(1, 2)
                new_hs.append(full)
            else:
                new_hs.append(zj[:, n:].transpose(1, 2))
        t = count[:, None] - self.delay + ar  # stream frame each output describes
        flags = _inside(t, total).to(x.dtype)
        inside = flags if out is None or out[1] is None else out[1].copy_(flags)
        return values, inside, self._pack(z[:, n:], new_hs, count + n, None if out is None else out[2])

    def _front(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """Front-end features of the n newest frames: z (B, 1, in_hist + n, n_mels) -> (B, C0, n)."""
        dt = self.compute_dtype
        front = []
        for blk in self.front_blocks:
            pl, pr = blk.pad
            x = z[:, :, self.left - pl : self.left + n + pr]
            front.append(blk.valid(x, dt))  # (B, C, n)
        return torch.cat(front, dim=1)

    def _mid(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Mid-end layer j's conv -> ReLU -> batch norm on (B, C_in, frames) -> (B, C, frames - kernel + 1)."""
        mid = self.mid_blocks[j]
        dt = self.compute_dtype
        if dt == torch.float32:
            return mid.bn(F.relu(mid.conv(x)))
        bias = mid.conv.bias
        assert bias is not None
        z = F.conv1d(x.to(dt), mid.conv.weight.to(dt), bias.to(dt))
        return mid.bn(F.relu(z.float()))

    @torch.no_grad()
    def offline(self, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Features of every frame of whole sequences, musicnn's "same" padding at both ends.
        x (B, T, n_mels) -> (B, T, channels); equals :meth:`Musicnn.frame_features` (transposed)."""
        B, T, _ = x.shape
        z = torch.cat([self.normalize(x), x.new_zeros((B, self.delay, x.shape[2]))], dim=1)  # trailing padding
        state = self.init_state(B, x.device)
        out = []
        for s in range(0, z.shape[1], chunk):
            f, state = self.step_normalized(z[:, s : s + chunk], state, total=T)
            out.append(f)
        return torch.cat(out, dim=1)[:, self.delay :]
