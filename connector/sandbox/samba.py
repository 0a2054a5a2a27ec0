"""A real Samba AD DC in a folder of its own: what the AD tests and `make demo` talk to.

A mock would agree with whatever the provider believes about AD; a real DC does not.
Provisioning takes a few seconds. The DC serves LDAPS on 127.0.0.1:636 (a fixed port,
so one sandbox DC per machine at a time) with a certificate from a CA made here, so
clients keep certificate and host-name checks on. Samba runs with its stdin on a
pipe and exits when that pipe closes: a killed parent leaves no DC behind.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import ldap3

from .tls import write_tls

REALM = "EXAMPLE.TEST"
DOMAIN = "EXAMPLE"
HOST = "dc1"
PORT = 636
# The port is fixed, so one sandbox DC per machine: a second test run or `make demo` waits its turn here.
LOCK_FILE = Path("/tmp/offboard-connector-sandbox-dc.lock")

# Provision drops this option, so it goes into smb.conf afterwards: by default the old
# password keeps working for 60 minutes after an admin reset, and a reset test proves nothing.
SMB_GLOBALS = {"old password allowed period": "0"}


class SambaDC:
    """Provision, start and stop one sandbox DC: `SambaDC(dir).provision().start()` ... `.stop()`."""

    realm = REALM
    domain = DOMAIN
    base_dn = ",".join(f"DC={part}" for part in REALM.lower().split("."))
    admin_user = f"Administrator@{REALM.lower()}"
    url = f"ldaps://127.0.0.1:{PORT}"

    def __init__(self, directory: str | os.PathLike, admin_password: str | None = None):
        self.dir = Path(directory)
        self.admin_password = admin_password or f"Sandbox-{secrets.token_hex(8)}-A1"
        self.process: subprocess.Popen | None = None
        self._lock = None

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "smb.conf"

    @property
    def ca_file(self) -> str:
        return str(self.dir / "private" / "tls" / "ca.pem")

    @property
    def log_file(self) -> Path:
        return self.dir / "samba.log"

    def provision(self) -> SambaDC:
        if shutil.which("samba-tool") is None:
            raise RuntimeError("samba-tool not found: apt-get install samba")
        self.dir.mkdir(parents=True, exist_ok=True)
        _run("samba-tool", "domain", "provision", f"--targetdir={self.dir}", f"--realm={REALM}",
             f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE", f"--host-name={HOST}",
             f"--adminpass={self.admin_password}", "--option=netbios name=DC1", "--option=interfaces=lo",
             "--option=bind interfaces only=yes", "--option=server services = ldap")
        text = self.conf.read_text()
        extra = "".join(f"\t{key} = {value}\n" for key, value in SMB_GLOBALS.items())
        self.conf.write_text(text.replace("[global]\n", f"[global]\n{extra}", 1))
        # tests reset the same accounts again and again, and reuse passwords
        _run("samba-tool", "domain", "passwordsettings", "set", "-H", str(self.dir / "private" / "sam.ldb"),
             "--history-length=0", "--min-pwd-age=0", "--max-pwd-age=0")
        write_tls(self.dir / "private" / "tls", ["localhost", f"{HOST}.{REALM.lower()}"], ["127.0.0.1"])
        return self

    def start(self, timeout: float = 60.0, wait_for_turn: float = 1800.0) -> SambaDC:
        self._take_turn(wait_for_turn)
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> SambaDC:
        if _port_open(PORT):
            raise RuntimeError(f"127.0.0.1:{PORT} is already in use: is another sandbox DC running?")
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(["samba", "-i", "-s", str(self.conf), "-M", "single"],
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"samba exited with {self.process.returncode}; see {self.log_file}:\n"
                                   + self.log_file.read_text()[-2000:])
            try:
                self.connect().unbind()
                return self
            except ldap3.core.exceptions.LDAPException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"samba did not answer LDAPS within {timeout:.0f} s; see {self.log_file}") from None
                time.sleep(0.2)

    def _take_turn(self, wait: float) -> None:
        self._lock = open(LOCK_FILE, "a")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another sandbox DC held {LOCK_FILE} for {wait:.0f} s") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            self._release_turn()
            return
        self.process.stdin.close()      # samba -i exits when its stdin closes
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._release_turn()

    def _release_turn(self) -> None:
        if self._lock is not None:
            self._lock.close()          # closing the file drops the flock
            self._lock = None

    def connect(self, user: str | None = None, password: str | None = None) -> ldap3.Connection:
        """A bound LDAPS connection, as the administrator unless a user and password are given."""
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.ca_file)
        server = ldap3.Server("127.0.0.1", port=PORT, use_ssl=True, tls=tls, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(server, user or self.admin_user, password or self.admin_password,
                                auto_bind=True, receive_timeout=30, raise_exceptions=True)

    def __enter__(self) -> SambaDC:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} {argv[1]} {argv[2]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
