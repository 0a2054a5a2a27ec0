"""One worker per termination, and one intake per tenant, across processes and machines.

A pass takes a lease in the store for each termination it works on (and for each tenant's
intake), renews them in the background while it runs, and releases them at the end. A
process that dies stops renewing: its leases expire after `lease_seconds` and the next
pass takes the work over, resuming from the journal. A lease that is lost mid-pass (the
machine stalled past its expiry and another worker took over) stops this pass's work on it.
"""
from __future__ import annotations

import os
import socket
import threading

from ..store import Store


def owner_id(run_id: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def daemon_of(owner: str) -> str:
    """`host:pid`, the process behind an `owner_id`: a daemon's own lease and its passes' leases share it."""
    return owner.rsplit(":", 1)[0]


def kind_of(key: str) -> str:
    """`termination`, `intake`, `tenant` or `process`: what a lease key guards."""
    return key.split(":", 1)[0]


class Leases:
    def __init__(self, store: Store, owner: str, seconds: float):
        self.store, self.owner, self.seconds = store, owner, seconds
        self.held: set[str] = set()
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def take(self, key: str) -> bool:
        if not self.store.acquire_lease(key, self.owner, self.seconds):
            return False
        with self._lock:
            self.held.add(key)
            self.lost.discard(key)
        return True

    def holds(self, key: str) -> bool:
        with self._lock:
            return key in self.held and key not in self.lost

    def keys(self, kind: str) -> list[str]:
        """The keys of that kind taken here and not released, lost ones included."""
        with self._lock:
            return sorted(key for key in self.held if kind_of(key) == kind)

    def release(self, key: str) -> None:
        with self._lock:
            self.held.discard(key)
        self.store.release_lease(key, self.owner)

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            with self._lock:
                keys = self.held - self.lost
            for key in keys:
                if not self.store.renew_lease(key, self.owner, self.seconds):
                    with self._lock:
                        self.lost.add(key)

    def __enter__(self) -> Leases:
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        for key in list(self.held):
            self.release(key)
