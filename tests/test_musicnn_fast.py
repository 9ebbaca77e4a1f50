"""musicnn's shared-front-end fast path (``Musicnn.forward_windows``) equals the per-window forward, and the
runner / ``tag_audio`` use it: random and real log-mel, several hops, inputs shorter than a window."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bn_fixtures import randomize_batch_norms

from streamtag.architectures import build_model
from streamtag.architectures.musicnn import Musicnn
from streamtag.frontend import logmel
from streamtag.pipeline import tag_audio, window_ends
from streamtag.registry import load_bundle
from streamtag.runner import ModelRunner
from streamtag.sources import read_audio

WINDOW = 187  # musicnn's 3 s patch, in frames
TOL = 1e-5  # max abs difference of sigmoid outputs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> Musicnn:
    return load_bundle("musicnn-msd").build_model().eval()


@pytest.fixture(scope="module")
def random_frames() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.uniform(0.0, 3.0, (300, 96)).astype(np.float32))  # (T, n_mels), musicnn's range


def _reference(model: torch.nn.Module, frames: torch.Tensor, ends: list[int], window: int) -> torch.Tensor:
    """Sigmoid outputs of each window through the plain forward, one window per pass."""
    with torch.inference_mode():
        return torch.cat([torch.sigmoid(model(frames[None, max(0, e - window) : e])) for e in ends])


def _fast(model: Musicnn, frames: torch.Tensor, ends: list[int], window: int, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model.forward_windows(frames, ends, window, **kw))


@pytest.mark.parametrize("hop", [20, 31, 62, 200])
def test_forward_windows_equals_per_window_forward(model: Musicnn, random_frames: torch.Tensor, hop: int) -> None:
    ends = window_ends(random_frames.shape[0], WINDOW, hop)
    fast = _fast(model, random_frames, ends, WINDOW)
    ref = _reference(model, random_frames, ends, WINDOW)
    assert fast.shape == (len(ends), 50)
    assert (fast - ref).abs().max().item() <= TOL


def test_small_groups_and_chunks_change_nothing(model: Musicnn, random_frames: torch.Tensor) -> None:
    ends = window_ends(random_frames.shape[0], WINDOW, 31)
    big = _fast(model, random_frames, ends, WINDOW)
    small = _fast(model, random_frames, ends, WINDOW, batch_size=3, chunk_frames=40)
    assert (big - small).abs().max().item() <= TOL


@pytest.mark.parametrize("n_frames", [1, 5, 100, WINDOW - 1, WINDOW])
def test_inputs_up_to_one_window(model: Musicnn, random_frames: torch.Tensor, n_frames: int) -> None:
    frames = random_frames[:n_frames]
    ends = window_ends(n_frames, WINDOW, 62)
    assert ends == [n_frames]
    fast = _fast(model, frames, ends, WINDOW)
    assert (fast - _reference(model, frames, ends, WINDOW)).abs().max().item() <= TOL


def test_unequal_and_unsorted_windows(model: Musicnn, random_frames: torch.Tensor) -> None:
    """Windows clipped at the start (unequal lengths) and ends in any order still give each window's output."""
    for ends in ([60, 187, 250], [300, 200, 187]):
        fast = _fast(model, random_frames, ends, WINDOW)
        assert (fast - _reference(model, random_frames, ends, WINDOW)).abs().max().item() <= TOL


def test_random_weights_with_negative_bn_scales(random_frames: torch.Tensor) -> None:
    """A random model whose batch norms have negative scales and nonzero statistics (the shipped one may not)."""
    torch.manual_seed(3)
    net = build_model("musicnn", {"timbral_filters": 16, "temporal_filters": 8, "midend_filters": 16})
    randomize_batch_norms(net)
    net.eval()
    ends = window_ends(random_frames.shape[0], WINDOW, 40)
    fast = _fast(net, random_frames, ends, WINDOW)
    assert (fast - _reference(net, random_frames, ends, WINDOW)).abs().max().item() <= TOL


