"""The JSON form of the events: to_dicts (one rounding pass for a step's updates) == each update's own rounding."""
from __future__ import annotations

import math

import numpy as np

from streamtag.events import GenreUpdate, _r, _rounded, to_dicts


def test_rounding_in_one_pass_equals_round_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    k = rng.integers(0, 10001, 20000)
    ties = (k + 0.5) / 1e4  # x * 1e4 lands on (or next to) a tie: the product's own rounding decides
    values = [
        *rng.random(20000), *rng.random(2000).astype(np.float32), *(k / 1e4), *ties,
        *np.nextafter(ties, 2.0), *np.nextafter(ties, -2.0), *(rng.standard_normal(5000) * 1e3),
        *(rng.standard_normal(200) * 1e9), 0.0, -0.0, -1e-5, 5e-5, -5e-5, 0.00015, 0.00025, 99999.99995,
        123456.78905, 5e-324, 1e300, -1e300, math.inf, -math.inf, math.nan, 1, True,
    ]
    got = _rounded(values, len(values))
    want = [_r(v) for v in values]
    assert all(type(g) is float for g in got)
    assert [(g, math.copysign(1.0, g)) for g in got] == [(w, math.copysign(1.0, w)) for w in want]


def _legacy(u: GenreUpdate) -> dict:
    """The JSON form as each update rounded itself, value by value."""
    d = {"type": u.type, "stream": u.stream, "t": round(u.t, 3), "wall": u.wall, "model": u.model,
         "family": u.family, "families": {k: _r(v) for k, v in u.families.items()},
         "top": [[label, _r(p)] for label, p in u.top], "probs": {k: _r(v) for k, v in u.probs.items()},
         "raw": {k: _r(v) for k, v in u.raw.items()}}
    if u.title is not None:
        d["title"] = u.title
    d.update(u.extra)
    return d


def test_to_dicts_equals_each_updates_own_rounding() -> None:
    rng = np.random.default_rng(1)
    labels = ["rock", "jazz", "électro", "80s"]
    updates = []
    for i in range(30):
        p, r = rng.random(4), rng.random(4).astype(np.float32)
        p[i % 4] = [math.nan, math.inf, 0.12345, -0.0][i % 4]
        order = np.argsort(-p)[: 1 + i % 4]
        updates.append(GenreUpdate(
            stream=f"s{i % 3}", t=i * 0.512345, top=[(labels[j], float(p[j])) for j in order],
            probs=dict(zip(labels, map(float, p))), raw=dict(zip(labels, r)), model="m",
            title=None if i % 2 else "a title", extra={"level_db": -12.3, "silence": False, "latency_ms": None},
            family=None if i % 5 == 0 else ["rock", "jazz"][i % 2],
            families={} if i % 5 == 0 else {"rock": float(p[0]) / 3, "jazz": 1.0 - float(p[0]) / 3},
        ))
    assert to_dicts(updates) == [_legacy(u) for u in updates]
    assert [u.to_dict() for u in updates] == [_legacy(u) for u in updates]
    assert to_dicts([]) == []
    d = updates[1].to_dict()
    assert d["family"] == "jazz" and set(d["families"]) == {"rock", "jazz"}  # contract a: always both keys
    assert updates[0].to_dict()["family"] is None and updates[0].to_dict()["families"] == {}
