"""Clip-level genre agreement through the product path: ``tag_audio`` (what ``streamtag tag`` runs) on each
held-out corpus track, the student streamed hop by hop from a fresh state, clip genre = argmax over the genre
labels of the mean of all its raw outputs, against the teacher's clip genre from the label cache.

Research tool (not in the wheel; run from a checkout). It produced the "through tag_audio" agreement figures
of docs/distill.md and docs/performance.md (22/24 for each shipped student, fp32 and bf16), and
research/liveness.py calls it for the cards. Run it after changing the engine's streaming path or precision, to
check that the product still agrees with the teacher as the cards say.

    python -m research.product_check --corpus /work/corpus --model st-gru-msd [--model ...] \
        [--precision fp32 --precision bf16]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from streamtag.pipeline import tag_audio
from streamtag.registry import load_bundle
from streamtag.runner import ModelRunner
from streamtag.train.distill.corpus import read_manifest
from streamtag.train.distill.teacher import labels_dir

__all__ = ["product_agreement", "main"]

log = logging.getLogger(__name__)


def product_agreement(corpus: Path, model: str, teacher_name: str = "musicnn-msd",
                      precision: str = "fp32") -> tuple[int, int, list[str]]:
    """(agreeing clips, held-out clips, ids of the misses) of ``model`` through ``tag_audio`` in ``precision``."""
    teacher = load_bundle(teacher_name)
    bundle = load_bundle(model)
    runner = ModelRunner(bundle, "cpu", precision=precision)
    gi = np.asarray(teacher.genre_indices())
    hits, n, misses = 0, 0, []
    for tr in read_manifest(corpus):
        if tr.split != "eval":
            continue
        z = np.load(labels_dir(corpus, teacher) / (Path(tr.file).stem + ".npz"))
        tg = teacher.genre_labels[int(np.argmax(z["teacher"].mean(axis=0)[gi]))]
        x = np.load(corpus / tr.file)
        raw = tag_audio(x, runner, name=tr.id, all_tags=True).raw  # (hops, n_labels)
        sg = bundle.genre_labels[int(np.argmax(raw.mean(axis=0)[np.asarray(bundle.genre_indices())]))]
        n += 1
        hits += int(sg == tg)
        if sg != tg:
            misses.append(f"{tr.id} (teacher {tg}, student {sg})")
    return hits, n, misses


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="python -m research.product_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus with the teacher's label cache")
    ap.add_argument("--model", action="append", required=True, help="student bundle (name or directory); repeatable")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--precision", action="append", choices=("fp32", "bf16"), default=None,
                    help="arithmetic of the student (repeatable; default: fp32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for m in args.model:
        for precision in args.precision or ["fp32"]:
            hits, n, misses = product_agreement(args.corpus, m, precision=precision)
            log.info("%s (%s): tag_audio clip genre agreement %d/%d (%.1f%%); misses: %s", m, precision, hits, n,
                     100 * hits / n, "; ".join(misses) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
