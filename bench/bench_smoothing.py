"""Smoothing on spliced real music, judged at the level of genre families: how fast the headline family follows
a real change, how often it flickers, and whether the bars show what the model hears.

Builds splices of real recordings ($STREAMTAG_SHARED or ../shared/audio, and examples/audio): segments of 10 s and
of 30 s from different tracks in several random orders, plus the whole tracks as steady music. Each segment's
label is the model's own whole-segment answer: its **family** (the largest family share of its mean raw genre
probabilities, ``smoothing.family_shares`` over the bundle's taxonomy) and, beside it, its top-1 **genre**;
consecutive segments with the same label are merged (no change, no boundary). The model runs once per splice
through ``pipeline.tag_audio`` at the bundle's default hop (outputs and the hops' levels cached in a temp .npz
keyed by the model and the splice plan), then every smoother runs over the cached raw outputs. Per smoother:

- reaction after a boundary: from the boundary (in the music's time, ``update.t``, which already accounts for
  a student's lag) until the headline family (genre) equals the new segment's label and stays so to the
  segment's end; median and worst, a boundary never followed counts as a miss (the segment's length);
- switches per minute of the headline family (genre) on the steady whole tracks, from 5 s in;
- the bars, on the steady tracks from 5 s in: how often the top 3 bars are all within 0.05 of the raw outputs'
  mean over the last 4 s, and how often the family with the largest share of the bars (and the family with
  the largest plain sum of the bars) is the headline family;
- the raw output's own figures as the floor, the oracle (the mean since the true boundary) as the bound.

The splices are split in two halves (even / odd): ``--tune`` grid-searches the HMM on the "tune" half and
reports both halves, so the chosen defaults' figures on the "check" half are honest.

    python bench/bench_smoothing.py [--model NAME|all] [--tune] [--dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtag.pipeline import _families, tag_audio
from streamtag.registry import Bundle, load_bundle
from streamtag.runner import ModelRunner
from streamtag.smoothing import BatchSmoother, SmoothingConfig, family_shares
from streamtag.sources import read_audio

REPO = Path(__file__).resolve().parents[1]
MODELS = ("musicnn-msd", "st-gru-msd", "st-transformer-msd", "musicnn-mtt")
MIN_TRACK_SECONDS = 20.0  # s, shorter recordings are not used
SEED = 11
CACHE_VERSION = 2  # 2: the hops' levels are cached too
N_SPLICES = {30.0: (6, 5), 10.0: (6, 8)}  # segment length, s -> (splices, segments per splice)


@dataclass(frozen=True)
class Piece:
    file: str  # path
    start: float  # s into the file
    seconds: float  # s


@dataclass(frozen=True)
class Clip:
    name: str
    pieces: tuple[Piece, ...]
    steady: bool  # a whole track (no boundaries)
    half: int  # 0: tune, 1: check


def plan(files: dict[str, float]) -> list[Clip]:
    """The splices and steady tracks for ``files`` {path: duration s}; deterministic."""
    rng = np.random.default_rng(SEED)
    clips = []
    names = sorted(files)
    for seg, (n, per) in N_SPLICES.items():
        pool = [f for f in names if files[f] >= seg]
        for i in range(n):
            picks = list(rng.permutation(pool))[:per] if len(pool) >= per else list(rng.choice(pool, per))
            pieces = []
            for f in picks:
                start = float(rng.uniform(0.0, files[f] - seg))
                pieces.append(Piece(str(f), round(start, 2), seg))
            clips.append(Clip(f"splice{int(seg)}s-{i}", tuple(pieces), False, i % 2))
    for i, f in enumerate(names):
        clips.append(Clip(f"track-{Path(f).stem}", (Piece(f, 0.0, files[f]),), True, i % 2))
    return clips


def clip_audio(clip: Clip, audio: dict[str, np.ndarray], sr: int) -> tuple[np.ndarray, list[float]]:
    """The clip's samples and its boundaries (s, the start of every piece after the first)."""
    parts, bounds, n = [], [], 0
    for p in clip.pieces:
        a = int(round(p.start * sr))
        x = audio[p.file][a : a + int(round(p.seconds * sr))]
        if n:
            bounds.append(n / sr)
        parts.append(x)
        n += x.shape[0]
    return np.concatenate(parts), bounds


