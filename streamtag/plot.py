"""The taggram: genres x time, with the headline family strip above it (``streamtag tag --plot FILE``).

PNG and SVG are drawn with matplotlib (the optional ``[plot]`` extra, imported only here and only then); HTML is
one self-contained file (an inline SVG drawn here, no script, no external resource) with the segment list and the
summary, so it opens anywhere and can be mailed. The taggram shows the model's raw outputs (what it hears, as
musicnn's taggram does); the strip shows the smoothed headline family, the decision the segments are made of.
Rows are grouped by family (the family's colour marks each row's label), families by their share of the input.
"""
from __future__ import annotations

import hashlib
import html
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["taggram", "family_color", "PLOT_FORMATS", "row_order", "clock"]

PLOT_FORMATS = (".png", ".svg", ".html")
# one colour per common family (the rest get a stable colour from their name): readable on white and dark
FAMILY_COLORS = {
    "rock": "#d62728", "metal": "#7f1d1d", "electronic": "#1f77b4", "pop": "#e377c2", "dance": "#9467bd",
    "chillout": "#17becf", "experimental": "#8c564b", "jazz": "#ff7f0e", "blues": "#3b5ba5", "folk": "#2ca02c",
    "country": "#bcbd22", "hip-hop": "#4b4b4b", "soul": "#b5651d", "classical": "#6a3d9a", "world": "#1b9e77",
    "new age": "#66c2a5", "reggae": "#4daf4a", "ambient": "#80b1d3",
}
_FALLBACK = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#9c755f", "#af7aa1", "#86bc86",
             "#d37295")  # mid tones: white text stays readable on them
MAX_HTML_COLUMNS = 720  # the HTML taggram averages neighbouring hops beyond this many (file size stays < 1 MB)


def family_color(name: str) -> str:
    """A stable colour for a family name (CSS hex)."""
    key = name.lower()
    if key in FAMILY_COLORS:
        return FAMILY_COLORS[key]
    return _FALLBACK[int(hashlib.md5(key.encode()).hexdigest(), 16) % len(_FALLBACK)]


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour)."""
    s = int(round(max(0.0, seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def row_order(result: Any) -> list[int]:
    """Label indices top to bottom: families by time headlined (then by summed mean), genres by mean raw output."""
    mean = result.raw.mean(axis=0) if len(result.raw) else np.zeros(len(result.labels))
    family_of = {label: _family(result, label) for label in result.labels}
    shares = result.headline_shares()
    fam_mean: dict[str, float] = {}
    for k, label in enumerate(result.labels):
        fam_mean[family_of[label]] = fam_mean.get(family_of[label], 0.0) + float(mean[k])
    fam_rank = sorted(fam_mean, key=lambda f: (-shares.get(f, 0.0), -fam_mean[f]))
    pos = {f: i for i, f in enumerate(fam_rank)}
    return sorted(range(len(result.labels)), key=lambda k: (pos[family_of[result.labels[k]]], -mean[k]))


def _family(result: Any, label: str) -> str:
    return str(dict(zip(result.labels, result.label_families)).get(label, label))


def taggram(result: Any, path: str | Path) -> Path:
    """Draw ``result`` (a :class:`~streamtag.api.TagResult`) to ``path``: .png, .svg or .html."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: use a .png, .svg or .html file name")
    if len(result.times) == 0:
        raise ConfigError(f"{result.name}: nothing to plot (no hops were tagged)")
    try:
        if suffix == ".html":
            path.write_text(_html(result), encoding="utf-8")
        else:
            _matplotlib(result, path)
    except OSError as e:
        raise ConfigError(f"--plot {path}: cannot write it ({e.strerror or e}); check the folder") from e
    return path


