"""``python -m streamtag.train COMMAND ...`` = ``streamtag COMMAND ...`` for the training commands."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m streamtag.train"))