@dataclass
class Run:
    clip: Clip
    t: np.ndarray  # (N,) s, update.t
    raw: np.ndarray  # (N, L) raw probabilities (of the genres; 0 for the other labels)
    fed: np.ndarray  # (N,) bool: the update fed the smoother (the engine skips silent hops)
    level: np.ndarray  # (N,) dBFS, the level of the hop each update describes
    edges: list[float]  # piece edges, s: [0, b1, ..., end]
    labels: dict[str, list[int]]  # "genre": each piece's whole-piece top-1 genre (label index); "family": its family
    margins: dict[str, list[float]]  # the label's lead over the piece's second (mean raw probability / share)


def run_model(bundle: Bundle, clips: list[Clip], audio: dict[str, np.ndarray]) -> list[Run]:
    sr = bundle.frontend.sample_rate
    key = hashlib.sha256(json.dumps([bundle.name, str(bundle.path), list(bundle.labels), [repr(c) for c in clips], CACHE_VERSION]).encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / f"streamtag-bench-smoothing-{key[:16]}.npz"
    data: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as z:
            data = {k: z[k] for k in z.files}
    else:
        runner = ModelRunner(bundle, "cpu")
        index = {label: i for i, label in enumerate(bundle.labels)}
        t0 = time.perf_counter()
        for c in clips:
            x, _ = clip_audio(c, audio, sr)
            ups = tag_audio(x, runner, name=c.name).updates
            raw = np.zeros((len(ups), len(bundle.labels)), dtype=np.float32)  # (N, L): the shown (genre) labels
            for i, u in enumerate(ups):
                raw[i, [index[k] for k in u.raw]] = list(u.raw.values())
            data[c.name + "/t"] = np.array([u.t for u in ups])
            data[c.name + "/raw"] = raw
            data[c.name + "/fed"] = np.array([u.extra.get("silence") is not True for u in ups])  # silent: not fed
            data[c.name + "/level"] = np.array([u.extra.get("level_db", 0.0) for u in ups], dtype=np.float64)
        print(f"  {bundle.name}: model over {len(clips)} clips in {time.perf_counter() - t0:.0f} s (cached: {cache})")
        np.savez(cache, **data)  # type: ignore[arg-type]
    genres = np.asarray(bundle.genre_indices())
    groups = _families(bundle)[1]
    runs = []
    for c in clips:
        t, raw = data[c.name + "/t"], data[c.name + "/raw"]
        fed = data.get(c.name + "/fed", np.ones(t.shape[0], dtype=bool))
        total = sum(p.seconds for p in c.pieces)
        _, bounds = clip_audio(c, {p.file: audio[p.file] for p in c.pieces}, sr)
        edges = [0.0, *bounds, total]
        labels: dict[str, list[int]] = {"genre": [], "family": []}
        margins: dict[str, list[float]] = {"genre": [], "family": []}
        for a, b in zip(edges, edges[1:]):
            sel = (t > a) & (t <= b)
            mean = raw[sel].mean(axis=0) if sel.any() else raw.mean(axis=0)
            for kind, v, idx in (("genre", mean[genres], genres), ("family", family_shares(mean, groups),
                                                                    np.arange(len(groups)))):
                second, first = np.sort(v)[-2:]
                labels[kind].append(int(idx[np.argmax(v)]))
                margins[kind].append(float(first - second))
        runs.append(Run(c, t, raw, fed, data[c.name + "/level"], edges, labels, margins))
    return runs


@dataclass
class Decisions:
    """One smoother's answers on every run: headline genre and family per update, and the bars (None: no bars)."""

    genre: list[np.ndarray]  # per run (N,) label index
    family: list[np.ndarray]  # per run (N,) family index
    bars: list[np.ndarray] | None = None  # per run (N, L)


def smooth(cfg: SmoothingConfig | None, runs: list[Run], bundle: Bundle, hop: float) -> Decisions:
    """The headline of every update of every run, all runs batched as the rows of one BatchSmoother (a silent
    hop does not feed it, as in the engine: its headline stays). ``cfg`` None: the raw output's own argmax."""
    genres, groups = bundle.genre_indices(), _families(bundle)[1]
    if cfg is None:  # raw: argmax of the model's genre outputs, and the largest family share of them
        g = np.asarray(genres)
        return Decisions([g[np.argmax(r.raw[:, g], axis=1)] for r in runs],
                         [np.argmax(family_shares(r.raw, groups), axis=1) for r in runs])
    n = max(r.t.shape[0] for r in runs)
    raw = np.zeros((len(runs), n, runs[0].raw.shape[1]))  # (S, T, L), padded
    active = np.zeros((len(runs), n), dtype=bool)  # (S, T)
    level = np.full((len(runs), n), np.nan)  # (S, T)
    for j, r in enumerate(runs):
        raw[j, : r.t.shape[0]] = r.raw
        active[j, : r.t.shape[0]] = r.fed
        level[j, : r.t.shape[0]] = r.level
    bs = BatchSmoother(cfg, genres, families=groups, streams=len(runs))
    probs, tops, fams = bs.update_many_families(raw, hop, active, level_db=level)
    k = [r.t.shape[0] for r in runs]
    return Decisions([tops[j, : k[j]] for j in range(len(runs))], [fams[j, : k[j]] for j in range(len(runs))],
                     [probs[j, : k[j]] for j in range(len(runs))])


def oracle(runs: list[Run], bundle: Bundle, recent: float | None = None) -> Decisions:
    """A reference no causal smoother can beat by much: the argmax of the mean raw output since the last true
    boundary (it is told where the boundaries are), and the largest family share of that mean. ``recent``: weigh
    the newest updates more, a moving average whose time constant is ``recent`` times the time since the boundary
    (the "recent oracle": it shows what an estimate of the boundary could gain at best)."""
    g, groups = np.asarray(bundle.genre_indices()), _families(bundle)[1]
    tops, fams = [], []
    for r in runs:
        top = np.zeros(r.t.shape[0], dtype=np.int64)
        fam = np.zeros(r.t.shape[0], dtype=np.int64)
        for a, b in zip(r.edges, r.edges[1:]):
            sel = np.flatnonzero((r.t > a) & (r.t <= b))
            mean = np.cumsum(r.raw[sel], axis=0) / np.arange(1, sel.size + 1)[:, None]  # (n, L)
            if recent is not None and sel.size:
                alpha = np.minimum(1.0, 1.0 / (recent * np.arange(1, sel.size + 1)))  # (n,) tau = recent x age
                mean = np.zeros((sel.size, r.raw.shape[1]))
                mean[0] = r.raw[sel[0]]
                for i in range(1, sel.size):
                    mean[i] = mean[i - 1] + alpha[i] * (r.raw[sel[i]] - mean[i - 1])
            top[sel] = g[np.argmax(mean[:, g], axis=1)]
            fam[sel] = np.argmax(family_shares(mean, groups), axis=1)
        tops.append(top)
        fams.append(fam)
    return Decisions(tops, fams)


CLEAR_MARGIN = 0.05  # a label that leads by less than this is the model's coin flip between near-synonyms
GOAL_WORST = 5.0  # s
GOAL_SWITCHES = 0.5  # per minute on steady music


def agreement_bound(runs: list[Run], d: Decisions, bundle: Bundle, per_minute: float = GOAL_SWITCHES) -> float:
    """The best agreement with the bars' largest family share (as in :func:`bar_figures`) that ANY headline
    switching at most ``per_minute`` times a minute on the steady tracks could reach, even one that knows the
    future: per track, a dynamic programme gives the most agreeing updates with k switches; the switch budget
    is then shared among the tracks at best (a knapsack)."""
    assert d.bars is not None
    groups = _families(bundle)[1]
    steady = [(r, bars) for r, bars in zip(runs, d.bars) if r.clip.steady]
    budget = int(per_minute * sum(max(r.edges[-1] - GOAL_WORST, 0.0) for r, _ in steady) / 60.0)
    best, total = np.zeros(budget + 1), 0
    for r, bars in steady:
        fed = np.flatnonzero(r.fed)
        lead = np.argmax(family_shares(bars[fed[r.t[fed] > GOAL_WORST]], groups), axis=1)
        total += lead.size
        if not lead.size:
            continue
        hit = lead[:, None] == np.arange(len(groups))[None, :]  # (n, F)
        dp = np.full((budget + 1, len(groups)), -np.inf)  # dp[k, f]: most agreements, headline f, k switches
        dp[0] = hit[0]
        for i in range(1, lead.size):
            moved = np.r_[[-np.inf], dp[:-1].max(axis=1)][:, None]  # one more switch, from the best family
            dp = np.maximum(dp, moved) + hit[i]
        per_k = np.maximum.accumulate(dp.max(axis=1))  # (budget + 1,) at most k switches
        best = np.array([max(best[u - k] + per_k[k] for k in range(u + 1)) for u in range(budget + 1)])
    return float(best[-1] / total) if total else math.nan


BAR_WINDOW = 4.0  # s: the bars are compared with the raw outputs' mean over this many seconds
BAR_TOLERANCE = 0.05


def bar_figures(runs: list[Run], d: Decisions, bundle: Bundle, hop: float) -> tuple[float, float, float]:
    """On the steady tracks from GOAL_WORST s in: the fraction of updates whose top 3 bars are all within
    BAR_TOLERANCE of the raw mean over the last BAR_WINDOW s, and the fractions whose headline family is the
    family with the largest share of the bars / with the largest plain sum of the bars."""
    if d.bars is None:
        return math.nan, math.nan, math.nan
    g, groups = np.asarray(bundle.genre_indices()), _families(bundle)[1]
    near = agree = agree_sum = n = 0
    w = max(1, int(round(BAR_WINDOW / hop)))
    for r, bars, fam in zip(runs, d.bars, d.family):
        if not r.clip.steady:
            continue
        fed = np.flatnonzero(r.fed)
        for i in fed[(r.t[fed] > GOAL_WORST)]:
            last = fed[fed <= i][-w:]
            mean = r.raw[last][:, g].mean(axis=0)
            b = bars[i, g]
            top3 = np.argsort(-b)[:3]
            near += bool(np.all(np.abs(b[top3] - mean[top3]) <= BAR_TOLERANCE))
            agree += int(np.argmax(family_shares(bars[i], groups))) == fam[i]
            agree_sum += int(np.argmax([bars[i, grp].sum() for grp in groups])) == fam[i]
            n += 1
    return near / n, agree / n, agree_sum / n


@dataclass
class Figures:
    reactions: list[float]  # s, one per boundary (a miss counts as the piece's length)
    clear: list[bool]  # per boundary: the new label leads the piece's second by >= CLEAR_MARGIN
    misses: int
    switches_per_min: float  # on the steady tracks, from GOAL_WORST s after their start
    splice_switches_per_min: float  # inside the splices' pieces, from GOAL_WORST s after their start

    @property
    def median(self) -> float:
        return float(np.median(self.reactions)) if self.reactions else math.nan

    @property
    def worst(self) -> float:
        return float(np.max(self.reactions)) if self.reactions else math.nan

    def cells(self) -> list[str]:
        r = np.asarray(self.reactions)
        rc = r[np.asarray(self.clear, dtype=bool)] if r.size else r
        return [f"{self.median:.1f}", f"{np.percentile(r, 90):.1f}" if r.size else "-", f"{self.worst:.1f}",
                f"{np.median(rc):.1f}" if rc.size else "-", f"{np.max(rc):.1f}" if rc.size else "-",
                f"{int(np.sum(self.clear))}", f"{self.misses}/{r.size}",
                f"{self.switches_per_min:.2f}", f"{self.splice_switches_per_min:.2f}"]




def figures(runs: list[Run], tops: list[np.ndarray], kind: str = "family") -> Figures:
    """Reaction and switch figures of the decisions ``tops`` (per run) against the pieces' ``kind`` labels."""
    reactions, clear, misses = [], [], 0
    switches, minutes, sp_switches, sp_minutes = 0, 0.0, 0, 0.0
    for r, top in zip(runs, tops):
        if r.clip.steady:  # from GOAL_WORST s in, as in the splices: the first seconds are the start-up
            inner = np.flatnonzero(r.t > GOAL_WORST)
            switches += int(np.sum(top[inner[1:]] != top[inner[:-1]]))
            minutes += max(r.edges[-1] - GOAL_WORST, 0.0) / 60.0
            continue
        labels, margins = r.labels[kind], r.margins[kind]
        for k in range(len(labels)):
            a, b, lab = r.edges[k], r.edges[k + 1], labels[k]
            inner = np.flatnonzero((r.t > a + GOAL_WORST) & (r.t <= b))
            sp_switches += int(np.sum(top[inner[1:]] != top[inner[:-1]]))
            sp_minutes += max(b - a - GOAL_WORST, 0.0) / 60.0
            if k == 0 or lab == labels[k - 1]:
                continue  # the label did not change: not a boundary
            sel = np.flatnonzero((r.t > a) & (r.t <= b))  # judged over the piece that starts at the boundary
            clear.append(margins[k] >= CLEAR_MARGIN)
            wrong = sel[top[sel] != lab]
            if not sel.size or top[sel[-1]] != lab:
                misses += 1
                reactions.append(b - a)
            elif wrong.size == 0:
                reactions.append(float(r.t[sel[0]] - a))
            else:
                reactions.append(float(r.t[sel[sel > wrong[-1]][0]] - a))
    return Figures(reactions, clear, misses, switches / minutes if minutes else 0.0,
                   sp_switches / sp_minutes if sp_minutes else 0.0)


def score(f: Figures) -> float:
    """What --tune minimizes (family level): the goal is median <= 3 s, worst <= 5 s, <= 0.5 switches/min."""
    r = np.asarray(f.reactions)
    return float(np.median(r) + 0.5 * np.percentile(r, 90) + 0.25 * max(r.max() - GOAL_WORST, 0.0)
                 + 4.0 * f.switches_per_min + 2.0 * f.splice_switches_per_min)


def grid() -> list[SmoothingConfig]:
    out = []
    for sw, sh, fl in itertools.product((0.01, 0.02, 0.05, 0.1), (1.0, 2.0, 3.0, 5.0), (0.2, 0.5)):
        out.append(SmoothingConfig(switch_per_second=sw, sharpness=sh, floor=fl))
    for drift, thr, sw, sh in itertools.product((0.25, 0.3, 0.4), (0.05, 0.1, 0.2, 0.4), (0.003, 0.005, 0.01),
                                                (1.5, 2.0)):  # with change points (docs/smoothing.md)
        out.append(SmoothingConfig(switch_per_second=sw, sharpness=sh, change_drift=drift, change_threshold=thr))
    return out


# the change-point HMM the --tune search chose on the tune half (docs/smoothing.md, "Change points"); reported
# beside the default, which it did not beat on the check half
RECENT = 0.5  # the recent oracle's time constant, as a fraction of the time since the boundary
CHANGE_POINTS = SmoothingConfig(switch_per_second=0.005, sharpness=1.5, change_drift=0.25, change_threshold=0.1)


def describe(cfg: SmoothingConfig | str | None) -> str:
    if cfg == "oracle":
        return "oracle (mean since the boundary)"
    if cfg == "recent oracle":
        return f"recent oracle (moving average since the boundary, tau {RECENT:g} x age)"
    if cfg is None:
        return "raw (floor)"
    assert not isinstance(cfg, str)
    if cfg.method == "ema":
        hold = f" + hold {cfg.hold_seconds:g} s / margin {cfg.margin:g}" if cfg.hold_seconds else ""
        return f"ema tau {cfg.tau_seconds:g} s{hold}"
    if cfg.method == "none":
        return "none"
    cp = (f" + change points drift {cfg.change_drift:g} threshold {cfg.change_threshold:g}"
          if cfg.change_threshold else "")
    return (f"hmm switch {cfg.switch_per_second:g}/s sharp {cfg.sharpness:g} floor {cfg.floor:g} "
            f"bars {cfg.bar_seconds:g} s{cp}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all", help=f"one of {', '.join(MODELS)} or 'all'")
    ap.add_argument("--tune", action="store_true", help="grid-search the HMM and EMA on the tune half")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    shared = Path(os.environ.get("STREAMTAG_SHARED", REPO.parent / "shared")) / "audio"
    dirs = [args.dir] if args.dir else [d for d in (shared, REPO / "examples" / "audio") if d.is_dir()]
    by_name: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.suffix in {".ogg", ".mp3", ".wav", ".flac"}:
                by_name.setdefault(p.name, p)  # the examples are copies of some shared clips
    paths = sorted(by_name.values(), key=lambda p: p.name)
    models = MODELS if args.model == "all" else (args.model,)
    audio: dict[str, np.ndarray] = {}
    sr = load_bundle(models[0]).frontend.sample_rate
    for p in paths:
        x = read_audio(str(p), sr)
        if x.shape[0] >= MIN_TRACK_SECONDS * sr:
            audio[str(p)] = x
    clips = plan({f: x.shape[0] / sr for f, x in audio.items()})
    n_b = sum(len(c.pieces) - 1 for c in clips)
    print(f"{len(audio)} tracks from {', '.join(map(str, dirs))}: {len(clips) - len(audio)} splices ({n_b} joins), {len(audio)} steady tracks")
    defaults: list[SmoothingConfig | str | None] = [
        "oracle", "recent oracle", None, SmoothingConfig(method="ema"), SmoothingConfig(), CHANGE_POINTS]
    runs: dict[str, tuple[Bundle, list[Run]]] = {}
    for m in models:
        bundle = load_bundle(m)
        if bundle.frontend.sample_rate != sr:
            raise SystemExit(f"{m}: sample rate {bundle.frontend.sample_rate} differs from {sr}; run it alone")
        runs[m] = bundle, run_model(bundle, clips, audio)

    def decide(c: SmoothingConfig | str | None, m: str, half: int | None) -> tuple[list[Run], Decisions]:
        bundle, rs = runs[m]
        sel = [r for r in rs if half is None or r.clip.half == half]
        if c == "oracle":
            return sel, oracle(sel, bundle)
        if c == "recent oracle":
            return sel, oracle(sel, bundle, recent=RECENT)
        assert not isinstance(c, str)
        return sel, smooth(c, sel, bundle, bundle.hop_seconds)

    if args.tune:  # one setting for every model (the default cannot depend on it): the mean score on the tune half
        t0 = time.perf_counter()
        scored = []
        for i, c in enumerate(grid()):
            sc = []
            for m in models:
                sel, d = decide(c, m, 0)
                sc.append(score(figures(sel, d.family)))
            scored.append((float(np.mean(sc)), i, c))
        scored.sort(key=lambda s: s[:2])
        print(f"tuned {len(scored)} settings on the tune half in {time.perf_counter() - t0:.0f} s")
        for sc, _, c in scored[:8]:
            print(f"  score {sc:6.2f}  {describe(c)}")
        defaults.append(scored[0][2])
    head = ["model", "smoother", "half", "fam median", "p90", "worst", "clear median", "clear worst", "clear n",
            "misses", "steady sw/min",
            "splice sw/min", "genre median", "worst", "steady sw/min", "bars near", "agree share", "agree sum"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for m in models:
        seen = set()
        for cand in defaults:
            if repr(cand) in seen:
                continue
            seen.add(repr(cand))
            for half, name in ((0, "tune"), (1, "check"), (None, "all")):
                sel, d = decide(cand, m, half)
                fam, gen = figures(sel, d.family, "family"), figures(sel, d.genre, "genre")
                near, agree, agree_sum = bar_figures(sel, d, runs[m][0], runs[m][0].hop_seconds)
                bars = [f"{v:.0%}" if not math.isnan(v) else "-" for v in (near, agree, agree_sum)]
                cells = [m, describe(cand), name, *fam.cells(), f"{gen.median:.1f}", f"{gen.worst:.1f}",
                         f"{gen.switches_per_min:.2f}", *bars]
                print("| " + " | ".join(cells) + " |")
    for m in models:  # what bounds the agreement: the bars themselves, on the torn tracks
        sel, d = decide(SmoothingConfig(), m, None)
        print(f"{m}: the best agreement with the default bars that any headline switching at most {GOAL_SWITCHES:g} "
              f"times a minute on the steady tracks could reach (even knowing the future): "
              f"{agreement_bound(sel, d, runs[m][0]):.1%}")


if __name__ == "__main__":
    main()
