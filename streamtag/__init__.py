"""streamtag: streaming, real-time music genre tagging.

    >>> import streamtag
    >>> result = streamtag.tag("song.ogg")            # or tag(samples, sr=22050)
    >>> result.segments[0].family, result.times, result.probs.shape
    >>> for event in streamtag.stream("https://radio.example/live.mp3"): ...

See docs/api.md. The names below load on first use, so ``streamtag --version`` and the command line's parsing
import neither numpy nor torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "tag", "load_model", "available_models", "stream", "listen", "Live", "Model", "TagResult", "Segment",
    "GenreUpdate", "Summary", "StreamtagError", "DEFAULT_MODEL", "__version__",
]

_WHERE = {  # public name -> the module that defines it
    **dict.fromkeys(("tag", "load_model", "available_models", "stream", "listen", "Live", "Model", "TagResult",
                     "DEFAULT_MODEL"), "api"),
    "Segment": "segments", "GenreUpdate": "events", "Summary": "events", "StreamtagError": "errors",
}

if TYPE_CHECKING:
    from .api import DEFAULT_MODEL, Live, Model, TagResult, available_models, listen, load_model, stream, tag
    from .errors import StreamtagError
    from .events import GenreUpdate, Summary
    from .segments import Segment


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streamtag' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
