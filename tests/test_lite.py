"""The ``lite`` student: its streaming equalities (chunked == full sequence, batched == alone, step_many ==
stepping hop by hop, empty chunks), device handling, and the alignment rules of its training (research/lite.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtag.architectures import build_model
from streamtag.architectures.lite import LiteConfig, LiteStudent

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_MELS, N_LABELS = 24, 6
SMALL = {"n_mels": N_MELS, "n_labels": N_LABELS, "channels": 16, "kernel": 3, "dilations": [1, 2, 4, 8],
         "d_embed": 12, "lag_frames": 7, "head_config": {"hidden": 10, "tau_frames": 8.0}}


def _model() -> LiteStudent:
    torch.manual_seed(0)
    m = build_model("lite", SMALL)
    assert isinstance(m, LiteStudent)
    with torch.no_grad():  # a non-trivial input normalisation, as fit_normalisation leaves it
        m.in_shift.copy_(torch.linspace(-1, 1, N_MELS))
        m.in_scale.copy_(torch.linspace(0.5, 2, N_MELS))
    return m.eval()


def test_config_round_trips_lists_and_rejects_bad_sizes() -> None:
    assert LiteConfig(dilations=[1, 2]).dilations == (1, 2)  # type: ignore[arg-type]  # JSON gives lists
    assert LiteConfig(kernel=3, dilations=(1, 2, 4)).receptive_field == 1 + 2 * 8
    from streamtag.errors import ConfigError

    with pytest.raises(ConfigError):
        LiteConfig(dilations=(0,))
    with pytest.raises(ConfigError):
        LiteConfig(head_config={"d_embed": 3})


def test_chunked_equals_full_sequence() -> None:
    model = _model()
    gen = torch.Generator().manual_seed(1)
    T = 260
    x = torch.randn(2, T, N_MELS, generator=gen)
    with torch.no_grad():
        full, full_state = model.forward_frames(x)  # (B, T, n_labels)
        torch.testing.assert_close(model(x), full[:, -1], atol=1e-5, rtol=0)
        state = model.init_state(2)
        assert state.shape == (2, model.state_size)
        t, checked = 0, 0
        while t < T:
            k = int(torch.randint(1, 40, (1,), generator=gen))
            logits, state = model.step(x[:, t : t + k], state)
            t = min(t + k, T)
            torch.testing.assert_close(logits, full[:, t - 1], atol=1e-5, rtol=0)
            checked += 1
        assert checked > 5
        torch.testing.assert_close(state, full_state, atol=1e-5, rtol=0)
        # an empty chunk leaves the state alone and repeats the last read-out
        again, state2 = model.step(x[:, :0], state)
        assert torch.equal(state2, state)
        torch.testing.assert_close(again, full[:, -1], atol=1e-5, rtol=0)


def test_streams_batched_equal_streams_alone() -> None:
    model = _model()
    x = torch.randn(3, 90, N_MELS)
    with torch.no_grad():
        state = model.init_state(3)
        _, state = model.step(x[:, :40], state)
        batched, state = model.step(x[:, 40:], state)
        for i in range(3):
            s1 = model.init_state(1)
            _, s1 = model.step(x[i : i + 1, :40], s1)
            one, s1 = model.step(x[i : i + 1, 40:], s1)
            torch.testing.assert_close(one, batched[i : i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(s1, state[i : i + 1], atol=1e-5, rtol=0)


def test_step_many_equals_stepping_hop_by_hop() -> None:
    model = _model()
    x = torch.randn(2, 200, N_MELS)
    ends = [31, 62, 93, 150, 151, 200]
    with torch.no_grad():
        many, s_many = model.step_many(x, model.init_state(2), ends)
        assert many.shape == (2, len(ends), N_LABELS)
        state, start = model.init_state(2), 0
        for i, e in enumerate(ends):
            logits, state = model.step(x[:, start:e], state)
            torch.testing.assert_close(many[:, i], logits, atol=1e-5, rtol=0)
            start = e
        torch.testing.assert_close(s_many, state, atol=1e-5, rtol=0)


def test_outputs_are_causal_and_the_lag_is_reported() -> None:
    """An input frame changes no output before it: the answer at frame j reads frames <= j only."""
    model = _model()
    assert model.lag_frames == SMALL["lag_frames"]
    x = torch.randn(1, 120, N_MELS)
    y = x.clone()
    y[:, 80:] += 3.0
    with torch.no_grad():
        a, _ = model.forward_frames(x)
        b, _ = model.forward_frames(y)
    torch.testing.assert_close(a[:, :80], b[:, :80], atol=0, rtol=0)
    assert not torch.allclose(a[:, 80:], b[:, 80:])


def test_device_handling_follows_the_state() -> None:
    model = _model()
    state = model.init_state(2, torch.device("cpu"))
    assert state.device.type == "cpu" and state.dtype == torch.float32
    with torch.no_grad():
        logits, new = model.step(torch.randn(2, 31, N_MELS), state)
    assert logits.shape == (2, N_LABELS) and new.shape == state.shape and new.device == state.device
    if torch.cuda.is_available():
        m = model.to("cuda")
        s = m.init_state(2, "cuda")
        with torch.no_grad():
            lg, s2 = m.step(torch.randn(2, 31, N_MELS, device="cuda"), s)
        assert lg.device.type == "cuda" and s2.device.type == "cuda"
        torch.testing.assert_close(lg.cpu(), logits, atol=1e-4, rtol=0)


def test_aligned_output_t_describes_frame_t() -> None:
    """research/lite.Aligned: frame t of its output is the model's output lag frames later (padding after the end)."""
    from research.lite import Aligned

    model = _model()
    lag = model.lag_frames
    x = torch.randn(1, 100, N_MELS)
    with torch.no_grad():
        raw, _ = model.forward_frames(x)
        aligned, _ = Aligned(model).forward_frames(x)
    assert aligned.shape == raw.shape
    torch.testing.assert_close(aligned[:, : 100 - lag], raw[:, lag:], atol=1e-5, rtol=0)


