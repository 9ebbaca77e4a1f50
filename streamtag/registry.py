"""Model bundles: weights + architecture config + front-end spec + labels, found by name or path.

A bundle is a directory::

    models/<name>/
        config.json         architecture, arch_config, frontend (FrontendSpec), labels, window, hop ...
        model.safetensors   the weights (never a pickle)
        model_card.md       what the model is, its data, its figures and limits

``available_models()`` lists the shipped bundles; ``load_bundle(name_or_path)`` returns a :class:`Bundle`
whose ``build_model()`` rebuilds the exact network. An unknown name raises :class:`ModelError` listing the
valid names.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import build_model
from .architectures.base import StatefulModel, StreamingModel, WindowModel
from .errors import ConfigError, ModelError
from .frontend import FrontendSpec
from .taxonomy import check_taxonomy, default_taxonomy

__all__ = ["Bundle", "available_models", "load_bundle", "save_bundle", "models_dirs", "DEFAULT_MODEL"]

FORMAT_VERSION = 1
DEFAULT_MODEL = "musicnn-msd"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.md"
# Bounds a bundle's config.json must keep, checked before anything is allocated (a hostile or corrupt config that
# asks for 1e9 mel bands or units gets a one-line error naming the bundle and the field, not an allocation error)
MAX_DIM = 1 << 16  # any size in arch_config (units, filters, layers, frames, labels ...)
MAX_PARAMETERS = 1 << 30  # parameters of the built model (4 GiB of float32)
FRONTEND_BOUNDS = {"sample_rate": (1000, 384_000), "n_fft": (16, 1 << 16), "hop_length": (1, 1 << 16),
                   "win_length": (1, 1 << 16), "n_mels": (1, 1024)}
MAX_WINDOW_FRAMES = 1 << 16
MAX_LABELS = 1 << 16


def models_dirs() -> list[Path]:
    """Where shipped bundles are looked up: $STREAMTAG_MODELS (os.pathsep-separated), then the installed
    package's own ``streamtag/models/`` (a wheel maps the repository's ``models/`` there), then the source
    checkout's top-level ``models/``."""
    dirs = [Path(p) for p in os.environ.get("STREAMTAG_MODELS", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    dirs.append(here / "models")  # pip-installed wheel
    dirs.append(here.parent / "models")  # source checkout (editable install)
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class Bundle:
    """A loadable model: everything needed to turn audio into label probabilities."""

    name: str
    path: Path
    architecture: str
    arch_config: dict[str, Any]
    frontend: FrontendSpec
    labels: tuple[str, ...]
    genre_labels: tuple[str, ...]  # the labels shown by default (all labels when the model is all genres)
    activation: str  # "sigmoid" (multi-label) or "softmax" (single-label)
    window_frames: int  # frames per window (window models) / frames per training crop (stateful)
    hop_seconds: float  # default hop between updates
    streaming: str  # "window" or "stateful"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    taxonomy: dict[str, Any] = field(default_factory=dict)  # {"families": {name: [genre, ...]}} (streamtag.taxonomy)
    # labels the network does not output itself: the last len(derived) labels, each sigmoid(logits @ weights +
    # bias) of the network's own logits (a linear head on the frozen network, e.g. musicnn-msd's "classical")
    derived: tuple[dict[str, Any], ...] = ()

    @property
    def window_seconds(self) -> float:
        return self.frontend.samples_for_frames(self.window_frames) / self.frontend.sample_rate

    @property
    def net_labels(self) -> tuple[str, ...]:
        """The labels the network itself outputs (``labels`` without the derived ones at their end)."""
        return self.labels[: len(self.labels) - len(self.derived)]

    @property
    def card_path(self) -> Path:
        return self.path / CARD_NAME

    def genre_indices(self) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[g] for g in self.genre_labels]

    def build_model(self, device: str | torch.device = "cpu") -> WindowModel | StatefulModel:
        """The network with its weights loaded, in eval mode, on ``device``."""
        from safetensors.torch import load_file

        self._check_size()
        try:
            model = build_model(self.architecture, self.arch_config)
        except ModelError as e:
            raise ModelError(f"bundle {self.name} ({self.path / CONFIG_NAME}): {e}") from e
        except (RuntimeError, MemoryError, ValueError, TypeError, AssertionError) as e:
            raise ModelError(f"bundle {self.name} ({self.path / CONFIG_NAME}): architecture {self.architecture!r} "
                             f"cannot be built from its arch_config ({type(e).__name__}: {_first_line(e)}); "
                             "re-create the bundle") from e
        weights = self.path / WEIGHTS_NAME
        try:
            state = load_file(str(weights), device="cpu")
        except Exception as e:  # safetensors raises several types for bad files
            raise ModelError(f"cannot read weights {weights}: {e}; re-create the bundle") from e
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # "size mismatch for ...": the config and the weights disagree
            detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), _first_line(e))
            raise ModelError(f"weights in {weights} do not fit the architecture in {self.path / CONFIG_NAME} "
                             f"({_first_line(ValueError(detail))}); re-create the bundle") from e
        if missing or unexpected:
            raise ModelError(
                f"weights in {weights} do not fit architecture {self.architecture!r} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        model = model.to(device).eval()
        if not isinstance(model, (WindowModel, StatefulModel)) or not isinstance(model, StreamingModel):
            raise ModelError(f"architecture {self.architecture!r} does not implement the streaming-model protocol")
        if model.stateful != (self.streaming == "stateful"):
            kind = "stateful" if model.stateful else "window"
            raise ModelError(
                f"{self.path}: config.json says streaming {self.streaming!r} but architecture "
                f"{self.architecture!r} is a {kind} model; set \"streaming\": \"{kind}\" or re-create the bundle"
            )
        return model

    def _check_size(self) -> None:
        """Count the model's parameters on the meta device (nothing allocated) before building it for real."""
        try:
            with torch.device("meta"):
                meta = build_model(self.architecture, self.arch_config)
        except ModelError:
            raise
        except Exception:  # an architecture that cannot be built on meta: the real build reports its error
            return
        n = sum(p.numel() for p in meta.parameters())
        if n > MAX_PARAMETERS:
            raise ModelError(f"bundle {self.name} ({self.path / CONFIG_NAME}): arch_config asks for {n:,} "
                             f"parameters, more than {MAX_PARAMETERS:,}; re-create the bundle")

    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "arch_config": self.arch_config,
            "frontend": self.frontend.to_dict(),
            "labels": list(self.labels),
            "genre_labels": list(self.genre_labels),
            "activation": self.activation,
            "window_frames": self.window_frames,
            "hop_seconds": self.hop_seconds,
            "streaming": self.streaming,
            **({"taxonomy": self.taxonomy} if self.taxonomy else {}),
            **({"derived_labels": list(self.derived)} if self.derived else {}),
            **({"extra": self.extra} if self.extra else {}),
        }


