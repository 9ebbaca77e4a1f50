"""What a source may open: the policy a server applies to the inputs its clients name.

The command line runs with :meth:`SourcePolicy.permissive` (the user names their own files and URLs); the
websocket server runs with what its flags allow (``--allow-files DIR``, ``--allow-private-urls``). A refusal is a
:class:`PolicyError` whose message says "refused by policy" and never whether a path or port exists.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import SourceError

__all__ = [
    "SourcePolicy",
    "PolicyError",
    "refused",
    "is_public_address",
    "check_address",
    "check_file",
    "check_stdin",
    "display_name",
]


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


# -- checks ---------------------------------------------------------------------------------------------------------


def refused(display: str) -> PolicyError:
    """The one refusal message: it names the input (as :func:`display_name` shows it) and nothing else."""
    return PolicyError(f"{display}: refused by policy")


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for loopback, link-local, private, shared, multicast,
    unspecified and reserved ones (IPv4-mapped IPv6 addresses are judged as their IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global and not ip.is_multicast and not ip.is_unspecified)


def check_address(address: str, policy: SourcePolicy, display: str) -> None:
    """Refuse a resolved peer address the policy does not allow (call it on the address you then connect to)."""
    if not policy.allow_private_urls and not is_public_address(address):
        raise refused(display)


def check_stdin(policy: SourcePolicy, display: str = "stdin") -> None:
    if not policy.allow_stdin:
        raise refused(display)


def check_file(path: str | os.PathLike[str], policy: SourcePolicy, display: str) -> Path:
    """The resolved path of a local file the policy allows (symlinks followed, ``..`` collapsed), else PolicyError.

    The answer is the same whether or not the path exists, so a refusal reveals nothing about the file system.
    Open the returned path, not the one given, so a symlink swapped after the check cannot point elsewhere.
    """
    try:
        resolved = Path(os.path.realpath(os.fspath(path)))
    except (OSError, ValueError) as e:  # a NUL byte, a symlink loop
        raise refused(display) from e
    for root in policy.allow_files:
        try:
            base = Path(os.path.realpath(os.fspath(root)))
        except (OSError, ValueError):
            continue
        if resolved == base or base in resolved.parents:
            return resolved
    raise refused(display)


def display_name(spec: str | os.PathLike[str]) -> str:
    """A source spec as it may be shown to anyone: URLs without ``user:password@`` (and without their query,
    which often carries a key), local paths and ``file://`` URLs as the file name only, ``-`` as "stdin"."""
    text = os.fspath(spec)
    if text == "-":
        return "stdin"
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:
            return "(invalid URL)"
        scheme = parts.scheme.lower()
        if scheme == "file":
            return PurePosixPath(unquote(parts.path)).name or "(file)"
        host = parts.netloc.rsplit("@", 1)[-1]
        query = "?…" if parts.query else ""
        return urlunsplit((scheme, host, parts.path, "", "")) + query
    return Path(text).name or text