def test_training_batches_shift_every_target_by_the_lag() -> None:
    """The feature target of output j is the teacher embedding of frame j - lag of the same track segment, and
    window targets sit lag frames after each window's last frame."""
    from research.lite import _feature_batch, _sequence_batch
    from streamtag.train.distill.corpus import Track
    from streamtag.train.distill.teacher import Geometry
    from streamtag.train.distill.tracks import TrackData

    g = Geometry(grid_frames=8, teacher_frames=16, window_frames=24)
    rng = np.random.default_rng(0)
    data, emb = [], []
    for i in range(3):
        T = 8 * 29 + 16
        mel = np.tile(np.arange(T, dtype=np.float32)[:, None] + 1000 * i, (1, 5))  # frame index in every band
        teacher = rng.random((30, 4)).astype(np.float32)
        targets, starts = g.window_targets(teacher, T)
        tr = Track(id=f"s/{i}.ogg", source="s", path=f"{i}.ogg", licence="CC0", licence_file="", duration=9.0,
                   seconds=9.0, file=f"{i}.npy")
        data.append(TrackData(tr, mel, teacher, targets, starts))
        emb.append(mel[:, :3] * 2.0)  # embedding of frame t: 2 * (its index)
    lag = 6
    x, z, mask = _feature_batch(data, emb, 4, 50, lag, rng)
    on = mask.bool()
    assert on[:, :lag].sum() == 0 and on.any()
    torch.testing.assert_close(z[:, lag:][on[:, lag:]][:, 0], 2.0 * x[:, :-lag][on[:, lag:]][:, 0])
    x, y, m, z, zm = _sequence_batch(data, emb, g, 4, 120, lag, rng)
    on = zm.bool()
    torch.testing.assert_close(z[:, lag:][on[:, lag:]][:, 0], 2.0 * x[:, :-lag][on[:, lag:]][:, 0])
    assert m.sum() > 0
    for b, t in zip(*torch.nonzero(m, as_tuple=True)):
        last = int(x[b, t - lag, 0])  # the window's last frame, in its track's frame numbering
        i = last // 1000
        w = int(np.nonzero(data[i].starts + g.window_frames - 1 == last % 1000)[0][0])
        torch.testing.assert_close(y[b, t], torch.from_numpy(data[i].targets[w]))


def test_lite_card_renders_from_its_json(tmp_path) -> None:
    """cards.render_lite_card fills every field from a lite bundle's config.json + card.json (no figure by hand)."""
    import dataclasses
    import json

    from streamtag.frontend import FrontendSpec
    from streamtag.registry import save_bundle
    from streamtag.train.distill.cards import render_lite_card

    model = _model()
    per_clip = [{"id": "s/a.ogg", "teacher": "l0", "student": "l0"}, {"id": "s/b.ogg", "teacher": "l1", "student": "l0"}]
    ev = {"clips": 2, "windows": 9, "clip_genre_top1_agreement": 0.5, "window_genre_top1_agreement": 0.4,
          "tag_auc_teacher_p05": 0.9, "tags_p05": 3, "tag_auc_teacher_top3": 0.8, "tags_top3": 5,
          "mean_abs_prob_error": 0.01, "train_clips": 1, "train_clip_genre_top1_agreement": 1.0,
          "train_window_genre_top1_agreement": 0.9}
    stage_b = {"steps": 5, "seconds": 60.0, "batch": 2, "seq_seconds": [8.0, 20.0], "feature_weight": 1.0,
               "validation": {"tracks": 1, "best_step": 0, "best_clip_genre_top1_agreement": 1.0,
                              "best_window_genre_top1_agreement": 0.5, "history": [[0, 1.0, 0.5]]}}
    extra = {"training": {"stage_a": {"steps": 3, "seconds": 120.0, "batch": 4, "frames": 600, "explained": 0.5},
                          "stage_b": stage_b, "validation": stage_b["validation"], "init": "st-gru-msd",
                          "threads": 1, "lr": 1e-3, "weight_decay": 0.05},
             "evaluation": ev, "per_clip": per_clip, "baseline": {"label": "l0", "agreement": 0.5},
             "cost_per_hop_ms": {"student_ms": 1.0, "teacher_ms": 10.0, "speedup": 10.0, "init_ms": 5.0,
                                 "init_speedup": 5.0},
             "distillation": {"grid_frames": 64}}
    labels = [f"l{i}" for i in range(N_LABELS)]
    bundle = save_bundle(tmp_path / "st-lite-x", model, architecture="lite", arch_config=dataclasses.asdict(model.config),
                         frontend=FrontendSpec(n_mels=N_MELS), labels=labels, genre_labels=labels[:3],
                         window_frames=40, hop_seconds=0.5, streaming="stateful", extra=extra)
    run = {"command": "python -m research.lite --corpus c --out o", "corpus_table": "| t |", "corpus_note": "n",
           "train_hours": 1.0, "n_params": sum(p.numel() for p in model.parameters()), "size_mb": 0.1,
           "front_mflop": "0.01"}
    config = json.loads(json.dumps(bundle.config_dict()))
    card = render_lite_card(config, run)
    assert "**50.0%** (1/2)" in card and "Below the project's goal" in card
    assert "| s/b.ogg | l1 | l0 |" in card and run["command"] in card
    assert card == render_lite_card(config, run)
