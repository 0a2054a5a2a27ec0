"""The daemon's long life and footprint: `python -m benchmarks soak`. `offboard serve` with 50 tenants over
hundreds of passes against the sandbox over HTTPS, its resident memory sampled from /proc, then the
same daemon idle for a minute.

Memory that grows with the number of passes (a cache without a bound, a leaked thread) shows as a
slope between the first and the last third of the samples; a flat daemon's slope is noise.
"""
from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

from tests.serving import Daemon, sandbox_daemon_setup

from .sections import Section, table

TENANTS = 50
TITLE = "The daemon's long life and footprint"


def status_kib(pid: int | str, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status (VmRSS resident, VmHWM its peak), in KiB; 0 for one not there."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100       # utime + stime, in clock ticks of 1/100 s


def passes(state: Path) -> int:
    with sqlite3.connect(state) as db:
        return db.execute("select count(*) from runs where state in ('done', 'failed')").fetchone()[0]


def measure(folder: Path, poll: str, seconds: float, warmup: float = 0) -> dict:
    with sandbox_daemon_setup(folder, size=30, tenants=TENANTS, poll_interval=poll) as (world, config, env):
        daemon = Daemon(folder, config, env).start()
        pid = daemon.proc.pid
        time.sleep(warmup)
        samples = []
        cpu0, start = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - start < seconds:
            samples.append(status_kib(pid))
            time.sleep(1)
        cpu = cpu_seconds(pid) - cpu0
        elapsed = time.monotonic() - start
        done = passes(folder / "state.db")
        assert daemon.stop() == 0
    third = max(1, len(samples) // 3)
    early, late = sum(samples[:third]) / third, sum(samples[-third:]) / third
    return {"passes": done, "rss_start": samples[0], "rss_early": early, "rss_late": late, "rss_max": max(samples),
            "cpu": cpu, "elapsed": elapsed}


def section(busy_seconds: float = 120, idle_seconds: float = 60) -> Section:
    busy = measure(Path(tempfile.mkdtemp(prefix="soak-busy-")), "2s", busy_seconds)
    idle = measure(Path(tempfile.mkdtemp(prefix="soak-idle-")), "1h", idle_seconds, warmup=15)
    growth = busy["rss_late"] - busy["rss_early"]
    per_100 = growth / max(1, busy["passes"]) * 100
    idle_cpu = idle["cpu"] / idle["elapsed"] * 100
    rows = [
        [f"serve, {TENANTS} tenants polled every 2 s for {busy['elapsed']:.0f} s", f"{busy['passes']} passes",
         f"{busy['cpu'] / max(1, busy['passes']) * 1000:.0f} ms CPU per pass"],
        ["resident memory over those passes (first third -> last third of samples)",
         f"{busy['rss_early'] / 1024:.1f} MiB -> {busy['rss_late'] / 1024:.1f} MiB",
         f"{per_100:+.0f} KiB per 100 passes (max {busy['rss_max'] / 1024:.1f} MiB)"],
        [f"serve idle ({TENANTS} tenants, one-hour poll) for {idle['elapsed']:.0f} s",
         f"{idle['rss_late'] / 1024:.1f} MiB resident", f"{idle_cpu:.2f} % of one core (after its first full pass)"],
    ]
    return Section(TITLE, table(["the daemon", "figure", "per unit"], rows) +
                   "\n\nThe memory slope compares the mean of the first and the last third of one-second samples: a\n"
                   "daemon that leaks grows with every pass; a flat one moves by allocator noise. The idle figures are\n"
                   "taken after the first full pass, with a one-hour poll.",
                   f"idle: {idle['rss_late'] / 1024:.0f} MiB and {idle_cpu:.2f} % of a core for {TENANTS} tenants; "
                   f"{per_100:+.0f} KiB per 100 busy passes")
