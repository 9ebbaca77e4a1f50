"""Temporal smoothing: graded bars per genre and a headline that says which genre *family* is playing now.

``method="hmm"`` (default) does two things at once:

- **the bars** (``probs``): a short exponential moving average of the model's raw genre outputs (time constant
  ``bar_seconds``), the model's smoothed belief per genre. They are graded (musicnn's sigmoids, not a posterior
  that saturates) and follow the music within a few seconds;
- **the headline**: an online HMM filter over "which family is playing now" (families from the bundle's taxonomy,
  streamtag/taxonomy.py; without one, every genre is its own family). Between two updates dt seconds apart the
  family changes with probability ``1 - (1 - switch_per_second) ** dt``, to any other alike (a continuous-time
  chain, so two hops of 0.5 s equal one of 1 s). One update's evidence is the families' shares of the model's genre
  outputs (:func:`family_shares`: musicnn's sigmoids are multi-label, not a distribution), mixed with a uniform ``floor``
  (a change is never blocked by one confident window) and raised to ``sharpness * dt`` (evidence per second, not
  per update). The headline family is the posterior's argmax; the headline genre (``top``) is the highest bar
  inside it ("rock · indie rock"). Near-synonyms (rock / alternative / indie rock) cannot flip the headline.
  Optional change points (``change_threshold`` > 0, off by default): a CUSUM of the distance between the bars and
  the mean raw genre output since the last change point; when it passes the threshold the chain forgets the old
  family (docs/smoothing.md, "Change points").

Quiet hops weigh less: each update counts as ``w * dt`` seconds for the bars and the HMM alike (the hop's level
in dBFS, when the caller gives it). ``w`` is the product of an absolute weight, rising linearly from 0 at
``quiet_db`` to 1 at ``loud_db``, and a relative one, falling linearly from 1 at the stream's recent peak level
to 0 at ``relative_db`` below it (the peak decays by ``peak_decay_db`` per second). A fade-out, the quiet end
of a classical piece or the gap between songs cannot move the headline the way the music before it did.

``method="ema"``: every label an exponential moving average with time constant ``tau_seconds``; the headline
family is the family with the largest summed bars (optionally with main's old hysteresis on the genre:
``margin``/``hold_seconds``, off by default). ``method="none"``: the raw outputs, headline family the one with
the largest share of them.

``family_probs`` (S, F) are the families' shares of the bars (:func:`family_shares`): graded, what a reader
of the bars sees. Labels that are not genres (``all_tags`` mode: "guitar",
"80s") are EMA-smoothed with ``tau_seconds`` and never head. The state is small and explicit:
:class:`BatchSmoother` holds ``(S, L)`` and ``(S, F)`` arrays for S streams and steps them together;
:class:`Smoother` is a one-stream view of it. Defaults and the figures that chose them: docs/smoothing.md
(``python bench/bench_smoothing.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["METHODS", "SmoothingConfig", "BatchSmoother", "Smoother", "family_shares"]

METHODS = ("hmm", "ema", "none")


@dataclass(frozen=True)
class SmoothingConfig:
    method: str = "hmm"  # "hmm" (default), "ema" or "none"
    # defaults chosen by bench/bench_smoothing.py --tune on half of its splices, for all three shipped models
    switch_per_second: float = 0.02  # hmm: probability per second that the genre changes
    sharpness: float = 2.0  # hmm: evidence exponent per second of updates
    floor: float = 0.5  # hmm: weight of the uniform mixed into each update's evidence (0 < floor <= 1)
    # hmm: change points (off by default: docs/smoothing.md, "Change points"). The distance (total variation) between
    # the genre bars and the mean raw genre outputs since the last change point, less change_drift, is summed over
    # seconds (a CUSUM); past change_threshold a change is declared and the chain forgets the old family
    change_drift: float = 0.25
    change_threshold: float = 0.0  # distance x s; 0: off (the plain HMM)
    tau_seconds: float = 6.0  # ema time constant, s (0: no smoothing); hmm uses it for non-genre labels
    bar_seconds: float = 2.0  # hmm: time constant of the bars (moving average of the raw genre outputs), s
    quiet_db: float = -60.0  # a hop at this level (dBFS) or below weighs nothing ...
    loud_db: float = -40.0  # ... and from this level up fully (linear in between)
    relative_db: float = 20.0  # a hop this far below the stream's recent peak level weighs nothing (linear)
    peak_decay_db: float = 0.5  # dB/s: how fast the recent peak level forgets a loud passage
    margin: float = 0.0  # ema only: a challenger must beat the top by this much ...
    hold_seconds: float = 0.0  # ... for this long before the top changes (main's old hysteresis; 0: off)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown smoothing method {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("quiet_db", "loud_db"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"smoothing {name} must be a finite level in dBFS, got {v!r}")
        if not self.quiet_db < self.loud_db:
            raise ConfigError(f"smoothing quiet_db ({self.quiet_db}) must be below loud_db ({self.loud_db})")
        for name in ("switch_per_second", "sharpness", "floor", "tau_seconds", "bar_seconds", "margin",
                     "hold_seconds", "relative_db", "peak_decay_db", "change_drift", "change_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"smoothing {name} must be a finite number >= 0, got {v!r}")
        if not 0 < self.switch_per_second < 1:
            raise ConfigError(f"smoothing switch_per_second must be in (0, 1), got {self.switch_per_second}")
        if self.relative_db <= 0:
            raise ConfigError(f"smoothing relative_db must be > 0, got {self.relative_db}")
        if self.sharpness <= 0:
            raise ConfigError(f"smoothing sharpness must be > 0, got {self.sharpness}")
        if not 0 < self.floor <= 1:
            raise ConfigError(f"smoothing floor must be in (0, 1], got {self.floor}")
        if self.method != "ema" and (self.margin or self.hold_seconds):
            raise ConfigError(f"margin/hold_seconds apply to method='ema' only; drop them for method={self.method!r}")


def _shares(values: np.ndarray, member: np.ndarray) -> np.ndarray:
    # (n, L) values, (L, F) membership -> (n, F) each family's strength (the root of its genres' summed squares)
    # over all the families' (uniform when all are 0)
    m = np.sqrt(np.clip(values, 0.0, None) ** 2 @ member)  # (n, F)
    total = m.sum(axis=1, keepdims=True)
    return np.where(total > 0, m / np.where(total > 0, total, 1.0), 1.0 / m.shape[1])


def family_shares(values: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(..., L) genre values (bars, raw outputs or their mean) -> (..., F) the families' shares: each family's
    strength, the root of the summed squares of its genres' values, over the sum of all the families' strengths.
    One clear genre counts fully, near-synonyms that split a family's evidence add up, and the long tail of
    near-zero outputs of a family with many labels (musicnn-msd's ten rock labels) does not outweigh one clear
    genre elsewhere, as a plain sum would (docs/smoothing.md, "Families")."""
    v = np.asarray(values, dtype=np.float64)
    member = np.zeros((v.shape[-1], len(groups)))
    for f, fam in enumerate(groups):
        member[list(fam), f] = 1.0
    return _shares(v.reshape(-1, v.shape[-1]), member).reshape(*v.shape[:-1], len(groups))


