"""`offboard sandbox` serves a generated company and prints a config the other commands run against as printed."""
from __future__ import annotations

import os
import signal
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from connector.cli import main

OFFBOARD = str(Path(sys.executable).parent / "offboard")


def test_every_command_runs_against_the_printed_config(monkeypatch, capsys):
    sandbox = subprocess.Popen([OFFBOARD, "sandbox", "--port", "0", "--size", "50"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("config: ") for line in lines) and time.monotonic() < deadline:
            lines.append(sandbox.stdout.readline())
        config = next(line.split(": ", 1)[1].strip() for line in lines if line.startswith("config: "))
        bundle = next(line.split("=", 1)[1].strip() for line in sandbox.stdout if "REQUESTS_CA_BUNDLE=" in line)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
        assert main(["--config", config, "check", "--online"]) == 0
        assert main(["--config", config, "plan"]) == 0
        assert main(["--config", config, "reconcile", "--once"]) == 2         # Example Ltd's AD staff need a human
        capsys.readouterr()
        assert main(["--json", "--config", config, "status", "--all"]) == 0
        out = capsys.readouterr().out
        states = {line.split('"state": "')[1].split('"')[0] for line in out.splitlines()}
        assert {"scheduled", "cancelled", "needs_human"} <= states
        # today's leaver is due at the policy's revoke_at (17:00 in the sandbox tenant's UTC): from then on its
        # mailbox conversion keeps it in progress; before then it is scheduled with the future ones
        after_revoke_at = dt.datetime.now(dt.timezone.utc).time() >= dt.time(17, 0)
        assert ("in_progress" in states) == after_revoke_at, states
        assert '"provider": "connectwise"' in out         # the PSA is in the sandbox too
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(20)
    assert sandbox.returncode == 0
    assert not os.path.exists(config)                    # the folder goes with the sandbox


def test_a_size_out_of_range_is_a_usage_error(capsys):
    assert main(["sandbox", "--size", "5"]) == 1
    assert "--size" in capsys.readouterr().err