# -- matplotlib (PNG, SVG) ---------------------------------------------------------------------------------------
def _matplotlib(result: Any, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:
        raise ConfigError("--plot .png/.svg needs matplotlib: pip install 'streamtag[plot]' "
                          "(or write .html, which needs nothing)") from e
    order = row_order(result)
    labels = [result.labels[k] for k in order]
    data = result.raw[:, order].T  # (K, T)
    times = result.times
    hop = result.hop_seconds or 1.0
    t0, t1 = max(0.0, float(times[0]) - hop), float(times[-1])
    k = len(labels)
    fig = plt.figure(figsize=(12, 2.4 + 0.2 * k), dpi=110)
    grid = fig.add_gridspec(2, 3, height_ratios=[0.9, max(2.0, 0.2 * k)], width_ratios=[0.6, 60, 1], hspace=0.08,
                            wspace=0.01)
    strip = fig.add_subplot(grid[0, 1])
    ax = fig.add_subplot(grid[1, 1], sharex=strip)
    fam_ax = fig.add_subplot(grid[1, 0], sharey=ax)  # each row's family, as a colour column left of the labels
    cax = fig.add_subplot(grid[1, 2])
    seen: dict[str, str] = {}
    for s in result.segments:
        color = family_color(s.family)
        seen.setdefault(s.family, color)
        strip.axvspan(max(s.start, t0), s.end, color=color, lw=0)
        if (s.end - s.start) > 0.07 * (t1 - t0):
            text = s.family if s.genre == s.family else f"{s.family} · {s.genre}"
            strip.text((max(s.start, t0) + s.end) / 2, 0.5, text, ha="center", va="center",
                       fontsize=9, color="white", fontweight="bold", clip_on=True)
    strip.set_yticks([])
    strip.set_ylim(0, 1)
    strip.set_ylabel("family", rotation=0, ha="right", va="center")
    strip.tick_params(labelbottom=False)
    strip.set_title(f"{Path(result.name).name if '://' not in result.name else result.name} · {result.model} · "
                    "headline family (top), raw model outputs (below)", fontsize=10, loc="left")
    strip.legend(handles=[Patch(color=c, label=f) for f, c in seen.items()], loc="upper left",
                 bbox_to_anchor=(1.0 + 1 / 60, 1.05), fontsize=8, frameon=False, handlelength=1)
    im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0,
                   vmax=max(0.05, float(np.nanmax(data))), extent=(t0, t1, k, 0))
    for r, label in enumerate(labels):
        fam_ax.add_patch(Rectangle((0, r), 1, 1, color=family_color(_family(result, label)), lw=0))
    fam_ax.set_xlim(0, 1)
    fam_ax.set_xticks([])
    fam_ax.set_yticks(np.arange(k) + 0.5)
    fam_ax.set_yticklabels(labels, fontsize=8)
    fam_ax.set_ylim(k, 0)
    for side in ("top", "right", "bottom", "left"):
        fam_ax.spines[side].set_visible(False)
    ax.tick_params(labelleft=False, left=False)
    ax.set_xlim(t0, t1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: clock(x)))
    ax.set_xlabel("time (m:ss)")
    fig.colorbar(im, cax=cax, label="raw probability")
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)


# -- self-contained HTML -----------------------------------------------------------------------------------------
def _magma(v: float) -> str:
    """A dark-to-bright colour for v in [0, 1] (a short piecewise ramp close to magma)."""
    stops = [(0.0, (0, 0, 4)), (0.25, (80, 18, 123)), (0.5, (182, 54, 121)), (0.75, (251, 136, 97)),
             (1.0, (252, 253, 191))]
    v = min(1.0, max(0.0, v))
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if v <= b:
            f = (v - a) / (b - a)
            return "#" + "".join(f"{int(x + f * (y - x)):02x}" for x, y in zip(ca, cb))
    return "#fcfdbf"


