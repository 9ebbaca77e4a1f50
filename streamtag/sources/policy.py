"""What a source may open: the policy a server applies to the inputs its clients name.

The command line runs with :meth:`SourcePolicy.permissive` (the user names their own files and URLs); the
websocket server runs with what its flags allow (``--allow-files DIR``, ``--allow-private-urls``). A refusal is a
:class:`PolicyError` whose message says "refused by policy" and never whether a path or port exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

__all__ = ["SourcePolicy", "PolicyError"]


class PolicyError(SourceError):
    """An input the policy does not allow; the message reveals nothing about the input's existence."""


@dataclass(frozen=True)
class SourcePolicy:
    allow_files: tuple[Path, ...] = ()  # directories under which local files may be opened; () = none
    allow_private_urls: bool = False  # loopback, link-local and private addresses (after DNS, every redirect)
    allow_stdin: bool = False  # "-" as an input

    @classmethod
    def permissive(cls) -> SourcePolicy:
        """The command line's policy: the user's own inputs, all allowed."""
        return cls(allow_files=(Path("/"),), allow_private_urls=True, allow_stdin=True)
