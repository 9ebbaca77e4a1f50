"""st-gru-msd's head (architectures/gru.py: StatefulGRUTagger) on the compact features of the CPU's GEMM path.

The head's first layers are LayerNorm over the 753 musicnn features, then Linear(753 -> 128). On the GEMM path
(musicnn.MusicnnFrames.step_compact) most front-end channels are not computed: they are inactive, so their
feature is a constant c inside the stream and 0 in musicnn's padding before it (flag s = 1 / 0 per frame). The
LayerNorm and the Linear then need only the live channels' values v and s:

    mean = (sum v + s * sum c) / 753,  var = (sum v^2 + s * sum c^2) / 753 - mean^2,  r = 1 / sqrt(var + eps)
    Linear(LN(x)) = r * (v @ (W_live * g_live)^T + s * u1) - mean * r * u2 + u3
    u1 = W_dead @ (g_dead * c),  u2 = W @ g,  u3 = W @ b_ln + b_linear

which equals the full computation (to float rounding). The GRU is then stepped by hand (PyTorch's gate order
r, z, n), one matrix product per frame for both its input and its state, in bfloat16 (AMX) where asked, with
float32 state and gates; the EMA read-out, its LayerNorm and the output layer run only at the frames whose
answer is asked for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .gru import StatefulGRUTagger

__all__ = ["CompactGRUHead"]


class CompactGRUHead:
    """Inference of a :class:`StatefulGRUTagger` (one with a FrameEmbed input) on compact features."""

    def __init__(self, head: StatefulGRUTagger, live: torch.Tensor, inactive: torch.Tensor, n_front: int,
                 dtype: torch.dtype) -> None:
        emb = head.embed
        norm, fc = emb.norm, emb.fc
        n_all = norm.normalized_shape[0]
        keep = torch.cat([live, torch.ones(n_all - n_front, dtype=torch.bool)])  # live front + every mid-end channel
        dead = ~keep
        c = torch.zeros(n_all)
        c[:n_front] = inactive
        g, b = norm.weight.detach().float(), norm.bias.detach().float()
        W = fc.weight.detach().float()  # (d, n_all)
        self.n_all, self.eps, self.dtype = n_all, norm.eps, dtype
        self.sum_c, self.sum_c2 = float(c[dead].sum()), float((c[dead] ** 2).sum())
        self.W = (W[:, keep] * g[keep]).T.contiguous().to(dtype)  # (n_keep, d)
        self.u1 = W[:, dead] @ (g[dead] * c[dead])
        self.u2 = W @ g
        self.u3 = W @ b + fc.bias.detach().float()
        gru = head.gru
        self.H, self.L = gru.hidden_size, gru.num_layers
        H = self.H
        # one GEMM per GRU step: [x_t | h | 1] @ [[W_ir W_iz | W_in | 0], [W_hr W_hz | 0 | W_hn], [b_r b_z | b_in | b_hn]]
        # -> [r and z before the sigmoid | the input's n term | the state's n term] (PyTorch's gate order r, z, n)
        self.layers = []
        for k in range(gru.num_layers):
            w_ih, w_hh = getattr(gru, f"weight_ih_l{k}").detach().float(), getattr(gru, f"weight_hh_l{k}").detach().float()
            b_ih, b_hh = getattr(gru, f"bias_ih_l{k}").detach().float(), getattr(gru, f"bias_hh_l{k}").detach().float()
            d_in = w_ih.shape[1]
            big = torch.zeros(d_in + H + 1, 4 * H)
            big[:d_in, : 2 * H] = w_ih[: 2 * H].T
            big[d_in : d_in + H, : 2 * H] = w_hh[: 2 * H].T
            big[:d_in, 2 * H : 3 * H] = w_ih[2 * H :].T
            big[d_in : d_in + H, 3 * H :] = w_hh[2 * H :].T
            big[-1, : 2 * H] = b_ih[: 2 * H] + b_hh[: 2 * H]
            big[-1, 2 * H : 3 * H] = b_ih[2 * H :]
            big[-1, 3 * H :] = b_hh[2 * H :]
            self.layers.append((d_in, big.to(dtype)))
        self.tau = head.config.tau_frames
        self.ln, self.out = head.ln, head.head

    def _mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(self.dtype), w).float()

    def embed(self, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Compact values (B, n, n_keep) and stream flags (B, n) -> the head's embedding (B, n, d)."""
        sum_v = v.sum(dim=-1)  # (torch.var_mean is ~40x slower here than these two reductions)
        sum_v2 = torch.linalg.vector_norm(v, dim=-1).square_()
        mean = (sum_v + s * self.sum_c) / self.n_all
        ex2 = (sum_v2 + s * self.sum_c2) / self.n_all
        r = torch.rsqrt((ex2 - mean * mean).clamp_min(0.0) + self.eps)  # (B, n)
        y = self._mm(v, self.W)  # (B, n, d)
        y = torch.addcmul(y, s[..., None], self.u1).sub_(mean[..., None] * self.u2).mul_(r[..., None]).add_(self.u3)
        return F.gelu(y)

    def run(self, v: torch.Tensor, s: torch.Tensor, state: torch.Tensor, ends: list[int],
            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Compact values (B, T, n_keep), flags (B, T), head state (B, S) -> (logits after each end (B, len(ends),
        n_labels), state after ends[-1], written into ``out`` when given); frames past ends[-1] are not consumed."""
        T = ends[-1]
        B, H, L = v.shape[0], self.H, self.L
        x = self.embed(v[:, :T], s[:, :T])  # (B, T, d)
        h_all = state[:, : L * H].reshape(B, L, H)
        m0, n0 = state[:, L * H : L * H + H], state[:, -1]
        hs = []
        for k, (d_in, big) in enumerate(self.layers):
            # every per-step temporary is allocated once (fresh MB-sized tensors per step cost page faults), and
            # every view the loop writes or reads is taken once before it: torch's indexing costs several us a
            # call, about as much as a frame's small elementwise ops (the same ops and dtypes as stepping with
            # indexing, so the same values)
            U = x.new_empty((T, B, d_in + H + 1), dtype=self.dtype)  # [x_t | h | 1] of every frame, time first
            U[:, :, :d_in] = x.transpose(0, 1)  # (T, B, d_in), rounded to the GEMM's dtype
            U[:, :, -1] = 1.0
            u_t, h_in = U.unbind(0), U[:, :, d_in : d_in + H].unbind(0)
            g_low = x.new_empty((B, 4 * H), dtype=self.dtype)
            g = x.new_empty((B, 4 * H))
            g_rz, g_in, g_hn = g[:, : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
            rz, n_gate, diff = x.new_empty((B, 2 * H)), x.new_empty((B, H)), x.new_empty((B, H))
            r, z = rz[:, :H], rz[:, H:]
            ys = x.new_empty((T, B, H))  # each frame's h, written in place
            y_t = ys.unbind(0)
            h = h_all[:, k].float().contiguous()
            low = self.dtype != torch.float32
            for t in range(T):
                h_in[t].copy_(h)
                if low:
                    g.copy_(torch.matmul(u_t[t], big, out=g_low))
                else:
                    torch.matmul(u_t[t], big, out=g)
                torch.sigmoid(g_rz, out=rz)
                torch.addcmul(g_in, r, g_hn, out=n_gate).tanh_()
                torch.sub(h, n_gate, out=diff)
                h = torch.addcmul(n_gate, z, diff, out=y_t[t])  # (1 - z) * n + z * h
            hs.append(h)
            x = ys.transpose(0, 1).contiguous()  # (B, T, H), as the read-out below had it before
        # EMA read-out m_t = d m_{t-1} + a y_t at the asked frames only
        a = 1.0 / self.tau
        d = 1.0 - a
        t_idx = torch.arange(T, dtype=torch.float32)
        e = torch.tensor(ends, dtype=torch.float32)  # (E,)
        lag = (e[:, None] - 1.0) - t_idx[None, :]  # (E, T): end frame - t
        w = torch.where(lag >= 0, a * d ** lag.clamp(min=0), torch.zeros(()))  # (E, T)
        m = torch.einsum("et,bth->beh", w, x) + (d ** e)[None, :, None] * m0[:, None]  # (B, E, H)
        n = n0[:, None] + e[None, :]  # (B, E) frames seen at each end
        ema = m / (1.0 - d ** n)[..., None]
        logits = self.out(self.ln(ema))
        new = torch.cat([torch.stack(hs, 1).reshape(B, L * H), m[:, -1], n[:, -1:]], dim=1, out=out)
        return logits, new