def _first_line(e: BaseException, limit: int = 160) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_sizes(value: Any, where: str, bad: list[str]) -> None:
    """Every number under ``value`` finite, every integer (or integral float) within MAX_DIM; names the
    offending fields (``where``: the dotted path so far) in ``bad``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            bad.append(f"{where} = {value} is not a finite number")
        elif abs(value) > MAX_DIM and (isinstance(value, int) or value.is_integer()):
            bad.append(f"{where} = {value:g} is larger than {MAX_DIM}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_sizes(v, f"{where}[{i}]", bad)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(v, f"{where}.{k}", bad)
    else:
        bad.append(f"{where} has an unexpected type {type(value).__name__}")


def _validate_config(cfg: Any, cfg_path: Path) -> None:
    """Shape and bounds of a config.json, before anything is built or allocated (ModelError naming the field)."""
    def fail(what: str) -> ModelError:
        return ModelError(f"bundle {cfg_path.parent.name} ({cfg_path}): {what}; fix the field or re-create the "
                          "bundle")

    if not isinstance(cfg, dict):
        raise fail("config.json must hold a JSON object")
    for key, kind in (("arch_config", dict), ("frontend", dict), ("labels", list), ("architecture", str)):
        if key in cfg and not isinstance(cfg[key], kind):
            raise fail(f"{key} must be a JSON {'object' if kind is dict else kind.__name__.replace('str', 'string')}")
    bad: list[str] = []
    _check_sizes(cfg.get("arch_config", {}), "arch_config", bad)
    if bad:
        raise fail(bad[0])
    for key, (lo, hi) in FRONTEND_BOUNDS.items():
        v = cfg.get("frontend", {}).get(key)
        if v is None and key == "win_length":
            continue
        if key in cfg.get("frontend", {}) and not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise fail(f"frontend.{key} = {v!r} must be a whole number in [{lo}, {hi}]")
    labels = cfg.get("labels", [])
    if not 0 < len(labels) <= MAX_LABELS or not all(isinstance(x, str) for x in labels):
        raise fail(f"labels must be a list of 1 to {MAX_LABELS} strings")
    arch = cfg.get("arch_config", {})
    derived = cfg.get("derived_labels", [])
    n_net = len(labels) - (len(derived) if isinstance(derived, list) else 0)  # the network's own outputs
    if "n_labels" in arch and arch["n_labels"] != n_net:
        extra = f" and {len(labels) - n_net} derived" if n_net != len(labels) else ""
        raise fail(f"arch_config.n_labels = {arch['n_labels']!r} but labels lists {n_net}{extra}")
    if "n_mels" in arch and "n_mels" in cfg.get("frontend", {}) and arch["n_mels"] != cfg["frontend"]["n_mels"]:
        raise fail(f"arch_config.n_mels = {arch['n_mels']!r} but frontend.n_mels = {cfg['frontend']['n_mels']!r}")
    w = cfg.get("window_frames", 1)
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and 1 <= w <= MAX_WINDOW_FRAMES):
        raise fail(f"window_frames = {w!r} must be a whole number in [1, {MAX_WINDOW_FRAMES}]")
    h = cfg.get("hop_seconds", 1.0)
    if not (isinstance(h, (int, float)) and not isinstance(h, bool) and math.isfinite(h) and 0 < h <= 3600):
        raise fail(f"hop_seconds = {h!r} must be a number of seconds in (0, 3600]")


def _bundle_from_dir(path: Path) -> Bundle:
    cfg_path = path / CONFIG_NAME
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError as e:
        raise ModelError(f"{path} is not a model bundle (no {CONFIG_NAME})") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{cfg_path} is not valid JSON ({_first_line(e)}); re-create the bundle") from e
    except OSError as e:
        raise ModelError(f"{cfg_path}: cannot read it ({e.strerror or e}); check its permissions") from e
    _validate_config(cfg, cfg_path)
    try:
        if cfg.get("format_version", 1) > FORMAT_VERSION:
            raise ModelError(f"{path} needs a newer streamtag (bundle format {cfg['format_version']})")
        labels = tuple(cfg["labels"])
        genres = tuple(cfg.get("genre_labels") or labels)
        bad = [g for g in genres if g not in labels]
        if bad:
            raise ModelError(f"{cfg_path}: genre_labels {bad} are not among the labels")
        activation = cfg.get("activation", "sigmoid")
        streaming = cfg.get("streaming", "window")
        if activation not in ("sigmoid", "softmax") or streaming not in ("window", "stateful"):
            raise ModelError(f"{cfg_path}: activation must be sigmoid|softmax and streaming window|stateful")
        derived = _check_derived(cfg.get("derived_labels", []), labels, where=str(cfg_path))
        taxonomy = cfg.get("taxonomy")
        if taxonomy is not None:
            taxonomy = check_taxonomy(taxonomy, labels, genres, where=str(cfg_path)).to_dict()
        return Bundle(
            name=cfg.get("name", path.name),
            path=path,
            architecture=cfg["architecture"],
            arch_config=dict(cfg.get("arch_config", {})),
            frontend=FrontendSpec.from_dict(cfg["frontend"]),
            labels=labels,
            genre_labels=genres,
            activation=activation,
            window_frames=int(cfg["window_frames"]),
            hop_seconds=float(cfg["hop_seconds"]),
            streaming=streaming,
            description=cfg.get("description", ""),
            extra=dict(cfg.get("extra", {})),
            taxonomy=taxonomy or {},
            derived=derived,
        )
    except KeyError as e:
        raise ModelError(f"{cfg_path} lacks the field {e.args[0]!r}; re-create the bundle") from e
    except ConfigError as e:  # the front end's own checks
        raise ModelError(f"bundle {path.name} ({cfg_path}): {e}") from e
    except (TypeError, ValueError) as e:  # a field of the wrong type
        raise ModelError(f"bundle {path.name} ({cfg_path}): a field has the wrong type ({_first_line(e)}); "
                         "re-create the bundle") from e


def _check_derived(items: Any, labels: tuple[str, ...], *, where: str) -> tuple[dict[str, Any], ...]:
    """A bundle's "derived_labels": each {"label", "weights" (one per network output), "bias"}, naming the last
    labels in order."""
    if not isinstance(items, list):
        raise ModelError(f'{where}: "derived_labels" must be a list; re-create the bundle')
    n_net = len(labels) - len(items)
    for k, d in enumerate(items):
        ok = (isinstance(d, dict) and d.get("label") == labels[n_net + k] and isinstance(d.get("weights"), list)
              and len(d["weights"]) == n_net and all(isinstance(w, (int, float)) for w in d["weights"])
              and isinstance(d.get("bias"), (int, float)))
        if not ok:
            raise ModelError(f'{where}: derived label {k} must be {{"label": {labels[n_net + k]!r} (the labels\' '
                             f'tail), "weights": [{n_net} numbers], "bias": number}}; re-create the bundle')
    return tuple(items)


def available_models() -> list[str]:
    """Names of the shipped bundles (directories with a config.json under models_dirs())."""
    names: set[str] = set()
    for d in models_dirs():
        names.update(p.name for p in d.iterdir() if (p / CONFIG_NAME).is_file())
    return sorted(names)


def load_bundle(name_or_path: str | os.PathLike[str]) -> Bundle:
    """A bundle by shipped name (see ``available_models()``) or by directory path."""
    p = Path(name_or_path)
    if p.is_dir():
        return _bundle_from_dir(p)
    for d in models_dirs():
        if (d / str(name_or_path) / CONFIG_NAME).is_file():
            return _bundle_from_dir(d / str(name_or_path))
    raise ModelError(
        f"unknown model {str(name_or_path)!r}: give a bundle directory or one of: "
        f"{', '.join(available_models()) or '(none shipped)'}"
    )


def save_bundle(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    architecture: str,
    arch_config: dict[str, Any],
    frontend: FrontendSpec,
    labels: list[str] | tuple[str, ...],
    window_frames: int,
    hop_seconds: float,
    genre_labels: list[str] | tuple[str, ...] | None = None,
    activation: str = "sigmoid",
    streaming: str = "window",
    description: str = "",
    card: str | None = None,
    extra: dict[str, Any] | None = None,
    taxonomy: dict[str, Any] | None = None,
    derived: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
) -> Bundle:
    """Write a bundle directory (config.json + model.safetensors [+ model_card.md]) and return it loaded.
    ``taxonomy`` (families -> genres) defaults to :func:`streamtag.taxonomy.default_taxonomy` of the labels."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bundle = Bundle(
        name=path.name,
        path=path,
        architecture=architecture,
        arch_config=dict(arch_config),
        frontend=frontend,
        labels=tuple(labels),
        genre_labels=tuple(genre_labels or labels),
        activation=activation,
        window_frames=int(window_frames),
        hop_seconds=float(hop_seconds),
        streaming=streaming,
        description=description,
        extra=dict(extra or {}),
        taxonomy=dict(taxonomy or default_taxonomy(labels, genre_labels or labels)),
        derived=tuple(derived),
    )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"architecture": architecture})
    (path / CONFIG_NAME).write_text(json.dumps(bundle.config_dict(), indent=2) + "\n")
    if card is not None:
        (path / CARD_NAME).write_text(card)
    return _bundle_from_dir(path)
