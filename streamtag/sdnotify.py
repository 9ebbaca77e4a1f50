"""systemd's service notifications (``sd_notify``), for ``serve`` run as a ``Type=notify`` service.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket's path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service. Through it ``serve`` says ``READY=1`` once it listens with its stations opened (so
``systemctl start`` returns when the server answers, and units ordered after it start then), ``RELOADING=1`` and
``READY=1`` around a station list's reload (``systemctl reload`` waits for it), ``STOPPING=1`` on a stop, and
its health line as ``STATUS=`` (shown by ``systemctl status``). With ``WatchdogSec=`` systemd also passes
``WATCHDOG_USEC``: ``serve`` then sends ``WATCHDOG=1`` every half of it while its event loop runs and its
engine thread keeps stepping, so systemd restarts a server whose engine hangs.

Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op. A failed send is never an error: the
server goes on. Implemented on a plain socket (no libsystemd); see sd_notify(3) for the protocol.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends ``KEY=value`` lines to the socket in ``env["NOTIFY_SOCKET"]`` (default: this process's environment)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):  # the abstract namespace: a leading NUL byte
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self._sock: socket.socket | None = None
        self.watchdog_s: float | None = None  # the watchdog's period (WATCHDOG_USEC), when it is meant for us
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.address is not None and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``fields`` as one notification (e.g. ``send(READY=1, STATUS="serving")``); False if not sent."""
        if self.address is None:
            return False
        text = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # never stall the event loop on a full socket buffer
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd >= 253's Type=notify-reload matches it with its own clock
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: str) -> str:
    return " ".join(value.splitlines())[:1000]
