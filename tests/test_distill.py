"""Distillation: the corpus -> labels -> student -> bundle path end to end on a tiny corpus, and the shipped students."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from research import build_corpus
from streamtag.errors import ModelError
from streamtag.frontend import logmel
from streamtag.registry import Bundle, load_bundle, save_bundle
from streamtag.train.config import STREAMING
from streamtag.train.distill import run as distill_run
from streamtag.train.distill.corpus import SAMPLE_RATE, Track, read_manifest
from streamtag.train.distill.features import features_dir
from streamtag.train.distill.teacher import Geometry, labels_dir, teacher_windows

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMTAG_SHARED", REPO.parent / "shared"))
# redistributable clips (CREDITS.md: "yes") long enough for a few 5 s windows
REAL_CLIPS = ("brahms-hungarian-dance-5.ogg", "kevin-macleod-vibe-ace.ogg", "karissa-hobbs-lets-go-fishin.ogg")
SHIPPED = ("st-transformer-msd", "st-gru-msd")
TINY = {
    "transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_frames": 128},
    "stateful_gru": {"d_embed": 16, "hidden": 16, "n_layers": 1},
}


def _teacher(tmp: Path) -> Bundle:
    """A tiny random musicnn (musicnn-msd's front end and window, 50 labels of which 5 are genres): fast, and
    the code path is the one the real teacher takes."""
    from streamtag.architectures import build_model
    from streamtag.frontend import FrontendSpec

    cfg = {"n_mels": 96, "n_labels": 50, "timbral_filters": 4, "temporal_filters": 4, "midend_filters": 8,
           "backend_units": 8}
    labels = [f"tag{i}" for i in range(50)]
    torch.manual_seed(0)
    return save_bundle(
        tmp / "tiny-teacher", build_model("musicnn", cfg), architecture="musicnn", arch_config=cfg,
        frontend=FrontendSpec(fp16_mel=True), labels=labels, genre_labels=labels[:5], window_frames=187,
        hop_seconds=1.0,
    )


def _clips(dest: Path) -> Path:
    """Three short real clips from ../shared/audio (with CREDITS.md), or three synthesized ones."""
    dest.mkdir()
    src = SHARED / "audio"
    if all((src / c).is_file() for c in REAL_CLIPS) and (src / "CREDITS.md").is_file():
        for c in REAL_CLIPS:
            shutil.copy(src / c, dest / c)
        shutil.copy(src / "CREDITS.md", dest / "CREDITS.md")
        return dest
    import soundfile as sf

    sr = 22050
    t = np.arange(int(12 * sr)) / sr
    rng = np.random.default_rng(0)
    rows = ["| file | what | license | may be committed |", "| --- | --- | --- | --- |"]
    for i, f0 in enumerate((110.0, 220.0, 330.0)):
        beat = (np.sin(2 * np.pi * (1.5 + i) * t) > 0.9).astype(np.float64)
        y = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * beat * rng.standard_normal(t.size)
        sf.write(dest / f"synth{i}.wav", y.astype(np.float32), sr)
        rows.append(f"| synth{i}.wav | test tone | public domain | yes |")
    (dest / "CREDITS.md").write_text("\n".join(rows) + "\n")
    return dest


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    tmp = tmp_path_factory.mktemp("distill")
    clips = _clips(tmp / "clips")
    corpus = tmp / "corpus"
    build_corpus.build(corpus, packages=(), shared_audio=clips, max_track_seconds=9.0, min_track_seconds=0.0,
                       holdout=0.34)
    return corpus, _teacher(tmp)


def test_corpus_manifest_holds_out_whole_tracks(tiny_corpus: tuple[Path, Bundle]) -> None:
    corpus, _ = tiny_corpus
    tracks = read_manifest(corpus)
    assert len(tracks) == 3
    assert sorted(t.split for t in tracks) == ["eval", "train", "train"]
    for t in tracks:
        x = np.load(corpus / t.file)
        assert x.dtype == np.float32 and x.ndim == 1
        assert x.shape[0] == pytest.approx(t.seconds * SAMPLE_RATE, abs=1)
        assert t.seconds <= 9.0 and t.licence
    # the split is a function of the ids only: rebuilding the manifest's split gives the same answer
    again = [Track(**{**t.__dict__, "split": "train"}) for t in tracks]
    build_corpus.split_tracks(again, 0.34)
    assert [t.split for t in again] == [t.split for t in tracks]


def test_geometry_centres_the_teacher_windows() -> None:
    g = Geometry(grid_frames=64, teacher_frames=187, window_frames=312)
    assert g.n_inside == 2 and g.offset == 30
    teacher = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # (K=10, 3)
    targets, starts = g.window_targets(teacher, n_frames=9 * 64 + 187)
    for tgt, s in zip(targets, starts):
        k = (s + g.offset) // 64
        assert tgt[0] == pytest.approx((k + k + 1) / 2)  # mean of the two teacher windows inside
        assert s >= 0 and s + 312 <= 9 * 64 + 187
        assert k * 64 >= s and (k + 1) * 64 + 187 <= s + 312  # both lie inside the student window


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["mel", "musicnn"])
@pytest.mark.parametrize("arch", ["transformer", "stateful_gru"])
def test_distill_end_to_end_writes_a_loadable_bundle(
    tiny_corpus: tuple[Path, Bundle], tmp_path: Path, arch: str, frontend: str
) -> None:
    corpus, teacher = tiny_corpus
    out = tmp_path / f"student-{arch}"
    from streamtag.train.cli import main

    rc = main(["distill",
        "--arch", arch, "--teacher", str(teacher.path), "--corpus", str(corpus), "--out", str(out),
        "--max-steps", "3", "--minutes", "1", "--batch", "2", "--arch-config", json.dumps(TINY[arch]),
        "--timing-repeats", "2", "--seq-seconds", "6", "8", "--frontend", frontend,
    ])
    assert rc == 0
    b = load_bundle(out)
    assert b.labels == teacher.labels and b.genre_labels == teacher.genre_labels
    assert b.hop_seconds == 0.5
    if frontend == "musicnn":
        # the teacher's frozen front end travels in the bundle, weights equal to the teacher's
        assert b.architecture == "musicnn_student" and b.streaming == "stateful"
        assert b.arch_config["head"] == arch
        student, t_model = b.build_model("cpu"), teacher.build_model("cpu")
        t_weights = t_model.state_dict()
        for k, v in student.frames.state_dict().items():
            assert torch.equal(v, t_weights[k]), k
        # and the cached features it trained on are what that front end streams
        feats = np.load(features_dir(corpus, teacher) / (Path(read_manifest(corpus)[0].file).stem + ".npy"))
        mel = np.load(labels_dir(corpus, teacher) / (Path(read_manifest(corpus)[0].file).stem + ".npz"))["mel"]
        with torch.no_grad():
            streamed, _ = student.frames.step(torch.from_numpy(mel[None].astype(np.float32)), student.frames.init_state(1))
        d = student.frames.delay
        np.testing.assert_allclose(streamed[0, d:].numpy(), feats[: len(mel) - d].astype(np.float32), atol=2e-2, rtol=1e-2)
    else:
        assert b.streaming == STREAMING[arch]
    assert b.frontend.sample_rate == teacher.frontend.sample_rate and b.frontend.n_mels == teacher.frontend.n_mels
    card = b.card_path.read_text()
    # the card is the template filled from the bundle's config.json and the run's card.json
    from streamtag.train.distill.cards import CARD_JSON, render_distill_card

    run = json.loads((out / CARD_JSON).read_text())
    assert card == render_distill_card(b.config_dict(), run)
    assert run["n_params"] == sum(p.numel() for p in b.build_model("cpu").parameters())
    assert b.extra["training"]["train_config"]["arch"] == arch and b.extra["training"]["steps"] == 3
    for heading in ("## Model Details", "## Intended Use", "## Training Data", "## Performance", "## Limitations"):
        assert heading in card
    ev = b.extra["evaluation"]
    assert 0.0 <= ev["clip_genre_top1_agreement"] <= 1.0 and ev["clips"] == 1
    model = b.build_model("cpu")
    x = torch.randn(2, b.window_frames, b.frontend.n_mels) + 2.0
    with torch.no_grad():
        p = torch.sigmoid(model(x))
    assert p.shape == (2, len(teacher.labels))
    assert torch.all((p >= 0) & (p <= 1)) and torch.isfinite(p).all()


def _clip_genre(bundle: Bundle, frames: np.ndarray, window_frames: int, grid: int, offset: int) -> str:
    model = bundle.build_model("cpu")
    if bundle.architecture == "musicnn_student":  # streamed hop by hop, read at the end of each window + its lag
        ends = np.arange(offset, frames.shape[0] - window_frames + 1, grid) + window_frames + model.frames.delay
        ends = ends[ends <= frames.shape[0]]
        x, state, prev, out = torch.from_numpy(frames[None]), model.init_state(1), 0, []
        with torch.no_grad():
            for e in ends:
                logits, state = model.step(x[:, prev:e], state)
                out.append(torch.sigmoid(logits[0]).numpy())
                prev = e
        p = np.stack(out)
    elif getattr(model, "stateful", False):
        starts = np.arange(offset, frames.shape[0] - window_frames + 1, grid)
        with torch.no_grad():
            logits, _ = model.forward_frames(torch.from_numpy(frames[None]))
        p = torch.sigmoid(logits[0, starts + window_frames - 1]).numpy()
    else:
        windows = teacher_windows(frames[offset:], window_frames, grid)
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(windows)))).numpy()
    genres = [g for g in bundle.genre_labels if g in bundle.net_labels]  # the network's own (not derived) genres
    gi = [bundle.labels.index(g) for g in genres]
    return genres[int(np.argmax(p.mean(axis=0)[gi]))]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_student_agrees_with_teacher_where_its_card_says(name: str, audio_dir: Path) -> None:
    try:
        student, teacher = load_bundle(name), load_bundle("musicnn-msd")
    except ModelError as e:
        pytest.skip(str(e))
    # the students learnt the teacher's network outputs (its derived "classical" head came later), and carry the
    # teacher's head over their own logits
    assert student.net_labels == teacher.net_labels and student.labels == teacher.labels
    assert student.derived == teacher.derived and student.genre_labels == teacher.genre_labels
    assert (student.path / "model.safetensors").stat().st_size < 10e6
    # the card's held-out table: shared clips where student and teacher agreed; recompute the shortest one
    agreed = [c["id"].split("/", 1)[1] for c in student.extra["per_clip"]
              if c["id"].startswith("shared/") and c["teacher"] == c["student"]]
    agreed = [c for c in agreed if (audio_dir / c).is_file()]
    if not agreed:
        pytest.skip("the card claims agreement on no shared clip")
    clip = min(agreed, key=lambda c: (audio_dir / c).stat().st_size)
    x, _ = build_corpus.decode(audio_dir / clip, max_seconds=150.0)
    d = student.extra["distillation"]
    t_frames = logmel(x, teacher.frontend)
    t_genre = _clip_genre(teacher, t_frames, teacher.window_frames, d["grid_frames"], 0)
    s_frames = logmel(x, student.frontend)
    s_genre = _clip_genre(student, s_frames, student.window_frames, d["grid_frames"], d["grid_frames"] - d["offset"])
    claimed = next(c for c in student.extra["per_clip"] if c["id"] == f"shared/{clip}")
    assert t_genre == claimed["teacher"]
    assert s_genre == t_genre


def _distill_parser():
    import argparse

    from streamtag.train.cli import add_train_args

    p = argparse.ArgumentParser(prog="distill")
    add_train_args(p, "distill")
    return p


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cards_render_from_their_json(name: str) -> None:
    """The card is the template filled from config.json + card.json, byte for byte, and its command parses
    to the settings the bundle records."""
    import shlex

    from streamtag.train.distill.cards import CARD_JSON, render_distill_card

    d = REPO / "models" / name
    config = json.loads((d / "config.json").read_text())
    run = json.loads((d / CARD_JSON).read_text())
    card = (d / "model_card.md").read_text()
    assert render_distill_card(config, run) == card
    ev = config["extra"]["evaluation"]
    assert f"**{100 * ev['clip_genre_top1_agreement']:.1f}%** ({round(ev['clip_genre_top1_agreement'] * ev['clips'])}/{ev['clips']})" in card
    # the parameter count in card.json is the bundle's
    model = load_bundle(d).build_model("cpu")
    assert run["n_params"] == sum(p.numel() for p in model.parameters())
    assert run["n_trained"] == sum(p.numel() for p in model.head.parameters())
    # "Made by" parses with today's distill options and gives the recorded settings
    argv = shlex.split(run["command"])
    assert argv[:3] == ["python", "-m", "streamtag.train.distill"]
    args = _distill_parser().parse_args(argv[3:])
    cfg = distill_run.distill_config(args)
    training = config["extra"]["training"]
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.mixup) == (
        training["lr"], training["batch"], training["weight_decay"], training["mixup"])
    assert Path(args.out).name == name and args.frontend == "musicnn"
    if "seq_seconds" in training:
        assert list(cfg.seq_seconds) == training["seq_seconds"]


def test_docs_distill_commands_parse() -> None:
    """Every `python -m streamtag.train.distill` command in docs/distill.md parses with today's options."""
    import re
    import shlex

    text = (REPO / "docs" / "distill.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"python -m streamtag\.train\.distill ([^\n`]+)", text)
    assert len(commands) >= 5
    parser = _distill_parser()
    for c in commands:
        args = parser.parse_args(shlex.split(c.split(" &")[0]))
        distill_run.check_args(args)  # --out given, or a label/feature-only run


def test_distill_defaults_come_from_the_config() -> None:
    """Parsing no training flags gives DISTILL_DEFAULTS (argparse reads them from the dataclass)."""
    from streamtag.train.config import DISTILL_DEFAULTS

    for arch in ("transformer", "stateful_gru"):
        args = _distill_parser().parse_args(["--corpus", "c", "--out", "o", "--arch", arch])
        cfg = distill_run.distill_config(args)
        expect = DISTILL_DEFAULTS.replace(arch=arch, time_mask_frames=32 if arch == "stateful_gru" else 16)
        assert cfg == expect, cfg.differences(expect)


def test_sequence_lengths_follow_the_students_frontend() -> None:
    """The feed converts --seq-seconds with the student front end's frame rate (not a hard-coded hop)."""
    from streamtag.frontend import FrontendSpec
    from streamtag.train.config import DISTILL_DEFAULTS
    from streamtag.train.distill.tracks import TrackData, TrackFeed

    g = Geometry(grid_frames=8, teacher_frames=16, window_frames=24)
    rng = np.random.default_rng(0)
    tr = Track(id="s/x.ogg", source="s", path="x.ogg", licence="CC0", licence_file="", duration=20.0, seconds=20.0,
               file="x.npy")
    lengths = {}
    for hop in (256, 512):
        spec = FrontendSpec(hop_length=hop)
        data = []
        for _ in range(3):
            teacher = rng.random((30, 4)).astype(np.float32)
            targets, starts = g.window_targets(teacher, 8 * 29 + 16)
            data.append(TrackData(tr, rng.random((8 * 29 + 16, 5)).astype(np.float32), teacher, targets, starts))
        cfg = DISTILL_DEFAULTS.replace(batch_size=2, seq_seconds=(4.0, 4.0))
        batch = next(iter(TrackFeed(data, g, cfg, stateful=True, spec=spec).epoch(0, rng)))
        lengths[hop] = batch.x.shape[1]
        assert batch.y.shape == (2, lengths[hop], 4) and batch.mask is not None and batch.mask.sum() > 0
    assert lengths == {256: int(4.0 * 16000 / 256), 512: int(4.0 * 16000 / 512)}


def test_streamtag_distill_parses_to_the_distill_defaults() -> None:
    """`streamtag distill` parses with the one training parser: --batch is --batch-size, the rest its defaults."""
    from streamtag.cli import build_parser
    from streamtag.train.config import DISTILL_DEFAULTS

    args = build_parser(serve_security=False).parse_args(["distill", "--corpus", "c", "--out", "o", "--batch", "7"])
    distill_run.check_args(args)
    cfg = distill_run.distill_config(args)
    assert cfg == DISTILL_DEFAULTS.replace(arch="transformer", batch_size=7, time_mask_frames=16)
