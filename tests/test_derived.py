"""Derived labels: a linear head on a frozen network's logits, run by the ModelRunner on every path (windows,
batched windows, stateful steps), the network's own outputs untouched; a malformed head is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamtag.errors import ModelError
from streamtag.registry import load_bundle, save_bundle
from streamtag.runner import ModelRunner


def _bundle(tmp_path: Path, arch: str, cfg: dict, *, streaming: str, head: dict | None) -> Path:
    from streamtag.architectures import build_model
    from streamtag.frontend import FrontendSpec

    torch.manual_seed(0)
    spec = FrontendSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, scaling="db")
    out = tmp_path / f"{arch}-{head is not None}"
    save_bundle(out, build_model(arch, cfg), architecture=arch, arch_config=cfg, frontend=spec,
                labels=["rock", "jazz", "80s"], genre_labels=["rock", "jazz"], window_frames=62, hop_seconds=0.5,
                streaming=streaming)
    if head is not None:
        c = json.loads((out / "config.json").read_text())
        c["labels"].append(head["label"])
        c["genre_labels"].append(head["label"])
        c["taxonomy"]["families"][head["label"]] = [head["label"]]
        c["derived_labels"] = [head]
        (out / "config.json").write_text(json.dumps(c))
    return out


ARCHS = {
    "transformer": (dict(n_mels=32, n_labels=3, d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0), "window"),
    "stateful_gru": (dict(n_mels=32, n_labels=3, d_embed=16, hidden=32, n_layers=1, dropout=0.0), "stateful"),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_derived_label_is_a_logistic_head_on_the_networks_logits(tmp_path: Path, arch: str) -> None:
    cfg, streaming = ARCHS[arch]
    head = {"label": "classical", "weights": [0.5, -1.0, 2.0], "bias": -0.25}
    plain = ModelRunner(load_bundle(_bundle(tmp_path, arch, cfg, streaming=streaming, head=None)), "cpu")
    extended = load_bundle(_bundle(tmp_path, arch, cfg, streaming=streaming, head=head))
    assert extended.labels[-1] == "classical" and extended.derived[0]["label"] == "classical"
    runner = ModelRunner(extended, "cpu")
    frames = np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32)
    if streaming == "window":
        a, b = plain.predict_windows(frames, [62, 124, 186], 62), runner.predict_windows(frames, [62, 124, 186], 62)
        w = runner.predict(np.stack([frames[:62], frames[62:124]]))
        np.testing.assert_allclose(w, b[:2], rtol=1e-5, atol=1e-6)  # batched windows: the same head
    else:
        a, _ = plain.step_many(frames[None], plain.init_state(1), [62, 124, 186])
        b, _ = runner.step_many(frames[None], runner.init_state(1), [62, 124, 186])
        a, b = a[0], b[0]
    assert a.shape == (3, 3) and b.shape == (3, 4)
    np.testing.assert_array_equal(b[:, :3], a)  # the network's own outputs are untouched
    logits = np.log(a) - np.log1p(-a)  # the sigmoid's inverse: the network's logits
    want = 1.0 / (1.0 + np.exp(-(logits @ np.array(head["weights"]) + head["bias"])))
    np.testing.assert_allclose(b[:, 3], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "head",
    [
        {"label": "classical", "weights": [0.5, -1.0], "bias": 0.0},  # one weight per network output
        {"label": "opera", "weights": [0.5, -1.0, 2.0], "bias": 0.0},  # must name the labels' tail
        {"label": "classical", "weights": [0.5, -1.0, 2.0]},  # no bias
    ],
)
def test_a_malformed_derived_label_is_refused(tmp_path: Path, head: dict) -> None:
    cfg, streaming = ARCHS["transformer"]
    path = _bundle(tmp_path, "transformer", cfg, streaming=streaming, head={**head, "label": "classical"}
                   if head["label"] == "opera" else head)
    if head["label"] == "opera":
        c = json.loads((path / "config.json").read_text())
        c["derived_labels"][0]["label"] = "opera"
        (path / "config.json").write_text(json.dumps(c))
    with pytest.raises(ModelError, match="derived label 0"):
        load_bundle(path)


def test_the_trainers_teacher_outputs_carry_the_derived_labels_as_the_runner_does(tmp_path: Path) -> None:
    # students distilled from a bundle with a derived label learn it too: the label cache has every label's column
    from streamtag.train.distill.teacher import teacher_probs

    cfg, streaming = ARCHS["transformer"]
    head = {"label": "classical", "weights": [0.5, -1.0, 2.0], "bias": -0.25}
    bundle = load_bundle(_bundle(tmp_path, "transformer", cfg, streaming=streaming, head=head))
    windows = np.random.default_rng(1).standard_normal((5, 62, 32)).astype(np.float32)
    got = teacher_probs(bundle.build_model("cpu"), windows, derived=bundle.derived)
    assert got.shape == (5, len(bundle.labels))
    np.testing.assert_allclose(got, ModelRunner(bundle, "cpu").predict(windows), rtol=1e-5, atol=1e-6)


def test_a_student_carries_its_teachers_derived_label_and_refuses_other_labels():
    """carry_head: the teacher's derived labels, labels, genres and families go into the student's config (its
    weights and the rest stay); doing it twice changes nothing; a student of other labels is refused."""
    from streamtag.train.distill.carry_head import carry

    head = {"label": "classical", "weights": [0.5, -0.5], "bias": 0.1}
    teacher = {"labels": ["rock", "jazz", "classical"], "genre_labels": ["rock", "jazz", "classical"],
               "taxonomy": {"families": {"classical": ["classical"]}}, "derived_labels": [head]}
    student = {"name": "s", "labels": ["rock", "jazz"], "genre_labels": ["rock", "jazz"], "taxonomy": {},
               "extra": {"kept": 1}}
    once = carry(student, teacher)
    assert once["labels"] == teacher["labels"] and once["genre_labels"] == teacher["genre_labels"]
    assert once["derived_labels"] == [head] and once["taxonomy"] == teacher["taxonomy"]
    assert once["name"] == "s" and once["extra"] == {"kept": 1}
    assert carry(once, teacher) == once
    with pytest.raises(ValueError, match="not the teacher's network labels"):
        carry({**student, "labels": ["jazz", "rock"]}, teacher)
