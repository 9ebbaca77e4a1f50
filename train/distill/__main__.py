"""``python -m streamtag.train.distill ...`` = ``streamtag distill ...`` (the commands the model cards record)."""
from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    raise SystemExit(main(["distill", *sys.argv[1:]], prog="python -m streamtag.train"))
