"""The runner uses only the streaming-model protocol; every shipped bundle gives what a straightforward reference
built from the model's own modules gives (window by window, hop by hop), on the file path and the live path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamtag.architectures import ARCHITECTURES, build_model
from streamtag.architectures.base import StreamingModel
from streamtag.errors import ModelError
from streamtag.frontend import FrontendSpec, logmel
from streamtag.pipeline import Engine, hop_frames_for, tag_audio, window_ends
from streamtag.registry import available_models, load_bundle, save_bundle
from streamtag.runner import ModelRunner

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "audio" / "brahms-hungarian-dance-5.ogg"
SPEC = FrontendSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, scaling="db")
TINY = {
    "transformer": dict(n_mels=32, n_labels=4, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0),
    "bigru": dict(n_mels=32, n_labels=4, d_embed=8, hidden=8, n_layers=1, dropout=0.0),
    "stateful_gru": dict(n_mels=32, n_labels=4, d_embed=8, hidden=12, n_layers=2, dropout=0.0),
    "crnn": dict(n_mels=32, n_labels=4, channels=[4, 4], time_pool=[2, 1], d_rnn_in=8, hidden=8, dropout=0.0),
    "vit": dict(n_mels=32, n_labels=4, patch=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0),
    "musicnn": dict(n_mels=32, n_labels=4, timbral_filters=4, timbral_bands=[12, 22], temporal_filters=3,
                    temporal_frames=[32, 16, 8], midend_filters=4, backend_units=8),
    "musicnn_student": dict(n_mels=32, n_labels=4, head="stateful_gru", head_config=dict(d_embed=8, hidden=8),
                            musicnn=dict(timbral_filters=4, timbral_bands=[12, 22], temporal_filters=3,
                                         temporal_frames=[32, 16, 8], midend_filters=4)),
    "lite": dict(n_mels=32, n_labels=4, channels=8, dilations=[1, 2], d_embed=8, lag_frames=3,
                 head_config=dict(hidden=8, dropout=0.0)),
}

# every runner test that can use a GPU runs there too when one exists (bench/gpu_check.sh runs them)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def test_every_architecture_implements_the_protocol() -> None:
    assert set(TINY) == set(ARCHITECTURES)
    torch.manual_seed(0)
    for name, cfg in TINY.items():
        model = build_model(name, cfg).eval()
        assert isinstance(model, StreamingModel), name
        assert isinstance(model.stateful, bool) and model.lag_frames >= 0
        state = model.init_state(3, "cpu")
        assert state.dim() == 2 and state.shape[0] == 3  # batch first, one tensor
        x = torch.randn(3, 40, 32)
        with torch.no_grad():
            if model.stateful:
                logits, new = model.step(x, state)
                assert logits.shape == (3, 4) and new.shape == state.shape
                with pytest.raises(ModelError, match="stateful"):
                    model.forward_windows(x[0], [40], 40)
            else:
                assert state.shape[1] == 0
                with pytest.raises(ModelError, match="window model"):
                    model.step(x, state)
                frames, ends = x[0], [10, 20, 30, 40]  # the first window is short
                got = model.forward_windows(frames, ends, 20)
                ref = torch.cat([model(frames[None, max(0, e - 20) : e]) for e in ends])
                assert torch.allclose(got, ref, atol=1e-5), name


def test_bundle_streaming_field_is_checked_against_the_model(tmp_path: Path) -> None:
    model = build_model("stateful_gru", TINY["stateful_gru"])
    with pytest.raises(ModelError, match="says streaming 'window'.*stateful model"):
        save_bundle(tmp_path / "b", model, architecture="stateful_gru", arch_config=TINY["stateful_gru"],
                    frontend=SPEC, labels=list("abcd"), window_frames=40, hop_seconds=0.5,
                    streaming="window").build_model()


@pytest.mark.parametrize("device", DEVICES)
def test_state_rows_are_reused_and_streams_stay_independent(tmp_path: Path, device: str) -> None:
    torch.manual_seed(1)
    model = build_model("stateful_gru", TINY["stateful_gru"])
    bundle = save_bundle(tmp_path / "g", model, architecture="stateful_gru", arch_config=TINY["stateful_gru"],
                         frontend=SPEC, labels=list("abcd"), window_frames=40, hop_seconds=0.5, streaming="stateful")
    runner = ModelRunner(bundle, device)
    gen = torch.Generator().manual_seed(2)
    xs = {n: torch.randn(6, 8, 32, generator=gen) for n in "abcde"}  # 6 hops of 8 frames per stream
    alone = {}
    for n, x in xs.items():
        s = runner.init_state(1)
        alone[n] = []
        for h in range(6):
            p, s = runner.step_many(x[None, h], s, [8])
            alone[n].append(p[0, 0])
    got: dict[str, list] = {n: [] for n in xs}
    k = {n: 0 for n in xs}  # next hop of each stream
    for r in range(6):
        names = list(xs) if r != 3 else ["a", "c"]  # some streams skip a round: their rows must not move
        if r == 2:
            runner.reset_state("e")  # e starts over with a fresh state (its row is reused)
            got["e"], k["e"] = [], 0
        probs = runner.step(names, np.stack([xs[n][k[n]] for n in names]))
        for n, p in zip(names, probs):
            got[n].append(p)
            k[n] += 1
    assert runner.streams == 5
    for n in xs:
        assert len(got[n]) >= 3
        for a, b in zip(got[n], alone[n]):
            assert np.allclose(a, b, atol=1e-6 if device == "cpu" else 1e-5), n


@pytest.fixture(scope="module")
def real_audio() -> np.ndarray:
    from streamtag.sources import read_audio

    return read_audio(str(CLIP), 16000)[30 * 16000 : 40 * 16000]  # 10 s of real music


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", available_models())
def test_shipped_bundle_equals_reference_path(name: str, device: str, precision: str, real_audio: np.ndarray) -> None:
    """File path (FileTagger) and live path (Engine) on ``device`` == the model's own modules run the plain way
    on the CPU in the same precision, to 1e-5 (1e-4 on a GPU: other kernels, same fp32; 2e-3 for bf16 on a GPU,
    whose bf16 convolutions are not the CPU's GEMMs). In bf16 the answers also stay within 5e-3 of fp32's."""
    bundle = load_bundle(name)
    model = ModelRunner(bundle, "cpu", precision="fp32").model
    if precision not in getattr(model, "precisions", ("fp32",)):
        pytest.skip(f"{name} runs in fp32 only")
    runner = ModelRunner(bundle, device, precision=precision)
    fp32_model = model
    model = ModelRunner(bundle, "cpu", precision=precision).model
    tol = 1e-5 if device == "cpu" else 1e-4 if precision == "fp32" else 2e-3
    frames = torch.from_numpy(logmel(real_audio, bundle.frontend))  # (T, n_mels)
    hop = hop_frames_for(bundle, None)
    act = torch.sigmoid if bundle.activation == "sigmoid" else lambda z: torch.softmax(z, dim=-1)
    with torch.inference_mode():
        if model.stateful:  # hop by hop from a fresh state, one stream
            ends = list(range(hop, frames.shape[0] + 1, hop))
            state, ref_list, start = model.init_state(1, "cpu"), [], 0
            for e in ends:
                logits, state = model.step(frames[None, start:e], state)
                ref_list.append(act(logits)[0])
                start = e
            keep = [i for i, e in enumerate(ends) if e > runner.lag_frames]
            ref = torch.stack(ref_list)[keep].numpy()
        else:  # every window through the plain forward, one at a time
            ends = window_ends(frames.shape[0], bundle.window_frames, hop)
            ref = torch.cat([act(model(frames[None, e - bundle.window_frames : e])) for e in ends]).numpy()
    if bundle.derived:  # the derived labels: the bundle's logistic heads on the same logits
        w = np.array([d["weights"] for d in bundle.derived]).T  # (L_net, D)
        b = np.array([d["bias"] for d in bundle.derived])
        logit = np.log(ref) - np.log1p(-ref)
        ref = np.concatenate([ref, 1.0 / (1.0 + np.exp(-(logit @ w + b)))], axis=1)
    timeline = tag_audio(real_audio, runner, name="x", all_tags=True)
    assert timeline.raw.shape == ref.shape and ref.shape[0] >= 5
    assert np.abs(timeline.raw - ref).max() <= tol
    if precision != "fp32":
        fp32 = tag_audio(real_audio, ModelRunner(bundle, "cpu", precision="fp32"), name="x", all_tags=True).raw
        assert fp32_model is not model and 0 < np.abs(timeline.raw - fp32).max() <= 5e-3
    engine = Engine(bundle, runner=runner, all_tags=True)
    engine.add_stream("x")
    live = []
    for i in range(0, real_audio.shape[0], 5000):
        engine.push("x", real_audio[i : i + 5000])
        live += engine.step()
    got = np.array([[u.raw[k] for k in bundle.labels] for u in live])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol
    assert [round(u.t, 4) for u in live] == [round(u.t, 4) for u in timeline.updates]


@pytest.mark.parametrize("name", available_models())
def test_a_warm_up_touches_no_stream(name: str, real_audio: np.ndarray) -> None:
    """ModelRunner.warm_up runs the network (the few-streams batch and the many-streams one) and holds no state:
    an engine whose runner warmed up answers exactly as one whose runner did not, stream by stream."""
    bundle = load_bundle(name)
    answers = {}
    for warm in (True, False):
        runner = ModelRunner(bundle, "cpu")
        calls: list[int] = []
        call = runner.model.step if runner.stateful else runner.model.forward
        setattr(runner.model, "step" if runner.stateful else "forward",
                lambda *a, c=call, seen=calls: (seen.append(a[0].shape[0]), c(*a))[1])
        engine = Engine(bundle, runner=runner, all_tags=True)
        if warm:
            engine.warm_up()
            assert calls == ([1, 64] if runner.stateful else [1]) and runner.streams == 0 and not engine.streams
        for s in ("a", "b"):
            engine.add_stream(s)
            engine.push(s, real_audio[: 6 * 16000] if s == "a" else real_audio[-6 * 16000 :])
        answers[warm] = [(u.stream, u.t, u.raw) for u in engine.step()]
    assert len(answers[True]) >= 4 and answers[True] == answers[False]
