"""Throwaway stand-ins for a client's systems, shared by the tests, `make demo` and `offboard sandbox`.

One implementation serves all of them, so the demo a technician watches is the setup the
tests prove: a real Samba DC for Active Directory (samba.py, company.py), and the cloud
and HR systems emulated once each (identity, graph, exchange, bamboohr, workday over the
state of tenant.py), answered behind `responses` in a test process (mocked.py) or over
HTTPS on 127.0.0.1 (server.py), through one request path (web.py); `offboard serve` driven
as systemd and the feeds drive it (serving.py), and the demo that puts them together (demo.py).
"""
