"""The sandbox over real HTTPS on 127.0.0.1: cheroot, the WSGI server the daemon uses too.

Another process (a second `reconcile --once`, the daemon, a benchmark) can reach the
emulated systems only over a socket. The certificate comes from a CA made here
(`tls.write_tls`), so clients keep verification on and trust that CA alone. The limits are
a real server's: a slow or oversized client is cut off instead of holding a worker.
"""
from __future__ import annotations

import threading
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .tls import write_tls

HOST = "127.0.0.1"
THREADS = 32                      # concurrent requests; latency knobs make requests overlap on purpose
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024  # a $batch of 20 bodies is far below this
TIMEOUT = 30                      # seconds a connection may sit mid-request
KEEP_ALIVE = 64                   # idle keep-alive connections kept open


class HttpsServer:
    """`HttpsServer(app, tls_dir).start()` ... `.stop()`; `url` and `ca_file` tell clients where and whom to trust."""

    def __init__(self, app, tls_dir: str | Path, port: int = 0):
        self.tls_dir = Path(tls_dir)
        if not (self.tls_dir / "cert.pem").exists():
            write_tls(self.tls_dir, ["localhost"], [HOST])
        self.server = wsgi.Server((HOST, port), app, numthreads=THREADS, server_name="offboard-sandbox",
                                  request_queue_size=64, timeout=TIMEOUT, shutdown_timeout=5)
        self.server.max_request_header_size = MAX_HEADER_BYTES
        self.server.max_request_body_size = MAX_BODY_BYTES
        self.server.keep_alive_conn_limit = KEEP_ALIVE
        self.server.ssl_adapter = BuiltinSSLAdapter(str(self.tls_dir / "cert.pem"), str(self.tls_dir / "key.pem"))
        self._thread: threading.Thread | None = None

    @property
    def ca_file(self) -> str:
        return str(self.tls_dir / "ca.pem")

    @property
    def port(self) -> int:
        return self.server.bind_addr[1]

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def start(self) -> HttpsServer:
        self.server.prepare()                 # binds now: `port` is known when this returns
        self._thread = threading.Thread(target=self.server.serve, name="sandbox-https", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> HttpsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
