"""streamtag: streaming, real-time music genre tagging."""
from __future__ import annotations

__version__ = "0.1.0"