class BatchSmoother:
    """The smoothing state of S streams as explicit arrays, stepped together.

    State (row s = stream s): ``probs`` (S, L) the bars (moving averages, raw for "none"), ``started`` (S,)
    whether the row has seen an update, ``family`` (S,) the headline family (index into ``families``; -1 before
    the first update), ``top`` (S,) the headline genre (the highest bar inside the headline family; -1 before
    the first update), ``posterior`` (S, F) the HMM's belief over the families, ``family_probs`` (S, F) the
    families' shares of the summed bars. ``candidates`` are the labels eligible as top (None: all); ``genres``
    the labels the families are made of (None: the candidates); ``families`` lists each family's label indices
    (None, or genres in none of them: a family of their own, appended in label order). Rows are independent:
    stepping them together equals stepping each alone.
    """

    def __init__(
        self,
        config: SmoothingConfig | None = None,
        candidates: Sequence[int] | None = None,
        *,
        genres: Sequence[int] | None = None,
        families: Sequence[Sequence[int]] | None = None,
        streams: int = 1,
    ) -> None:
        self.config = config or SmoothingConfig()
        self.candidates = list(candidates) if candidates is not None else None
        self.genres = list(genres) if genres is not None else None
        self.families = [list(f) for f in families] if families is not None else None
        if streams < 0:
            raise ConfigError(f"streams must be >= 0, got {streams}")
        self.n_labels: int | None = None  # known from the first update
        self.groups: list[list[int]] = []  # each family's label indices, known from the first update
        self.probs = np.zeros((streams, 0))  # (S, L)
        self.posterior = np.zeros((streams, 0))  # (S, F)
        self.family_probs = np.zeros((streams, 0))  # (S, F)
        self.started = np.zeros(streams, dtype=bool)  # (S,)
        self.top = np.full(streams, -1, dtype=np.int64)  # (S,)
        self.family = np.full(streams, -1, dtype=np.int64)  # (S,)
        self.peak_db = np.full(streams, np.nan)  # (S,) recent peak level, dBFS (NaN: none yet)
        self._challenger = np.full(streams, -1, dtype=np.int64)  # (S,) ema hysteresis
        self._challenge_time = np.zeros(streams)  # (S,) s
        self.segment = np.zeros((streams, 0))  # (S, L) hmm: mean raw output since the last change point
        self.segment_seconds = np.zeros(streams)  # (S,) s (level-weighted) since the last change point
        self.change = np.zeros(streams)  # (S,) the change statistic (summed excess distance, s)

    @property
    def streams(self) -> int:
        return int(self.started.shape[0])

    # the per-row state arrays, and the value a fresh row starts with
    _ROWS = (("probs", 0), ("posterior", 0), ("family_probs", 0), ("started", False), ("top", -1), ("family", -1),
             ("peak_db", np.nan), ("_challenger", -1), ("_challenge_time", 0), ("segment", 0),
             ("segment_seconds", 0), ("change", 0))

    # -- membership: the engine's add/remove of a stream is the only thing that resets its state ---------------
    def add_stream(self) -> int:
        """Append a fresh row; returns its index."""
        n = self.streams
        for name, fresh in self._ROWS:
            arr = getattr(self, name)
            row = np.full((1, *arr.shape[1:]), fresh, dtype=arr.dtype)
            setattr(self, name, np.concatenate([arr, row]))
        return n

    def remove_stream(self, row: int) -> None:
        """Delete row ``row``; the rows after it move up by one."""
        for name, _ in self._ROWS:
            setattr(self, name, np.delete(getattr(self, name), row, axis=0))

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Forget the state of ``rows`` (all when None)."""
        sel = slice(None) if rows is None else list(rows)
        self.started = self.started.copy()
        self.top = self.top.copy()
        self.family = self.family.copy()
        self.started[sel] = False
        self.top[sel] = -1
        self.family[sel] = -1
        self.peak_db[sel] = np.nan
        self._challenger[sel] = -1
        self._challenge_time[sel] = 0.0
        self.change[sel] = 0.0
        self.segment_seconds[sel] = 0.0

    # -- stepping ------------------------------------------------------------------------------------------------
    def _init_labels(self, n_labels: int) -> None:
        self.n_labels = n_labels
        for name, idx in (("candidates", self.candidates), ("genres", self.genres)):
            if idx is not None and any(not 0 <= i < n_labels for i in idx):
                raise ConfigError(f"smoothing {name} must index the model's {n_labels} labels, got {idx}")
        cand = self.candidates if self.candidates is not None else list(range(n_labels))
        if not cand:
            raise ConfigError("smoothing needs at least one candidate label")
        genres = sorted(set(self.genres if self.genres is not None else cand))
        groups: list[list[int]] = []
        seen: set[int] = set()
        for fam in self.families or []:
            if not fam or any(i not in genres or i in seen for i in fam):
                raise ConfigError(f"smoothing families must split the genres {genres} (each in one family), got "
                                  f"{self.families}")
            groups.append(list(fam))
            seen.update(fam)
        groups += [[i] for i in genres if i not in seen]
        self.groups = groups
        self._gen = np.asarray(genres, dtype=np.int64)
        member = np.zeros((n_labels, len(groups)))  # (L, F) 1 where the label is in the family
        for f, fam in enumerate(groups):
            member[fam, f] = 1.0
        self._member = member
        is_genre = np.zeros(n_labels, dtype=bool)
        is_genre[self._gen] = True
        # the top is a genre whenever the candidates include one (all_tags mode shows tags but heads with a genre)
        top_from = np.asarray(cand, dtype=np.int64)
        top_from = top_from[is_genre[top_from]] if is_genre[top_from].any() else top_from
        self._top_from = top_from
        eligible = np.zeros(n_labels, dtype=bool)
        eligible[top_from] = True
        self._family_of = np.full(n_labels, -1, dtype=np.int64)  # label -> its family (-1: not a genre)
        for f, fam in enumerate(groups):
            self._family_of[fam] = f
        # (F, L) where each family's headline genre may come from (its eligible genres; a family without one:
        # every eligible label)
        mask = (member.T > 0) & eligible[None, :]
        mask[~mask.any(axis=1)] = eligible
        self._heads = mask
        cfg = self.config
        tau = np.full(n_labels, cfg.tau_seconds)
        if cfg.method == "hmm":
            tau[self._gen] = cfg.bar_seconds
        self._tau = tau  # (L,) s, 0: no smoothing
        self.probs = np.zeros((self.streams, n_labels))
        self.posterior = np.zeros((self.streams, len(groups)))
        self.family_probs = np.zeros((self.streams, len(groups)))
        self.segment = np.zeros((self.streams, n_labels))

    def weight(self, level_db: np.ndarray, peak_db: np.ndarray | None = None) -> np.ndarray:
        """How much a hop at ``level_db`` (dBFS, any shape; NaN: unknown, full weight) counts, in [0, 1], when
        the stream's recent peak level is ``peak_db`` (same shape; None or NaN: the hop itself)."""
        cfg = self.config
        lv = np.asarray(level_db, dtype=np.float64)
        pk = lv if peak_db is None else np.where(np.isnan(peak_db), lv, peak_db)
        w = np.clip((lv - cfg.quiet_db) / (cfg.loud_db - cfg.quiet_db), 0.0, 1.0)
        w = w * np.clip(1.0 - (pk - lv) / cfg.relative_db, 0.0, 1.0)
        return np.where(np.isnan(lv), 1.0, w)

    def update(
        self, raw: np.ndarray, dt: float | np.ndarray, active: np.ndarray | None = None, *,
        rows: Sequence[int] | np.ndarray | None = None, level_db: float | np.ndarray | None = None,
    ) -> np.ndarray:
        """Fold in one update per row: ``raw`` (S, L) probabilities, ``dt`` seconds since each row's previous
        update (scalar or (S,)); rows where ``active`` (S,) is False keep their state. ``level_db`` (scalar or
        (S,), dBFS; None: all loud) weighs each update by its level (see :meth:`weight`). Returns probs (S, L).

        ``rows`` (B,) distinct row indices: step only those rows (``raw`` is then (B, L), ``dt``/``level_db``
        scalar or (B,), ``active`` (B,)); the others are untouched. Equals stepping every row with the others
        inactive, at a cost that does not grow with the rows left out (the live engine steps only the streams that
        completed a hop). The state of those rows is written in place; returns their new probs (B, L)."""
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
        peak = self.peak_db[sel]
        if level_db is not None:  # a quiet hop counts as a fraction of its seconds
            lv = np.broadcast_to(np.asarray(level_db, dtype=np.float64), (n,))
            decayed = peak - self.config.peak_decay_db * dt_arr[:, 0]
            new_peak = np.where(np.isnan(lv), peak, np.fmax(lv, decayed))  # fmax: a NaN peak (none yet) -> lv
            dt_arr = dt_arr * self.weight(lv, new_peak)[:, None]
            peak = np.where(act, new_peak, peak)
        cfg = self.config
        old_probs, old_started = self.probs[sel], self.started[sel]
        started = old_started[:, None]  # (n, 1)
        new = raw.copy()  # method "none", and a row's first update
        if cfg.method != "none":
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha = np.where(self._tau > 0, 1.0 - np.exp(-dt_arr / self._tau), 1.0)  # (n, L)
            new = np.where(started, old_probs + alpha * (raw - old_probs), raw)
        post = self.posterior[sel]
        seg, seg_s, change = self.segment[sel], self.segment_seconds[sel], self.change[sel]
        if cfg.method == "hmm":
            fire, new_seg, new_seg_s, new_change = self._change_step(new, raw, seg, seg_s, change, dt_arr[:, 0],
                                                                     old_started)
            post = self._hmm_step(post, raw, dt_arr, started, fire[:, None])
            seg = np.where(act[:, None], new_seg, seg)
            seg_s, change = np.where(act, new_seg_s, seg_s), np.where(act, new_change, change)
        probs = np.where(act[:, None], new, old_probs)
        post = np.where(act[:, None], post, self.posterior[sel])
        shares = self._shares(probs)
        family, top, challenger, challenge_time = self._next_head(
            probs, post, shares, old_started, self.family[sel], self.top[sel], self._challenger[sel],
            self._challenge_time[sel], dt_arr[:, 0], act)
        if rows is None:
            self.peak_db = peak
            self.segment, self.segment_seconds, self.change = seg, seg_s, change
            self.probs, self.posterior, self.family_probs = probs, post, shares
            self.family, self.top, self._challenger, self._challenge_time = family, top, challenger, challenge_time
            self.started = self.started | act
        else:
            self.peak_db[sel] = peak
            self.segment[sel], self.segment_seconds[sel], self.change[sel] = seg, seg_s, change
            self.probs[sel], self.posterior[sel], self.family_probs[sel] = probs, post, shares
            self.family[sel], self.top[sel], self._challenger[sel], self._challenge_time[sel] = (
                family, top, challenger, challenge_time)
            self.started[sel] = old_started | act
        return probs

    def update_many(
        self, raw: np.ndarray, dt: float | np.ndarray, active: np.ndarray | None = None, *,
        level_db: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Several updates per row in one call: ``raw`` (S, T, L), ``dt`` scalar or (S,), ``active`` (S, T)
        (False: row s has no update at step t, e.g. fewer hops ready), ``level_db`` (S, T) or None. Equals T
        calls of :meth:`update`; returns the displayed probs (S, T, L) and the tops (S, T) after each step (the
        headline families after each step: :meth:`update_many_families`)."""
        probs, tops, _ = self.update_many_families(raw, dt, active, level_db=level_db)
        return probs, tops

    def update_many_families(
        self, raw: np.ndarray, dt: float | np.ndarray, active: np.ndarray | None = None, *,
        level_db: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`update_many`, also returning the headline family (S, T) after each step."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 3 or raw.shape[0] != self.streams:
            raise ConfigError(f"raw must be (streams={self.streams}, steps, labels), got shape {raw.shape}")
        n = raw.shape[1]
        act = np.ones((self.streams, n), dtype=bool) if active is None else np.asarray(active, dtype=bool)
        probs = np.zeros(raw.shape)
        tops = np.zeros((self.streams, n), dtype=np.int64)
        fams = np.zeros((self.streams, n), dtype=np.int64)
        for i in range(n):
            lv = None if level_db is None else np.asarray(level_db)[:, i]
            probs[:, i] = self.update(raw[:, i], dt, act[:, i], level_db=lv)
            tops[:, i] = self.top
            fams[:, i] = self.family
        return probs, tops, fams

    def _shares(self, values: np.ndarray) -> np.ndarray:
        return _shares(values, self._member)

    def _change_step(
        self, bars: np.ndarray, raw: np.ndarray, seg: np.ndarray, seg_s: np.ndarray, change: np.ndarray,
        dt: np.ndarray, started: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Change points (hmm): the new bars (n, L) against the mean raw genre output since the last change point
        # seg (n, L) (seg_s (n,) seconds); change (n,) sums the distance in excess of change_drift over (weighted)
        # seconds dt (n,), a CUSUM. Returns (fire (n,): a change now, and the new seg, seg_s, change); after a
        # change the segment starts again from the bars.
        cfg = self.config
        g = self._gen
        dist = np.where(started, 0.5 * np.abs(bars[:, g] - seg[:, g]).sum(axis=1), 0.0)  # total variation
        change = np.where(started, np.maximum(0.0, change + (dist - cfg.change_drift) * dt), 0.0)
        fire = started & (change > cfg.change_threshold) & (cfg.change_threshold > 0)
        seg_s = np.where(started, seg_s + dt, dt)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(seg_s > 0, dt / seg_s, 1.0)[:, None]  # the running mean since the change point
        seg = np.where(started[:, None], seg + alpha * (raw - seg), raw)
        seg = np.where(fire[:, None], bars, seg)
        return fire, seg, np.where(fire, dt, seg_s), np.where(fire, 0.0, change)

    def _hmm_step(self, post: np.ndarray, raw: np.ndarray, dt: np.ndarray, started: np.ndarray,
                  fire: np.ndarray) -> np.ndarray:
        # post (n, F) the previous posterior, raw (n, L) outputs -> the new posterior (n, F); where fire (n, 1)
        # (a change point) the chain forgets the old family: its prior is uniform
        cfg = self.config
        k = post.shape[1]
        q = (1.0 - cfg.floor) * self._shares(raw) + cfg.floor / k  # evidence, sums to 1
        stay = (1.0 - cfg.switch_per_second) ** dt  # (n, 1)
        prior = np.where(started & ~fire, stay * post + (1.0 - stay) / k, 1.0 / k)  # (n, F)
        log_post = np.log(prior) + cfg.sharpness * dt * np.log(q)
        out = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        return out / out.sum(axis=1, keepdims=True)

    def _next_head(
        self, probs: np.ndarray, post: np.ndarray, shares: np.ndarray, started: np.ndarray, family: np.ndarray,
        top: np.ndarray, challenger: np.ndarray, challenge_time: np.ndarray, dt: np.ndarray, act: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # (n,) the new (family, top, challenger, challenge_time) of these rows: the headline family (the HMM's
        # argmax, else the largest share), and its highest bar; ties go to the first label, as in ranking()
        cfg = self.config
        best_family = np.argmax(post if cfg.method == "hmm" else shares, axis=1)  # (n,)
        masked = np.where(self._heads[best_family], probs, -np.inf)  # (n, L)
        best = np.argmax(masked, axis=1)
        if cfg.method == "ema" and (cfg.hold_seconds > 0 or cfg.margin > 0):  # main's old hysteresis, on genres
            best = self._top_from[np.argmax(probs[:, self._top_from], axis=1)]
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
            fam_of = self._family_of[best]
            best_family = np.where(fam_of >= 0, fam_of, best_family)
        return np.where(act, best_family, family), np.where(act, best, top), challenger, challenge_time

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
        families: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.batch = BatchSmoother(config, candidates, genres=genres, families=families, streams=1)

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
        """Index of the headline genre (the highest bar inside the headline family); None before the first update."""
        return int(self.batch.top[0]) if self.batch.started[0] else None

    @property
    def family(self) -> int | None:
        """Index of the headline family (into :attr:`groups`); None before the first update."""
        return int(self.batch.family[0]) if self.batch.started[0] else None

    @property
    def family_probs(self) -> np.ndarray | None:
        """(F,) the families' shares of the summed bars; None before the first update."""
        return self.batch.family_probs[0] if self.batch.started[0] else None

    @property
    def groups(self) -> list[list[int]]:
        """Each family's label indices (known after the first update)."""
        return self.batch.groups

    def reset(self) -> None:
        self.batch.reset()

    def update(self, raw: np.ndarray, dt: float, *, level_db: float | None = None) -> np.ndarray:
        """Fold in one update's raw probabilities (L,) (``level_db``: its hop's level, dBFS); returns the
        displayed (L,) probabilities."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ConfigError(f"raw must be one update's (labels,) probabilities, got shape {raw.shape}")
        return self.batch.update(raw[None], dt, level_db=level_db)[0]

    def ranking(self, indices: Sequence[int]) -> list[int]:
        """``indices`` ordered by displayed probability, the top label first."""
        return self.batch.ranking(indices)
