"""Temporal smoothing of genre probabilities: an online HMM filter over "which genre is on now" (default), an EMA, or none.

``method="hmm"``: the hidden state is the genre playing now, one of the K candidate genres. Between two updates
dt seconds apart it changes with probability ``1 - (1 - switch_per_second) ** dt``, to any other genre alike
(a continuous-time chain, so two hops of 0.5 s equal one of 1 s). The evidence of one update is the model's
genre probabilities normalized to sum to 1 (musicnn's sigmoids are multi-label, not a distribution), mixed with
a uniform ``floor`` (no genre is ever impossible, so a change is never blocked by one confident window), and
raised to ``sharpness * dt`` (evidence per second, not per update: overlapping windows at a short hop are not
independent observations). The posterior is what is displayed and its argmax is the top genre: no separate
hold, so the headline and the bars always agree, and the same parameters mean the same seconds at any hop.

``method="ema"``: an exponential moving average of every label with time constant ``tau_seconds``; the top is
the argmax of the averages (optionally with main's old hysteresis: ``margin``/``hold_seconds``, off by default).
``method="none"``: the raw outputs, top = their argmax.

Labels that are not HMM states (``all_tags`` mode: tags such as "guitar" or "80s" are not mutually exclusive,
so "which one is on now" means nothing for them) are EMA-smoothed with ``tau_seconds`` and the top is taken
among the genres. The state is small and explicit: :class:`BatchSmoother` holds ``(S, L)`` arrays for S
streams and steps them together; :class:`Smoother` is a one-stream view of it. Defaults and the figures that
chose them: docs/smoothing.md (``python bench/bench_smoothing.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["METHODS", "SmoothingConfig", "BatchSmoother", "Smoother"]

METHODS = ("hmm", "ema", "none")


@dataclass(frozen=True)
class SmoothingConfig:
    method: str = "hmm"  # "hmm" (default), "ema" or "none"
    # defaults chosen by bench/bench_smoothing.py --tune on half of its splices, for all three shipped models
    switch_per_second: float = 0.02  # hmm: probability per second that the genre changes
    sharpness: float = 2.0  # hmm: evidence exponent per second of updates
    floor: float = 0.5  # hmm: weight of the uniform mixed into each update's evidence (0 < floor <= 1)
    tau_seconds: float = 6.0  # ema time constant, s (0: no smoothing); hmm uses it for non-genre labels
    margin: float = 0.0  # ema only: a challenger must beat the top by this much ...
    hold_seconds: float = 0.0  # ... for this long before the top changes (main's old hysteresis; 0: off)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown smoothing method {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("switch_per_second", "sharpness", "floor", "tau_seconds", "margin", "hold_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"smoothing {name} must be a finite number >= 0, got {v!r}")
        if not 0 < self.switch_per_second < 1:
            raise ConfigError(f"smoothing switch_per_second must be in (0, 1), got {self.switch_per_second}")
        if self.sharpness <= 0:
            raise ConfigError(f"smoothing sharpness must be > 0, got {self.sharpness}")
        if not 0 < self.floor <= 1:
            raise ConfigError(f"smoothing floor must be in (0, 1], got {self.floor}")
        if self.method != "ema" and (self.margin or self.hold_seconds):
            raise ConfigError(f"margin/hold_seconds apply to method='ema' only; drop them for method={self.method!r}")


class BatchSmoother:
    """The smoothing state of S streams as explicit arrays, stepped together.

    State (row s = stream s): ``probs`` (S, L) the displayed probabilities (HMM posterior over the genres, EMA
    or raw elsewhere), ``started`` (S,) whether the row has seen an update, ``top`` (S,) the top label index
    (-1 before the first update). ``candidates`` are the labels eligible as top (None: all); ``genres`` the HMM
    states (None: the candidates). Rows are independent: stepping them together equals stepping each alone.
    """

    def __init__(
        self,
        config: SmoothingConfig | None = None,
        candidates: Sequence[int] | None = None,
        *,
        genres: Sequence[int] | None = None,
        streams: int = 1,
    ) -> None:
        self.config = config or SmoothingConfig()
        self.candidates = list(candidates) if candidates is not None else None
        self.genres = list(genres) if genres is not None else None
        if streams < 0:
            raise ConfigError(f"streams must be >= 0, got {streams}")
        self.n_labels: int | None = None  # known from the first update
        self.probs = np.zeros((streams, 0))  # (S, L)
        self.started = np.zeros(streams, dtype=bool)  # (S,)
        self.top = np.full(streams, -1, dtype=np.int64)  # (S,)
        self._challenger = np.full(streams, -1, dtype=np.int64)  # (S,) ema hysteresis
        self._challenge_time = np.zeros(streams)  # (S,) s

    @property
    def streams(self) -> int:
        return int(self.started.shape[0])

    # -- membership: the engine's add/remove of a stream is the only thing that resets its state ---------------
    def add_stream(self) -> int:
        """Append a fresh row; returns its index."""
        n = self.streams
        self.probs = np.concatenate([self.probs, np.zeros((1, self.probs.shape[1]))])
        self.started = np.append(self.started, False)
        self.top = np.append(self.top, -1)
        self._challenger = np.append(self._challenger, -1)
        self._challenge_time = np.append(self._challenge_time, 0.0)
        return n

    def remove_stream(self, row: int) -> None:
        """Delete row ``row``; the rows after it move up by one."""
        self.probs = np.delete(self.probs, row, axis=0)
        self.started = np.delete(self.started, row)
        self.top = np.delete(self.top, row)
        self._challenger = np.delete(self._challenger, row)
        self._challenge_time = np.delete(self._challenge_time, row)

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Forget the state of ``rows`` (all when None)."""
        sel = slice(None) if rows is None else list(rows)
        self.started = self.started.copy()
        self.top = self.top.copy()
        self.started[sel] = False
        self.top[sel] = -1
        self._challenger[sel] = -1
        self._challenge_time[sel] = 0.0

    # -- stepping ------------------------------------------------------------------------------------------------
    def _init_labels(self, n_labels: int) -> None:
        self.n_labels = n_labels
        for name, idx in (("candidates", self.candidates), ("genres", self.genres)):
            if idx is not None and any(not 0 <= i < n_labels for i in idx):
                raise ConfigError(f"smoothing {name} must index the model's {n_labels} labels, got {idx}")
        cand = self.candidates if self.candidates is not None else list(range(n_labels))
        if not cand:
            raise ConfigError("smoothing needs at least one candidate label")
        hmm = self.genres if self.genres is not None else cand
        self._cand = np.asarray(cand, dtype=np.int64)
        self._hmm = np.asarray(sorted(set(hmm)), dtype=np.int64) if self.config.method == "hmm" else np.zeros(0, np.int64)
        in_hmm = np.zeros(n_labels, dtype=bool)
        in_hmm[self._hmm] = True
        self._ema = np.flatnonzero(~in_hmm)
        # the top is a genre whenever the candidates include one (all_tags mode shows tags but heads with a genre)
        top_from = self._cand[in_hmm[self._cand]] if self._hmm.size else self._cand
        self._top_from = top_from if top_from.size else self._cand
        self.probs = np.zeros((self.streams, n_labels))

    def update(
        self, raw: np.ndarray, dt: float | np.ndarray, active: np.ndarray | None = None, *,
        rows: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Fold in one update per row: ``raw`` (S, L) probabilities, ``dt`` seconds since each row's previous
        update (scalar or (S,)); rows where ``active`` (S,) is False keep their state. Returns probs (S, L).

        ``rows`` (B,) distinct row indices: step only those rows (``raw`` is then (B, L), ``dt`` scalar or (B,),
        ``active`` (B,)); the others are untouched. Equals stepping every row with the others inactive, at a cost
        that does not grow with the rows left out (the live engine steps only the streams that completed a hop).
        The state of those rows is written in place; returns their new probs (B, L)."""
        raw = np.asarray(raw, dtype=np.float64)
        sel: slice | np.ndarray = slice(None)
        n = self.streams
        if rows is not None:
            sel = np.asarray(rows, dtype=np.int64).reshape(-1)
            n = sel.shape[0]
            if n and (sel.min() < 0 or sel.max() >= self.streams or np.unique(sel).shape[0] != n):
                raise ConfigError(f"rows must be distinct indices of the {self.streams} rows, got {sel.tolist()[:10]}")
        if raw.ndim != 2 or raw.shape[0] != n:
            raise ConfigError(f"raw must be (streams={n}, labels), got shape {raw.shape}")
        if self.n_labels is None:
            self._init_labels(raw.shape[1])
        if raw.shape[1] != self.n_labels:
            raise ConfigError(f"raw has {raw.shape[1]} labels; this smoother was started with {self.n_labels}")
        raw = np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0)
        dt_arr = np.nan_to_num(np.asarray(dt, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # bad dt: no time
        dt_arr = np.broadcast_to(np.maximum(dt_arr, 0.0), (n,))[:, None]  # (n, 1)
        act = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        cfg = self.config
        old_probs, old_started = self.probs[sel], self.started[sel]
        started = old_started[:, None]  # (n, 1)
        new = raw.copy()  # method "none", and the first update of an EMA
        if cfg.method != "none" and cfg.tau_seconds > 0 and self._ema.size:
            alpha = 1.0 - np.exp(-dt_arr / cfg.tau_seconds)  # (n, 1)
            old = old_probs[:, self._ema]
            new[:, self._ema] = np.where(started, old + alpha * (raw[:, self._ema] - old), raw[:, self._ema])
        if self._hmm.size:
            new[:, self._hmm] = self._hmm_step(old_probs, raw[:, self._hmm], dt_arr, started)
        probs = np.where(act[:, None], new, old_probs)
        top, challenger, challenge_time = self._next_top(
            probs, old_started, self.top[sel], self._challenger[sel], self._challenge_time[sel], dt_arr[:, 0], act)
        if rows is None:
            self.probs, self.top, self._challenger, self._challenge_time = probs, top, challenger, challenge_time
            self.started = self.started | act
        else:
            self.probs[sel], self.top[sel], self._challenger[sel], self._challenge_time[sel] = (
                probs, top, challenger, challenge_time)
            self.started[sel] = old_started | act
        return probs

    def update_many(
        self, raw: np.ndarray, dt: float | np.ndarray, active: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Several updates per row in one call: ``raw`` (S, T, L), ``dt`` scalar or (S,), ``active`` (S, T)
        (False: row s has no update at step t, e.g. fewer hops ready). Equals T calls of :meth:`update`; returns
        the displayed probs (S, T, L) and the tops (S, T) after each step."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 3 or raw.shape[0] != self.streams:
            raise ConfigError(f"raw must be (streams={self.streams}, steps, labels), got shape {raw.shape}")
        n = raw.shape[1]
        act = np.ones((self.streams, n), dtype=bool) if active is None else np.asarray(active, dtype=bool)
        probs = np.zeros(raw.shape)
        tops = np.zeros((self.streams, n), dtype=np.int64)
        for i in range(n):
            probs[:, i] = self.update(raw[:, i], dt, act[:, i])
            tops[:, i] = self.top
        return probs, tops

    def _hmm_step(self, probs: np.ndarray, raw: np.ndarray, dt: np.ndarray, started: np.ndarray) -> np.ndarray:
        # probs (S, L) the previous state, raw (S, K) genre probabilities -> posterior (S, K)
        cfg = self.config
        k = raw.shape[1]
        r = np.clip(raw, 0.0, None)
        total = r.sum(axis=1, keepdims=True)  # (S, 1)
        q = np.where(total > 0, r / np.where(total > 0, total, 1.0), 1.0 / k)  # evidence, sums to 1
        q = (1.0 - cfg.floor) * q + cfg.floor / k
        stay = (1.0 - cfg.switch_per_second) ** dt  # (S, 1)
        post = probs[:, self._hmm]
        prior = np.where(started, stay * post + (1.0 - stay) / k, 1.0 / k)  # (S, K)
        log_like = cfg.sharpness * dt * np.log(q)
        log_post = np.log(prior) + log_like - log_like.max(axis=1, keepdims=True)
        post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        return post / post.sum(axis=1, keepdims=True)

    def _next_top(
        self, probs: np.ndarray, started: np.ndarray, top: np.ndarray, challenger: np.ndarray,
        challenge_time: np.ndarray, dt: np.ndarray, act: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # (n,) argmax over the eligible labels of the new probs; ties go to the first eligible label, as in
        # ranking(). Returns the new (top, challenger, challenge_time) of these rows.
        best = self._top_from[np.argmax(probs[:, self._top_from], axis=1)]
        cfg = self.config
        if cfg.method == "ema" and (cfg.hold_seconds > 0 or cfg.margin > 0):
            rows = np.arange(probs.shape[0])
            held = np.where(started, top, best)
            challenging = (best != held) & (probs[rows, best] > probs[rows, held] + cfg.margin)
            same = challenging & (challenger == best)
            t = np.where(same, challenge_time + dt, np.where(challenging, dt, 0.0))
            switch = challenging & (t >= cfg.hold_seconds)
            new_top = np.where(switch, best, held)
            challenger = np.where(act, np.where(challenging & ~switch, best, -1), challenger)
            challenge_time = np.where(act, np.where(challenging & ~switch, t, 0.0), challenge_time)
            best = new_top
        return np.where(act, best, top), challenger, challenge_time

    def ranking(self, indices: Sequence[int], row: int = 0) -> list[int]:
        """``indices`` of stream ``row`` by displayed probability, highest first, the top label first."""
        if not self.started[row]:
            raise ConfigError("ranking() before the first update; call update() first")
        p = self.probs[row]
        order = sorted(indices, key=lambda i: -p[i])
        top = int(self.top[row])
        if top in order:
            order.remove(top)
            order.insert(0, top)
        return order


class Smoother:
    """One stream's smoothing: a one-row view of :class:`BatchSmoother`.

    Call :meth:`update` with each update's raw probabilities (L,) and the seconds since the previous update;
    state changes only through ``update`` and ``reset`` (the engine resets when a stream is removed and added).
    """

    def __init__(
        self,
        config: SmoothingConfig | None = None,
        candidates: Sequence[int] | None = None,
        *,
        genres: Sequence[int] | None = None,
    ) -> None:
        self.batch = BatchSmoother(config, candidates, genres=genres, streams=1)

    @property
    def config(self) -> SmoothingConfig:
        return self.batch.config

    @property
    def candidates(self) -> list[int] | None:
        return self.batch.candidates

    @property
    def probs(self) -> np.ndarray | None:
        """(L,) displayed probabilities; None before the first update."""
        return self.batch.probs[0] if self.batch.started[0] else None

    @property
    def top(self) -> int | None:
        """Index of the top label (argmax of :attr:`probs` among the eligible labels); None before the first update."""
        return int(self.batch.top[0]) if self.batch.started[0] else None

    def reset(self) -> None:
        self.batch.reset()

    def update(self, raw: np.ndarray, dt: float) -> np.ndarray:
        """Fold in one update's raw probabilities (L,); returns the displayed (L,) probabilities."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ConfigError(f"raw must be one update's (labels,) probabilities, got shape {raw.shape}")
        return self.batch.update(raw[None], dt)[0]

    def ranking(self, indices: Sequence[int]) -> list[int]:
        """``indices`` ordered by displayed probability, the top label first."""
        return self.batch.ranking(indices)
