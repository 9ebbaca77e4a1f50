"""Every registered architecture (except musicnn, tested with its converter): forward, backward, bundle round trip;
the stateful models' chunked == full-sequence and batched == alone invariants (the GRU, musicnn's streaming front
end and the students built on it); the transformer's size."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from streamtag.architectures import ARCHITECTURES, build_model, config_class
from streamtag.frontend import FrontendSpec
from streamtag.registry import load_bundle, save_bundle

ARCHS = sorted(a for a in ARCHITECTURES if a != "musicnn")
N_MELS, N_LABELS = 32, 7
SMALL = {  # shrink the default widths so the whole parametrized test stays fast on 2 busy cores
    "transformer": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_frames": 16},
    "bigru": {"d_embed": 24, "hidden": 16},
    "stateful_gru": {"d_embed": 24, "hidden": 16, "tau_frames": 8.0},
    "lite": {"channels": 16, "dilations": [1, 2, 4], "d_embed": 12, "lag_frames": 5,
             "head_config": {"hidden": 16, "tau_frames": 8.0}},
    "crnn": {"channels": [8, 8, 16], "time_pool": [2, 2, 1], "d_rnn_in": 16, "hidden": 16},
    "vit": {"patch": 8, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_time_patches": 4},
    "musicnn_student": {
        "head": "transformer", "window_frames": 40,
        "head_config": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "embed_kernel": 4,
                        "embed_stride": 4, "max_frames": 16},
        "musicnn": {"timbral_filters": 6, "timbral_bands": [12, 22], "temporal_filters": 4,
                    "temporal_frames": [32, 16, 8], "midend_filters": 5},
    },
}
MUSICNN_SMALL = SMALL["musicnn_student"]["musicnn"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, {"n_mels": N_MELS, "n_labels": N_LABELS, **SMALL[name]})


def test_every_registered_architecture_is_covered() -> None:
    assert set(SMALL) == set(ARCHS)


@pytest.mark.parametrize("name", ARCHS)
def test_architecture(name: str, tmp_path: Path) -> None:
    model = _model(name).train()
    # variable T: shorter and longer than the learned positions / pooling sizes
    for T in (1, 5, 90):
        x = torch.randn(3, T, N_MELS)
        logits = model(x)
        assert logits.shape == (3, N_LABELS)
        assert torch.isfinite(logits).all()
    model.zero_grad()
    logits = model(torch.randn(4, 57, N_MELS))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand(4, N_LABELS)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert hasattr(model, "stateful")

    # bundle round trip: the config and weights rebuild a model with identical outputs
    model.eval()
    cfg = dataclasses.asdict(model.config)
    bundle = save_bundle(
        tmp_path / name, model, architecture=name, arch_config=cfg,
        frontend=FrontendSpec(n_mels=N_MELS), labels=[f"l{i}" for i in range(N_LABELS)],
        window_frames=40, hop_seconds=0.5, streaming="stateful" if model.stateful else "window",
    )
    loaded = load_bundle(tmp_path / name).build_model()
    assert bundle.architecture == name
    assert type(loaded.config) is config_class(name) and loaded.config == model.config
    x = torch.randn(2, 40, N_MELS)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_stateful_gru_chunked_equals_full() -> None:
    model = _model("stateful_gru").eval()
    assert model.stateful
    model._EMA_BLOCK = 64  # small EMA blocks, so block boundaries fall inside chunks at this short length
    gen = torch.Generator().manual_seed(123)
    T = 300
    x = torch.randn(2, T, N_MELS, generator=gen)
    with torch.no_grad():
        full, _ = model.forward_frames(x)  # (B, T, n_labels)
        assert torch.allclose(model(x), full[:, -1], atol=1e-6)
        state = model.init_state(2, "cpu")
        t = 0
        checked = 0
        while t < T:
            k = int(torch.randint(1, 120, (1,), generator=gen))
            logits, state = model.step(x[:, t : t + k], state)
            t = min(t + k, T)
            torch.testing.assert_close(logits, full[:, t - 1], atol=1e-5, rtol=0)
            checked += 1
        assert checked > 2
        # an empty chunk leaves the state alone and repeats the last read-out
        again, state2 = model.step(x[:, :0], state)
        assert torch.equal(state2, state)
        torch.testing.assert_close(again, full[:, -1], atol=1e-5, rtol=0)


def test_stateful_gru_streams_are_independent() -> None:
    """Batched streams == streams run one by one (the state is batch-first)."""
    model = _model("stateful_gru").eval()
    x = torch.randn(3, 50, N_MELS)
    with torch.no_grad():
        batched, state = model.step(x, model.init_state(3, "cpu"))
        for i in range(3):
            one, s1 = model.step(x[i : i + 1], model.init_state(1, "cpu"))
            torch.testing.assert_close(one, batched[i : i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(s1, state[i : i + 1], atol=1e-5, rtol=0)


def test_transformer_size_matches_the_seed() -> None:
    model = build_model("transformer", {"n_mels": 128, "n_labels": 163, "d_model": 128})
    n = sum(p.numel() for p in model.parameters())
    assert 0.7e6 * 0.7 <= n <= 0.7e6 * 1.3, n


def _randomize_batch_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial inference statistics (fresh batch norms are identities), some scales negative."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _chunked(step, x: torch.Tensor, state: torch.Tensor, gen: torch.Generator, most: int = 40):
    """Feed x (B, T, F) through step in random chunk sizes (0 included); outputs of every call and the state."""
    outs, t = [], 0
    while t < x.shape[1]:
        k = int(torch.randint(0, most, (1,), generator=gen))
        y, state = step(x[:, t : t + k], state)
        outs.append(y)
        t += k
    return outs, state


def test_musicnn_frames_stream_equals_musicnn_offline() -> None:
    """musicnn's front + mid end run incrementally == musicnn's own "same"-padded features over the whole
    sequence, 73 frames later; zeros before that; also through the offline helper (padding at both ends)."""
    from streamtag.architectures.musicnn import Musicnn, MusicnnConfig, MusicnnFrames

    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    cfg = MusicnnConfig(n_mels=N_MELS, n_labels=N_LABELS, **MUSICNN_SMALL)
    teacher = Musicnn(cfg)
    _randomize_batch_norms(teacher, gen)
    teacher.eval()
    frames = MusicnnFrames(cfg)
    frames.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in frames.state_dict()})
    assert frames.delay == 16 + 3 * 3  # the widest temporal kernel (32) looks 16 frames ahead, each mid-end layer 3
    T = 230
    x = torch.randn(2, T, N_MELS, generator=gen) + 1.0
    with torch.no_grad():
        same = teacher.frame_features(x).transpose(1, 2)  # (B, T, C)
        outs, state = _chunked(frames.step, x, frames.init_state(2), gen)
        stream = torch.cat(outs, dim=1)
        assert stream.shape == (2, T, cfg.midend_channels)
        assert torch.equal(stream[:, : frames.delay], torch.zeros_like(stream[:, : frames.delay]))
        torch.testing.assert_close(stream[:, frames.delay :], same[:, : T - frames.delay], atol=1e-4, rtol=1e-4)
        assert float(same.abs().amax()) > 0.1  # a real comparison, not zeros against zeros
        torch.testing.assert_close(frames.offline(x, chunk=37), same, atol=1e-4, rtol=1e-4)
        # batched streams == streams alone (a fresh stream beside one that is already running)
        _, s0 = frames.step(x[:1, :100], frames.init_state(1))
        both, _ = frames.step(x[:, 100:130], torch.cat([s0, frames.init_state(1)]))
        alone, _ = frames.step(x[1:, 100:130], frames.init_state(1))
        torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[:1], stream[:1, 100:130], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", ["stateful_gru", "transformer"])
def test_musicnn_student_chunked_equals_full_and_batched_equals_alone(head: str) -> None:
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    head_config = SMALL["musicnn_student"]["head_config"] if head == "transformer" else SMALL["stateful_gru"]
    model = build_model("musicnn_student", {"n_mels": N_MELS, "n_labels": N_LABELS, "head": head,
                                            "head_config": head_config, "window_frames": 40,
                                            "musicnn": MUSICNN_SMALL})
    _randomize_batch_norms(model.frames, gen)
    model.eval()
    assert model.stateful
    x = torch.randn(3, 200, N_MELS, generator=gen) + 1.0
    with torch.no_grad():
        full = model(x)
        outs, state = _chunked(model.step, x, model.init_state(3), gen)
        torch.testing.assert_close(outs[-1], full, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(full[0], full[1])  # inputs differ, so must the answers
        again, state2 = model.step(x[:, :0], state)  # nothing new: same answer, same state
        torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-5)
        assert torch.equal(state2, state)
        for i in range(3):
            torch.testing.assert_close(model(x[i : i + 1]), full[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["stateful_gru", "musicnn_student-stateful_gru", "musicnn_student-transformer"])
def test_step_many_equals_stepping_hop_by_hop(name: str) -> None:
    """The file path's one-pass ``step_many`` gives the logits and state of ``step`` chunk by chunk."""
    from streamtag.architectures import student

    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    if name == "stateful_gru":
        model = _model("stateful_gru")
    else:
        head = name.split("-")[1]
        head_config = SMALL["musicnn_student"]["head_config"] if head == "transformer" else SMALL["stateful_gru"]
        model = build_model("musicnn_student", {"n_mels": N_MELS, "n_labels": N_LABELS, "head": head,
                                                "head_config": head_config, "window_frames": 40,
                                                "musicnn": MUSICNN_SMALL})
        _randomize_batch_norms(model.frames, gen)
    model.eval()
    x = torch.randn(2, 700, N_MELS, generator=gen) + 1.0  # longer than one step_many span (512 frames)
    ends = [13, 40, 41, 300, 560, 640, 690]  # uneven hops, one of one frame; the last 10 frames are left over
    assert ends[-1] - ends[2] > student._STEP_SPAN
    with torch.no_grad():
        state, ref, start = model.init_state(2), [], 0
        for e in ends:
            logits, state = model.step(x[:, start:e], state)
            ref.append(logits)
            start = e
        got, state_many = model.step_many(x, model.init_state(2), ends)
    assert got.shape == (2, len(ends), N_LABELS)
    torch.testing.assert_close(got, torch.stack(ref, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_many, state, atol=1e-5, rtol=1e-5)
