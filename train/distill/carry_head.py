"""Give a distilled student its teacher's derived labels (musicnn-msd's "classical"), and measure what it changes.

The shipped students were distilled from musicnn-msd's 50 network outputs before the teacher got its derived
``classical`` label (a logistic head on those 50 logits: :mod:`streamtag.train.distill.derived_head`). A student's
outputs approximate the teacher's, so the same head runs on the student's logits as it does on the teacher's:
this copies the teacher's ``derived_labels`` (and its labels, genre labels and families, which name the derived
label) into the student's config.json, leaving the student's weights untouched.

Then it measures, on a folder of clips (the shipped cards use ../shared/audio, which the head's fit and the
students' corpus overlap: it says how closely a student follows its teacher, not how either generalises): per clip,
the top genre of the clip (the highest mean raw probability over the genre labels, as ``streamtag tag``'s summary
ranks them) of the teacher, of the student without the derived label and with it, and the clip's mean derived
probability of teacher and student. The figures go to the student's card.json (``derived_check``) and its
model_card.md is rendered again (:mod:`streamtag.train.distill.cards`).

    python -m streamtag.train.distill.carry_head --student models/st-gru-msd --teacher models/musicnn-msd \\
        --audio ../shared/audio
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..data import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)



def carry(student_config: dict[str, Any], teacher_config: dict[str, Any]) -> dict[str, Any]:
    """The student's config with the teacher's derived labels: labels, genre labels and families follow the
    teacher's. The student must output exactly the teacher's network labels."""
    derived = teacher_config.get("derived_labels") or []
    n_net = len(teacher_config["labels"]) - len(derived)
    if not derived:
        raise ValueError("the teacher has no derived labels")
    net = [d for d in student_config["labels"] if d not in {x["label"] for x in derived}]
    if net != teacher_config["labels"][:n_net]:
        raise ValueError("the student's labels are not the teacher's network labels; distil it again instead")
    out: dict[str, Any] = {}
    for key, value in student_config.items():
        if key == "derived_labels":
            continue
        out[key] = value
        if key == "labels":
            out[key] = list(teacher_config["labels"])
        elif key == "genre_labels":
            out[key] = list(teacher_config["genre_labels"])
        elif key == "taxonomy":
            out[key] = teacher_config["taxonomy"]
            out["derived_labels"] = derived
    if "derived_labels" not in out:
        out["taxonomy"] = teacher_config["taxonomy"]
        out["derived_labels"] = derived
    return out


def _clip_means(model: Any, clips: list[Path]) -> list[dict[str, float]]:
    from streamtag.api import tag

    return [dict(tag(str(c), model=model, all_tags=True, smoothing="none").summary["mean"]) for c in clips]


def _top(mean: dict[str, float], genres: list[str]) -> str:
    return max(genres, key=lambda g: mean.get(g, -1.0))


def check(student_dir: Path, teacher_dir: Path, clips: list[Path]) -> dict[str, Any]:
    """The figures of the module docstring, for a student that already carries the head."""
    from streamtag.api import load_model

    teacher, student = load_model(str(teacher_dir), device="cpu"), load_model(str(student_dir), device="cpu")
    derived = [d["label"] for d in teacher.bundle.derived]
    net_genres = [g for g in student.genre_labels if g not in derived]
    t_means, s_means = _clip_means(teacher, clips), _clip_means(student, clips)
    rows = []
    for clip, t, s in zip(clips, t_means, s_means):
        rows.append({"clip": clip.name, "teacher": _top(t, teacher.genre_labels),
                     "student_without": _top(s, net_genres), "student": _top(s, student.genre_labels),
                     **{f"teacher_{d}": round(t[d], 3) for d in derived},
                     **{f"student_{d}": round(s[d], 3) for d in derived}})
    label = derived[0]
    t_d = np.array([r[f"teacher_{label}"] for r in rows])
    s_d = np.array([r[f"student_{label}"] for r in rows])
    return {
        "label": label, "clips": len(rows),
        "agree_without": sum(r["teacher"] == r["student_without"] for r in rows),
        "agree_with": sum(r["teacher"] == r["student"] for r in rows),
        "derived_r": round(float(np.corrcoef(t_d, s_d)[0, 1]), 3),
        "derived_mae": round(float(np.mean(np.abs(t_d - s_d))), 3),
        "per_clip": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamtag.train.distill.carry_head", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, required=True, help="the student bundle's folder (changed in place)")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher bundle's folder (with derived labels)")
    p.add_argument("--audio", type=Path, required=True, help="a folder of clips to measure on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .cards import CARD_JSON, render_distill_card

    cfg_path = args.student / "config.json"
    config = carry(json.loads(cfg_path.read_text()), json.loads((args.teacher / "config.json").read_text()))
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    clips = sorted(c for c in args.audio.iterdir() if c.suffix.lower() in AUDIO_EXTENSIONS)
    if not clips:
        raise SystemExit(f"no audio clips ({', '.join(AUDIO_EXTENSIONS)}) in {args.audio}")
    result = check(args.student, args.teacher, clips)
    card_path = args.student / CARD_JSON
    run = json.loads(card_path.read_text())
    run["derived_check"] = {**result, "command": "python -m streamtag.train.distill.carry_head --student "
                            f"models/{args.student.name} --teacher models/{args.teacher.name} --audio ../shared/audio"}
    card_path.write_text(json.dumps(run, indent=2) + "\n")
    (args.student / "model_card.md").write_text(render_distill_card(config, run))
    log.info("%s: clip top genre equal to the teacher's on %d of %d clips with %s (%d without); its clip means: "
             "r %.3f, mean absolute difference %.3f", args.student.name, result["agree_with"], result["clips"],
             result["label"], result["agree_without"], result["derived_r"], result["derived_mae"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
