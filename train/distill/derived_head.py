"""A derived label on a frozen network: "classical" for musicnn-msd, learnt from musicnn-mtt's answers.

musicnn-msd's 50 Last.fm tags have no classical tag, so a newcomer's classical clip heads with jazz. musicnn-mtt has
one. This fits a logistic head on musicnn-msd's own 50 output logits (a linear map of its frozen penultimate
layer) to musicnn-mtt's classical answer (the strongest of its "classical", "classic" and "opera" sigmoids) on
the same 3 s windows, and writes it into the bundle as a derived label (``derived_labels`` in config.json, run by
``ModelRunner``; streamtag/registry.py): the network's own 50 outputs are untouched, the head costs one
(50 x 1) product per window.

Audio: a corpus built by ``python -m streamtag.train.build_corpus`` (its ``.npy`` tracks and their train/eval
split) plus folders of audio files (e.g. MIDI rendered with FluidSynth's GM soundfont), split by a hash of the
path. Tracks whose name matches ``--exclude`` are never used (the demo clips the result is judged on).

    python -m streamtag.train.distill.derived_head --corpus /tmp/corpus --audio /tmp/rendered --bundle models/musicnn-msd
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtag.frontend import IncrementalLogMel
from streamtag.registry import Bundle, load_bundle

log = logging.getLogger(__name__)

LABEL = "classical"
TEACHER_TAGS = ("classical", "classic", "opera")  # musicnn-mtt's classical family
HOP_FRAMES = 62  # ~1 s at 16 kHz / 256: one window per second, as the default hop
AUDIO_EXTS = (".wav", ".ogg", ".mp3", ".flac", ".npy")


def _tracks(corpus: Path | None, folders: list[Path], exclude: list[str], holdout: float) -> list[tuple[str, Path, str]]:
    """(id, path, split) of every usable track."""
    out: list[tuple[str, Path, str]] = []
    if corpus is not None:
        for line in (corpus / "corpus.jsonl").read_text().splitlines():
            t = json.loads(line)
            out.append((t["id"], corpus / t["file"], t["split"]))
    for d in folders:
        for p in sorted(d.rglob("*")):
            if p.suffix in AUDIO_EXTS:
                h = int(hashlib.sha1(p.name.encode()).hexdigest()[:8], 16) / 16**8
                out.append((f"{d.name}/{p.name}", p, "eval" if h < holdout else "train"))
    return [t for t in out if not any(x in t[0] for x in exclude)]


def _audio(path: Path, sr: int) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    from streamtag.sources import read_audio

    return read_audio(str(path), sr)


@torch.inference_mode()
def window_outputs(bundle: Bundle, model: Any, x: np.ndarray, *, logits: bool) -> np.ndarray:
    """(n, L) logits (or sigmoid probabilities) of ``bundle``'s windows over ``x``, one per HOP_FRAMES."""
    frames = IncrementalLogMel(bundle.frontend).push(x)  # (T, n_mels), == the offline log-mel
    w = bundle.window_frames
    if frames.shape[0] < w:
        return np.zeros((0, len(bundle.labels)), np.float32)
    ends = list(range(w, frames.shape[0] + 1, HOP_FRAMES))
    z = model.forward_windows(torch.as_tensor(frames), ends, w).float()
    return (z if logits else torch.sigmoid(z)).numpy()


