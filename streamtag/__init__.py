"""streamtag: streaming, real-time music genre tagging.

    >>> import streamtag
    >>> result = streamtag.tag("song.ogg")            # or tag(samples, sr=22050)
    >>> result.segments[0].family, result.times, result.probs.shape
    >>> for event in streamtag.stream("https://radio.example/live.mp3"): ...

See docs/api.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import DEFAULT_MODEL, Live, Model, TagResult, available_models, listen, load_model, stream, tag
from .errors import StreamtagError
from .events import GenreUpdate, Summary
from .segments import Segment

__all__ = [
    "tag", "load_model", "available_models", "stream", "listen", "Live", "Model", "TagResult", "Segment",
    "GenreUpdate", "Summary", "StreamtagError", "DEFAULT_MODEL", "__version__",
]
