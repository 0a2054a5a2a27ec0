"""Two real `offboard reconcile --once` processes on one state file, against the sandbox over HTTPS.

The timer and a technician run a pass at the same moment: each leaver is worked by one
process at a time (a lease in the store), so every write reaches Microsoft 365 once,
which the sandbox's write log (read through its control endpoint, as another process
would) proves. A process killed while its writes are in flight (the sandbox holds the
answer after the write landed) has its leases taken over once `lease_seconds` have passed,
and the next pass finishes without writing anything twice.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from connector import config as configmod
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.web import Sandbox
from connector.store import Store
from tests.helpers import write_config, write_csv
from tests.sandboxes import MANAGER, seed

SANDBOX_MODES = ("https",)
LEAVERS = 8
OFFBOARD = str(Path(sys.executable).parent / "offboard")
ENTRA = '''
[[tenant.provider]]
type = "entra"
tenant_id = "{tenant_id}"
client_id = "{client_id}"
client_secret = "file:{secret}"
authority = "{login}"
graph_url = "{graph}"
exchange_url = "{exchange}"
'''


@pytest.fixture
def world(tmp_path, reach, https_sandbox):
    cloud = Microsoft365(secret="two-processes-Secret-1")
    seed(cloud)
    for i in range(LEAVERS):
        cloud.add_user(f"p{i}@contoso.com", employee_id=f"E{i}", licences=("EMS",), manager=MANAGER,
                       groups=("All Staff", "Project X", "E3 Licence"), methods=("password", "microsoftAuthenticator"))
    sandbox = cloud.mount(Sandbox())
    cloud.urls = reach(sandbox, VENDOR_URLS)
    (tmp_path / "secret").write_text("two-processes-Secret-1")
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)
    write_csv(tmp_path / "hr", "feed.csv", [f"E{i},p{i}@contoso.com,P,{i},,{yesterday},," for i in range(LEAVERS)])
    config = write_config(tmp_path, top="lease_seconds = 2\n", providers=ENTRA.format(
        tenant_id=cloud.tenant_id, client_id=cloud.client_id, secret=tmp_path / "secret", login=cloud.urls["login"],
        graph=cloud.urls["graph"], exchange=cloud.urls["exchange"]))
    server, _ = https_sandbox
    return cloud, server, str(config)


def start(config: str, server) -> subprocess.Popen:
    return subprocess.Popen([OFFBOARD, "--config", config, "reconcile", "--once"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "REQUESTS_CA_BUNDLE": server.ca_file})


def writes(server) -> Counter:
    """Successful writes by what and whom, as another process reads them: the control endpoint."""
    log = requests.get(f"{server.url}/_sandbox/writes", verify=server.ca_file, timeout=10).json()["writes"]
    return Counter((w["op"], w["target"]) for w in log if w["status"] < 400)


def states(config: str) -> set[str]:
    return {t["state"] for t in Store.open(configmod.load(config).connector.state).terminations()}


def test_two_passes_at_once_write_everything_exactly_once(world):
    cloud, server, config = world
    cloud.graph.knobs.latency = (0.05, 0.05)           # long enough for the two passes to overlap
    procs = [start(config, server) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    done = writes(server)
    assert set(done.values()) == {1}, [w for w, n in done.items() if n > 1]
    # per leaver: block, reset, revoke, one MFA method, two groups, the licence group, the direct licence
    assert len(done) == 8 * LEAVERS
    assert states(config) == {"done"}
    assert all(not cloud.snapshot(f"p{i}@contoso.com")["accountEnabled"] for i in range(LEAVERS))
    assert Store.open(configmod.load(config).connector.state).verify_audit()[0]


def test_a_process_that_dies_mid_pass_is_taken_over_after_its_lease(world):
    cloud, server, config = world
    cloud.graph.knobs.latency = (0.0, 0.5)             # every answer held back after its write landed
    doomed = start(config, server)
    deadline = time.monotonic() + 60
    while not writes(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)                 # dies with writes in flight, holding its leases
    doomed.wait(10)
    landed = writes(server)
    assert 0 < len(landed) < 8 * LEAVERS, "the doomed pass did not die mid-pass"
    cloud.graph.knobs.latency = (0.0, 0.0)
    early = start(config, server)
    early.communicate(timeout=120)
    assert states(config) != {"done"}                  # the dead holder's leases still count
    time.sleep(2.5)                                    # lease_seconds = 2
    later = start(config, server)
    output = later.communicate(timeout=120)[0]
    assert later.returncode == 0, output
    assert states(config) == {"done"}
    done = writes(server)
    assert set(done.values()) == {1}, [w for w, n in done.items() if n > 1]
    assert len(done) == 8 * LEAVERS
