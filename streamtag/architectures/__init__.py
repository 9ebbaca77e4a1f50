"""Model architectures, one per file, shared by the engine and by ``train/``.

Every architecture module defines a frozen ``@dataclass`` config and an ``nn.Module`` built from it.
The module contract (what the runner relies on):

- ``model(x)`` with ``x`` of shape (B, T, n_mels), log-mel frames in the bundle front end's units, returns
  logits of shape (B, n_labels). The bundle's ``activation`` (sigmoid or softmax) turns them into
  probabilities. Window models (``model.stateful is False``) see one whole window per call.
- Stateful models (``model.stateful is True``) also provide ``init_state(batch_size, device)`` and
  ``step(x, state) -> (logits, new_state)`` with ``x`` the frames that arrived since the last call; the
  state is explicit, passed in and returned, and a chunked run equals a full-sequence run.
- Optionally ``model.lag_frames``: how many frames behind the newest input a stateful model's answer is (a
  front end that looks ahead); the engine then stamps updates with the time the answer describes.
"""
from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

from torch import nn

from ..errors import ModelError

__all__ = ["ARCHITECTURES", "available_architectures", "build_model", "config_class"]

# name -> "module:ConfigClass:ModelClass" (lazy so importing one architecture never imports them all)
ARCHITECTURES: dict[str, str] = {
    "musicnn": "musicnn:MusicnnConfig:Musicnn",
    "transformer": "transformer:TransformerConfig:TransformerTagger",
    "bigru": "gru:BiGRUConfig:BiGRUTagger",
    "stateful_gru": "gru:StatefulGRUConfig:StatefulGRUTagger",
    "crnn": "crnn:CRNNConfig:CRNN",
    "vit": "vit:ViTConfig:ViTTagger",
    "musicnn_student": "student:MusicnnStudentConfig:MusicnnStudent",
    "lite": "lite:LiteConfig:LiteStudent",
}


def available_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def _resolve(name: str) -> tuple[type, type]:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; available: {', '.join(available_architectures())}")
    mod_name, cfg_name, model_name = ARCHITECTURES[name].split(":")
    try:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
    except ModuleNotFoundError as e:
        raise ModelError(f"architecture {name!r} is registered but its module is missing ({e})") from e
    return getattr(mod, cfg_name), getattr(mod, model_name)


def config_class(name: str) -> type:
    return _resolve(name)[0]


def build_model(name: str, config: dict[str, Any]) -> nn.Module:
    """Build an untrained model of architecture ``name`` from its config dict (as stored in a bundle)."""
    cfg_cls, model_cls = _resolve(name)
    known = {f.name for f in fields(cfg_cls)}
    unknown = set(config) - known
    if unknown:
        raise ModelError(f"architecture {name!r} does not take {sorted(unknown)}; it takes {sorted(known)}")
    return model_cls(cfg_cls(**config))