def _svg(result: Any) -> str:
    order = row_order(result)
    labels = [result.labels[k] for k in order]
    data = result.raw[:, order]  # (T, K)
    times = result.times
    n = data.shape[0]
    step = max(1, int(np.ceil(n / MAX_HTML_COLUMNS)))
    if step > 1:  # average neighbouring hops: at most MAX_HTML_COLUMNS columns
        m = n // step * step
        data = np.concatenate([data[:m].reshape(-1, step, data.shape[1]).mean(axis=1), data[m:].mean(axis=0,
                               keepdims=True)]) if m < n else data.reshape(-1, step, data.shape[1]).mean(axis=1)
    hop = result.hop_seconds or 1.0
    t0, t1 = max(0.0, float(times[0]) - hop), float(times[-1])
    span = max(t1 - t0, 1e-6)
    left, width, row_h, strip_h, top = 130, 900, 14, 28, 10
    k = len(labels)
    height = top + strip_h + 8 + k * row_h + 40
    vmax = max(0.05, float(np.nanmax(data)))
    x = lambda t: left + (t - t0) / span * width  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height}" '
             f'shape-rendering="crispEdges" font-family="sans-serif" font-size="11" role="img" aria-label="taggram">']
    for s in result.segments:
        a, b = x(max(s.start, t0)), x(s.end)
        title = html.escape(f"{s.family} · {s.genre} {clock(s.start)}–{clock(s.end)} ({s.confidence:.2f})")
        parts.append(f'<rect class="segment" x="{a:.1f}" y="{top}" width="{max(0.5, b - a):.1f}" height="{strip_h}" '
                     f'fill="{family_color(s.family)}"><title>{title}</title></rect>')
        if b - a > 70:
            parts.append(f'<text x="{(a + b) / 2:.1f}" y="{top + strip_h / 2 + 4}" text-anchor="middle" '
                         f'fill="white" font-weight="bold">{html.escape(s.family)}</text>')
    parts.append(f'<text x="{left - 12}" y="{top + strip_h / 2 + 4}" text-anchor="end">family</text>')
    y0 = top + strip_h + 8
    cols = data.shape[0]
    cw = width / cols
    for r, label in enumerate(labels):
        y = y0 + r * row_h
        parts.append(f'<rect x="{left - 8}" y="{y}" width="6" height="{row_h}" '
                     f'fill="{family_color(_family(result, label))}"/>')
        parts.append(f'<text x="{left - 12}" y="{y + row_h - 3}" text-anchor="end">{html.escape(label)}</text>')
        for c in range(cols):
            v = float(data[c, r]) / vmax
            parts.append(f'<rect x="{left + c * cw:.1f}" y="{y}" width="{cw + 0.3:.2f}" height="{row_h}" '
                         f'fill="{_magma(v)}"/>')
    yb = y0 + k * row_h + 14
    for i in range(6):
        t = t0 + span * i / 5
        parts.append(f'<text x="{x(t):.1f}" y="{yb}" text-anchor="middle">{clock(t)}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{yb + 16}" text-anchor="middle">time (m:ss) · raw output, '
                 f'brightest = {vmax:.2f}</text></svg>')
    return "".join(parts)


def _html(result: Any) -> str:
    name = html.escape(result.name)
    rows = "".join(
        f"<tr><td>{clock(s.start)}</td><td>{clock(s.end)}</td><td><span class=sw style='background:"
        f"{family_color(s.family)}'></span>{html.escape(s.family)}</td><td>{html.escape(s.genre)}</td>"
        f"<td>{s.confidence:.2f}</td><td>{html.escape(s.title or '')}</td></tr>" for s in result.segments)
    top = "".join(f"<tr><td>{html.escape(label)}</td><td>{p:.3f}</td></tr>" for label, p in result.top(5))
    summary = result.summary
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamtag · {name}</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}} table{{border-collapse:collapse}}
td,th{{padding:.2rem .7rem;text-align:left;border-bottom:1px solid #ddd}} .sw{{display:inline-block;width:.8rem;
height:.8rem;margin-right:.4rem;border-radius:2px;vertical-align:-1px}} svg{{max-width:100%;height:auto}}</style>
</head><body>
<h1>{name}</h1>
<p>model {html.escape(result.model)} · {float(summary.get("duration", 0.0)):.1f} s · {len(result.times)} hops ·
{len(result.segments)} segments</p>
{_svg(result)}
<h2>Segments</h2>
<table id="segments"><tr><th>start</th><th>end</th><th>family</th><th>genre</th><th>confidence</th><th>title</th></tr>
{rows}</table>
<h2>Top genres (mean raw output)</h2>
<table id="summary">{top}</table>
</body></html>
"""