def test_bad_arguments_are_value_errors(model: Musicnn, random_frames: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        model.forward_windows(random_frames[None], [187], WINDOW)  # (1, T, n_mels): one sequence expected
    with pytest.raises(ValueError):
        model.forward_windows(random_frames, [random_frames.shape[0] + 1], WINDOW)  # past the end
    with torch.inference_mode():
        assert model.forward_windows(random_frames, [], WINDOW).shape == (0, 50)


def test_runner_predict_windows_equals_predict(random_frames: torch.Tensor) -> None:
    runner = ModelRunner(load_bundle("musicnn-msd"), "cpu")
    assert hasattr(runner.model, "forward_windows")
    frames = random_frames.numpy()
    ends = window_ends(frames.shape[0], WINDOW, 62)
    fast = runner.predict_windows(frames, ends, WINDOW)
    ref = runner.predict(np.stack([frames[e - WINDOW : e] for e in ends]))
    assert fast.shape == ref.shape == (len(ends), 51)  # 50 tags + the derived classical
    assert np.abs(fast - ref).max() <= TOL


def test_real_music_tag_audio_equals_per_window(audio_dir: Path) -> None:
    """On real music, tag_audio (fast path) gives the raw probabilities of the per-window forward."""
    clip = min((p for p in audio_dir.iterdir() if p.suffix in {".ogg", ".mp3"}), key=lambda p: p.stat().st_size)
    bundle = load_bundle("musicnn-msd")
    sr = bundle.frontend.sample_rate
    samples = read_audio(str(clip), sr)[: 8 * sr]
    runner = ModelRunner(bundle, "cpu")
    timeline = tag_audio(samples, runner, name=clip.name, hop_seconds=0.5)
    frames = torch.from_numpy(logmel(samples, bundle.frontend))
    ends = window_ends(frames.shape[0], WINDOW, bundle.frontend.frames_for(0.5))
    ref = _reference(runner.model, frames, ends, WINDOW).numpy()  # the network's own 50 outputs
    assert timeline.raw.shape == (ref.shape[0], len(bundle.labels))
    assert np.abs(timeline.raw[:, : ref.shape[1]] - ref).max() <= TOL


@pytest.mark.parametrize(
    "kw",
    [
        {"sr": 16000, "n_fft": 512, "n_mels": 96},  # musicnn's
        {"sr": 16000, "n_fft": 512, "n_mels": 128, "htk": True},
        {"sr": 22050, "n_fft": 2048, "n_mels": 128, "fmin": 30.0, "fmax": 8000.0, "norm": None},
        {"sr": 16000, "n_fft": 400, "n_mels": 80, "fmin": 1200.0},
    ],
)
def test_mel_filterbank_is_librosas_bit_for_bit(kw: dict) -> None:
    librosa = pytest.importorskip("librosa")
    from streamtag.melfilters import mel_filterbank

    ours, ref = mel_filterbank(**kw), librosa.filters.mel(**kw)
    assert ours.dtype == ref.dtype == np.float32
    assert np.array_equal(ours, ref)


def test_tag_path_imports_neither_librosa_nor_scipy_signal() -> None:
    import subprocess
    import sys

    clip = Path(__file__).resolve().parents[1] / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
    if not clip.exists():
        pytest.skip(f"no example clip at {clip}")
    code = (
        "import sys, io, contextlib\n"
        "from streamtag.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    rc = main(['tag', '--format', 'jsonl', '--duration', '4', {str(clip)!r}])\n"
        "print(rc, out.getvalue().count('\"mean\"'), sorted(m for m in ('librosa', 'scipy.signal', 'numba')"
        " if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().split(maxsplit=2) == ["0", "1", "[]"], r.stdout + r.stderr


def test_threaded_groups_equal_one_thread_and_restore_settings(model: Musicnn, random_frames: torch.Tensor) -> None:
    ends = window_ends(random_frames.shape[0], WINDOW, 9)  # 13 windows: several groups per worker
    one = _fast(model, random_frames, ends, WINDOW, batch_size=4)
    torch.set_num_threads(2)  # the fixture restores 1 afterwards
    threaded = _fast(model, random_frames, ends, WINDOW, batch_size=4)
    assert torch.get_num_threads() == 2  # the workers' one-thread setting did not leak into the caller
    ref = _reference(model, random_frames, ends, WINDOW)
    assert (threaded - one).abs().max().item() <= TOL
    assert (threaded - ref).abs().max().item() <= TOL
    with torch.no_grad():  # grad mode is thread-local: the workers must inherit the caller's
        out = model.forward_windows(random_frames, ends, WINDOW, batch_size=4)
    assert not out.requires_grad
    out = model.forward_windows(random_frames, ends, WINDOW, batch_size=4)  # grad on: a graph to the weights
    assert out.requires_grad


def test_threaded_batched_forward_equals_windows_alone(model: Musicnn, random_frames: torch.Tensor) -> None:
    wins = torch.stack([random_frames[s : s + WINDOW] for s in range(0, 100, 14)])  # (8, WINDOW, n_mels)
    with torch.inference_mode():
        alone = torch.cat([torch.sigmoid(model(w[None])) for w in wins])
        torch.set_num_threads(2)  # the fixture restores 1 afterwards
        batched = torch.sigmoid(model(wins))
    assert torch.get_num_threads() == 2
    assert batched.shape == (8, 50)
    assert (batched - alone).abs().max().item() <= TOL


def test_peer_bench_skips_cleanly_without_its_venv(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(repo / "bench" / "bench_vs_musicnn.py"), "--no-build", "--peer-venv", str(tmp_path / "no"),
         "--dir", str(repo / "examples" / "audio")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("skip: no working peer venv"), r.stdout
    assert "Traceback" not in r.stderr


def test_frames_step_many_streams_threaded_equals_each_alone(model: Musicnn, random_frames: torch.Tensor) -> None:
    from streamtag.architectures.musicnn import MusicnnFrames

    frames = MusicnnFrames(model.config)
    frames.load_state_dict(model.state_dict(), strict=False)
    x = torch.stack([random_frames[s : s + 31] for s in range(0, 90, 10)])  # (9 streams, 31, n_mels)
    state = frames.init_state(9)
    torch.set_num_threads(2)  # the fixture restores 1 afterwards
    chunks = [x, x.flip(1), x]  # 93 frames: past the 73-frame delay
    together = []
    for c in chunks:
        f, state = frames.step(c, state)
        together.append(f)
    torch.set_num_threads(1)
    for i in range(9):
        s = frames.init_state(1)
        for c, t in zip(chunks, together):
            alone, s = frames.step(c[i : i + 1], s)
            scale = 1.0 + alone.abs().max().item()  # features, not probabilities: float rounding scales with them
            assert (t[i] - alone[0]).abs().max().item() <= 1e-5 * scale
    assert together[-1].abs().sum().item() > 0  # past the delay: real features, not padding


def test_frames_one_stream_long_span_split_in_time_equals_one_thread(model: Musicnn, random_frames: torch.Tensor) -> None:
    """One stream's long span (a file's 512 frames) runs its front end in time slices on worker threads: the same
    features and state as one thread, chunk after chunk."""
    from streamtag.architectures.musicnn import MusicnnFrames

    frames = MusicnnFrames(model.config)
    frames.load_state_dict(model.state_dict(), strict=False)
    x = random_frames[None, :300]  # (1, 300, n_mels): two spans of 150 (>= 2 x 64 frames each)
    outs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the fixture restores 1 afterwards
        state = frames.init_state(1)
        feats = []
        for s in (0, 150):
            f, state = frames.step(x[:, s : s + 150], state)
            feats.append(f)
        outs[threads] = (torch.cat(feats, dim=1), state)
    (f1, s1), (f2, s2) = outs[1], outs[2]
    scale = 1.0 + f1.abs().max().item()
    assert (f1 - f2).abs().max().item() <= 1e-5 * scale
    assert (s1 - s2).abs().max().item() <= 1e-5 * (1.0 + s1.abs().max().item())
    assert f1[:, 80:].abs().sum().item() > 0  # past the delay: real features
