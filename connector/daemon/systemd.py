"""The two halves of systemd's notify protocol the service unit relies on (`Type=notify`).

The protocol is one datagram per message to the socket in $NOTIFY_SOCKET (`@` for the
abstract namespace), so it is written here rather than pulled in as a dependency. Outside
systemd (no $NOTIFY_SOCKET) every call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`; False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
        return True
    except OSError as e:
        log.warning("systemd notify socket %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC (when it is meant for this process), in seconds."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings `WATCHDOG=1` only while `healthy()` answers "" (no reason to be unhealthy), so systemd
    restarts a daemon whose scheduler or store stopped, not only one that hangs."""

    def __init__(self, healthy: Callable[[], str]):
        self.healthy = healthy
        self.interval = watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval:
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.healthy()
            if reason:
                log.error("not pinging the systemd watchdog: %s", reason)
            else:
                notify("WATCHDOG=1")

    def stop(self) -> None:
        self._stop.set()