def fit(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, steps: int = 500) -> tuple[np.ndarray, float]:
    """Logistic regression of soft targets y (n,) on x (n, D) with an L2 penalty; returns (weights (D,), bias)
    on the unstandardized inputs."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = torch.as_tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wn = w.detach().numpy() / sd
    return wn.astype(np.float64), float(b.detach().numpy()[0] - (wn * mu).sum())


def _by_source(tracks: list[dict[str, Any]]) -> dict[str, int]:
    """Tracks per "source (split)": the first part of each id."""
    out: dict[str, int] = {}
    for t in tracks:
        key = f"{t['id'].split('/')[0]} ({t['split']})"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count one half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.shape[0])
    ranks[order] = np.arange(1, scores.shape[0] + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m streamtag.train.distill.derived_head", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle to extend (its config.json is rewritten)")
    ap.add_argument("--teacher", default="musicnn-mtt", help="the bundle whose classical tags are the target")
    ap.add_argument("--corpus", type=Path, default=None, help="a build_corpus directory")
    ap.add_argument("--audio", type=Path, nargs="*", default=[], help="folders of audio files")
    ap.add_argument("--exclude", nargs="*", default=["brahms", "sugar-plum"], help="never use tracks named so")
    ap.add_argument("--holdout", type=float, default=0.25, help="fraction of the folders' tracks held out")
    ap.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the standardized weights")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    student, teacher = load_bundle(args.bundle), load_bundle(args.teacher)
    if student.frontend != teacher.frontend or student.window_frames != teacher.window_frames:
        raise SystemExit("the bundle and the teacher must share the front end and the window")
    net_labels = [lab for lab in student.labels if lab not in {d["label"] for d in student.derived}]
    s_model, t_model = student.build_model("cpu"), teacher.build_model("cpu")
    cols = [teacher.labels.index(t) for t in TEACHER_TAGS]
    xs: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
    per_track = []
    for tid, path, split in _tracks(args.corpus, args.audio, args.exclude, args.holdout):
        x = _audio(path, student.frontend.sample_rate)
        z = window_outputs(student, s_model, x, logits=True)[:, : len(net_labels)]  # (n, 50) the network's own
        p = window_outputs(teacher, t_model, x, logits=False)  # (n, 50)
        if not z.shape[0]:
            continue
        y = p[:, cols].max(axis=1)
        xs[split].append(z)
        ys[split].append(y)
        per_track.append({"id": tid, "split": split, "windows": int(z.shape[0]), "teacher_mean": round(float(y.mean()), 3)})
        log.info("%s %s: %d windows, teacher classical %.2f", split, tid, z.shape[0], y.mean())
    x_tr, y_tr = np.concatenate(xs["train"]), np.concatenate(ys["train"])
    x_ev, y_ev = np.concatenate(xs["eval"]), np.concatenate(ys["eval"])
    w, b = fit(x_tr, y_tr, l2=args.l2)
    pred = 1.0 / (1.0 + np.exp(-(x_ev @ w + b)))
    pos = y_ev >= 0.5
    report = {
        "train_windows": int(x_tr.shape[0]), "eval_windows": int(x_ev.shape[0]),
        "eval_mean_abs_error": round(float(np.abs(pred - y_ev).mean()), 4),
        "eval_correlation": round(float(np.corrcoef(pred, y_ev)[0, 1]), 4),
        "eval_teacher_positive_windows": int(pos.sum()),
        "eval_auc_teacher_p05": round(float(auc(pred, pos)), 4) if 0 < pos.sum() < pos.size else None,
    }
    log.info("held out: %s", report)
    cfg_path = args.bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["labels"] = [*net_labels, LABEL]
    if LABEL not in cfg["genre_labels"]:
        cfg["genre_labels"] = [*cfg["genre_labels"], LABEL]
    fams = cfg.setdefault("taxonomy", {"families": {}})["families"]
    fams[LABEL] = [LABEL]
    derived = {"label": LABEL, "weights": [round(float(v), 6) for v in w], "bias": round(b, 6),
               "source": f"logistic head on the network's logits, fitted to {teacher.name}'s strongest of "
                         f"{', '.join(TEACHER_TAGS)} (python -m streamtag.train.distill.derived_head)",
               "fit": {**report, "l2": args.l2, "tracks": _by_source(per_track), "excluded": args.exclude}}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in ("derived_labels",):
            continue
        out[k] = v
        if k == "taxonomy":
            out["derived_labels"] = [derived]
    out.setdefault("derived_labels", [derived])
    cfg_path.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", cfg_path)


if __name__ == "__main__":
    main()
